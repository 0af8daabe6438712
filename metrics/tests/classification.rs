//! Classification metrics against numpy / scikit-learn goldens.

mod common;

use common::*;
use metrics::classification::{evaluate, top_k_correct, ConfusionMatrix};

#[test]
fn topk_confusion_and_mean_per_class_match_reference() {
    let g = golden("classification.json");
    for (i, case) in cases(&g).iter().enumerate() {
        let c = case["num_classes"].as_u64().unwrap() as usize;
        let scores: Vec<f32> = f64s(&case["scores"]).iter().map(|&v| v as f32).collect();
        let labels: Vec<usize> = u64s(&case["labels"]).iter().map(|&v| v as usize).collect();
        for (k, want) in case["topk_correct"].as_object().unwrap() {
            let k: usize = k.parse().unwrap();
            let got = top_k_correct(&scores, c, &labels, k).unwrap();
            assert_eq!(got as u64, want.as_u64().unwrap(), "case {i} top-{k}");
        }
        let report = evaluate(&scores, c, &labels).unwrap();
        let argmax: Vec<usize> = u64s(&case["argmax"]).iter().map(|&v| v as usize).collect();
        let want_cm = ConfusionMatrix::from_labels(&labels, &argmax, c).unwrap();
        assert_eq!(report.confusion, want_cm, "case {i} predictions");
        let rows: Vec<Vec<u64>> = case["confusion"]
            .as_array()
            .unwrap()
            .iter()
            .map(u64s)
            .collect();
        let got_rows: Vec<Vec<u64>> = report.confusion.rows().map(<[u64]>::to_vec).collect();
        assert_eq!(got_rows, rows, "case {i} confusion");
        assert_eq!(
            report.mean_per_class,
            case["mean_per_class"].as_f64().unwrap(),
            "case {i} mean per class"
        );
        let want_top1 = case["topk_correct"]["1"].as_u64().unwrap() as f64 / labels.len() as f64;
        assert_eq!(report.top1, want_top1);
    }
}
