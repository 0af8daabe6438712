//! Parity with PyTorch: `tests/reference/linear_reference.py` trains 12 heads (SGD and iBOT's LARS,
//! with and without weight decay, three learning rates) for 4 epochs with a cosine schedule on a fixed
//! batch order; the same optimisation here must land on the same weights and accuracies.

use linear::{
    fixed_order_epoch, train_sweep, EvalSet, HeadConfig, Heads, LinearError, Optimizer, Progress,
    TrainBatches, TrainConfig,
};
use ndarray::{Array1, Array2, ArrayView2};
use serde_json::Value;

fn golden() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/linear_golden.json"
    ))
    .expect("golden file");
    serde_json::from_str(&text).expect("golden JSON")
}

fn matrix(v: &Value) -> Array2<f32> {
    let rows: Vec<Vec<f32>> = serde_json::from_value(v.clone()).unwrap();
    let (r, c) = (rows.len(), rows[0].len());
    Array2::from_shape_vec((r, c), rows.into_iter().flatten().collect()).unwrap()
}

fn vector<T: serde::de::DeserializeOwned>(v: &Value) -> Vec<T> {
    serde_json::from_value(v.clone()).unwrap()
}

struct Replay<'a> {
    x: ArrayView2<'a, f32>,
    labels: &'a [usize],
    orders: Vec<Vec<usize>>,
}

impl TrainBatches for Replay<'_> {
    fn rows(&self) -> usize {
        self.labels.len()
    }
    fn epoch(
        &mut self,
        epoch: usize,
        batch_size: usize,
        visit: &mut linear::Visit,
    ) -> Result<(), LinearError> {
        fixed_order_epoch(self.x, self.labels, &self.orders[epoch], batch_size, visit)
    }
}

#[test]
fn matches_pytorch_sgd_and_lars_heads() {
    let g = golden();
    let configs: Vec<HeadConfig> = g["heads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| HeadConfig {
            optimizer: h["optimizer"].as_str().unwrap().parse().unwrap(),
            lr: h["lr"].as_f64().unwrap(),
            weight_decay: h["weight_decay"].as_f64().unwrap(),
        })
        .collect();
    assert!(configs.iter().any(|c| c.optimizer == Optimizer::Lars));
    let init = g["init"].as_array().unwrap();
    let weights: Vec<Array2<f32>> = init.iter().map(|h| matrix(&h["weight"])).collect();
    let biases: Vec<Array1<f32>> = init
        .iter()
        .map(|h| Array1::from(vector::<f32>(&h["bias"])))
        .collect();
    let mut heads = Heads::from_weights(configs.clone(), &weights, &biases);

    let train_x = matrix(&g["train_x"]);
    let train_y: Vec<usize> = vector(&g["train_y"]);
    let val_x = matrix(&g["val_x"]);
    let val_y: Vec<usize> = vector(&g["val_y"]);
    let mut source = Replay {
        x: train_x.view(),
        labels: &train_y,
        orders: vector(&g["orders"]),
    };
    let cfg = TrainConfig {
        epochs: g["epochs"].as_u64().unwrap() as usize,
        batch_size: g["batch_size"].as_u64().unwrap() as usize,
        eval_every: 1,
    };
    let val = EvalSet {
        x: val_x.view(),
        labels: &val_y,
    };
    let history = train_sweep(
        &mut heads,
        &cfg,
        &mut source,
        None,
        val,
        &mut |_: Progress| {},
    )
    .expect("training runs");

    let mut worst = 0f32;
    for (h, expected) in g["final"].as_array().unwrap().iter().enumerate() {
        let w = matrix(&expected["weight"]);
        let b = Array1::from(vector::<f32>(&expected["bias"]));
        let got_w = heads.weight(h);
        let got_b = heads.bias(h);
        for (a, e) in got_w
            .iter()
            .chain(got_b.iter())
            .zip(w.iter().chain(b.iter()))
        {
            let err = (a - e).abs() / e.abs().max(1e-2);
            worst = worst.max(err);
            assert!(
                err < 1e-5,
                "head {h} ({:?}): {a} vs PyTorch {e}",
                configs[h]
            );
        }
    }
    eprintln!("worst relative weight error vs PyTorch: {worst:e}");

    let expected = g["history"].as_array().unwrap();
    assert_eq!(history.len(), expected.len());
    for (got, exp) in history.iter().zip(expected) {
        let top1: Vec<usize> = vector(&exp["val_top1"]);
        let top5: Vec<usize> = vector(&exp["val_top5"]);
        let loss: Vec<f32> = vector(&exp["train_loss"]);
        assert_eq!(got.val.iter().map(|c| c.top1).collect::<Vec<_>>(), top1);
        assert_eq!(got.val.iter().map(|c| c.top5).collect::<Vec<_>>(), top5);
        for (a, e) in got.train_loss.iter().zip(&loss) {
            assert!((a - e).abs() < 1e-5 * e.abs().max(1.0), "loss {a} vs {e}");
        }
    }
}
