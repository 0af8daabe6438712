//! The mask generator against the transcription of the official `ImageFolderMask`
//! (tests/reference/pretrain_reference.py, Python `random`/numpy, 20,000 masks per setting):
//! masked-count distribution, unmasked fraction, number of rectangles, per-cell frequencies.
//! Different random streams, so every statistic must agree within 5 standard errors.

use pretrain::mask::{MaskConfig, MaskGenerator, MaskShape};
use rand::SeedableRng;
use serde_json::Value;

const SAMPLES: usize = 20_000;

fn goldens() -> Vec<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/mask_stats.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

struct Stats {
    count_mean: f64,
    count_var: f64,
    count_m4: f64,
    count_hist: Vec<f64>,
    frac_unmasked: f64,
    blocks_mean: f64,
    blocks_var: f64,
    blocks_hist: Vec<f64>,
    cell_freq: Vec<f64>,
}

fn moments(x: &[f64]) -> (f64, f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    let m4 = x.iter().map(|v| (v - mean).powi(4)).sum::<f64>() / n;
    (mean, var, m4)
}

fn histogram(x: &[usize], n: usize) -> Vec<f64> {
    let mut h = vec![0.0; n];
    for &v in x {
        h[v] += 1.0;
    }
    h
}

fn rust_stats(gen: &MaskGenerator, seed: u64) -> (Stats, Vec<usize>, Vec<f64>) {
    let (h, w) = gen.grid();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut counts = Vec::with_capacity(SAMPLES);
    let mut blocks = Vec::with_capacity(SAMPLES);
    let mut targets = Vec::with_capacity(SAMPLES);
    let mut cell = vec![0.0; h * w];
    for _ in 0..SAMPLES {
        let d = gen.sample_with_stats(0, &mut rng);
        assert_eq!(d.mask.len(), h * w);
        counts.push(d.count());
        blocks.push(d.blocks);
        targets.push(d.target);
        for (c, m) in cell.iter_mut().zip(&d.mask) {
            *c += f64::from(u8::from(*m));
        }
    }
    let c: Vec<f64> = counts.iter().map(|&v| v as f64).collect();
    let b: Vec<f64> = blocks.iter().map(|&v| v as f64).collect();
    let (count_mean, count_var, count_m4) = moments(&c);
    let (blocks_mean, blocks_var, _) = moments(&b);
    let max_blocks = blocks.iter().copied().max().unwrap_or(0);
    let stats = Stats {
        count_mean,
        count_var,
        count_m4,
        count_hist: histogram(&counts, h * w + 1),
        frac_unmasked: counts.iter().filter(|&&v| v == 0).count() as f64 / SAMPLES as f64,
        blocks_mean,
        blocks_var,
        blocks_hist: histogram(&blocks, max_blocks + 1),
        cell_freq: cell.iter().map(|v| v / SAMPLES as f64).collect(),
    };
    (stats, counts, targets)
}

/// Two proportions from independent samples of sizes n1, n2 agree within `k` standard errors
/// (plus one count, so that a bin seen once on one side only is not a failure).
fn proportions_agree(p1: f64, p2: f64, n1: f64, n2: f64, k: f64) -> bool {
    let pooled = (p1 * n1 + p2 * n2) / (n1 + n2);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)).sqrt();
    (p1 - p2).abs() <= k * se + 1.0 / n1.min(n2)
}

#[test]
fn generator_matches_the_official_distribution() {
    let cases = goldens();
    assert_eq!(cases.len(), 9);
    for (i, case) in cases.iter().enumerate() {
        let name = case["name"].as_str().unwrap();
        let grid = case["grid"].as_array().unwrap();
        let (h, w) = (
            grid[0].as_u64().unwrap() as usize,
            grid[1].as_u64().unwrap() as usize,
        );
        let cfg = MaskConfig {
            shape: serde_json::from_value(case["shape"].clone()).unwrap(),
            pred_ratio: floats(&case["ratio"]),
            pred_ratio_var: floats(&case["var"]),
            pred_aspect_ratio: (0.3, 1.0 / 0.3),
            pred_start_epoch: 0,
        };
        let gen = MaskGenerator::new(&cfg, (h, w)).unwrap();
        let (ours, counts, targets) = rust_stats(&gen, 100 + i as u64);
        let np = case["samples"].as_f64().unwrap();
        let nr = SAMPLES as f64;
        let f = |k: &str| case[k].as_f64().unwrap();

        // Mean and variance of the masked count.
        let se_mean = (f("count_var") / np + ours.count_var / nr).sqrt();
        assert!(
            (ours.count_mean - f("count_mean")).abs() <= 5.0 * se_mean + 1e-12,
            "{name}: mean count {} vs {} (se {se_mean})",
            ours.count_mean,
            f("count_mean")
        );
        let var_p = f("count_var");
        let se_var = ((f("count_m4") - var_p * var_p) / np
            + (ours.count_m4 - ours.count_var.powi(2)) / nr)
            .max(0.0)
            .sqrt();
        assert!(
            (ours.count_var - var_p).abs() <= 5.0 * se_var + 1e-9,
            "{name}: count variance {} vs {var_p} (se {se_var})",
            ours.count_var
        );
        assert!(
            proportions_agree(ours.frac_unmasked, f("frac_unmasked"), nr, np, 5.0),
            "{name}: unmasked fraction {} vs {}",
            ours.frac_unmasked,
            f("frac_unmasked")
        );
        // Whole distributions: masked counts, rectangles per mask, per-cell frequencies.
        let hist_p = floats(&case["count_hist"]);
        assert_eq!(hist_p.len(), h * w + 1);
        for (c, (a, b)) in ours.count_hist.iter().zip(&hist_p).enumerate() {
            assert!(
                proportions_agree(a / nr, b / np, nr, np, 5.0),
                "{name}: P(count = {c}) {} vs {}",
                a / nr,
                b / np
            );
        }
        let blocks_p = floats(&case["blocks_hist"]);
        let bins = blocks_p.len().max(ours.blocks_hist.len());
        for k in 0..bins {
            let a = ours.blocks_hist.get(k).copied().unwrap_or(0.0) / nr;
            let b = blocks_p.get(k).copied().unwrap_or(0.0) / np;
            assert!(
                proportions_agree(a, b, nr, np, 5.0),
                "{name}: P({k} blocks) {a} vs {b}"
            );
        }
        let se_blocks = (f("blocks_var") / np + ours.blocks_var / nr).sqrt();
        assert!(
            (ours.blocks_mean - f("blocks_mean")).abs() <= 5.0 * se_blocks + 1e-12,
            "{name}: mean blocks {} vs {}",
            ours.blocks_mean,
            f("blocks_mean")
        );
        let cells_p = floats(&case["cell_freq"]);
        for (c, (a, b)) in ours.cell_freq.iter().zip(&cells_p).enumerate() {
            assert!(
                proportions_agree(*a, *b, nr, np, 5.0),
                "{name}: P(cell {c} masked) {a} vs {b}"
            );
        }
        // Invariants of the official loops.
        for (c, t) in counts.iter().zip(&targets) {
            assert!(*c as f64 <= *t + 1e-9, "{name}: {c} masked for target {t}");
            if cfg.shape == MaskShape::Rand {
                assert_eq!(*c, *t as usize, "{name}: rand masks exactly floor(target)");
            }
        }
        if name.starts_with("rand_fixed") {
            let want = f("count_mean") as usize;
            assert!(
                counts.iter().all(|&c| c == want),
                "{name}: count {want} every time"
            );
            assert_eq!(want, if h == 14 { 58 } else { 10 });
        }
    }
}

#[test]
fn ratio_is_zero_before_the_start_epoch() {
    let mut cfg = MaskConfig::readme();
    cfg.pred_ratio = vec![0.5];
    cfg.pred_ratio_var = vec![0.1];
    cfg.pred_start_epoch = 3;
    let gen = MaskGenerator::new(&cfg, (14, 14)).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    for epoch in 0..3 {
        let d = gen.sample_with_stats(epoch, &mut rng);
        assert_eq!((d.ratio, d.count()), (0.0, 0));
    }
    let d = gen.sample_with_stats(3, &mut rng);
    assert!((0.4..=0.6).contains(&d.ratio) && d.count() > 0);
}

#[test]
fn config_validation_and_serde() {
    let readme = MaskConfig::readme();
    readme.validate().unwrap();
    assert_eq!(readme.shape, MaskShape::Block);
    assert_eq!(
        (readme.pred_ratio.clone(), readme.pred_ratio_var.clone()),
        (vec![0.0, 0.3], vec![0.0, 0.2])
    );

    let cfg: MaskConfig =
        serde_json::from_str(r#"{"shape": "rand", "pred_ratio": [0.7], "pred_ratio_var": [0.05]}"#)
            .unwrap();
    assert_eq!(cfg.shape, MaskShape::Rand);
    assert_eq!(cfg.pred_aspect_ratio, (0.3, 1.0 / 0.3));
    assert_eq!(cfg.pred_start_epoch, 0);
    assert!(serde_json::from_str::<MaskConfig>(
        r#"{"shape": "block", "pred_ratio": [0.3], "pred_ratio_var": [0.0], "ratio": 1}"#
    )
    .is_err());
    assert!(serde_json::from_str::<MaskConfig>(
        r#"{"shape": "blocks", "pred_ratio": [0.3], "pred_ratio_var": [0.0]}"#
    )
    .is_err());

    let bad = |ratio: Vec<f64>, var: Vec<f64>| {
        let cfg = MaskConfig {
            pred_ratio: ratio,
            pred_ratio_var: var,
            ..MaskConfig::readme()
        };
        let err = cfg.validate().unwrap_err().to_string();
        assert!(MaskGenerator::new(&cfg, (14, 14)).is_err());
        err
    };
    assert!(bad(vec![0.1], vec![0.2]).contains("smaller than its variance"));
    assert!(bad(vec![1.0], vec![0.0]).contains("[0, 1)"));
    assert!(bad(vec![-0.1], vec![0.0]).contains("[0, 1)"));
    assert!(bad(vec![0.8], vec![0.3]).contains("exceeds 1"));
    assert!(bad(vec![0.0, 0.3, 0.5], vec![0.0, 0.2]).contains("3 values but pred_ratio_var has 2"));
    assert!(bad(vec![], vec![0.0]).contains("empty"));
    assert!(bad(vec![0.3], vec![]).contains("empty"));
    assert!(bad(vec![0.3], vec![f64::NAN]).contains("≥ 0"));
    // One variance is replicated across several ratios.
    let cfg = MaskConfig {
        pred_ratio: vec![0.2, 0.4],
        pred_ratio_var: vec![0.1],
        ..MaskConfig::readme()
    };
    cfg.validate().unwrap();
    let cfg = MaskConfig {
        pred_aspect_ratio: (0.0, 2.0),
        ..MaskConfig::readme()
    };
    assert!(cfg.validate().unwrap_err().to_string().contains("aspect"));
    assert!(MaskGenerator::new(&MaskConfig::readme(), (0, 14)).is_err());
}
