//! Detection recipes (`configs/detection/*.toml`). Every default is the official value of iBOT's
//! Cascade Mask R-CNN (`evaluation/object_detection/configs/_base_/models/cascade_mask_rcnn_vit_fpn.py`
//! with the `cascade_rcnn/vit_small_giou_4conv1f_coco_3x.py` overrides, `_base_/schedules/
//! schedule_1x.py`, `_base_/datasets/coco_instance.py`, the README's 1× command) unless a field says
//! otherwise; `kind = "mask_rcnn"` switches to mmdet 2.11's `mask_rcnn_r50_fpn.py` head settings
//! only where the recipe spells them out (see `configs/detection/demo.toml`).
//!
//! The number of classes is not part of the recipe: it comes from the data (the categories of the
//! COCO file, mapped to contiguous labels).

use std::path::Path;

use anyhow::{bail, Context, Result};
use backbone::dense::DenseConfig;
use data::detection_pipeline::{DetTestPipeline, DetTrainPipeline, Step, MMDET_MEAN, MMDET_STD};
use data::transforms::Interpolation;
use serde::{Deserialize, Serialize};

use crate::anchors::AnchorGenerator;
use crate::assigner::{MaxIoUAssigner, NegThr};
use crate::box_coder::{DeltaXYWHBBoxCoder, CASCADE_STDS};
use crate::nms::NmsConfig;
use crate::postprocess::RcnnTestConfig;
use crate::proposals::ProposalConfig;
use crate::sampler::RandomSampler;
use crate::targets::RpnTrainConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// mmdet `MaskRCNN` (`StandardRoIHead`): one box head, one mask head; losses `loss_cls`,
    /// `loss_bbox`, `loss_mask`.
    MaskRcnn,
    /// mmdet `CascadeRCNN` (`CascadeRoIHead`): one box and one mask head per stage; losses
    /// `s{i}.loss_cls`, `s{i}.loss_bbox`, `s{i}.loss_mask`, weighted by the stage weights.
    CascadeMaskRcnn,
}

/// A regression loss (`loss_bbox`) of the RPN or a box head.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RegLoss {
    /// mmdet `L1Loss(loss_weight)`.
    L1 { weight: f64 },
    /// mmdet `SmoothL1Loss(beta, loss_weight)`.
    SmoothL1 { beta: f64, weight: f64 },
    /// mmdet `GIoULoss(eps=1e-6, loss_weight)` on decoded boxes (needs `reg_decoded_bbox`).
    Giou { weight: f64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BoxHeadKind {
    /// `Shared2FCBBoxHead`: flatten → 2 × (FC + ReLU).
    Shared2fc,
    /// `ConvFCBBoxHead(num_shared_convs=4, num_shared_fcs=1)` with `norm_cfg=SyncBN` (iBOT's
    /// "4conv1f"): 4 × (3×3 conv → BN → ReLU) → flatten → FC + ReLU.
    Conv4fc1,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NeckConfig {
    /// FPN `out_channels`.
    pub out_channels: usize,
    /// FPN `num_outs` (5: P2–P5 plus P6 = `max_pool2d(P5, 1, stride=2)`, `add_extra_convs=False`).
    pub num_outs: usize,
}

impl Default for NeckConfig {
    fn default() -> Self {
        NeckConfig {
            out_channels: 256,
            num_outs: 5,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RpnConfig {
    pub feat_channels: usize,
    pub anchor_scales: Vec<f32>,
    pub anchor_ratios: Vec<f32>,
    pub anchor_strides: Vec<u32>,
    pub loss_bbox: RegLoss,
    pub pos_iou_thr: f32,
    pub neg_iou_thr: f32,
    pub min_pos_iou: f32,
    pub num_samples: usize,
    pub pos_fraction: f32,
    /// `allowed_border`: 0 (cascade: anchors crossing the image edge are not trained) or −1 (all
    /// valid anchors, mmdet's Mask R-CNN).
    pub allowed_border: f32,
    /// `rpn_proposal` (training): top-k per level, kept per image.
    pub train_nms_pre: usize,
    pub train_max_per_img: usize,
    /// `test_cfg.rpn`.
    pub test_nms_pre: usize,
    pub test_max_per_img: usize,
    pub nms_iou: f64,
}

impl Default for RpnConfig {
    fn default() -> Self {
        RpnConfig {
            feat_channels: 256,
            anchor_scales: vec![8.0],
            anchor_ratios: vec![0.5, 1.0, 2.0],
            anchor_strides: vec![4, 8, 16, 32, 64],
            loss_bbox: RegLoss::SmoothL1 {
                beta: 1.0 / 9.0,
                weight: 1.0,
            },
            pos_iou_thr: 0.7,
            neg_iou_thr: 0.3,
            min_pos_iou: 0.3,
            num_samples: 256,
            pos_fraction: 0.5,
            allowed_border: 0.0,
            train_nms_pre: 2000,
            train_max_per_img: 2000,
            test_nms_pre: 1000,
            test_max_per_img: 1000,
            nms_iou: 0.7,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoiConfig {
    /// `SingleRoIExtractor.finest_scale`.
    pub finest_scale: f32,
    pub bbox_roi_size: usize,
    pub mask_roi_size: usize,
    /// `mask_size` of the targets (the mask head outputs 2 × `mask_roi_size`).
    pub mask_size: usize,
    pub num_samples: usize,
    pub pos_fraction: f32,
    pub add_gt_as_proposals: bool,
    /// One entry per stage (1 for Mask R-CNN): assigner pos = neg = min_pos IoU.
    pub stage_iou_thrs: Vec<f32>,
    pub stage_loss_weights: Vec<f64>,
    /// Box-coder `target_stds` per stage.
    pub stage_stds: Vec<[f32; 4]>,
    /// `match_low_quality` of the R-CNN assigners (cascade: false; mmdet's Mask R-CNN: true).
    pub match_low_quality: bool,
}

impl Default for RoiConfig {
    fn default() -> Self {
        RoiConfig {
            finest_scale: 56.0,
            bbox_roi_size: 7,
            mask_roi_size: 14,
            mask_size: 28,
            num_samples: 512,
            pos_fraction: 0.25,
            add_gt_as_proposals: true,
            stage_iou_thrs: vec![0.5, 0.6, 0.7],
            stage_loss_weights: vec![1.0, 0.5, 0.25],
            stage_stds: CASCADE_STDS.to_vec(),
            match_low_quality: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BoxHeadConfig {
    pub kind: BoxHeadKind,
    pub conv_channels: usize,
    pub fc_channels: usize,
    pub reg_class_agnostic: bool,
    /// Regress decoded boxes (`reg_decoded_bbox`: iBOT's GIoU heads) instead of deltas.
    pub reg_decoded_bbox: bool,
    pub loss_bbox: RegLoss,
}

impl Default for BoxHeadConfig {
    fn default() -> Self {
        BoxHeadConfig {
            kind: BoxHeadKind::Conv4fc1,
            conv_channels: 256,
            fc_channels: 1024,
            reg_class_agnostic: false,
            reg_decoded_bbox: true,
            loss_bbox: RegLoss::Giou { weight: 10.0 },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaskHeadConfig {
    pub num_convs: usize,
    pub channels: usize,
}

impl Default for MaskHeadConfig {
    fn default() -> Self {
        MaskHeadConfig {
            num_convs: 4,
            channels: 256,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub kind: Kind,
    /// Blocks whose outputs feed the pyramid (0-based).
    pub out_indices: Vec<usize>,
    pub drop_path: f64,
    /// The backbone's `img_size` (rows, cols): `pos_embed` is resized to `img_size / patch` at load.
    pub img_size: [usize; 2],
    /// `out_with_norm` (detection: false).
    pub out_with_norm: bool,
    pub neck: NeckConfig,
    pub rpn: RpnConfig,
    pub roi: RoiConfig,
    pub box_head: BoxHeadConfig,
    pub mask_head: MaskHeadConfig,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            kind: Kind::CascadeMaskRcnn,
            out_indices: vec![3, 5, 7, 11],
            drop_path: 0.1,
            img_size: [800, 1008],
            out_with_norm: false,
            neck: NeckConfig::default(),
            rpn: RpnConfig::default(),
            roi: RoiConfig::default(),
            box_head: BoxHeadConfig::default(),
            mask_head: MaskHeadConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub epochs: usize,
    /// Epochs after which the lr is multiplied by `gamma` (mmcv `StepLrUpdaterHook`).
    pub steps: Vec<usize>,
    pub gamma: f64,
    /// Total images per step (one process here; officially 8 GPUs × samples_per_gpu).
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub betas: [f64; 2],
    /// mmcv_custom `LayerDecayOptimizerConstructor`: `layer_decay_rate`, `num_layers`.
    pub layer_decay_rate: f64,
    pub layer_decay_num_layers: usize,
    pub warmup_iters: usize,
    pub warmup_ratio: f64,
    /// Global gradient-norm clipping (`optimizer_config.grad_clip`); `None` = off (official).
    pub clip_grad: Option<f64>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 12,
            steps: vec![8, 11],
            gamma: 0.1,
            batch_size: 32,
            lr: 1e-4,
            weight_decay: 0.05,
            betas: [0.9, 0.999],
            layer_decay_rate: 0.8,
            layer_decay_num_layers: 12,
            warmup_iters: 500,
            warmup_ratio: 0.001,
            clip_grad: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// iBOT's DETR-style `AutoAugment` pair (multi-scale resize | resize → crop → resize), sizes
    /// multiplied by `size_scale`.
    Detr,
    /// mmdet's plain `Resize(img_scale=train_scales, multiscale_mode='value', keep_ratio=True)`.
    Resize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    pub flip_ratio: f64,
    pub policy: Policy,
    /// Multiplies every size of the DETR policy (1 = official).
    pub size_scale: f64,
    /// Scales of the `resize` policy, mmdet `(long, short)` pairs.
    pub train_scales: Vec<[u32; 2]>,
    /// The test `img_scale` (1333, 800).
    pub test_scale: [u32; 2],
    pub pad_divisor: u32,
    /// Resampling filter of the images (PIL kernels).
    pub interpolation: String,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            flip_ratio: 0.5,
            policy: Policy::Detr,
            size_scale: 1.0,
            train_scales: vec![[1333, 800]],
            test_scale: [1333, 800],
            pad_divisor: 32,
            interpolation: "bilinear".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TestConfig {
    pub score_thr: f32,
    pub nms_iou: f64,
    pub max_per_img: i64,
    pub mask_thr_binary: f32,
}

impl Default for TestConfig {
    fn default() -> Self {
        TestConfig {
            score_thr: 0.05,
            nms_iou: 0.5,
            max_per_img: 100,
            mask_thr_binary: 0.5,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    pub seed: u64,
    /// Also checkpoint every this many steps (0: at epoch ends only).
    pub checkpoint_every: usize,
    pub log_every: usize,
    /// `auto` | `f32` (mixed precision is not implemented for detection yet).
    pub precision: String,
    /// Evaluate every this many epochs (0: only after the last).
    pub eval_every: usize,
    /// Images per inference batch.
    pub eval_batch_size: usize,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            seed: 0,
            checkpoint_every: 0,
            log_every: 1,
            precision: "auto".into(),
            eval_every: 0,
            eval_batch_size: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectionConfig {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Every way the recipe departs from the official one.
    #[serde(default)]
    pub deviations: Vec<String>,
    #[serde(default)]
    pub model: ModelConfig,
    #[serde(default)]
    pub train: TrainConfig,
    #[serde(default)]
    pub data: PipelineConfig,
    #[serde(default)]
    pub test: TestConfig,
    #[serde(default)]
    pub run: RunConfig,
}

impl DetectionConfig {
    /// Reads and validates a TOML recipe.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates a recipe's text; `what` names it in errors.
    pub fn parse(text: &str, what: &str) -> Result<Self> {
        let cfg: DetectionConfig =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{what}: invalid recipe: {e}"))?;
        cfg.validate().with_context(|| format!("checking {what}"))?;
        Ok(cfg)
    }

    /// The official iBOT Cascade Mask R-CNN recipe (ViT-S/16, README 1× values).
    pub fn cascade_mask_rcnn_ibot() -> Self {
        DetectionConfig {
            name: "cascade_mask_rcnn_vit_small_giou_4conv1f_coco_1x".into(),
            description: None,
            deviations: Vec::new(),
            model: ModelConfig::default(),
            train: TrainConfig::default(),
            data: PipelineConfig::default(),
            test: TestConfig::default(),
            run: RunConfig::default(),
        }
    }

    pub fn num_stages(&self) -> usize {
        self.model.roi.stage_iou_thrs.len()
    }

    pub fn validate(&self) -> Result<()> {
        let m = &self.model;
        let r = &m.roi;
        let n = r.stage_iou_thrs.len();
        if n == 0 {
            bail!("model.roi.stage_iou_thrs is empty");
        }
        if r.stage_loss_weights.len() != n || r.stage_stds.len() != n {
            bail!(
                "model.roi: {n} stage IoU thresholds but {} loss weights and {} std sets",
                r.stage_loss_weights.len(),
                r.stage_stds.len()
            );
        }
        match m.kind {
            Kind::MaskRcnn if n != 1 => bail!("a mask_rcnn has one stage, got {n}"),
            Kind::CascadeMaskRcnn if n < 2 => bail!("a cascade needs at least two stages"),
            _ => {}
        }
        if m.out_indices.len() != 4 {
            bail!(
                "model.out_indices must name 4 blocks (the pyramid has 4 levels), got {:?}",
                m.out_indices
            );
        }
        if m.neck.num_outs != 5 || m.rpn.anchor_strides.len() != 5 {
            bail!("the FPN has 5 outputs (P2–P6) and the RPN one anchor stride per output");
        }
        if m.box_head.reg_decoded_bbox != matches!(m.box_head.loss_bbox, RegLoss::Giou { .. }) {
            bail!("model.box_head: reg_decoded_bbox goes with the GIoU loss and only with it");
        }
        if matches!(m.rpn.loss_bbox, RegLoss::Giou { .. }) {
            bail!("model.rpn.loss_bbox: GIoU is not supported for the RPN");
        }
        if r.mask_size != 2 * r.mask_roi_size {
            bail!(
                "model.roi.mask_size ({}) must be twice mask_roi_size ({}): the mask head upsamples ×2",
                r.mask_size,
                r.mask_roi_size
            );
        }
        let t = &self.train;
        if t.epochs == 0 || t.batch_size == 0 {
            bail!("train.epochs and train.batch_size must be positive");
        }
        if self.run.eval_batch_size == 0 {
            bail!("run.eval_batch_size must be positive");
        }
        if !matches!(self.run.precision.as_str(), "auto" | "f32") {
            bail!(
                "run.precision {:?}: detection runs in f32 (\"auto\" or \"f32\")",
                self.run.precision
            );
        }
        self.interpolation()?;
        self.train_pipeline()?
            .validate()
            .map_err(|e| anyhow::anyhow!("data: {e}"))?;
        Ok(())
    }

    fn interpolation(&self) -> Result<Interpolation> {
        self.data
            .interpolation
            .parse()
            .map_err(|e: String| anyhow::anyhow!("data.interpolation: {e}"))
    }

    /// The backbone wrapper's settings.
    pub fn dense(&self) -> DenseConfig {
        DenseConfig {
            out_indices: self.model.out_indices.clone(),
            out_with_norm: self.model.out_with_norm,
            with_fpn: true,
            img_size: self.model.img_size,
            drop_path: self.model.drop_path,
            frozen: false,
        }
    }

    pub fn train_pipeline(&self) -> Result<DetTrainPipeline> {
        let d = &self.data;
        let policies = match d.policy {
            Policy::Detr => DetTrainPipeline::detr_policies(d.size_scale),
            Policy::Resize => vec![vec![Step::Resize {
                scales: d.train_scales.clone(),
            }]],
        };
        Ok(DetTrainPipeline {
            flip_ratio: d.flip_ratio,
            policies,
            mean: MMDET_MEAN,
            std: MMDET_STD,
            pad_divisor: d.pad_divisor,
            interpolation: self.interpolation()?,
        })
    }

    pub fn test_pipeline(&self) -> Result<DetTestPipeline> {
        Ok(DetTestPipeline {
            scale: self.data.test_scale,
            mean: MMDET_MEAN,
            std: MMDET_STD,
            pad_divisor: self.data.pad_divisor,
            interpolation: self.interpolation()?,
        })
    }

    pub fn anchor_generator(&self) -> AnchorGenerator {
        let r = &self.model.rpn;
        AnchorGenerator::new(
            &r.anchor_strides,
            &r.anchor_ratios,
            &r.anchor_scales,
            None,
            true,
            0.0,
        )
    }

    pub fn rpn_train(&self) -> RpnTrainConfig {
        let r = &self.model.rpn;
        RpnTrainConfig {
            assigner: MaxIoUAssigner {
                pos_iou_thr: r.pos_iou_thr,
                neg_iou_thr: NegThr::Below(r.neg_iou_thr),
                min_pos_iou: r.min_pos_iou,
                gt_max_assign_all: true,
                ignore_iof_thr: -1.0,
                ignore_wrt_candidates: true,
                match_low_quality: true,
            },
            sampler: RandomSampler {
                num: r.num_samples,
                pos_fraction: r.pos_fraction,
                neg_pos_ub: -1.0,
                add_gt_as_proposals: false,
            },
            allowed_border: r.allowed_border,
            pos_weight: -1.0,
        }
    }

    pub fn proposals(&self, train: bool) -> ProposalConfig {
        let r = &self.model.rpn;
        ProposalConfig {
            nms_pre: if train {
                r.train_nms_pre
            } else {
                r.test_nms_pre
            },
            max_per_img: if train {
                r.train_max_per_img
            } else {
                r.test_max_per_img
            },
            iou_threshold: r.nms_iou,
            min_bbox_size: 0.0,
        }
    }

    /// The assigner of R-CNN stage `i`.
    pub fn rcnn_assigner(&self, i: usize) -> MaxIoUAssigner {
        let iou = self.model.roi.stage_iou_thrs[i];
        MaxIoUAssigner {
            match_low_quality: self.model.roi.match_low_quality,
            ..MaxIoUAssigner::rcnn(iou)
        }
    }

    pub fn rcnn_sampler(&self) -> RandomSampler {
        let r = &self.model.roi;
        RandomSampler {
            num: r.num_samples,
            pos_fraction: r.pos_fraction,
            neg_pos_ub: -1.0,
            add_gt_as_proposals: r.add_gt_as_proposals,
        }
    }

    pub fn stage_coder(&self, i: usize) -> DeltaXYWHBBoxCoder {
        DeltaXYWHBBoxCoder::new([0.0; 4], self.model.roi.stage_stds[i])
    }

    pub fn rcnn_test(&self) -> RcnnTestConfig {
        let t = &self.test;
        RcnnTestConfig {
            score_thr: t.score_thr,
            nms: NmsConfig::iou(t.nms_iou),
            max_per_img: t.max_per_img,
            mask_thr_binary: t.mask_thr_binary,
        }
    }
}
