//! The iBOT projection head (ibot-reference §3, official `models/head.py`): a 3-layer GELU MLP
//! shared by every token, L2 normalisation of the bottleneck, and weight-normalised prototype
//! layers (`last_layer` for the CLS token, `last_layer2` for patch tokens, the same module when
//! the head is shared). `VarBuilder` paths mirror the checkpoint keys without the `head.` prefix.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::VarBuilder;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal, Uniform};
use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoint;
use crate::ops::Activation;
use crate::vit::autocast_matmul_t;

/// `F.normalize`'s default eps.
const NORMALIZE_EPS: f64 = 1e-12;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadConfig {
    pub in_dim: usize,
    pub out_dim: usize,
    pub patch_out_dim: usize,
    pub hidden_dim: usize,
    pub bottleneck_dim: usize,
    pub shared: bool,
    /// Prototype norms frozen at 1 (`weight_g` gets no gradient), as `--norm_last_layer true`.
    pub norm_last_layer: bool,
}

impl HeadConfig {
    /// The paper/README head: shared prototypes for CLS and patches, 2048 hidden, 256 bottleneck.
    pub fn ibot(in_dim: usize, out_dim: usize) -> Self {
        Self {
            in_dim,
            out_dim,
            patch_out_dim: out_dim,
            hidden_dim: 2048,
            bottleneck_dim: 256,
            shared: true,
            norm_last_layer: true,
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        for (name, v) in [
            ("in_dim", self.in_dim),
            ("out_dim", self.out_dim),
            ("patch_out_dim", self.patch_out_dim),
            ("hidden_dim", self.hidden_dim),
            ("bottleneck_dim", self.bottleneck_dim),
        ] {
            if v == 0 {
                bail!("head {name} must be positive");
            }
        }
        if self.shared && self.patch_out_dim != self.out_dim {
            bail!(
                "a shared head uses the CLS prototypes for patches: patch_out_dim ({}) must equal out_dim ({})",
                self.patch_out_dim,
                self.out_dim
            );
        }
        Ok(())
    }

    /// Every tensor of the head (names without `head.`) with its shape. A shared head has no
    /// `last_layer2.*` entries (PyTorch's state dict repeats them as aliases of `last_layer.*`).
    pub fn expected_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = vec![
            ("mlp.0.weight".into(), vec![self.hidden_dim, self.in_dim]),
            ("mlp.0.bias".into(), vec![self.hidden_dim]),
            (
                "mlp.2.weight".into(),
                vec![self.hidden_dim, self.hidden_dim],
            ),
            ("mlp.2.bias".into(), vec![self.hidden_dim]),
            (
                "mlp.4.weight".into(),
                vec![self.bottleneck_dim, self.hidden_dim],
            ),
            ("mlp.4.bias".into(), vec![self.bottleneck_dim]),
            ("last_layer.weight_g".into(), vec![self.out_dim, 1]),
            (
                "last_layer.weight_v".into(),
                vec![self.out_dim, self.bottleneck_dim],
            ),
        ];
        if !self.shared {
            out.push(("last_layer2.weight_g".into(), vec![self.patch_out_dim, 1]));
            out.push((
                "last_layer2.weight_v".into(),
                vec![self.patch_out_dim, self.bottleneck_dim],
            ));
        }
        out
    }

    /// Whether the official code freezes this head parameter (`weight_g` under norm_last_layer).
    pub fn is_frozen(&self, name: &str) -> bool {
        self.norm_last_layer && name.ends_with("weight_g")
    }
}

#[derive(Debug, Clone)]
struct Dense {
    weight: Tensor,
    bias: Tensor,
    compute: Option<DType>,
}

impl Dense {
    fn new(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get((out_dim, in_dim), "weight")?,
            bias: vb.get(out_dim, "bias")?,
            compute: None,
        })
    }

    /// One Linear (+ activation) over all leading dimensions: the fused CPU op where it applies.
    fn forward_with(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        let dims = x.dims();
        let in_dim = dims[dims.len() - 1];
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let y = crate::ops::linear(
            &x.reshape((rows, in_dim))?,
            &self.weight,
            &self.bias,
            act,
            None,
            self.compute,
        )?;
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().unwrap() = self.weight.dim(0)?;
        y.reshape(out_dims)
    }
}

/// `nn.utils.weight_norm(nn.Linear(bottleneck, K, bias=False))`: W = g · v / ‖v‖_row.
#[derive(Debug, Clone)]
struct WeightNormLinear {
    g: Tensor,
    v: Tensor,
}

impl WeightNormLinear {
    fn new(in_dim: usize, out_dim: usize, frozen_g: bool, vb: VarBuilder) -> Result<Self> {
        let g = vb.get((out_dim, 1), "weight_g")?;
        // A frozen g must not receive a gradient (official requires_grad=False, so AdamW neither
        // updates nor decays it). `detach` shares the storage, so EMA writes into the Var still show.
        let g = if frozen_g { g.detach() } else { g };
        Ok(Self {
            g,
            v: vb.get((out_dim, in_dim), "weight_v")?,
        })
    }

    fn weight(&self) -> Result<Tensor> {
        crate::ops::weight_norm_rows(&self.v, &self.g)
    }
}

/// `F.normalize(x, dim=-1)`: x / max(‖x‖₂, 1e-12), composed so that it back-propagates; in f32.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let norm = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .maximum(NORMALIZE_EPS)?;
    x.broadcast_div(&norm)?.to_dtype(dtype)
}

/// Rows of `x` (last dim = in) times Wᵀ, as one GEMM (in `compute` when given).
fn project(x: &Tensor, w: &Tensor, compute: Option<DType>) -> Result<Tensor> {
    let dims = x.dims();
    let in_dim = dims[dims.len() - 1];
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let y = autocast_matmul_t(&x.reshape((rows, in_dim))?, w, compute)?;
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().unwrap() = w.dim(0)?;
    y.reshape(out_dims)
}

#[derive(Debug, Clone)]
pub struct IbotHead {
    cfg: HeadConfig,
    fc0: Dense,
    fc2: Dense,
    fc4: Dense,
    last_layer: WeightNormLinear,
    last_layer2: Option<WeightNormLinear>,
    compute: Option<DType>,
}

impl IbotHead {
    pub fn new(cfg: &HeadConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let mlp = vb.pp("mlp");
        let last_layer2 = if cfg.shared {
            None
        } else {
            Some(WeightNormLinear::new(
                cfg.bottleneck_dim,
                cfg.patch_out_dim,
                cfg.norm_last_layer,
                vb.pp("last_layer2"),
            )?)
        };
        Ok(Self {
            cfg: cfg.clone(),
            fc0: Dense::new(cfg.in_dim, cfg.hidden_dim, mlp.pp("0"))?,
            fc2: Dense::new(cfg.hidden_dim, cfg.hidden_dim, mlp.pp("2"))?,
            fc4: Dense::new(cfg.hidden_dim, cfg.bottleneck_dim, mlp.pp("4"))?,
            last_layer: WeightNormLinear::new(
                cfg.bottleneck_dim,
                cfg.out_dim,
                cfg.norm_last_layer,
                vb.pp("last_layer"),
            )?,
            last_layer2,
            compute: None,
        })
    }

    pub fn config(&self) -> &HeadConfig {
        &self.cfg
    }

    /// Mixed precision: the MLP and prototype GEMMs run in `dtype`; GELU, the L2 normalisation,
    /// the weight norm and the returned logits keep the weights' dtype.
    pub fn with_compute_dtype(mut self, dtype: DType) -> Self {
        let c = Some(dtype);
        self.compute = c;
        for dense in [&mut self.fc0, &mut self.fc2, &mut self.fc4] {
            dense.compute = c;
        }
        self
    }

    /// MLP → L2 normalisation, on the last dimension of any shape.
    fn bottleneck(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.fc0.forward_with(x, Activation::Gelu)?;
        let h = self.fc2.forward_with(&h, Activation::Gelu)?;
        l2_normalize(&self.fc4.forward_with(&h, Activation::Identity)?)
    }

    /// tokens [B, 1+N, D] → (CLS logits [B, K], patch logits [B, N, Kp]).
    pub fn forward(&self, tokens: &Tensor) -> Result<(Tensor, Tensor)> {
        let (_, t, _) = tokens.dims3()?;
        if t < 2 {
            candle_core::bail!("head input has {t} tokens; need the CLS token and ≥1 patch");
        }
        let z = self.bottleneck(tokens)?;
        let cls_weight = self.last_layer.weight()?;
        let cls = project(&z.narrow(1, 0, 1)?.squeeze(1)?, &cls_weight, self.compute)?;
        let patch_weight = match &self.last_layer2 {
            Some(layer) => layer.weight()?,
            None => cls_weight,
        };
        let patch = project(&z.narrow(1, 1, t - 1)?, &patch_weight, self.compute)?;
        Ok((cls, patch))
    }

    /// x [B, D] → CLS logits [B, K] (DINOHead path).
    pub fn forward_cls(&self, x: &Tensor) -> Result<Tensor> {
        x.dims2()?;
        project(
            &self.bottleneck(x)?,
            &self.last_layer.weight()?,
            self.compute,
        )
    }
}

/// Official initialisation, seeded: trunc-normal(0.02) MLP weights (the ±2 bounds never bite),
/// zero biases; `weight_v` keeps PyTorch's default Linear init U(±1/√bottleneck) because the
/// official code builds the last layers after its init pass; `weight_g` = 1.
pub fn init_head_weights(cfg: &HeadConfig, seed: u64) -> Result<HashMap<String, Tensor>> {
    cfg.validate()
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 0.02).expect("valid std");
    let bound = 1.0 / (cfg.bottleneck_dim as f32).sqrt();
    let uniform = Uniform::new(-bound, bound);
    let mut out = HashMap::new();
    for (name, shape) in cfg.expected_shapes() {
        let numel: usize = shape.iter().product();
        let values: Vec<f32> = if name.ends_with(".bias") {
            vec![0.0; numel]
        } else if name.ends_with("weight_g") {
            vec![1.0; numel]
        } else if name.ends_with("weight_v") {
            (0..numel).map(|_| uniform.sample(&mut rng)).collect()
        } else {
            (0..numel)
                .map(|_| normal.sample(&mut rng).clamp(-2.0, 2.0))
                .collect()
        };
        out.insert(name, Tensor::from_vec(values, shape, &Device::Cpu)?);
    }
    Ok(out)
}

/// Infer the head architecture from the shapes of its tensors (names without `head.`). The head
/// is shared when it has no `last_layer2.*` tensors (callers drop aliases of `last_layer` first).
pub fn infer_head_config(
    shapes: &HashMap<String, Vec<usize>>,
    norm_last_layer: bool,
) -> anyhow::Result<HeadConfig> {
    let get = |name: &str, rank: usize| -> anyhow::Result<&[usize]> {
        match shapes.get(name) {
            Some(s) if s.len() == rank => Ok(s.as_slice()),
            Some(s) => bail!("head tensor {name} has shape {s:?}, expected rank {rank}"),
            None => {
                let mut have: Vec<&String> = shapes.keys().collect();
                have.sort();
                let hint = if shapes.contains_key("weight") {
                    " (this looks like a linear classifier head, not an iBOT projection head)"
                } else {
                    ""
                };
                bail!(
                    "not an iBOT projection head: missing {name}{hint}; head tensors present: {}",
                    have.iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        }
    };
    let w0 = get("mlp.0.weight", 2)?;
    let w4 = get("mlp.4.weight", 2)?;
    let v = get("last_layer.weight_v", 2)?;
    let shared = !shapes.contains_key("last_layer2.weight_v");
    let patch_out_dim = if shared {
        v[0]
    } else {
        get("last_layer2.weight_v", 2)?[0]
    };
    let cfg = HeadConfig {
        in_dim: w0[1],
        out_dim: v[0],
        patch_out_dim,
        hidden_dim: w0[0],
        bottleneck_dim: w4[0],
        shared,
        norm_last_layer,
    };
    cfg.validate()?;
    let expected: BTreeMap<String, Vec<usize>> = cfg.expected_shapes().into_iter().collect();
    let mut problems = Vec::new();
    for (name, shape) in &expected {
        match shapes.get(name) {
            None => problems.push(format!("missing {name} {shape:?}")),
            Some(s) if s != shape => problems.push(format!("{name}: {s:?}, expected {shape:?}")),
            Some(_) => {}
        }
    }
    let mut unexpected: Vec<&String> = shapes
        .keys()
        .filter(|k| !expected.contains_key(k.as_str()))
        .collect();
    unexpected.sort();
    for k in unexpected {
        // mlp.1 / mlp.3 would be norm layers (`--norm_in_head`), mlp.6 a 4th layer: unsupported.
        problems.push(format!("unexpected {k}"));
    }
    if !problems.is_empty() {
        bail!(
            "head tensors do not form a 3-layer iBOT head ({} → {} → {} → {}): {}",
            cfg.in_dim,
            cfg.hidden_dim,
            cfg.bottleneck_dim,
            cfg.out_dim,
            problems.join("; ")
        );
    }
    Ok(cfg)
}

/// Sub-dicts searched for a head when the caller names none (same preference as the backbone).
const HEAD_STATE_KEYS: [&str; 4] = ["teacher", "state_dict", "model", "module"];

fn strip_module(name: &str) -> &str {
    let mut rest = name;
    while let Some(r) = rest.strip_prefix("module.") {
        rest = r;
    }
    rest
}

/// Full names of the `head.*` tensors under `prefix` (e.g. `"teacher."`, or `""` for the root):
/// stripped name → full name.
fn head_names(names: &[String], prefix: &str) -> BTreeMap<String, String> {
    names
        .iter()
        .filter_map(|full| {
            let rel = full.strip_prefix(prefix)?;
            let head = strip_module(rel).strip_prefix("head.")?;
            Some((head.to_string(), full.clone()))
        })
        .collect()
}

/// The `head.*` tensors of a checkpoint (names without the `head.` prefix, f32, checked finite):
/// an official full checkpoint (`teacher` → `head.*`, `student` → `module.head.*`), a
/// `--with_head` backbone file, or our safetensors exports holding `head.*` next to the backbone
/// keys. A backbone-only file is an error saying so.
pub fn read_head(path: &Path, key: Option<&str>) -> anyhow::Result<HashMap<String, Tensor>> {
    let ckpt = Checkpoint::open(path)?;
    let names = ckpt.names();
    let groups = ckpt.top_level_groups();
    let (prefix, found) = match key {
        Some(k) => {
            let prefix = format!("{k}.");
            if !names.iter().any(|n| n.starts_with(&prefix)) {
                bail!(
                    "{}: key {k:?} not found; the checkpoint's top-level keys are: {}",
                    path.display(),
                    groups.join(", ")
                );
            }
            let found = head_names(&names, &prefix);
            (prefix, found)
        }
        None => HEAD_STATE_KEYS
            .iter()
            .map(|k| format!("{k}."))
            .chain(std::iter::once(String::new()))
            .map(|p| {
                let found = head_names(&names, &p);
                (p, found)
            })
            .find(|(_, found)| !found.is_empty())
            .unwrap_or_default(),
    };
    if found.is_empty() {
        bail!(
            "{}: no projection head (head.* tensors) under {}; top-level keys: {} — a backbone-only file has no head (export with the head, or use the full training checkpoint)",
            path.display(),
            if prefix.is_empty() {
                "the root".to_string()
            } else {
                format!("key {:?}", prefix.trim_end_matches('.'))
            },
            groups.join(", ")
        );
    }
    // A shared head's `last_layer2.*` are aliases of `last_layer.*` in a .pth state dict.
    let full: Vec<String> = found.values().cloned().collect();
    let aliases = ckpt.aliases(&full);
    let found: BTreeMap<String, String> = found
        .into_iter()
        .filter(|(_, f)| !aliases.contains_key(f))
        .collect();
    let full: Vec<String> = found.values().cloned().collect();
    let tensors = ckpt.read_all(&full)?;
    let mut weights = HashMap::new();
    for ((name, _), (_, t)) in found.iter().zip(tensors) {
        let t = t.to_dtype(DType::F32)?;
        crate::checkpoint::check_finite(&t)
            .with_context(|| format!("{}: head tensor {name}", path.display()))?;
        weights.insert(name.clone(), t);
    }
    Ok(weights)
}

/// Load the projection head of a checkpoint for inference (see [`read_head`]).
pub fn load_head(
    path: &Path,
    key: Option<&str>,
    dtype: DType,
    device: &Device,
) -> anyhow::Result<(HeadConfig, IbotHead)> {
    let weights = read_head(path, key)?;
    let shapes: HashMap<String, Vec<usize>> = weights
        .iter()
        .map(|(k, t)| (k.clone(), t.dims().to_vec()))
        .collect();
    let mut cfg = infer_head_config(&shapes, true)
        .with_context(|| format!("{}: projection head", path.display()))?;
    // Inference reads g as stored; report whether it is the frozen unit norm.
    cfg.norm_last_layer = weights
        .iter()
        .filter(|(k, _)| k.ends_with("weight_g"))
        .all(|(_, g)| {
            g.flatten_all()
                .and_then(|g| g.to_vec1::<f32>())
                .map(|v| v.iter().all(|x| *x == 1.0))
                .unwrap_or(false)
        });
    let vb = VarBuilder::from_tensors(weights, dtype, device);
    let head = IbotHead::new(&cfg, vb)
        .with_context(|| format!("{}: building the projection head", path.display()))?;
    Ok((cfg, head))
}
