//! mmdet 2.11's box heads and their losses (`mmdet/models/roi_heads/bbox_heads/convfc_bbox_head.py`,
//! `bbox_head.py`):
//!
//! - `Shared2FCBBoxHead`: flatten → `shared_fcs.0`, `shared_fcs.1` (FC + ReLU each);
//! - `ConvFCBBoxHead(num_shared_convs=4, num_shared_fcs=1, norm_cfg=SyncBN)` (iBOT's 4conv1fc):
//!   `shared_convs.{0..3}` (mmcv `ConvModule`: 3×3 conv without bias → BN → ReLU) → flatten →
//!   `shared_fcs.0` + ReLU;
//! - then `fc_cls` (K + 1 logits, background last) and `fc_reg` (4K class-specific deltas, or 4).
//!
//! Init (`init_weights`): shared FCs xavier-uniform, bias 0; `fc_cls` N(0, 0.01), `fc_reg`
//! N(0, 0.001), biases 0; the convs keep `ConvModule`'s kaiming-normal (fan_out) init, BN weight 1.
//!
//! Loss (`BBoxHead.loss`): softmax cross-entropy over ALL sampled RoIs (`avg_factor` = number of RoIs
//! with a positive label weight, i.e. all of them); the regression loss on the positives only, at the
//! gt label's 4 deltas, summed and divided by the number of ALL sampled RoIs
//! (`avg_factor=bbox_targets.size(0)`), times the loss weight. With `reg_decoded_bbox` (iBOT's GIoU
//! heads) the deltas are first decoded against the RoIs without clipping (`delta2bbox(max_shape=None)`)
//! and compared with the gt boxes by 1 − GIoU (ε = 1e-6). Without positives the regression loss is 0.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Init, Linear, VarBuilder};
use layers::conv_module::{relu, ConvModule, ConvModuleConfig};
use layers::losses::{cross_entropy, giou_loss};
use layers::norm::Buffers;

use crate::box_coder::{max_ratio, DeltaXYWHBBoxCoder};
use crate::config::{BoxHeadConfig, BoxHeadKind, RegLoss};
use crate::rpn::{reg_loss_elementwise, reg_loss_weight};
use crate::structures::Box4;
use crate::targets::RoiTargets;

pub struct BoxHead {
    shared_convs: Vec<ConvModule>,
    shared_fcs: Vec<Linear>,
    fc_cls: Linear,
    fc_reg: Linear,
    num_classes: usize,
    class_agnostic: bool,
}

fn linear(c_in: usize, c_out: usize, weight: Init, vb: VarBuilder) -> Result<Linear> {
    let w = vb.get_with_hints((c_out, c_in), "weight", weight)?;
    let b = vb.get_with_hints(c_out, "bias", Init::Const(0.0))?;
    Ok(Linear::new(w, Some(b)))
}

/// `nn.init.xavier_uniform_` of an `[out, in]` weight.
pub fn xavier_linear(c_in: usize, c_out: usize) -> Init {
    let b = (6.0 / (c_in + c_out) as f64).sqrt();
    Init::Uniform { lo: -b, up: b }
}

impl BoxHead {
    /// `vb` at `roi_head.bbox_head` (or `roi_head.bbox_head.{stage}`).
    pub fn new(
        cfg: &BoxHeadConfig,
        in_channels: usize,
        roi_size: usize,
        num_classes: usize,
        vb: VarBuilder,
        buffers: &Buffers,
    ) -> Result<Self> {
        let area = roi_size * roi_size;
        let (n_convs, n_fcs) = match cfg.kind {
            BoxHeadKind::Shared2fc => (0, 2),
            BoxHeadKind::Conv4fc1 => (4, 1),
        };
        let mut shared_convs = Vec::new();
        let mut last = in_channels;
        for i in 0..n_convs {
            shared_convs.push(ConvModule::new(
                last,
                cfg.conv_channels,
                ConvModuleConfig::bn_relu(3),
                vb.pp(format!("shared_convs.{i}")),
                buffers,
            )?);
            last = cfg.conv_channels;
        }
        let mut flat = last * area;
        let mut shared_fcs = Vec::new();
        for i in 0..n_fcs {
            shared_fcs.push(linear(
                flat,
                cfg.fc_channels,
                xavier_linear(flat, cfg.fc_channels),
                vb.pp(format!("shared_fcs.{i}")),
            )?);
            flat = cfg.fc_channels;
        }
        let reg_out = if cfg.reg_class_agnostic {
            4
        } else {
            4 * num_classes
        };
        Ok(BoxHead {
            shared_convs,
            shared_fcs,
            fc_cls: linear(
                flat,
                num_classes + 1,
                Init::Randn {
                    mean: 0.0,
                    stdev: 0.01,
                },
                vb.pp("fc_cls"),
            )?,
            fc_reg: linear(
                flat,
                reg_out,
                Init::Randn {
                    mean: 0.0,
                    stdev: 0.001,
                },
                vb.pp("fc_reg"),
            )?,
            num_classes,
            class_agnostic: cfg.reg_class_agnostic,
        })
    }

    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    pub fn class_agnostic(&self) -> bool {
        self.class_agnostic
    }

    /// RoI features `[R, C, s, s]` → (`cls_score` `[R, K+1]`, `bbox_pred` `[R, 4K]` or `[R, 4]`).
    /// `train` selects BN batch statistics.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<(Tensor, Tensor)> {
        let mut x = x.clone();
        for c in &self.shared_convs {
            x = c.forward_t(&x, train)?;
        }
        let r = x.dim(0)?;
        let mut x = x.reshape((r, ()))?;
        for fc in &self.shared_fcs {
            x = relu(&fc.forward(&x)?)?;
        }
        Ok((self.fc_cls.forward(&x)?, self.fc_reg.forward(&x)?))
    }
}

/// The losses of one box head on one batch of sampled RoIs.
pub struct BoxLosses {
    pub loss_cls: Tensor,
    pub loss_bbox: Tensor,
    /// mmdet's `acc` (top-1 accuracy in %, logged only).
    pub acc: f64,
}

/// `[x1, y1, x2, y2]` of `delta2bbox(rois, deltas, means, stds, max_shape=None)` as a differentiable
/// function of `deltas` `[P, 4]`; `rois` are constants. dw/dh are clamped to ±|ln(16/1000)| with
/// torch's derivative (1 inside the closed range, 0 outside).
pub fn decode_deltas(deltas: &Tensor, rois: &[Box4], coder: &DeltaXYWHBBoxCoder) -> Result<Tensor> {
    let p = rois.len();
    let dev = deltas.device();
    let dt = deltas.dtype();
    let stds = Tensor::new(&coder.stds, dev)?
        .to_dtype(dt)?
        .reshape((1, 4))?;
    let means = Tensor::new(&coder.means, dev)?
        .to_dtype(dt)?
        .reshape((1, 4))?;
    let d = deltas.broadcast_mul(&stds)?.broadcast_add(&means)?;
    let col = |i: usize| d.narrow(1, i, 1);
    let mr = max_ratio(coder.wh_ratio_clip) as f64;
    let clamp = |x: Tensor| -> Result<Tensor> {
        let lo = Tensor::full(-mr as f32, x.shape(), dev)?.to_dtype(dt)?;
        let hi = Tensor::full(mr as f32, x.shape(), dev)?.to_dtype(dt)?;
        let y = x.lt(-mr)?.where_cond(&lo, &x)?;
        y.gt(mr)?.where_cond(&hi, &y)
    };
    let (dx, dy) = (col(0)?, col(1)?);
    let (dw, dh) = (clamp(col(2)?)?, clamp(col(3)?)?);
    let mut px = Vec::with_capacity(p);
    let mut py = Vec::with_capacity(p);
    let mut pw = Vec::with_capacity(p);
    let mut ph = Vec::with_capacity(p);
    for r in rois {
        px.push((r[0] + r[2]) * 0.5);
        py.push((r[1] + r[3]) * 0.5);
        pw.push(r[2] - r[0]);
        ph.push(r[3] - r[1]);
    }
    let t = |v: Vec<f32>| -> Result<Tensor> { Tensor::from_vec(v, (p, 1), dev)?.to_dtype(dt) };
    let (px, py, pw, ph) = (t(px)?, t(py)?, t(pw)?, t(ph)?);
    let gw = (&pw * dw.exp()?)?;
    let gh = (&ph * dh.exp()?)?;
    let gx = (px + (&pw * dx)?)?;
    let gy = (py + (&ph * dy)?)?;
    let hw = (&gw * 0.5)?;
    let hh = (&gh * 0.5)?;
    Tensor::cat(&[(&gx - &hw)?, (&gy - &hh)?, (&gx + &hw)?, (&gy + &hh)?], 1)
}

/// `BBoxHead.loss(cls_score, bbox_pred, rois, *bbox_targets)` for the whole batch: `rois` are the
/// sampled boxes of every image in RoI order, `targets` their concatenated targets.
pub fn box_loss(
    cls_score: &Tensor,
    bbox_pred: &Tensor,
    rois: &[Box4],
    targets: &RoiTargets,
    num_classes: usize,
    class_agnostic: bool,
    loss: RegLoss,
    coder: &DeltaXYWHBBoxCoder,
) -> Result<BoxLosses> {
    let r = rois.len();
    let dev = cls_score.device();
    if targets.labels.len() != r {
        candle_core::bail!("{} box targets for {r} RoIs", targets.labels.len());
    }
    let labels: Vec<u32> = targets.labels.iter().map(|&l| l as u32).collect();
    let label_t = Tensor::from_vec(labels.clone(), r, dev)?;
    // all label weights are 1 (pos_weight −1), so the weighted mean is the plain mean over RoIs
    let loss_cls = cross_entropy(cls_score, &label_t)?;
    let acc = {
        let host: Vec<f32> = cls_score
            .detach()
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let k1 = num_classes + 1;
        let correct = host
            .chunks(k1)
            .zip(&labels)
            .filter(|(row, &l)| argmax_first(row) == l as usize)
            .count();
        100.0 * correct as f64 / r.max(1) as f64
    };
    let pos: Vec<usize> = (0..r)
        .filter(|&i| (targets.labels[i] as usize) < num_classes)
        .collect();
    let loss_bbox = if pos.is_empty() {
        (bbox_pred.sum_all()? * 0.0)?
    } else {
        let np = pos.len();
        let (rows, cols) = bbox_pred.dims2()?;
        let idx: Vec<u32> = if class_agnostic {
            pos.iter().map(|&i| i as u32).collect()
        } else {
            let k = cols / 4;
            pos.iter()
                .map(|&i| (i * k + targets.labels[i] as usize) as u32)
                .collect()
        };
        let flat = bbox_pred.reshape((rows * cols / 4, 4))?;
        let pred = flat.index_select(&Tensor::from_vec(idx, np, dev)?, 0)?;
        let tgt: Vec<f32> = pos.iter().flat_map(|&i| targets.bbox_targets[i]).collect();
        let tgt = Tensor::from_vec(tgt, (np, 4), dev)?.to_dtype(pred.dtype())?;
        let w = reg_loss_weight(loss) / r as f64;
        match loss {
            RegLoss::Giou { .. } => {
                let pos_rois: Vec<Box4> = pos.iter().map(|&i| rois[i]).collect();
                let boxes = decode_deltas(&pred, &pos_rois, coder)?;
                // GIoULoss: bbox weights [n, 4] are averaged to [n] (all ones here)
                giou_loss(&boxes, &tgt, 1e-6)?.sum_all()?.affine(w, 0.0)?
            }
            _ => {
                let bw: Vec<f32> = pos.iter().flat_map(|&i| targets.bbox_weights[i]).collect();
                let bw = Tensor::from_vec(bw, (np, 4), dev)?.to_dtype(pred.dtype())?;
                (reg_loss_elementwise(&pred, &tgt, loss)? * bw)?
                    .sum_all()?
                    .affine(w, 0.0)?
            }
        }
    };
    Ok(BoxLosses {
        loss_cls,
        loss_bbox,
        acc,
    })
}

pub(crate) fn argmax_first(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate().skip(1) {
        if x > v[best] {
            best = i;
        }
    }
    best
}
