//! The iBOT loss (ibot-reference §4, official `iBOTLoss`): CLS self-distillation across views plus
//! masked-patch self-distillation on the same view, against a centred and sharpened teacher,
//! followed by the EMA update of both centres. All arithmetic is f32 whatever the inputs' dtype.

use backbone::ops::{centered_softmax, soft_cross_entropy, sum_leading_dims};
use candle_core::{DType, Device, Result, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::collective::{mean_scalars, Collective};
use crate::schedule::teacher_temp_schedule;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossConfig {
    pub out_dim: usize,
    pub patch_out_dim: usize,
    pub global_crops: usize,
    pub local_crops: usize,
    pub student_temp: f64,
    pub center_momentum: f64,
    pub center_momentum2: f64,
    pub lambda1: f64,
    pub lambda2: f64,
    pub warmup_teacher_temp: f64,
    pub teacher_temp: f64,
    pub warmup_teacher_patch_temp: f64,
    pub teacher_patch_temp: f64,
    pub warmup_teacher_temp_epochs: usize,
    pub epochs: usize,
    pub pred_start_epoch: usize,
}

impl LossConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.out_dim == 0 || self.patch_out_dim == 0 {
            anyhow::bail!("loss out_dim and patch_out_dim must be positive");
        }
        if self.global_crops == 0 {
            anyhow::bail!("the iBOT loss needs at least one global crop");
        }
        if self.global_crops + self.local_crops < 2 {
            anyhow::bail!("the CLS loss pairs different views: need at least 2 crops in total");
        }
        if self.epochs == 0 {
            anyhow::bail!("loss epochs must be positive");
        }
        for (name, v) in [
            ("student_temp", self.student_temp),
            ("warmup_teacher_temp", self.warmup_teacher_temp),
            ("teacher_temp", self.teacher_temp),
            ("warmup_teacher_patch_temp", self.warmup_teacher_patch_temp),
            ("teacher_patch_temp", self.teacher_patch_temp),
        ] {
            if !(v.is_finite() && v > 0.0) {
                anyhow::bail!("loss {name} must be positive, got {v}");
            }
        }
        for (name, v) in [
            ("center_momentum", self.center_momentum),
            ("center_momentum2", self.center_momentum2),
        ] {
            if !(0.0..=1.0).contains(&v) {
                anyhow::bail!("loss {name} must lie in [0, 1], got {v}");
            }
        }
        Ok(())
    }
}

pub struct LossOutput {
    /// Scalar f32, differentiable w.r.t. the student logits.
    pub loss: Tensor,
    /// λ1-weighted CLS term.
    pub cls: f64,
    /// λ2-weighted MIM term.
    pub patch: f64,
}

/// Collapse monitors of the last `forward` (ibot-reference §7.1 step 8), computed from the same
/// inputs and the centres that step used.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TeacherStats {
    /// Mean over teacher CLS rows of the entropy (nats) of the centred, sharpened targets.
    /// Near 0: every image is sent to one prototype with certainty (sharpening dominates).
    pub entropy: f64,
    /// Entropy of the batch-mean teacher target. Near 0: all images share one prototype.
    pub marginal_entropy: f64,
    /// Fraction of images whose raw teacher argmax on global view 0 equals the raw student argmax
    /// on global view 1 (the official "acc"); `None` with a single global crop.
    pub agreement: Option<f64>,
}

pub struct IbotLoss {
    cfg: LossConfig,
    center: Tensor,
    center2: Tensor,
    temps: Vec<f64>,
    patch_temps: Vec<f64>,
    last_stats: Option<TeacherStats>,
}

/// Sum over ranks (the identity for one process).
fn reduce(comm: &dyn Collective, t: &Tensor) -> Result<Tensor> {
    if comm.world_size() == 1 {
        return Ok(t.clone());
    }
    comm.all_reduce_sum(t)
        .map_err(|e| candle_core::Error::Msg(format!("{e:#}")))
}

fn scalar(t: &Tensor) -> Result<f64> {
    t.to_dtype(DType::F64)?.to_scalar::<f64>()
}

impl IbotLoss {
    pub fn new(cfg: &LossConfig, device: &Device) -> Result<Self> {
        cfg.validate()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let temps = teacher_temp_schedule(
            cfg.warmup_teacher_temp,
            cfg.teacher_temp,
            cfg.warmup_teacher_temp_epochs,
            cfg.epochs,
            0,
        );
        let patch_temps = teacher_temp_schedule(
            cfg.warmup_teacher_patch_temp,
            cfg.teacher_patch_temp,
            cfg.warmup_teacher_temp_epochs,
            cfg.epochs,
            cfg.pred_start_epoch,
        );
        Ok(Self {
            cfg: cfg.clone(),
            center: Tensor::zeros((1, cfg.out_dim), DType::F32, device)?,
            center2: Tensor::zeros((1, 1, cfg.patch_out_dim), DType::F32, device)?,
            temps,
            patch_temps,
            last_stats: None,
        })
    }

    pub fn config(&self) -> &LossConfig {
        &self.cfg
    }

    /// (CLS, patch) teacher temperatures of `epoch`.
    pub fn teacher_temps(&self, epoch: usize) -> Result<(f64, f64)> {
        match (self.temps.get(epoch), self.patch_temps.get(epoch)) {
            (Some(t), Some(t2)) => Ok((*t, *t2)),
            _ => candle_core::bail!(
                "epoch {epoch} is past the loss schedule of {} epochs",
                self.cfg.epochs
            ),
        }
    }

    pub fn center(&self) -> &Tensor {
        &self.center
    }

    pub fn center2(&self) -> &Tensor {
        &self.center2
    }

    /// Restore the centres (resume). Shapes must be [1, K] and [1, 1, Kp]; stored as f32.
    pub fn set_centers(&mut self, center: Tensor, center2: Tensor) -> Result<()> {
        let k = self.cfg.out_dim;
        let kp = self.cfg.patch_out_dim;
        if center.dims() != [1, k] {
            candle_core::bail!("center has shape {:?}, expected [1, {k}]", center.dims());
        }
        if center2.dims() != [1, 1, kp] {
            candle_core::bail!(
                "center2 has shape {:?}, expected [1, 1, {kp}]",
                center2.dims()
            );
        }
        let device = self.center.device().clone();
        self.center = center.to_dtype(DType::F32)?.to_device(&device)?.detach();
        self.center2 = center2.to_dtype(DType::F32)?.to_device(&device)?.detach();
        Ok(())
    }

    /// Teacher statistics of the last `forward` (None before the first).
    pub fn last_stats(&self) -> Option<TeacherStats> {
        self.last_stats
    }

    /// The iBOT loss of one step with the CURRENT centres, then the centre update.
    /// Layout is crop-major: rows c·B..(c+1)·B−1 belong to crop c. `masks` [G·B, N] holds 0/1.
    /// On one rank of a data-parallel group the loss is this rank's (DDP averages the gradients),
    /// the centre update uses the batch sums all-reduced over `comm` divided by (local rows ×
    /// world size) as the official `update_center`, and the teacher statistics describe the
    /// global batch; pass [`crate::collective::SingleProcess`] for one process.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &mut self,
        student_global_cls: &Tensor,
        student_global_patch: &Tensor,
        student_local_cls: Option<&Tensor>,
        teacher_cls: &Tensor,
        teacher_patch: &Tensor,
        masks: &Tensor,
        epoch: usize,
        comm: &dyn Collective,
    ) -> Result<LossOutput> {
        let g = self.cfg.global_crops;
        let l = self.cfg.local_crops;
        let (k, kp) = (self.cfg.out_dim, self.cfg.patch_out_dim);
        let (gb, kk) = student_global_cls.dims2()?;
        if kk != k || gb % g != 0 || gb == 0 {
            candle_core::bail!(
                "student global CLS logits {:?}: expected [{g}·B, {k}]",
                student_global_cls.dims()
            );
        }
        let b = gb / g;
        let (_, n, _) = student_global_patch.dims3()?;
        let check = |name: &str, t: &Tensor, want: &[usize]| -> Result<()> {
            if t.dims() != want {
                candle_core::bail!("{name} has shape {:?}, expected {want:?}", t.dims());
            }
            Ok(())
        };
        check(
            "student global patch logits",
            student_global_patch,
            &[gb, n, kp],
        )?;
        check("teacher CLS logits", teacher_cls, &[gb, k])?;
        check("teacher patch logits", teacher_patch, &[gb, n, kp])?;
        check("masks", masks, &[gb, n])?;
        match (student_local_cls, l) {
            (None, 0) => {}
            (Some(t), l) if l > 0 => check("student local CLS logits", t, &[l * b, k])?,
            (Some(_), 0) => candle_core::bail!("local CLS logits given but local_crops is 0"),
            (None, l) => candle_core::bail!("{l} local crops configured but no local CLS logits"),
            _ => unreachable!(),
        }
        let (temp, temp2) = self.teacher_temps(epoch)?;
        let st = self.cfg.student_temp;

        let mut s_cls = student_global_cls.to_dtype(DType::F32)?;
        if let Some(local) = student_local_cls {
            s_cls = Tensor::cat(&[&s_cls, &local.to_dtype(DType::F32)?], 0)?;
        }
        let t_cls = teacher_cls.detach().to_dtype(DType::F32)?;
        let t_patch = teacher_patch.detach().to_dtype(DType::F32)?;
        let p_cls = centered_softmax(&t_cls, &self.center, temp)?;
        let p_patch = centered_softmax(&t_patch, &self.center2, temp2)?;
        let masks = masks.detach().to_dtype(DType::F32)?;
        // Patch terms pair each global view with itself: one cross-entropy over all rows.
        let patch_ce = soft_cross_entropy(student_global_patch, &p_patch, st)?;

        let mut cls_terms = Vec::new();
        let mut patch_terms = Vec::new();
        for q in 0..g {
            let pq = p_cls.narrow(0, q * b, b)?;
            for v in 0..g + l {
                if v == q {
                    let ce = patch_ce.narrow(0, q * b, b)?;
                    let m = masks.narrow(0, v * b, b)?;
                    let per_image = (ce * &m)?
                        .sum(D::Minus1)?
                        .div(&m.sum(D::Minus1)?.maximum(1.0)?)?;
                    patch_terms.push(per_image.mean_all()?);
                } else {
                    let ce = soft_cross_entropy(&s_cls.narrow(0, v * b, b)?, &pq, st)?;
                    cls_terms.push(ce.mean_all()?);
                }
            }
        }
        let n1 = cls_terms.len() as f64;
        let n2 = patch_terms.len() as f64;
        let loss_cls = ((Tensor::stack(&cls_terms, 0)?.sum_all()? / n1)? * self.cfg.lambda1)?;
        let loss_patch = ((Tensor::stack(&patch_terms, 0)?.sum_all()? / n2)? * self.cfg.lambda2)?;
        let loss = (&loss_cls + &loss_patch)?;

        self.last_stats = Some(self.teacher_stats(&p_cls, &t_cls, student_global_cls, b, comm)?);
        self.update_centers(&t_cls, &t_patch, comm)?;
        Ok(LossOutput {
            cls: scalar(&loss_cls)?,
            patch: scalar(&loss_patch)?,
            loss,
        })
    }

    /// `update_center`: batch mean of the raw teacher CLS logits, and batch mean of the per-image
    /// mean over ALL patch tokens, each folded in with its momentum.
    fn update_centers(
        &mut self,
        t_cls: &Tensor,
        t_patch: &Tensor,
        comm: &dyn Collective,
    ) -> Result<()> {
        let rows = (t_cls.dim(0)? * comm.world_size()) as f64;
        let m = self.cfg.center_momentum;
        let m2 = self.cfg.center_momentum2;
        let c = (reduce(comm, &t_cls.sum_keepdim(0)?)? / rows)?;
        self.center = ((&self.center * m)? + (c * (1.0 - m))?)?.detach();
        // Σ over images of the per-image token mean = Σ over all tokens / tokens per image.
        let (_, tokens, kp) = t_patch.dims3()?;
        let per_image_means = (sum_leading_dims(t_patch)? / tokens as f64)?.reshape((1, kp))?;
        let c2 = (reduce(comm, &per_image_means)? / rows)?.unsqueeze(0)?;
        self.center2 = ((&self.center2 * m2)? + (c2 * (1.0 - m2))?)?.detach();
        Ok(())
    }

    fn teacher_stats(
        &self,
        p_cls: &Tensor,
        t_cls: &Tensor,
        s_global_cls: &Tensor,
        b: usize,
        comm: &dyn Collective,
    ) -> Result<TeacherStats> {
        let world = comm.world_size();
        // 0·log 0 = 0: clamp inside the log only.
        let plogp = (p_cls * p_cls.clamp(1e-30, 1.0)?.log()?)?;
        let entropy = scalar(&plogp.sum(D::Minus1)?.mean_all()?.neg()?)?;
        let marginal = if world == 1 {
            p_cls.mean_keepdim(0)?
        } else {
            let rows = (p_cls.dim(0)? * world) as f64;
            (reduce(comm, &p_cls.sum_keepdim(0)?)? / rows)?
        };
        let marginal_entropy = scalar(
            &(&marginal * marginal.clamp(1e-30, 1.0)?.log()?)?
                .sum_all()?
                .neg()?,
        )?;
        let agreement = if self.cfg.global_crops >= 2 {
            let t0 = t_cls.narrow(0, 0, b)?.argmax(D::Minus1)?;
            let s1 = s_global_cls.detach().narrow(0, b, b)?.argmax(D::Minus1)?;
            let same = t0.eq(&s1)?.to_dtype(DType::F32)?.sum_all()?;
            Some(scalar(&same)? / b as f64)
        } else {
            None
        };
        // Equal batch sizes on every rank: the global means are the means of the rank means.
        let (entropy, agreement) = if world == 1 {
            (entropy, agreement)
        } else {
            let dev = p_cls.device();
            let m = mean_scalars(comm, &[entropy, agreement.unwrap_or(0.0)], dev)
                .map_err(|e| candle_core::Error::Msg(format!("{e:#}")))?;
            (m[0], agreement.map(|_| m[1]))
        };
        Ok(TeacherStats {
            entropy,
            marginal_entropy,
            agreement,
        })
    }
}
