//! mmdet 2.11's `CascadeRoIHead` (`mmdet/models/roi_heads/cascade_roi_head.py`) and, as its
//! one-stage case, `StandardRoIHead` (`standard_roi_head.py`) with `test_mixins.py`.
//!
//! Training, per stage i (weight `lw_i`): assign every image's proposals to its gts (the stage's
//! `MaxIoUAssigner`), sample (`RandomSampler`, gts added as proposals), RoIAlign the sampled boxes
//! (positives first, then negatives, per image) at 7×7, the box head and `BBoxHead.loss`; RoIAlign
//! the positives at 14×14, the mask head and the mask loss against the 28×28 targets of the gt
//! bitmaps; losses × `lw_i`. Between stages, without gradient: the labels of negatives become the
//! arg-max of the foreground logits, boxes are regressed by class and clipped to `img_shape`, and
//! the gts injected as proposals are dropped (`refine_bboxes`, `pos_is_gt`).
//!
//! Test (`simple_test`): the proposals pass every box head in turn (each stage regresses the RoIs
//! for the next by its arg-max class); the stages' raw logits are averaged; the last stage's deltas
//! are decoded, clipped, rescaled to the original image and `multiclass_nms`'d; the masks of every
//! stage's mask head on the detections (× scale_factor) are sigmoided, averaged (`merge_aug_masks`),
//! and pasted onto the original image at the threshold.

use std::collections::BTreeMap;

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;
use layers::norm::Buffers;
use layers::roi_align::SingleRoIExtractor;
use rand::RngCore;

use crate::assigner::MaxIoUAssigner;
use crate::box_coder::DeltaXYWHBBoxCoder;
use crate::config::{DetectionConfig, Kind, RegLoss};
use crate::postprocess::{
    average_stage_logits, bbox_head_get_bboxes, get_seg_masks, mask_targets, RcnnTestConfig,
};
use crate::roi_heads::box_head::{argmax_first, box_loss, BoxHead};
use crate::roi_heads::mask_head::{mask_loss, select_class, MaskHead};
use crate::sampler::{Draw, RandomSampler, SamplingResult};
use crate::structures::{bbox2roi, Box4, ImageMeta, ImageTargets, Roi};
use crate::targets::{
    bbox_head_targets, refine_bboxes, regress_by_class, stage_roi_labels, RoiTargets,
};

/// One stage: its heads and its training rules.
pub struct Stage {
    pub box_head: BoxHead,
    pub mask_head: MaskHead,
    pub assigner: MaxIoUAssigner,
    pub sampler: RandomSampler,
    pub coder: DeltaXYWHBBoxCoder,
    pub loss_weight: f64,
}

pub struct RoiHead {
    kind: Kind,
    stages: Vec<Stage>,
    bbox_extractor: SingleRoIExtractor,
    mask_extractor: SingleRoIExtractor,
    loss_bbox: RegLoss,
    reg_decoded_bbox: bool,
    num_classes: usize,
    mask_size: usize,
    test: RcnnTestConfig,
}

/// The detections of one image, in the original image's coordinates: boxes with scores in
/// `multiclass_nms` order, 0-based labels, and one mask per detection (row-major `ori_shape`).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageDetections {
    pub boxes: Vec<[f32; 5]>,
    pub labels: Vec<i64>,
    pub masks: Vec<Vec<bool>>,
    pub ori_shape: (usize, usize),
}

fn host(t: &Tensor) -> Result<Vec<f32>> {
    t.detach().to_dtype(DType::F32)?.flatten_all()?.to_vec1()
}

fn concat_targets(parts: Vec<RoiTargets>) -> RoiTargets {
    let mut out = RoiTargets {
        labels: Vec::new(),
        label_weights: Vec::new(),
        bbox_targets: Vec::new(),
        bbox_weights: Vec::new(),
    };
    for p in parts {
        out.labels.extend(p.labels);
        out.label_weights.extend(p.label_weights);
        out.bbox_targets.extend(p.bbox_targets);
        out.bbox_weights.extend(p.bbox_weights);
    }
    out
}

impl RoiHead {
    /// `vb` at the model root: Mask R-CNN reads `roi_head.bbox_head.*` / `roi_head.mask_head.*`,
    /// the cascade `roi_head.bbox_head.{i}.*` / `roi_head.mask_head.{i}.*`.
    pub fn new(
        cfg: &DetectionConfig,
        num_classes: usize,
        vb: VarBuilder,
        buffers: &Buffers,
    ) -> Result<Self> {
        let m = &cfg.model;
        let c = m.neck.out_channels;
        let n = cfg.num_stages();
        let mut stages = Vec::with_capacity(n);
        for i in 0..n {
            let (bvb, mvb) = match m.kind {
                Kind::MaskRcnn => (vb.pp("roi_head.bbox_head"), vb.pp("roi_head.mask_head")),
                Kind::CascadeMaskRcnn => (
                    vb.pp(format!("roi_head.bbox_head.{i}")),
                    vb.pp(format!("roi_head.mask_head.{i}")),
                ),
            };
            stages.push(Stage {
                box_head: BoxHead::new(
                    &m.box_head,
                    c,
                    m.roi.bbox_roi_size,
                    num_classes,
                    bvb,
                    buffers,
                )?,
                mask_head: MaskHead::new(
                    m.mask_head.num_convs,
                    c,
                    m.mask_head.channels,
                    num_classes,
                    mvb,
                    buffers,
                )?,
                assigner: cfg.rcnn_assigner(i),
                sampler: cfg.rcnn_sampler(),
                coder: cfg.stage_coder(i),
                loss_weight: m.roi.stage_loss_weights[i],
            });
        }
        let extractor = |out: usize| SingleRoIExtractor {
            out_size: out,
            featmap_strides: vec![4, 8, 16, 32],
            finest_scale: m.roi.finest_scale,
            sampling_ratio: 0,
            aligned: true,
        };
        Ok(RoiHead {
            kind: m.kind,
            stages,
            bbox_extractor: extractor(m.roi.bbox_roi_size),
            mask_extractor: extractor(m.roi.mask_roi_size),
            loss_bbox: m.box_head.loss_bbox,
            reg_decoded_bbox: m.box_head.reg_decoded_bbox,
            num_classes,
            mask_size: m.roi.mask_size,
            test: cfg.rcnn_test(),
        })
    }

    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }

    fn prefix(&self, i: usize) -> String {
        match self.kind {
            Kind::MaskRcnn => String::new(),
            Kind::CascadeMaskRcnn => format!("s{i}."),
        }
    }

    /// `forward_train`: adds this head's losses to `losses` (already weighted) and its accuracies
    /// to `logs`. `proposals[b]` are image b's proposal boxes; `rng` draws the samples (`None`: the
    /// deterministic first-k mode of the goldens).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_train(
        &self,
        feats: &[Tensor],
        mut proposals: Vec<Vec<Box4>>,
        targets: &[ImageTargets],
        metas: &[ImageMeta],
        mut rng: Option<&mut dyn RngCore>,
        losses: &mut BTreeMap<String, Tensor>,
        logs: &mut BTreeMap<String, f64>,
    ) -> Result<()> {
        let nimg = targets.len();
        let k = self.num_classes;
        for (i, stage) in self.stages.iter().enumerate() {
            let lw = stage.loss_weight;
            let p = self.prefix(i);
            let mut sampling: Vec<SamplingResult> = Vec::with_capacity(nimg);
            for (j, t) in targets.iter().enumerate() {
                let mut assign =
                    stage
                        .assigner
                        .assign(&proposals[j], &t.boxes, &t.ignore, Some(&t.labels));
                let mut draw = match rng.as_deref_mut() {
                    Some(r) => Draw::Random(r),
                    None => Draw::FirstK,
                };
                sampling.push(stage.sampler.sample(
                    &mut assign,
                    &proposals[j],
                    &t.boxes,
                    Some(&t.labels),
                    &mut draw,
                ));
            }
            // bbox head
            let per_image: Vec<Vec<Box4>> = sampling.iter().map(|s| s.sampled_bboxes()).collect();
            let rois: Vec<Roi> = bbox2roi(&per_image);
            let flat_rois: Vec<Box4> = per_image.concat();
            let bbox_feats = self.bbox_extractor.forward(feats, &rois)?;
            let (cls_score, bbox_pred) = stage.box_head.forward_t(&bbox_feats, true)?;
            let tgts = concat_targets(
                sampling
                    .iter()
                    .map(|s| bbox_head_targets(s, k, self.reg_decoded_bbox, &stage.coder, -1.0))
                    .collect(),
            );
            let bl = box_loss(
                &cls_score,
                &bbox_pred,
                &flat_rois,
                &tgts,
                k,
                stage.box_head.class_agnostic(),
                self.loss_bbox,
                &stage.coder,
            )?;
            losses.insert(format!("{p}loss_cls"), bl.loss_cls.affine(lw, 0.0)?);
            losses.insert(format!("{p}loss_bbox"), bl.loss_bbox.affine(lw, 0.0)?);
            logs.insert(format!("{p}acc"), bl.acc);
            // mask head on the positives
            let pos: Vec<Vec<Box4>> = sampling.iter().map(|s| s.pos_bboxes.clone()).collect();
            let pos_rois = bbox2roi(&pos);
            let mut mtargets = Vec::new();
            let mut mlabels = Vec::new();
            for (s, t) in sampling.iter().zip(targets) {
                mtargets.extend(mask_targets(
                    &s.pos_bboxes,
                    &s.pos_assigned_gt_inds,
                    &t.masks,
                    self.mask_size,
                ));
                mlabels.extend(s.pos_gt_labels.clone().unwrap_or_default());
            }
            let lm = if pos_rois.is_empty() {
                // mmdet returns `mask_pred.sum()` of zero RoIs: 0, no gradient
                Tensor::zeros((), feats[0].dtype(), feats[0].device())?
            } else {
                let mf = self.mask_extractor.forward(feats, &pos_rois)?;
                mask_loss(&stage.mask_head.forward(&mf)?, &mtargets, &mlabels)?
            };
            losses.insert(format!("{p}loss_mask"), lm.affine(lw, 0.0)?);
            // refine the boxes for the next stage, without gradient
            if i + 1 < self.stages.len() {
                let scores = host(&cls_score)?;
                let roi_labels = stage_roi_labels(&tgts.labels, &scores, k);
                let preds = host(&bbox_pred)?;
                let pos_is_gts: Vec<Vec<bool>> =
                    sampling.iter().map(|s| s.pos_is_gt.clone()).collect();
                let shapes: Vec<(usize, usize)> = metas.iter().map(|m| m.img_shape).collect();
                proposals = refine_bboxes(
                    &rois,
                    &roi_labels,
                    &preds,
                    &pos_is_gts,
                    &shapes,
                    &stage.coder,
                );
            }
        }
        Ok(())
    }

    /// `simple_test(x, proposal_list, img_metas, rescale=True)`.
    pub fn simple_test(
        &self,
        feats: &[Tensor],
        proposals: &[Vec<Box4>],
        metas: &[ImageMeta],
    ) -> Result<Vec<ImageDetections>> {
        let nimg = proposals.len();
        let k = self.num_classes;
        let mut rois_img: Vec<Vec<Box4>> = proposals.to_vec();
        let mut ms_scores: Vec<Vec<Vec<f32>>> = Vec::new();
        let mut last_pred: Vec<Vec<f32>> = Vec::new();
        let ns = self.stages.len();
        for (i, stage) in self.stages.iter().enumerate() {
            let rois = bbox2roi(&rois_img);
            let (cls, pred) = if rois.is_empty() {
                (Vec::new(), Vec::new())
            } else {
                let f = self.bbox_extractor.forward(feats, &rois)?;
                let (c, p) = stage.box_head.forward_t(&f, false)?;
                (host(&c)?, host(&p)?)
            };
            let cols = if rois.is_empty() {
                0
            } else {
                pred.len() / rois.len()
            };
            let mut start = 0;
            let mut scores_i = Vec::with_capacity(nimg);
            let mut preds_i = Vec::with_capacity(nimg);
            for r in &rois_img {
                let n = r.len();
                scores_i.push(cls[start * (k + 1)..(start + n) * (k + 1)].to_vec());
                preds_i.push(pred[start * cols..(start + n) * cols].to_vec());
                start += n;
            }
            if i + 1 < ns {
                for (j, r) in rois_img.iter_mut().enumerate() {
                    let labels: Vec<i64> = scores_i[j]
                        .chunks(k + 1)
                        .map(|row| argmax_first(&row[..k]) as i64)
                        .collect();
                    *r =
                        regress_by_class(r, &labels, &preds_i[j], metas[j].img_shape, &stage.coder);
                }
            }
            ms_scores.push(scores_i);
            last_pred = preds_i;
        }
        let coder = &self.stages[ns - 1].coder;
        let mut out = Vec::with_capacity(nimg);
        for j in 0..nimg {
            let stage_scores: Vec<&[f32]> = ms_scores.iter().map(|s| s[j].as_slice()).collect();
            let logits = if ns == 1 {
                stage_scores[0].to_vec()
            } else {
                average_stage_logits(&stage_scores)
            };
            let (boxes, labels) = bbox_head_get_bboxes(
                &rois_img[j],
                &logits,
                &last_pred[j],
                metas[j].img_shape,
                Some(metas[j].scale_factor),
                coder,
                &self.test,
            );
            out.push(ImageDetections {
                boxes,
                labels,
                masks: Vec::new(),
                ori_shape: metas[j].ori_shape,
            });
        }
        self.add_masks(feats, metas, &mut out)?;
        Ok(out)
    }

    fn add_masks(
        &self,
        feats: &[Tensor],
        metas: &[ImageMeta],
        dets: &mut [ImageDetections],
    ) -> Result<()> {
        // mask RoIs: the detections back in the resized image (× scale_factor)
        let per_image: Vec<Vec<Box4>> = dets
            .iter()
            .zip(metas)
            .map(|(d, m)| {
                d.boxes
                    .iter()
                    .map(|b| std::array::from_fn(|c| b[c] * m.scale_factor[c]))
                    .collect()
            })
            .collect();
        let rois = bbox2roi(&per_image);
        if rois.is_empty() {
            return Ok(());
        }
        let mf = self.mask_extractor.forward(feats, &rois)?;
        let labels: Vec<i64> = dets.iter().flat_map(|d| d.labels.iter().copied()).collect();
        let mut sum: Option<Vec<f32>> = None;
        for stage in &self.stages {
            let logits = select_class(&stage.mask_head.forward(&mf)?, &labels)?;
            let probs = host(&candle_nn::ops::sigmoid(&logits)?)?;
            sum = Some(match sum {
                None => probs,
                Some(s) => s.iter().zip(&probs).map(|(a, b)| a + b).collect(),
            });
        }
        let n = self.stages.len() as f32;
        let probs: Vec<f32> = sum
            .expect("at least one stage")
            .into_iter()
            .map(|v| if n == 1.0 { v } else { v / n })
            .collect();
        let mm = self.mask_size * self.mask_size;
        let mut start = 0;
        for (d, m) in dets.iter_mut().zip(metas) {
            let nd = d.boxes.len();
            let boxes: Vec<Box4> = d.boxes.iter().map(|b| [b[0], b[1], b[2], b[3]]).collect();
            d.masks = get_seg_masks(
                &probs[start * mm..(start + nd) * mm],
                self.mask_size,
                &boxes,
                m.scale_factor,
                m.ori_shape,
                self.test.mask_thr_binary,
            );
            start += nd;
        }
        Ok(())
    }
}
