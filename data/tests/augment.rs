//! Parity of the fine-tuning and segmentation augmentations with timm 1.0, Pillow 13, torchvision
//! and OpenCV on the goldens written by tests/reference/data_augment_reference.py, plus distribution
//! checks of the random drivers.
//!
//! Tolerances: every uint8 image (RandAugment ops and chains, rotate/affine with every filter,
//! RandomCrop with padding, OpenCV HSV conversions, PhotoMetricDistortion) must be byte-identical;
//! erasing and CutMix boxes must be identical; float tensors (eval/train pipelines, Mixup images and
//! soft targets) must match within 1e-6 absolute.

use std::collections::VecDeque;
use std::io::Read;
use std::path::PathBuf;
use std::sync::OnceLock;

use image::RgbImage;
use serde_json::Value;

use data::transforms::{Interpolation, IMAGENET_MEAN};

struct Goldens {
    meta: Value,
    blob: Vec<u8>,
}

fn goldens() -> &'static Goldens {
    static G: OnceLock<Goldens> = OnceLock::new();
    G.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/goldens/augment");
        let meta: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("augment.json")).unwrap())
                .unwrap();
        let mut blob = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(dir.join("augment.bin.gz")).unwrap())
            .read_to_end(&mut blob)
            .unwrap();
        Goldens { meta, blob }
    })
}

impl Goldens {
    fn bytes(&self, spec: &Value) -> &[u8] {
        let off = spec["offset"].as_u64().unwrap() as usize;
        let len = spec["len"].as_u64().unwrap() as usize;
        &self.blob[off..off + len]
    }

    fn shape(spec: &Value) -> Vec<usize> {
        spec["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect()
    }

    fn image(&self, spec: &Value) -> RgbImage {
        assert_eq!(spec["dtype"], "u8");
        let s = Self::shape(spec);
        assert_eq!(s.len(), 3);
        RgbImage::from_raw(s[1] as u32, s[0] as u32, self.bytes(spec).to_vec()).unwrap()
    }

    fn f32s(&self, spec: &Value) -> Vec<f32> {
        assert_eq!(spec["dtype"], "f32");
        self.bytes(spec)
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    fn f64s(&self, spec: &Value) -> Vec<f64> {
        assert_eq!(spec["dtype"], "f64");
        self.bytes(spec)
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    fn input(&self, name: &str) -> RgbImage {
        self.image(&self.meta["inputs"][name])
    }

    fn cases(&self, op: &str) -> Vec<&Value> {
        let found: Vec<&Value> = self.meta["cases"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["op"] == op)
            .collect();
        assert!(!found.is_empty(), "no golden cases for {op}");
        found
    }
}

/// Differing bytes and the largest difference between two images of the same size.
fn image_diff(a: &RgbImage, b: &RgbImage) -> (usize, u8) {
    assert_eq!(a.dimensions(), b.dimensions(), "image sizes");
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .fold((0, 0), |(n, m), (&x, &y)| {
            let d = x.abs_diff(y);
            (n + (d > 0) as usize, m.max(d))
        })
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Runs `check` on every case and fails once with all mismatches listed.
fn check_all(op: &str, mut check: impl FnMut(&Value) -> Option<String>) {
    let cases = goldens().cases(op);
    let failures: Vec<String> = cases.iter().filter_map(|c| check(c)).collect();
    assert!(
        failures.is_empty(),
        "{} of {} {op} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn image_case(c: &Value, actual: &RgbImage) -> Option<String> {
    let expected = goldens().image(&c["out"]);
    let (n, m) = image_diff(actual, &expected);
    (n > 0).then(|| format!("{}: {n} bytes differ, max {m}", c["params"]))
}

fn filter(name: &str) -> Interpolation {
    name.parse().unwrap()
}

fn fill(v: &Value) -> [u8; 3] {
    if v.is_null() {
        [0, 0, 0]
    } else {
        let a = v.as_array().unwrap();
        [0, 1, 2].map(|i| a[i].as_u64().unwrap() as u8)
    }
}

mod randaugment {
    use super::*;
    use data::randaugment::{apply_op, RaDrawSource, RaHparams, RaOp, RandAugment};

    fn hparams() -> RaHparams {
        RaHparams::timm_train(32, IMAGENET_MEAN, Interpolation::Bicubic)
    }

    /// timm's draws replaced by the golden's script: `np.random.choice` returns the named ops,
    /// Python's `random` pops scripted values (records the kind of each call).
    pub struct Scripted {
        pub ops: VecDeque<usize>,
        pub values: VecDeque<f64>,
        pub calls: Vec<&'static str>,
    }

    impl Scripted {
        pub fn new(c: &Value) -> Self {
            let p = &c["params"];
            let ops = p["ops"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| {
                    let op = RaOp::from_name(n.as_str().unwrap()).unwrap();
                    RaOp::INCREASING.iter().position(|&o| o == op).unwrap()
                })
                .collect();
            let values = p["script"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            Scripted {
                ops,
                values,
                calls: Vec::new(),
            }
        }

        /// The scripted calls must be exactly the ones timm made.
        pub fn check_calls(&self, c: &Value) -> Option<String> {
            let expected: Vec<&str> = c["params"]["calls"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            (self.calls != expected || !self.values.is_empty()).then(|| {
                format!(
                    "{}: draws {:?}, timm made {expected:?}",
                    c["params"], self.calls
                )
            })
        }
    }

    impl RaDrawSource for Scripted {
        fn choose(&mut self, n: usize) -> usize {
            assert_eq!(n, 15);
            self.ops.pop_front().unwrap()
        }
        fn unit(&mut self) -> f64 {
            self.calls.push("random");
            self.values.pop_front().unwrap()
        }
        fn gauss(&mut self, _mu: f64, _sigma: f64) -> f64 {
            self.calls.push("gauss");
            self.values.pop_front().unwrap()
        }
    }

    #[test]
    fn every_op_matches_timm_and_pillow() {
        let g = goldens();
        let hp = hparams();
        assert_eq!(hp.img_mean, [124, 116, 104]);
        assert_eq!(hp.translate_const, 14);
        let mut checked = std::collections::HashSet::new();
        check_all("ra_op", |c| {
            let p = &c["params"];
            let op = RaOp::from_name(p["name"].as_str().unwrap()).unwrap();
            checked.insert(op);
            let img = g.input(p["input"].as_str().unwrap());
            let out = apply_op(
                &img,
                op,
                p["magnitude"].as_f64().unwrap(),
                p["negate"].as_bool().unwrap(),
                &hp,
            );
            image_case(c, &out)
        });
        assert_eq!(
            checked.len(),
            RaOp::INCREASING.len(),
            "every op has goldens"
        );
    }

    #[test]
    fn chains_match_timm_rand_augment() {
        let g = goldens();
        let ra = RandAugment::finetune(32, IMAGENET_MEAN, Interpolation::Bicubic);
        check_all("ra_chain", |c| {
            let mut src = Scripted::new(c);
            let draws = ra.draw(&mut src);
            if let Some(e) = src.check_calls(c) {
                return Some(e);
            }
            let img = g.input(c["params"]["input"].as_str().unwrap());
            image_case(c, &ra.apply_draws(&img, &draws))
        });
    }

    #[test]
    fn config_strings() {
        let hp = hparams();
        let ra = RandAugment::from_config("rand-m9-mstd0.5-inc1", hp.clone()).unwrap();
        assert_eq!(
            ra,
            RandAugment::finetune(32, IMAGENET_MEAN, Interpolation::Bicubic)
        );
        assert_eq!(ra.magnitude, 9.0);
        assert_eq!(ra.num_layers, 2);
        assert_eq!(ra.prob, 0.5);
        assert_eq!(ra.magnitude_max, 10.0);
        assert_eq!(ra.noise, data::randaugment::MagnitudeNoise::Gaussian(0.5));
        assert_eq!(ra.ops, RaOp::INCREASING.to_vec());
        let ra =
            RandAugment::from_config("rand-m7-n3-mstd101-mmax12-p0.3-inc1", hp.clone()).unwrap();
        assert_eq!(
            (ra.magnitude, ra.num_layers, ra.prob, ra.magnitude_max),
            (7.0, 3, 0.3, 12.0)
        );
        assert_eq!(ra.noise, data::randaugment::MagnitudeNoise::Uniform);
        assert!(RandAugment::from_config("rand-m9-mstd0.5", hp.clone()).is_err());
        assert!(RandAugment::from_config("augmix-m5", hp.clone()).is_err());
        assert!(RandAugment::from_config("rand-m9-x3-inc1", hp).is_err());
    }

    /// 200k draws of the recipe: op frequencies, apply rate, magnitude moments, sign rate.
    #[test]
    fn driver_distribution() {
        let ra = RandAugment::finetune(224, IMAGENET_MEAN, Interpolation::Bicubic);
        let mut rng = data::augment::sample_rng(1, 0, 0);
        let n_images = 100_000;
        let mut counts = [0usize; 15];
        let (mut applied, mut signed, mut negated) = (0usize, 0usize, 0usize);
        let (mut sum, mut sum2, mut at_max) = (0.0f64, 0.0f64, 0usize);
        for _ in 0..n_images {
            let draws = ra.draw(&mut rng);
            assert_eq!(draws.len(), 2);
            for d in draws {
                counts[RaOp::INCREASING.iter().position(|&o| o == d.op).unwrap()] += 1;
                if d.applied {
                    applied += 1;
                    assert!((0.0..=10.0).contains(&d.magnitude));
                    sum += d.magnitude;
                    sum2 += d.magnitude * d.magnitude;
                    at_max += (d.magnitude == 10.0) as usize;
                    if d.op.takes_sign() {
                        signed += 1;
                        negated += d.negate as usize;
                    } else {
                        assert!(!d.negate);
                    }
                }
            }
        }
        let slots = 2 * n_images;
        let within = |x: usize, n: usize, p: f64| {
            let sd = (n as f64 * p * (1.0 - p)).sqrt();
            (x as f64 - n as f64 * p).abs() < 5.0 * sd
        };
        for (op, &k) in RaOp::INCREASING.iter().zip(&counts) {
            assert!(within(k, slots, 1.0 / 15.0), "{op:?} drawn {k} of {slots}");
        }
        assert!(within(applied, slots, 0.5), "applied {applied} of {slots}");
        assert!(
            within(negated, signed, 0.5),
            "negated {negated} of {signed}"
        );
        let mean = sum / applied as f64;
        let sd = (sum2 / applied as f64 - mean * mean).sqrt();
        // N(9, 0.5) clipped at 10: mean 9 − 0.0042, sd 0.491, P(10) = 2.28 %.
        assert!((mean - 8.9958).abs() < 0.006, "magnitude mean {mean}");
        assert!((sd - 0.491).abs() < 0.006, "magnitude sd {sd}");
        assert!(
            within(at_max, applied, 0.02275),
            "{at_max} of {applied} at 10"
        );
    }
}

mod geometry {
    use super::*;
    use data::pil_geometry::{affine, rotate};

    #[test]
    fn rotate_matches_pillow() {
        let g = goldens();
        check_all("rotate", |c| {
            let p = &c["params"];
            let img = g.input(p["input"].as_str().unwrap());
            let out = rotate(
                &img,
                p["angle"].as_f64().unwrap(),
                filter(p["filter"].as_str().unwrap()),
                fill(&p["fill"]),
            );
            image_case(c, &out)
        });
    }

    #[test]
    fn affine_matches_pillow() {
        let g = goldens();
        check_all("affine", |c| {
            let p = &c["params"];
            let img = g.input(p["input"].as_str().unwrap());
            let d: Vec<f64> = p["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let out = affine(
                &img,
                img.width(),
                img.height(),
                [d[0], d[1], d[2], d[3], d[4], d[5]],
                filter(p["filter"].as_str().unwrap()),
                fill(&p["fill"]),
            );
            image_case(c, &out)
        });
    }
}

mod erasing {
    use super::*;
    use data::erasing::{EraseBox, EraseDraws, EraseMode, RandomErasing};

    /// Python's `random` as the golden script drives it: unit draws mapped with CPython's formulas.
    struct Scripted {
        values: VecDeque<f64>,
        calls: Vec<&'static str>,
    }

    impl EraseDraws for Scripted {
        fn unit(&mut self) -> f64 {
            self.calls.push("random");
            self.values.pop_front().unwrap()
        }
        fn uniform(&mut self, a: f64, b: f64) -> f64 {
            self.calls.push("uniform");
            a + (b - a) * self.values.pop_front().unwrap()
        }
        fn randint(&mut self, a: i64, b: i64) -> i64 {
            self.calls.push("randint");
            a + (self.values.pop_front().unwrap() * (b - a + 1) as f64) as i64
        }
    }

    #[test]
    fn regions_match_timm() {
        check_all("erasing", |c| {
            let p = &c["params"];
            let mut er = RandomErasing::finetune();
            if let Some(m) = p["max_count"].as_u64() {
                er.max_count = m as usize;
            }
            let mut s = Scripted {
                values: p["script"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect(),
                calls: Vec::new(),
            };
            let (h, w) = (
                p["h"].as_u64().unwrap() as usize,
                p["w"].as_u64().unwrap() as usize,
            );
            let boxes = er.regions(h, w, &mut s);
            let expected: Vec<EraseBox> = c["boxes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| {
                    let v: Vec<usize> = b
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_u64().unwrap() as usize)
                        .collect();
                    EraseBox {
                        top: v[0],
                        left: v[1],
                        height: v[2],
                        width: v[3],
                    }
                })
                .collect();
            let calls: Vec<&str> = p["calls"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            (boxes != expected || s.calls != calls || !s.values.is_empty()).then(|| {
                format!(
                    "{h}x{w} {:?}: boxes {boxes:?} vs {expected:?}, calls {:?} vs {calls:?}",
                    p["max_count"], s.calls
                )
            })
        });
    }

    #[test]
    fn pixel_mode_fills_only_the_box_with_normal_values() {
        let er = RandomErasing::finetune();
        let (h, w) = (64, 48);
        let mut rng = data::augment::sample_rng(3, 0, 0);
        let (mut erased, mut total, mut area, mut values) = (0usize, 0usize, 0.0f64, Vec::new());
        for _ in 0..4000 {
            let mut img = vec![7.0f32; 3 * h * w];
            let boxes = er.apply(&mut img, 3, h, w, &mut rng);
            total += 1;
            assert!(boxes.len() <= 1);
            if let Some(b) = boxes.first() {
                erased += 1;
                assert!(b.top + b.height <= h && b.left + b.width <= w);
                area += (b.height * b.width) as f64 / (h * w) as f64;
                let inside = |y: usize, x: usize| {
                    y >= b.top && y < b.top + b.height && x >= b.left && x < b.left + b.width
                };
                for c in 0..3 {
                    for y in 0..h {
                        for x in 0..w {
                            let v = img[(c * h + y) * w + x];
                            if inside(y, x) {
                                values.push(v as f64);
                            } else {
                                assert_eq!(v, 7.0);
                            }
                        }
                    }
                }
            } else {
                assert!(img.iter().all(|&v| v == 7.0));
            }
        }
        let p = erased as f64 / total as f64;
        assert!(
            (p - 0.25).abs() < 5.0 * (0.25 * 0.75 / total as f64).sqrt(),
            "erased {p}"
        );
        // Mean target fraction is (0.02 + 1/3) / 2 before rounding and rejection.
        let mean_area = area / erased as f64;
        assert!((0.12..0.2).contains(&mean_area), "mean area {mean_area}");
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        assert!(
            mean.abs() < 0.01 && (var - 1.0).abs() < 0.01,
            "N(0,1): {mean} {var}"
        );
        let mut img = vec![1.0f32; 3 * 4 * 4];
        RandomErasing {
            mode: EraseMode::Const,
            probability: 1.0,
            ..RandomErasing::finetune()
        }
        .fill(
            &mut img,
            3,
            4,
            4,
            &[EraseBox {
                top: 1,
                left: 2,
                height: 2,
                width: 1,
            }],
            &mut rng,
        );
        assert_eq!(img.iter().filter(|&&v| v == 0.0).count(), 6);
    }
}

mod mixup {
    use super::*;
    use data::mixup::{cutmix_bbox_and_lam, mix_batch, mixup_target, rand_bbox, MixDraw, Mixup};

    fn usizes(v: &Value) -> Vec<usize> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect()
    }

    #[test]
    fn targets_match_timm() {
        let g = goldens();
        let mut worst = 0.0f32;
        check_all("mixup_target", |c| {
            let p = &c["params"];
            let t = mixup_target(
                &usizes(&p["labels"]),
                p["num_classes"].as_u64().unwrap() as usize,
                p["lam"].as_f64().unwrap(),
                p["smoothing"].as_f64().unwrap(),
            );
            let d = max_abs_diff(&t, &g.f32s(&c["out"]));
            worst = worst.max(d);
            (d > 1e-6).then(|| format!("{p}: max diff {d}"))
        });
        eprintln!("mixup_target worst |diff| = {worst:e}");
    }

    #[test]
    fn boxes_match_timm() {
        let g = goldens();
        check_all("rand_bbox", |c| {
            let p = &c["params"];
            let n = |k: &str| p[k].as_u64().unwrap() as usize;
            let lam = p["lam"].as_f64().unwrap();
            let b = rand_bbox(n("h"), n("w"), lam, n("cy"), n("cx"));
            let (b2, lam2) = cutmix_bbox_and_lam(n("h"), n("w"), lam, n("cy"), n("cx"), true);
            let expected = usizes(&c["box"]);
            let got = vec![b.yl, b.yh, b.xl, b.xh];
            let exp_lam = g.f64s(&c["lam"])[0];
            (got != expected || b2 != b || lam2 != exp_lam)
                .then(|| format!("{p}: {got:?} λ {lam2} vs {expected:?} λ {exp_lam}"))
        });
    }

    #[test]
    fn batch_mixing_matches_timm() {
        let g = goldens();
        let x0 = g.f32s(&g.meta["inputs"]["mix_batch"]);
        let shape = [4, 3, 9, 11];
        let mut worst = 0.0f32;
        check_all("mix_batch", |c| {
            let p = &c["params"];
            let lam = p["lam"].as_f64().unwrap();
            let draw = if p["cutmix"].as_bool().unwrap() {
                MixDraw::Cutmix {
                    lam,
                    cy: p["cy"].as_u64().unwrap() as usize,
                    cx: p["cx"].as_u64().unwrap() as usize,
                }
            } else {
                MixDraw::Mixup { lam }
            };
            let mut x = x0.clone();
            let lam = mix_batch(&mut x, shape, &draw, true);
            let t = mixup_target(&usizes(&p["labels"]), 6, lam, 0.1);
            let di = max_abs_diff(&x, &g.f32s(&c["images"]));
            let dt = max_abs_diff(&t, &g.f32s(&c["targets"]));
            worst = worst.max(di).max(dt);
            (di > 1e-6 || dt > 1e-6).then(|| format!("{p}: images {di}, targets {dt}"))
        });
        eprintln!("mix_batch worst |diff| = {worst:e}");
    }

    #[test]
    fn driver_distribution_and_errors() {
        let m = Mixup::finetune(10);
        let mut rng = data::augment::sample_rng(9, 0, 0);
        let n = 100_000;
        let (mut cut, mut mix) = (Vec::new(), Vec::new());
        for _ in 0..n {
            match m.draw(16, 12, &mut rng) {
                MixDraw::Cutmix { lam, cy, cx } => {
                    assert!(cy < 16 && cx < 12);
                    cut.push(lam)
                }
                MixDraw::Mixup { lam } => mix.push(lam),
                MixDraw::None => panic!("prob 1 always mixes"),
            }
        }
        let p = cut.len() as f64 / n as f64;
        assert!(
            (p - 0.5).abs() < 5.0 * (0.25 / n as f64).sqrt(),
            "cutmix share {p}"
        );
        let moments = |v: &[f64]| {
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
            (mean, var)
        };
        // Beta(0.8, 0.8): mean 1/2, var 0.64 / (2.56 · 2.6); Beta(1, 1): var 1/12.
        let (mm, mv) = moments(&mix);
        assert!(
            (mm - 0.5).abs() < 0.006 && (mv - 0.096154).abs() < 0.003,
            "{mm} {mv}"
        );
        let (cm, cv) = moments(&cut);
        assert!(
            (cm - 0.5).abs() < 0.006 && (cv - 1.0 / 12.0).abs() < 0.003,
            "{cm} {cv}"
        );

        let mut x = vec![0.0f32; 3 * 3 * 4 * 4];
        assert!(m.apply(&mut x, [3, 3, 4, 4], &[0, 1, 2], &mut rng).is_err());
        let mut x = vec![0.0f32; 2 * 3 * 4 * 4];
        assert!(m.apply(&mut x, [2, 3, 4, 4], &[0, 10], &mut rng).is_err());
        let (t, _) = m.apply(&mut x, [2, 3, 4, 4], &[0, 9], &mut rng).unwrap();
        assert_eq!(t.len(), 20);
        for row in t.chunks(10) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }
}

mod finetune {
    use super::*;
    use data::augment::{sample_rng, RandomResizedCrop, Transform};
    use data::finetune_transform::{
        random_crop_padded, FinetuneEvalTransform, FinetuneTrainTransform, TrainCrop, TrainDraws,
    };
    use data::loader::{InMemory, Loader, LoaderConfig};
    use data::randaugment::RandAugment;
    use data::transforms::{write_normalized_chw, IMAGENET_STD};

    #[test]
    fn padded_random_crop_matches_torchvision() {
        let g = goldens();
        check_all("random_crop_pad", |c| {
            let p = &c["params"];
            let n = |k: &str| p[k].as_u64().unwrap() as u32;
            let img = g.input(p["input"].as_str().unwrap());
            let out = random_crop_padded(&img, n("size"), n("padding"), n("top"), n("left"));
            image_case(c, &out)
        });
    }

    #[test]
    fn eval_matches_torchvision() {
        let g = goldens();
        let mut worst = 0.0f32;
        check_all("eval", |c| {
            let p = &c["params"];
            let size = p["size"].as_u64().unwrap() as u32;
            let resize = p["resize"].as_u64().map(|r| r as u32);
            let interpolation = filter(p["interpolation"].as_str().unwrap());
            let t = FinetuneEvalTransform {
                size,
                resize,
                interpolation,
                ..FinetuneEvalTransform::beit(size)
            };
            // The goldens resize small images (to stay small); the recipes' formula, not their
            // "no resize at <= 32 px" rule, is what is checked here.
            if let Some(r) = resize {
                assert_eq!(r, (size as f64 / (224.0 / 256.0)) as u32);
            }
            let img = g.input(p["input"].as_str().unwrap());
            let mut out = vec![0f32; 3 * (size * size) as usize];
            t.apply_into(&img, &mut out);
            let d = max_abs_diff(&out, &g.f32s(&c["out"]));
            worst = worst.max(d);
            (d > 1e-6).then(|| format!("{p}: max diff {d}"))
        });
        eprintln!("eval worst |diff| = {worst:e}");
        assert_eq!(
            FinetuneEvalTransform::beit(384).resize,
            Some(384),
            "crop_pct 1.0 from 384 px"
        );
        assert_eq!(FinetuneEvalTransform::semisup(224).resize, Some(256));
        assert_eq!(FinetuneEvalTransform::beit(224).resize, Some(256));
        assert_eq!(
            FinetuneEvalTransform::beit(224).interpolation,
            Interpolation::Bilinear
        );
        assert_eq!(
            FinetuneEvalTransform::semisup(224).interpolation,
            Interpolation::Bicubic
        );
    }

    #[test]
    fn train_with_explicit_draws_matches_timm() {
        let g = goldens();
        let mut worst = 0.0f32;
        check_all("train_explicit", |c| {
            let p = &c["params"];
            let size = p["size"].as_u64().unwrap() as u32;
            // The golden takes the RandomResizedCrop path at 24 px (the recipe would pad-crop there).
            let t = FinetuneTrainTransform {
                crop: TrainCrop::Resized(RandomResizedCrop::new(
                    size,
                    (0.08, 1.0),
                    Interpolation::Bicubic,
                )),
                ..FinetuneTrainTransform::new(size, Interpolation::Bicubic)
            };
            let b: Vec<u32> = p["box"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            // The golden's RandAugment hparams are those of a 24-px input, as here.
            let mut src = super::randaugment::Scripted::new(c);
            let ra_draws = t.rand_augment.as_ref().unwrap().draw(&mut src);
            if let Some(e) = src.check_calls(c) {
                return Some(e);
            }
            let d = TrainDraws {
                crop: (b[0], b[1], b[2], b[3]),
                flip: p["flip"].as_bool().unwrap(),
                rand_augment: ra_draws,
            };
            let img = g.input(p["input"].as_str().unwrap());
            let aug = t.apply_draws(&img, &d);
            let mut out = vec![0f32; 3 * (size * size) as usize];
            write_normalized_chw(&aug, t.mean, t.std, &mut out);
            let diff = max_abs_diff(&out, &g.f32s(&c["out"]));
            worst = worst.max(diff);
            (diff > 1e-6).then(|| format!("{p}: max diff {diff}"))
        });
        eprintln!("train_explicit worst |diff| = {worst:e}");
    }

    #[test]
    fn recipe_configuration() {
        let small = FinetuneTrainTransform::new(32, Interpolation::Bicubic);
        assert_eq!(
            small.crop,
            TrainCrop::Padded {
                size: 32,
                padding: 4
            }
        );
        let ra = small.rand_augment.as_ref().unwrap();
        assert_eq!(ra.hparams.translate_const, 14);
        assert_eq!(ra.hparams.img_mean, [124, 116, 104]);
        assert_eq!(small.erasing.as_ref().unwrap().probability, 0.25);
        assert_eq!((small.mean, small.std), (IMAGENET_MEAN, IMAGENET_STD));
        let big = FinetuneTrainTransform::new(224, Interpolation::Bicubic);
        match &big.crop {
            TrainCrop::Resized(rrc) => {
                assert_eq!(
                    (rrc.size, rrc.scale, rrc.ratio),
                    (224, (0.08, 1.0), (0.75, 4.0 / 3.0))
                );
                assert_eq!(rrc.interpolation, Interpolation::Bicubic);
            }
            other => panic!("expected RandomResizedCrop, got {other:?}"),
        }
        assert_eq!(
            big.rand_augment,
            Some(RandAugment::finetune(
                224,
                IMAGENET_MEAN,
                Interpolation::Bicubic
            ))
        );
        assert_eq!(
            big.rand_augment.as_ref().unwrap().hparams.translate_const,
            100
        );
        assert_eq!(FinetuneEvalTransform::beit(32).resize, None);
        assert_eq!(FinetuneEvalTransform::semisup(32).resize, None);
    }

    /// The loader drives both transforms; a (seed, epoch, index) triple reproduces a sample.
    #[test]
    fn loader_runs_the_finetune_transforms() {
        let g = goldens();
        let images: Vec<RgbImage> = (0..6)
            .map(|i| {
                let mut img = g.input("sq32");
                if i % 2 == 1 {
                    img = image::imageops::flip_vertical(&img);
                }
                img
            })
            .collect();
        let ds = std::sync::Arc::new(InMemory {
            labels: (0..6).collect(),
            images: images.clone(),
        });
        let train = FinetuneTrainTransform::new(32, Interpolation::Bicubic);
        let cfg = LoaderConfig {
            batch_size: 4,
            shuffle: true,
            seed: 17,
            threads: 2,
            ..LoaderConfig::default()
        };
        let loader = Loader::new(
            ds.clone(),
            Transform::FinetuneTrain(train.clone()),
            cfg.clone(),
        )
        .unwrap();
        let a: Vec<_> = loader.epoch(0).map(|b| b.unwrap()).collect();
        let b: Vec<_> = loader.epoch(0).map(|b| b.unwrap()).collect();
        assert_eq!(a, b, "same seed and epoch, same batches");
        assert_eq!(a[0].shape, [4, 3, 32, 32]);
        let first = &a[0];
        let idx = first.indices[0];
        let mut rng = sample_rng(17, 0, idx as u64);
        let mut out = vec![0f32; 3 * 32 * 32];
        train.apply_into(&images[idx], &mut rng, &mut out);
        assert_eq!(&first.images[..out.len()], &out[..]);
        let c = loader.epoch(1).next().unwrap().unwrap();
        assert_ne!(c.images, first.images, "another epoch, other draws");

        let eval = Loader::new(
            ds,
            Transform::FinetuneEval(FinetuneEvalTransform::beit(32)),
            LoaderConfig {
                batch_size: 6,
                ..LoaderConfig::default()
            },
        )
        .unwrap();
        let batch = eval.epoch(0).next().unwrap().unwrap();
        let mut expected = vec![0f32; 3 * 32 * 32];
        write_normalized_chw(&images[1], IMAGENET_MEAN, IMAGENET_STD, &mut expected);
        assert_eq!(&batch.images[3 * 32 * 32..2 * 3 * 32 * 32], &expected[..]);
    }

    #[test]
    fn train_draws_cover_the_pipeline() {
        let img = goldens().input("land");
        let t = FinetuneTrainTransform::new(40, Interpolation::Bicubic);
        let mut rng = sample_rng(2, 0, 0);
        let mut flips = 0;
        for _ in 0..2000 {
            let d = t.draw(img.width(), img.height(), &mut rng);
            let (top, left, h, w) = d.crop;
            assert!(top + h <= img.height() && left + w <= img.width());
            flips += d.flip as usize;
            assert_eq!(d.rand_augment.len(), 2);
        }
        assert!((800..1200).contains(&flips), "{flips} flips of 2000");
        let small = FinetuneTrainTransform::new(32, Interpolation::Bicubic);
        for _ in 0..500 {
            let (top, left, h, w) = small.draw(32, 32, &mut rng).crop;
            assert!(top <= 8 && left <= 8 && (h, w) == (32, 32));
        }
    }
}

mod photometric {
    use super::*;
    use data::photometric::{
        convert, hsv_to_rgb_image, rgb_to_hsv_image, CvHsvBackend, PhotoMetricDistortion,
        PhotoMetricDraws,
    };

    fn backend() -> CvHsvBackend {
        if goldens().meta["opencv_simd"]["avx2"].as_bool().unwrap() {
            CvHsvBackend::AVX2
        } else {
            CvHsvBackend::SSE4
        }
    }

    #[test]
    fn rgb_to_hsv_matches_opencv() {
        let g = goldens();
        check_all("cv_rgb2hsv", |c| {
            let img = g.input(c["params"]["input"].as_str().unwrap());
            let hsv = rgb_to_hsv_image(&img);
            let hsv = RgbImage::from_raw(img.width(), img.height(), hsv).unwrap();
            image_case(c, &hsv)
        });
    }

    #[test]
    fn hsv_to_rgb_matches_opencv() {
        let g = goldens();
        check_all("cv_hsv2rgb", |c| {
            let hsv = g.input(c["params"]["input"].as_str().unwrap());
            let out = hsv_to_rgb_image(hsv.as_raw(), hsv.width(), hsv.height(), backend());
            image_case(c, &out)
        });
        // The SIMD and scalar paths really differ on this input (70 = 2 blocks + 6 tail pixels).
        let hsv = g.input("hsv");
        let scalar = hsv_to_rgb_image(hsv.as_raw(), 70, 40, CvHsvBackend::SCALAR);
        let simd = hsv_to_rgb_image(hsv.as_raw(), 70, 40, CvHsvBackend::AVX2);
        assert!(image_diff(&scalar, &simd).0 > 0);
    }

    #[test]
    fn convert_matches_numpy() {
        let g = goldens();
        check_all("pmd_convert", |c| {
            let p = &c["params"];
            let (alpha, beta) = (p["alpha"].as_f64().unwrap(), p["beta"].as_f64().unwrap());
            let expected = g.bytes(&c["out"]);
            let got: Vec<u8> = (0..=255u8).map(|v| convert(v, alpha, beta)).collect();
            (got != expected).then(|| format!("{p}: {got:?}"))
        });
    }

    #[test]
    fn distortion_matches_mmseg() {
        let g = goldens();
        let pmd = PhotoMetricDistortion {
            backend: backend(),
            ..PhotoMetricDistortion::default()
        };
        check_all("photometric", |c| {
            let p = &c["params"];
            let d = PhotoMetricDraws {
                brightness: p["brightness"].as_f64(),
                contrast_first: p["mode"].as_u64().unwrap() == 1,
                contrast: p["contrast"].as_f64(),
                saturation: p["saturation"].as_f64(),
                hue: p["hue"].as_i64().map(|h| h as i32),
            };
            let img = g.input(p["input"].as_str().unwrap());
            image_case(c, &pmd.apply_draws(&img, &d))
        });
    }

    #[test]
    fn driver_distribution() {
        let pmd = PhotoMetricDistortion::default();
        let mut rng = data::augment::sample_rng(4, 0, 0);
        let n = 40_000;
        let mut counts = [0usize; 5];
        let mut hues = std::collections::BTreeSet::new();
        for _ in 0..n {
            let d = pmd.draw(&mut rng);
            if let Some(b) = d.brightness {
                assert!((-32.0..32.0).contains(&b));
                counts[0] += 1;
            }
            counts[1] += d.contrast_first as usize;
            if let Some(a) = d.contrast {
                assert!((0.5..1.5).contains(&a));
                counts[2] += 1;
            }
            if let Some(a) = d.saturation {
                assert!((0.5..1.5).contains(&a));
                counts[3] += 1;
            }
            if let Some(h) = d.hue {
                hues.insert(h);
                counts[4] += 1;
            }
        }
        for (k, &c) in counts.iter().enumerate() {
            let p = c as f64 / n as f64;
            assert!((p - 0.5).abs() < 0.0125, "step {k}: {p}");
        }
        assert_eq!(hues, (-18..18).collect(), "randint(-18, 18) excludes 18");
    }
}
