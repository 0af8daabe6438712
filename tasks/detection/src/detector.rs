//! The two-stage detector (mmdet 2.11 `TwoStageDetector`, `mmdet/models/detectors/two_stage.py`, as
//! `MaskRCNN` and `CascadeRCNN`): iBOT's ViT with its pyramid adapter (`backbone.*`,
//! [`backbone::dense::DenseBackbone`]) → [`Fpn`] (`neck.*`) → [`RpnHead`] (`rpn_head.*`) →
//! [`RoiHead`] (`roi_head.*`).
//!
//! `losses` is `forward_train`: RPN targets on the host over every anchor of the batch-padded
//! feature maps (valid flags from each image's `pad_shape`, inside flags from its `img_shape`),
//! the two RPN losses, proposals from the detached RPN outputs (`rpn_proposal`), then the R-CNN
//! losses. `predict` is `simple_test(rescale=True)`.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use backbone::dense::DenseBackbone;
use backbone::{TrainCtx, VitConfig};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use data::detection_pipeline::DetInput;
use layers::norm::Buffers;
use rand::RngCore;

use crate::anchors::AnchorGenerator;
use crate::config::DetectionConfig;
use crate::fpn::Fpn;
use crate::proposals::rpn_proposals;
use crate::roi_heads::{ImageDetections, RoiHead};
use crate::rpn::{rpn_loss, HostLevels, RpnHead};
use crate::sampler::Draw;
use crate::structures::{BitMask, Box4, ImageMeta, ImageTargets};
use crate::targets::{rpn_num_total_samples, rpn_targets};

/// A collated batch: images zero-padded (in normalised space) to a common size, with their metas
/// and targets.
pub struct Batch {
    pub images: Tensor,
    pub metas: Vec<ImageMeta>,
    pub targets: Vec<ImageTargets>,
}

impl Batch {
    /// mmcv's `collate` of pipeline outputs: every image in the top-left corner of a zero
    /// `[B, 3, max pad_h, max pad_w]` tensor.
    pub fn collate(inputs: &[DetInput], device: &Device) -> Result<Batch> {
        if inputs.is_empty() {
            bail!("empty batch");
        }
        let h = inputs.iter().map(|i| i.meta.pad_shape.0).max().unwrap_or(0);
        let w = inputs.iter().map(|i| i.meta.pad_shape.1).max().unwrap_or(0);
        let b = inputs.len();
        let mut buf = vec![0f32; b * 3 * h * w];
        let mut metas = Vec::with_capacity(b);
        let mut targets = Vec::with_capacity(b);
        for (k, inp) in inputs.iter().enumerate() {
            let (ih, iw) = inp.meta.img_shape;
            for c in 0..3 {
                for y in 0..ih {
                    let src = &inp.image[(c * ih + y) * iw..(c * ih + y + 1) * iw];
                    let dst = ((k * 3 + c) * h + y) * w;
                    buf[dst..dst + iw].copy_from_slice(src);
                }
            }
            metas.push(ImageMeta {
                img_shape: inp.meta.img_shape,
                pad_shape: inp.meta.pad_shape,
                ori_shape: inp.meta.ori_shape,
                scale_factor: inp.meta.scale_factor,
            });
            targets.push(ImageTargets {
                boxes: inp.boxes.clone(),
                labels: inp.labels.iter().map(|&l| l as i64).collect(),
                ignore: inp.ignore.clone(),
                masks: inp
                    .masks
                    .iter()
                    .map(|m| BitMask {
                        h: m.height as usize,
                        w: m.width as usize,
                        data: m.labels.clone(),
                    })
                    .collect(),
            });
        }
        Ok(Batch {
            images: Tensor::from_vec(buf, (b, 3, h, w), device)?,
            metas,
            targets,
        })
    }
}

pub struct Detector {
    cfg: DetectionConfig,
    backbone: DenseBackbone,
    neck: Fpn,
    rpn: RpnHead,
    roi: RoiHead,
    anchors: AnchorGenerator,
    num_classes: usize,
}

/// Losses (each already weighted; their sum is the training objective) and logged scalars.
pub struct Losses {
    pub losses: BTreeMap<String, Tensor>,
    pub logs: BTreeMap<String, f64>,
}

impl Losses {
    /// mmdet's `_parse_losses`: the sum of every entry whose name contains `loss`.
    pub fn total(&self) -> Result<Tensor> {
        let mut it = self
            .losses
            .iter()
            .filter(|(k, _)| k.contains("loss"))
            .map(|(_, v)| v);
        let first = it
            .next()
            .ok_or_else(|| anyhow::anyhow!("no losses"))?
            .clone();
        Ok(it.try_fold(first, |acc, v| acc + v)?)
    }
}

impl Detector {
    /// `vb` at the model root (all keys: `backbone.*`, `neck.*`, `rpn_head.*`, `roi_head.*`).
    pub fn new(
        cfg: &DetectionConfig,
        vit: &VitConfig,
        num_classes: usize,
        vb: VarBuilder,
        buffers: &Buffers,
    ) -> Result<Self> {
        cfg.validate()?;
        let backbone = DenseBackbone::new(vit, &cfg.dense(), vb.clone(), buffers)?;
        let m = &cfg.model;
        let neck = Fpn::new(
            &[vit.embed_dim; 4],
            m.neck.out_channels,
            m.neck.num_outs,
            vb.pp("neck"),
        )?;
        let anchors = cfg.anchor_generator();
        let rpn = RpnHead::new(
            m.neck.out_channels,
            m.rpn.feat_channels,
            anchors.num_base_anchors(0),
            vb.pp("rpn_head"),
        )?;
        let roi = RoiHead::new(cfg, num_classes, vb, buffers)?;
        Ok(Detector {
            cfg: cfg.clone(),
            backbone,
            neck,
            rpn,
            roi,
            anchors,
            num_classes,
        })
    }

    pub fn config(&self) -> &DetectionConfig {
        &self.cfg
    }

    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    pub fn roi_head(&self) -> &RoiHead {
        &self.roi
    }

    /// Whether parameter `name` is trained (the backbone's rule; every head parameter is).
    pub fn is_trainable(&self, name: &str) -> bool {
        self.backbone.is_trainable(name)
    }

    /// `extract_feat`: backbone + pyramid → FPN (5 levels).
    pub fn extract_feat(
        &self,
        images: &Tensor,
        train: bool,
        ctx: Option<&mut TrainCtx>,
    ) -> Result<Vec<Tensor>> {
        let maps = self.backbone.forward_t(images, train, ctx)?;
        Ok(self.neck.forward(&maps)?)
    }

    fn featmap_sizes(levels: &[Tensor]) -> Result<Vec<(usize, usize)>> {
        levels
            .iter()
            .map(|t| {
                let (_, _, h, w) = t.dims4()?;
                Ok((h, w))
            })
            .collect()
    }

    /// `forward_train`: every loss of the batch. `rng` draws the RPN and R-CNN samples, `ctx`
    /// the backbone's drop path.
    pub fn losses(
        &self,
        batch: &Batch,
        rng: &mut dyn RngCore,
        ctx: Option<&mut TrainCtx>,
    ) -> Result<Losses> {
        let feats = self.extract_feat(&batch.images, true, ctx)?;
        let levels = self.rpn.forward(&feats)?;
        let sizes = Self::featmap_sizes(&feats)?;
        let grid = self.anchors.grid_anchors(&sizes);
        let flat: Vec<Box4> = grid.concat();
        let rpn_cfg = self.cfg.rpn_train();
        let mut rpn_t = Vec::with_capacity(batch.metas.len());
        for (m, t) in batch.metas.iter().zip(&batch.targets) {
            let valid = self.anchors.valid_flags(&sizes, m.pad_shape).concat();
            let mut draw = Draw::Random(&mut *rng);
            match rpn_targets(
                &flat,
                &valid,
                &t.boxes,
                &t.ignore,
                m.img_shape,
                &rpn_cfg,
                &mut draw,
            ) {
                Some(tg) => rpn_t.push(tg),
                None => bail!(
                    "no anchor lies inside an image of {}x{} (mmdet fails here too)",
                    m.img_shape.0,
                    m.img_shape.1
                ),
            }
        }
        let n_total = rpn_num_total_samples(&rpn_t);
        let (loss_rpn_cls, loss_rpn_bbox) =
            rpn_loss(&levels, &rpn_t, n_total, self.cfg.model.rpn.loss_bbox)?;
        let mut losses = BTreeMap::new();
        losses.insert("loss_rpn_cls".to_string(), loss_rpn_cls);
        losses.insert("loss_rpn_bbox".to_string(), loss_rpn_bbox);
        let proposals = self.proposals(&levels, &grid, &batch.metas, true)?;
        let mut logs = BTreeMap::new();
        self.roi.forward_train(
            &feats,
            proposals,
            &batch.targets,
            &batch.metas,
            Some(rng),
            &mut losses,
            &mut logs,
        )?;
        Ok(Losses { losses, logs })
    }

    fn proposals(
        &self,
        levels: &[crate::rpn::RpnLevel],
        grid: &[Vec<Box4>],
        metas: &[ImageMeta],
        train: bool,
    ) -> Result<Vec<Vec<Box4>>> {
        let host = HostLevels::new(levels)?;
        let cfg = self.cfg.proposals(train);
        Ok(metas
            .iter()
            .enumerate()
            .map(|(b, m)| {
                rpn_proposals(&host.image(b), grid, m.img_shape, &cfg)
                    .into_iter()
                    .map(|p| [p[0], p[1], p[2], p[3]])
                    .collect()
            })
            .collect())
    }

    /// `simple_test(img, img_metas, rescale=True)`: detections in original-image coordinates.
    pub fn predict(&self, images: &Tensor, metas: &[ImageMeta]) -> Result<Vec<ImageDetections>> {
        let feats = self.extract_feat(images, false, None)?;
        let levels = self.rpn.forward(&feats)?;
        let sizes = Self::featmap_sizes(&feats)?;
        let grid = self.anchors.grid_anchors(&sizes);
        let proposals = self.proposals(&levels, &grid, metas, false)?;
        Ok(self.roi.simple_test(&feats, &proposals, metas)?)
    }
}

/// f32 scalar of a 0-d loss tensor.
pub fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}
