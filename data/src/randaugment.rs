//! timm RandAugment as the BEiT / DeiT fine-tuning recipes configure it (`--aa rand-m9-mstd0.5-inc1`).
//!
//! Transcribes timm 1.0 `data/auto_augment.py`: `rand_augment_transform` (config string parsing),
//! `RandAugment.__call__` (`num_layers` ops drawn uniformly *with* replacement), `AugmentOp.__call__`
//! (skip when a uniform draw exceeds `prob`; magnitude ~ N(m, mstd), or U(0, m) when mstd > 100;
//! clipped to [0, mmax or 10]), the `_*_level_to_arg` functions (with `_randomly_negate`: the sign flips
//! when a uniform draw exceeds 0.5) and the Pillow op functions; and the hparams
//! `transforms_imagenet_train` builds: `translate_const = int(0.45 · min(img_size))`,
//! `img_mean = round(255 · mean)` as the affine fill colour, the configured interpolation.
//!
//! Python's RNG cannot be reproduced, so every op is a pure function of `(op, magnitude, negate)`
//! ([`apply_op`]), and the random driver only draws those ([`RandAugment::draw`]); the goldens hold the
//! pure part to Pillow byte for byte.
//!
//! One deliberate departure: PosterizeIncreasing at magnitude 10 asks for `posterize(bits=0)`, which
//! Pillow 13 rejects with ValueError (crashing timm's pipeline about once per 660 images); we return
//! the black image older Pillow produced, as in the official runs.

use image::RgbImage;
use rand::Rng;
use rand_distr::{Distribution, Normal};

use crate::color;
use crate::pil::Interpolation;
use crate::pil_geometry;
use crate::pil_ops;

/// timm `_LEVEL_DENOM`: magnitudes are on a 0..10 scale.
const LEVEL_DENOM: f64 = 10.0;

/// The ops of timm's `_RAND_INCREASING_TRANSFORMS`, in timm's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RaOp {
    AutoContrast,
    Equalize,
    Invert,
    Rotate,
    PosterizeIncreasing,
    SolarizeIncreasing,
    SolarizeAdd,
    ColorIncreasing,
    ContrastIncreasing,
    BrightnessIncreasing,
    SharpnessIncreasing,
    ShearX,
    ShearY,
    TranslateXRel,
    TranslateYRel,
}

impl RaOp {
    /// `_RAND_INCREASING_TRANSFORMS` (the `inc1` set).
    pub const INCREASING: [RaOp; 15] = [
        RaOp::AutoContrast,
        RaOp::Equalize,
        RaOp::Invert,
        RaOp::Rotate,
        RaOp::PosterizeIncreasing,
        RaOp::SolarizeIncreasing,
        RaOp::SolarizeAdd,
        RaOp::ColorIncreasing,
        RaOp::ContrastIncreasing,
        RaOp::BrightnessIncreasing,
        RaOp::SharpnessIncreasing,
        RaOp::ShearX,
        RaOp::ShearY,
        RaOp::TranslateXRel,
        RaOp::TranslateYRel,
    ];

    /// timm's op name.
    pub fn name(self) -> &'static str {
        match self {
            RaOp::AutoContrast => "AutoContrast",
            RaOp::Equalize => "Equalize",
            RaOp::Invert => "Invert",
            RaOp::Rotate => "Rotate",
            RaOp::PosterizeIncreasing => "PosterizeIncreasing",
            RaOp::SolarizeIncreasing => "SolarizeIncreasing",
            RaOp::SolarizeAdd => "SolarizeAdd",
            RaOp::ColorIncreasing => "ColorIncreasing",
            RaOp::ContrastIncreasing => "ContrastIncreasing",
            RaOp::BrightnessIncreasing => "BrightnessIncreasing",
            RaOp::SharpnessIncreasing => "SharpnessIncreasing",
            RaOp::ShearX => "ShearX",
            RaOp::ShearY => "ShearY",
            RaOp::TranslateXRel => "TranslateXRel",
            RaOp::TranslateYRel => "TranslateYRel",
        }
    }

    pub fn from_name(name: &str) -> Option<RaOp> {
        RaOp::INCREASING.into_iter().find(|op| op.name() == name)
    }

    /// Whether the level function calls `_randomly_negate` (and so consumes a sign draw).
    pub fn takes_sign(self) -> bool {
        matches!(
            self,
            RaOp::Rotate
                | RaOp::ColorIncreasing
                | RaOp::ContrastIncreasing
                | RaOp::BrightnessIncreasing
                | RaOp::SharpnessIncreasing
                | RaOp::ShearX
                | RaOp::ShearY
                | RaOp::TranslateXRel
                | RaOp::TranslateYRel
        )
    }

    /// Whether the op has a level function at all (AutoContrast, Equalize, Invert do not).
    pub fn takes_level(self) -> bool {
        !matches!(self, RaOp::AutoContrast | RaOp::Equalize | RaOp::Invert)
    }
}

/// The hparams timm's ops read.
#[derive(Debug, Clone, PartialEq)]
pub struct RaHparams {
    /// Only used by the absolute TranslateX/Y ops, which the increasing set does not contain; kept
    /// because timm sets it.
    pub translate_const: u32,
    /// `_translate_rel_level_to_arg`'s `translate_pct` (default 0.45).
    pub translate_pct: f64,
    /// Fill colour of the affine ops (`img_mean`).
    pub img_mean: [u8; 3],
    pub interpolation: Interpolation,
}

impl RaHparams {
    /// `transforms_imagenet_train`'s `aa_params` for a square `img_size` and normalisation mean.
    pub fn timm_train(img_size: u32, mean: [f32; 3], interpolation: Interpolation) -> Self {
        RaHparams {
            translate_const: (img_size as f64 * 0.45) as u32,
            translate_pct: 0.45,
            img_mean: img_mean(mean),
            interpolation,
        }
    }
}

/// `tuple(min(255, round(255 * x)) for x in mean)` with Python's round-half-even on doubles.
pub fn img_mean(mean: [f32; 3]) -> [u8; 3] {
    // timm's mean constants are Python floats; the f32 values here are widened through their
    // shortest decimal form so that 0.485 stays 0.485.
    mean.map(|m| {
        let m: f64 = format!("{m}").parse().expect("float formats and parses");
        crate::transforms::round_half_even(255.0 * m).min(255) as u8
    })
}

/// An op's argument after timm's level function.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RaArg {
    None,
    /// Rotate: degrees, counter-clockwise.
    Degrees(f64),
    /// PosterizeIncreasing: bits kept.
    Bits(i64),
    /// SolarizeIncreasing: threshold (0..=256).
    Threshold(i64),
    /// SolarizeAdd: amount added below 128.
    Add(i64),
    /// Color/Contrast/Brightness/Sharpness: the blend factor.
    Factor(f64),
    /// ShearX/Y: the shear factor.
    Shear(f64),
    /// TranslateX/YRel: fraction of the width/height.
    Pct(f64),
}

/// timm `LEVEL_TO_ARG[op](magnitude, hparams)` with the sign draw made explicit (`negate` is what
/// `_randomly_negate` decided; ignored for ops without a sign). `magnitude` is the clipped value.
pub fn level_to_arg(op: RaOp, magnitude: f64, negate: bool, hp: &RaHparams) -> RaArg {
    let signed = |v: f64| if negate { -v } else { v };
    let level = magnitude / LEVEL_DENOM;
    match op {
        RaOp::AutoContrast | RaOp::Equalize | RaOp::Invert => RaArg::None,
        RaOp::Rotate => RaArg::Degrees(signed(level * 30.0)),
        RaOp::PosterizeIncreasing => RaArg::Bits(4 - (level * 4.0) as i64),
        RaOp::SolarizeIncreasing => RaArg::Threshold(256 - ((level * 256.0) as i64).min(256)),
        RaOp::SolarizeAdd => RaArg::Add(((level * 110.0) as i64).min(128)),
        RaOp::ColorIncreasing
        | RaOp::ContrastIncreasing
        | RaOp::BrightnessIncreasing
        | RaOp::SharpnessIncreasing => RaArg::Factor((1.0 + signed(level * 0.9)).max(0.1)),
        RaOp::ShearX | RaOp::ShearY => RaArg::Shear(signed(level * 0.3)),
        RaOp::TranslateXRel | RaOp::TranslateYRel => RaArg::Pct(signed(level * hp.translate_pct)),
    }
}

/// One op of timm's increasing set at an explicit (already clipped) magnitude and sign.
pub fn apply_op(
    img: &RgbImage,
    op: RaOp,
    magnitude: f64,
    negate: bool,
    hp: &RaHparams,
) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let affine =
        |data: [f64; 6]| pil_geometry::affine(img, w, h, data, hp.interpolation, hp.img_mean);
    match (op, level_to_arg(op, magnitude, negate, hp)) {
        (RaOp::AutoContrast, _) => pil_ops::autocontrast(img),
        (RaOp::Equalize, _) => pil_ops::equalize(img),
        (RaOp::Invert, _) => pil_ops::invert(img),
        (RaOp::Rotate, RaArg::Degrees(d)) => {
            pil_geometry::rotate(img, d, hp.interpolation, hp.img_mean)
        }
        (RaOp::PosterizeIncreasing, RaArg::Bits(b)) => pil_ops::posterize(img, b.max(0) as u32),
        (RaOp::SolarizeIncreasing, RaArg::Threshold(t)) => pil_ops::solarize(img, t),
        (RaOp::SolarizeAdd, RaArg::Add(a)) => pil_ops::solarize_add(img, a, 128),
        // ImageEnhance passes the factor to Image.blend as a C float.
        (RaOp::ColorIncreasing, RaArg::Factor(f)) => color::adjust_saturation(img, f as f32),
        (RaOp::ContrastIncreasing, RaArg::Factor(f)) => color::adjust_contrast(img, f as f32),
        (RaOp::BrightnessIncreasing, RaArg::Factor(f)) => color::adjust_brightness(img, f as f32),
        (RaOp::SharpnessIncreasing, RaArg::Factor(f)) => pil_ops::adjust_sharpness(img, f as f32),
        (RaOp::ShearX, RaArg::Shear(s)) => affine([1.0, s, 0.0, 0.0, 1.0, 0.0]),
        (RaOp::ShearY, RaArg::Shear(s)) => affine([1.0, 0.0, 0.0, s, 1.0, 0.0]),
        (RaOp::TranslateXRel, RaArg::Pct(p)) => affine([1.0, 0.0, p * w as f64, 0.0, 1.0, 0.0]),
        (RaOp::TranslateYRel, RaArg::Pct(p)) => affine([1.0, 0.0, 0.0, 0.0, 1.0, p * h as f64]),
        (op, arg) => unreachable!("level_to_arg gave {arg:?} for {op:?}"),
    }
}

/// The draws of one op slot: which op, whether it ran, its clipped magnitude and sign.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RaDraw {
    pub op: RaOp,
    pub applied: bool,
    pub magnitude: f64,
    pub negate: bool,
}

/// The draws RandAugment makes: `np.random.choice` over the ops and Python's `random.random()` /
/// `random.gauss()`. Implemented for every [`Rng`]; tests feed scripted values.
pub trait RaDrawSource {
    /// An index in `0..n`, uniformly.
    fn choose(&mut self, n: usize) -> usize;
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64;
    /// Normal with mean `mu` and standard deviation `sigma`.
    fn gauss(&mut self, mu: f64, sigma: f64) -> f64;
}

impl<R: Rng> RaDrawSource for R {
    fn choose(&mut self, n: usize) -> usize {
        self.random_range(0..n)
    }
    fn unit(&mut self) -> f64 {
        self.random::<f64>()
    }
    fn gauss(&mut self, mu: f64, sigma: f64) -> f64 {
        Normal::new(mu, sigma)
            .expect("finite mean and non-negative deviation")
            .sample(self)
    }
}

/// How the magnitude is randomised per application (`mstd` in the config string).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MagnitudeNoise {
    Fixed,
    /// `random.gauss(m, std)`.
    Gaussian(f64),
    /// `mstd > 100`: `random.uniform(0, m)`.
    Uniform,
}

/// timm `RandAugment` over the increasing op set.
#[derive(Debug, Clone, PartialEq)]
pub struct RandAugment {
    pub ops: Vec<RaOp>,
    pub num_layers: usize,
    pub prob: f64,
    pub magnitude: f64,
    pub noise: MagnitudeNoise,
    /// Upper clip of the magnitude (`mmax`, default 10).
    pub magnitude_max: f64,
    pub hparams: RaHparams,
}

impl RandAugment {
    /// `rand_augment_transform(config, hparams)` for configs of the form `rand-m9-n2-mstd0.5-inc1`
    /// (keys m, n, p, mstd, mmax, inc). The op set must be the increasing one (`inc1`); weighted
    /// (`t`) selections and the non-increasing ops are not implemented.
    pub fn from_config(config: &str, hparams: RaHparams) -> Result<Self, String> {
        let mut parts = config.split('-');
        if parts.next() != Some("rand") {
            return Err(format!(
                "RandAugment config '{config}' must start with 'rand'"
            ));
        }
        let mut ra = RandAugment {
            ops: RaOp::INCREASING.to_vec(),
            num_layers: 2,
            prob: 0.5,
            magnitude: LEVEL_DENOM,
            noise: MagnitudeNoise::Fixed,
            magnitude_max: LEVEL_DENOM,
            hparams,
        };
        let mut increasing = false;
        for part in parts {
            let split = part
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(part.len());
            let (key, val) = part.split_at(split);
            if val.is_empty() {
                // timm skips sections without a number.
                continue;
            }
            let num = || {
                val.parse::<f64>()
                    .map_err(|_| format!("bad value '{val}' for '{key}' in '{config}'"))
            };
            match key {
                "mstd" => {
                    let std = num()?;
                    ra.noise = if std > 100.0 {
                        MagnitudeNoise::Uniform
                    } else if std > 0.0 {
                        MagnitudeNoise::Gaussian(std)
                    } else {
                        MagnitudeNoise::Fixed
                    };
                }
                "mmax" => ra.magnitude_max = num()?.trunc(),
                "inc" => increasing = num()? != 0.0,
                "m" => ra.magnitude = num()?.trunc(),
                "n" => ra.num_layers = num()? as usize,
                "p" => ra.prob = num()?,
                _ => {
                    return Err(format!(
                        "unknown RandAugment section '{part}' in '{config}'"
                    ))
                }
            }
        }
        if !increasing {
            return Err(format!(
                "RandAugment '{config}': only the increasing op set (inc1) is implemented"
            ));
        }
        Ok(ra)
    }

    /// The fine-tuning recipes' `rand-m9-mstd0.5-inc1` with `transforms_imagenet_train`'s hparams.
    pub fn finetune(img_size: u32, mean: [f32; 3], interpolation: Interpolation) -> Self {
        RandAugment::from_config(
            "rand-m9-mstd0.5-inc1",
            RaHparams::timm_train(img_size, mean, interpolation),
        )
        .expect("the recipe's config parses")
    }

    /// Draws the op slots of one image in timm's order: the ops (with replacement), then per slot the
    /// apply draw, the magnitude, the clip and the sign.
    pub fn draw(&self, src: &mut impl RaDrawSource) -> Vec<RaDraw> {
        let ops: Vec<RaOp> = (0..self.num_layers)
            .map(|_| self.ops[src.choose(self.ops.len())])
            .collect();
        ops.into_iter()
            .map(|op| {
                // `if prob < 1.0 and random.random() > prob: return img`
                let applied = !(self.prob < 1.0 && src.unit() > self.prob);
                if !applied {
                    return RaDraw {
                        op,
                        applied,
                        magnitude: self.magnitude,
                        negate: false,
                    };
                }
                let m = match self.noise {
                    MagnitudeNoise::Fixed => self.magnitude,
                    MagnitudeNoise::Gaussian(std) => src.gauss(self.magnitude, std),
                    MagnitudeNoise::Uniform => self.magnitude * src.unit(),
                };
                let magnitude = m.min(self.magnitude_max).max(0.0);
                // `_randomly_negate`: `-v if random.random() > 0.5 else v`
                let negate = op.takes_sign() && src.unit() > 0.5;
                RaDraw {
                    op,
                    applied,
                    magnitude,
                    negate,
                }
            })
            .collect()
    }

    /// Applies drawn op slots in order.
    pub fn apply_draws(&self, img: &RgbImage, draws: &[RaDraw]) -> RgbImage {
        let mut out = img.clone();
        for d in draws.iter().filter(|d| d.applied) {
            out = apply_op(&out, d.op, d.magnitude, d.negate, &self.hparams);
        }
        out
    }

    pub fn apply(&self, img: &RgbImage, rng: &mut impl Rng) -> RgbImage {
        let draws = self.draw(rng);
        self.apply_draws(img, &draws)
    }
}
