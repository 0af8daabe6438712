//! Feature layouts of the frozen-feature protocols (ibot-reference §8 intro; evaluation-reference
//! notes 2, 5, 6): what one image's feature row is, how wide it is, and how to compute it.
//!
//! Every "last n blocks" output is passed through the final LayerNorm, as
//! `get_intermediate_layers` does in DINO/iBOT. Block layout (iBOT `avgpool_patchtokens = 2`,
//! DINOv2): `[cls_{L-n+1} … cls_L, mean(patch_L)]`. DINO's `eval_linear.py --avgpool_patchtokens`
//! instead stacks CLS and mean-patch on a new last axis and flattens, giving the *interleaved*
//! vector `[cls[0], avg[0], cls[1], avg[1], …]` (one pair per channel). Its code only works for
//! n = 1 (it would have to stack an n·D with a D vector), so the interleaved layout is defined only
//! for n = 1 here too; released DINO ViT-B linear heads expect it.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};
use backbone::{Pool, VisionTransformer, VitConfig};
use candle_core::Tensor;
use serde::{Deserialize, Deserializer};

use crate::FeatureSpec;

impl FeatureSpec {
    /// The same features under one spelling (`cls-last-1` is `cls`), so equal features share a cache entry.
    pub fn canonical(&self) -> FeatureSpec {
        match *self {
            FeatureSpec::ClsLastN { n: 1 } => FeatureSpec::Cls,
            ref other => other.clone(),
        }
    }

    /// Checks the spec against the model depth.
    pub fn validate(&self, cfg: &VitConfig) -> Result<()> {
        let n = match *self {
            FeatureSpec::ClsLastN { n } => n,
            FeatureSpec::ClsAvg { n, interleaved } => {
                if interleaved && n != 1 {
                    bail!(
                        "feature layout {self}: DINO's interleaved cls/avg layout exists only for the last block (n = 1); use the block layout cls-last-{n}+avg"
                    );
                }
                n
            }
            _ => 1,
        };
        if n == 0 {
            bail!("feature layout {self}: the number of blocks must be at least 1");
        }
        if n > cfg.depth {
            bail!(
                "feature layout {self} needs {n} blocks but the model has depth {}",
                cfg.depth
            );
        }
        Ok(())
    }

    /// Width of a feature row for a backbone of width `embed_dim` (`None` for head logits, whose
    /// width is the head's output dimension).
    pub fn dim(&self, embed_dim: usize) -> Option<usize> {
        match *self {
            FeatureSpec::Cls | FeatureSpec::AvgPatch => Some(embed_dim),
            FeatureSpec::ClsLastN { n } => Some(n * embed_dim),
            FeatureSpec::ClsAvg { n, .. } => Some((n + 1) * embed_dim),
            FeatureSpec::HeadLogits => None,
        }
    }

    /// Feature rows [B, F] of the backbone for a batch [B, 3, H, W]. Head logits need the head and
    /// are computed by the store.
    pub fn compute(&self, model: &VisionTransformer, x: &Tensor) -> Result<Tensor> {
        self.validate(model.config())?;
        let t = match *self {
            FeatureSpec::Cls => model.forward_cls(x)?,
            FeatureSpec::ClsLastN { n } => model.features(x, n, Pool::Cls)?,
            FeatureSpec::AvgPatch => model.features(x, 1, Pool::Avg)?,
            FeatureSpec::ClsAvg {
                n,
                interleaved: false,
            } => model.features(x, n, Pool::ClsAvg)?,
            FeatureSpec::ClsAvg {
                interleaved: true, ..
            } => {
                // torch.cat((cls.unsqueeze(-1), avg.unsqueeze(-1)), -1).reshape(B, -1)
                let pair = model.features(x, 1, Pool::ClsAvg)?;
                let (b, two_d) = pair.dims2()?;
                let d = two_d / 2;
                let cls = pair.narrow(1, 0, d)?;
                let avg = pair.narrow(1, d, d)?;
                Tensor::stack(&[&cls, &avg], 2)?.reshape((b, two_d))?
            }
            FeatureSpec::HeadLogits => {
                bail!("head logits need the projection head: use FeatureStore::get")
            }
        };
        Ok(t)
    }
}

impl fmt::Display for FeatureSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FeatureSpec::Cls => write!(f, "cls"),
            FeatureSpec::ClsLastN { n } => write!(f, "cls-last-{n}"),
            FeatureSpec::AvgPatch => write!(f, "avg"),
            FeatureSpec::ClsAvg {
                n: 1,
                interleaved: false,
            } => write!(f, "cls+avg"),
            FeatureSpec::ClsAvg {
                n,
                interleaved: false,
            } => write!(f, "cls-last-{n}+avg"),
            FeatureSpec::ClsAvg {
                n: 1,
                interleaved: true,
            } => write!(f, "cls+avg-interleaved"),
            FeatureSpec::ClsAvg {
                n,
                interleaved: true,
            } => write!(f, "cls-last-{n}+avg-interleaved"),
            FeatureSpec::HeadLogits => write!(f, "head-logits"),
        }
    }
}

impl FromStr for FeatureSpec {
    type Err = String;

    /// `cls`, `cls-last-N`, `avg`, `cls+avg`, `cls-last-N+avg`, `cls+avg-interleaved`, `head-logits`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || {
            format!(
                "unknown feature layout {s:?}: expected cls, cls-last-N, avg, cls+avg, cls-last-N+avg, cls+avg-interleaved or head-logits"
            )
        };
        let blocks = |part: &str| -> std::result::Result<usize, String> {
            if part == "cls" {
                return Ok(1);
            }
            let n = part.strip_prefix("cls-last-").ok_or_else(bad)?;
            match n.parse::<usize>() {
                Ok(n) if n >= 1 => Ok(n),
                _ => Err(format!(
                    "feature layout {s:?}: the block count must be a positive integer"
                )),
            }
        };
        let spec = match s {
            "cls" => FeatureSpec::Cls,
            "avg" | "avg-patch" => FeatureSpec::AvgPatch,
            "head-logits" | "head" => FeatureSpec::HeadLogits,
            _ => {
                if let Some(cls) = s.strip_suffix("+avg-interleaved") {
                    FeatureSpec::ClsAvg {
                        n: blocks(cls)?,
                        interleaved: true,
                    }
                } else if let Some(cls) = s.strip_suffix("+avg") {
                    FeatureSpec::ClsAvg {
                        n: blocks(cls)?,
                        interleaved: false,
                    }
                } else {
                    FeatureSpec::ClsLastN { n: blocks(s)? }
                }
            }
        };
        Ok(spec)
    }
}

/// The serialised form, as `#[derive(Deserialize)]` would read it.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Tagged {
    Cls,
    ClsLastN { n: usize },
    AvgPatch,
    ClsAvg { n: usize, interleaved: bool },
    HeadLogits,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Repr {
    Text(String),
    Tagged(Tagged),
}

impl<'de> Deserialize<'de> for FeatureSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(match Repr::deserialize(d)? {
            Repr::Text(s) => match s.as_str() {
                "avg_patch" => FeatureSpec::AvgPatch,
                "head_logits" => FeatureSpec::HeadLogits,
                other => other.parse().map_err(serde::de::Error::custom)?,
            },
            Repr::Tagged(Tagged::Cls) => FeatureSpec::Cls,
            Repr::Tagged(Tagged::ClsLastN { n }) => FeatureSpec::ClsLastN { n },
            Repr::Tagged(Tagged::AvgPatch) => FeatureSpec::AvgPatch,
            Repr::Tagged(Tagged::ClsAvg { n, interleaved }) => {
                FeatureSpec::ClsAvg { n, interleaved }
            }
            Repr::Tagged(Tagged::HeadLogits) => FeatureSpec::HeadLogits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_round_trip() {
        for s in [
            "cls",
            "cls-last-4",
            "avg",
            "cls+avg",
            "cls-last-2+avg",
            "cls+avg-interleaved",
            "head-logits",
        ] {
            let spec: FeatureSpec = s.parse().unwrap();
            assert_eq!(spec.to_string(), s);
        }
        assert_eq!(
            "cls-last-4".parse::<FeatureSpec>().unwrap(),
            FeatureSpec::ClsLastN { n: 4 }
        );
        assert!("cls-last-0".parse::<FeatureSpec>().is_err());
        assert!("pooled"
            .parse::<FeatureSpec>()
            .unwrap_err()
            .contains("pooled"));
        assert_eq!(FeatureSpec::ClsLastN { n: 1 }.canonical(), FeatureSpec::Cls);
    }

    #[test]
    fn deserialises_both_forms() {
        let specs = [
            FeatureSpec::Cls,
            FeatureSpec::ClsLastN { n: 4 },
            FeatureSpec::AvgPatch,
            FeatureSpec::ClsAvg {
                n: 2,
                interleaved: false,
            },
            FeatureSpec::HeadLogits,
        ];
        for spec in specs {
            let json = serde_json::to_value(&spec).unwrap();
            assert_eq!(serde_json::from_value::<FeatureSpec>(json).unwrap(), spec);
            let text = serde_json::Value::String(spec.to_string());
            assert_eq!(serde_json::from_value::<FeatureSpec>(text).unwrap(), spec);
        }
        let err = serde_json::from_str::<FeatureSpec>("\"pooled\"").unwrap_err();
        assert!(err.to_string().contains("unknown feature layout"), "{err}");
        assert!(
            serde_json::from_str::<FeatureSpec>(r#"{"cls_last_n": {"n": 2, "m": 1}}"#).is_err()
        );
    }

    #[test]
    fn dims_follow_the_layouts() {
        assert_eq!(FeatureSpec::ClsLastN { n: 4 }.dim(384), Some(1536));
        assert_eq!(
            FeatureSpec::ClsAvg {
                n: 1,
                interleaved: false
            }
            .dim(768),
            Some(1536)
        );
        assert_eq!(FeatureSpec::HeadLogits.dim(768), None);
    }
}
