//! Which learning-rate scale and weight-decay rule each parameter gets, by the rules of the
//! official scripts. One `ParamGroup` per parameter name; the optimizer multiplies the scheduled
//! lr by `lr_scale` and applies the scheduled weight decay only where `decay` is set.
//!
//! - [`dino_two_groups`]: DINO/iBOT `utils.get_params_groups` (pretraining): no decay for biases
//!   and 1-D parameters, everything else decays (pos_embed, cls_token and masked_embed included).
//! - [`beit_layer_decay`]: BEiT `optim_factory.get_parameter_groups` with
//!   `LayerDecayValueAssigner(decay^(L+1−i))` as `run_class_finetuning.py` builds it: names without
//!   a prefix; layer id 0 for cls_token/mask_token/pos_embed/patch_embed.*, i+1 for blocks.i.*,
//!   L+1 for the rest; no decay for 1-D, `.bias` and the skip list (`pos_embed`, `cls_token`).
//! - [`mmcv_layer_decay`]: iBOT's det/seg `LayerDecayOptimizerConstructor` (mmcv_custom): names
//!   carry the `backbone.` prefix; L+2 ids, scale `rate^(L+1−id)`; no decay for 1-D and `.bias`.
//!   Its check `name in ('pos_embed', 'cls_token')` never matches a prefixed name, so pos_embed
//!   and cls_token ARE decayed there — reproduced on purpose (dense-and-finetune.md §1.2).
//! - [`timm_no_decay`]: timm `add_weight_decay` with the model's `no_weight_decay()` skip list
//!   (DeiT/semi-supervised and transfer scripts): no layer decay.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ParamGroup {
    /// Multiplies the scheduled learning rate (layer decay; 1 without it).
    pub lr_scale: f64,
    /// Whether the scheduled weight decay applies.
    pub decay: bool,
}

impl ParamGroup {
    pub const PLAIN: ParamGroup = ParamGroup {
        lr_scale: 1.0,
        decay: true,
    };
}

/// One line of the printed group table (`ibot eval finetune --dry-run`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupRow {
    pub name: String,
    pub lr_scale: f64,
    pub weight_decay: f64,
}

/// The table of `groups` at weight decay `wd` (what each parameter actually gets).
pub fn group_table<'a>(
    groups: impl IntoIterator<Item = (&'a str, ParamGroup)>,
    wd: f64,
) -> Vec<GroupRow> {
    groups
        .into_iter()
        .map(|(name, g)| GroupRow {
            name: name.to_string(),
            lr_scale: g.lr_scale,
            weight_decay: if g.decay { wd } else { 0.0 },
        })
        .collect()
}

/// The skip list of iBOT's/timm's ViT `no_weight_decay()`.
pub const VIT_NO_WEIGHT_DECAY: &[&str] = &["pos_embed", "cls_token"];

fn no_decay_by_shape(name: &str, rank: usize) -> bool {
    rank == 1 || name.ends_with(".bias")
}

/// DINO/iBOT pretraining: biases and 1-D parameters take no weight decay.
pub fn dino_two_groups(name: &str, rank: usize) -> ParamGroup {
    ParamGroup {
        lr_scale: 1.0,
        decay: rank >= 2 && !name.ends_with(".bias"),
    }
}

/// BEiT's `get_num_layer_for_vit` (names without prefix), `num_max_layer` = depth + 2.
pub fn beit_layer_id(name: &str, num_max_layer: usize) -> usize {
    if matches!(name, "cls_token" | "mask_token" | "pos_embed") || name.starts_with("patch_embed") {
        0
    } else if name.starts_with("rel_pos_bias") {
        num_max_layer - 1
    } else if let Some(rest) = name.strip_prefix("blocks.") {
        block_index(rest).map_or(num_max_layer - 1, |i| i + 1)
    } else {
        num_max_layer - 1
    }
}

/// mmcv_custom's `get_num_layer_for_vit` (names with the `backbone.` prefix), `num_max_layer`
/// = num_layers + 2.
pub fn mmcv_layer_id(name: &str, num_max_layer: usize) -> usize {
    if matches!(
        name,
        "backbone.cls_token" | "backbone.mask_token" | "backbone.pos_embed"
    ) || name.starts_with("backbone.patch_embed")
    {
        0
    } else if let Some(rest) = name.strip_prefix("backbone.blocks.") {
        block_index(rest).map_or(num_max_layer - 1, |i| i + 1)
    } else {
        num_max_layer - 1
    }
}

fn block_index(rest: &str) -> Option<usize> {
    rest.split('.').next()?.parse().ok()
}

/// BEiT fine-tuning: `decay^(depth + 1 − layer_id)`, no decay for 1-D / `.bias` / `skip`.
pub fn beit_layer_decay(
    name: &str,
    rank: usize,
    depth: usize,
    decay: f64,
    skip: &[&str],
) -> ParamGroup {
    let id = beit_layer_id(name, depth + 2);
    ParamGroup {
        lr_scale: decay.powi((depth + 1 - id) as i32),
        decay: !(no_decay_by_shape(name, rank) || skip.contains(&name)),
    }
}

/// iBOT det/seg (mmcv_custom): `rate^(num_layers + 1 − layer_id)`, no decay for 1-D / `.bias`
/// only (pos_embed and cls_token decay, as the official constructor does).
pub fn mmcv_layer_decay(name: &str, rank: usize, num_layers: usize, rate: f64) -> ParamGroup {
    let max = num_layers + 2;
    let id = mmcv_layer_id(name, max);
    ParamGroup {
        lr_scale: rate.powi((max - id - 1) as i32),
        decay: !no_decay_by_shape(name, rank),
    }
}

/// mmcv's default constructor without paramwise options: every parameter decays (the linear
/// segmentation head's optimizer has no layer decay and no no-decay list).
pub fn mmcv_plain(_name: &str, _rank: usize) -> ParamGroup {
    ParamGroup::PLAIN
}

/// timm `add_weight_decay`: no decay for 1-D / `.bias` / `skip`, no layer decay.
pub fn timm_no_decay(name: &str, rank: usize, skip: &[&str]) -> ParamGroup {
    ParamGroup {
        lr_scale: 1.0,
        decay: !(no_decay_by_shape(name, rank) || skip.contains(&name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_ids() {
        assert_eq!(beit_layer_id("pos_embed", 14), 0);
        assert_eq!(beit_layer_id("patch_embed.proj.weight", 14), 0);
        assert_eq!(beit_layer_id("blocks.0.norm1.weight", 14), 1);
        assert_eq!(beit_layer_id("blocks.11.mlp.fc2.bias", 14), 12);
        assert_eq!(beit_layer_id("norm.weight", 14), 13);
        assert_eq!(beit_layer_id("head.weight", 14), 13);
        assert_eq!(mmcv_layer_id("backbone.cls_token", 14), 0);
        assert_eq!(mmcv_layer_id("backbone.blocks.3.attn.qkv.weight", 14), 4);
        assert_eq!(mmcv_layer_id("backbone.fpn1.0.weight", 14), 13);
        assert_eq!(mmcv_layer_id("decode_head.conv_seg.weight", 14), 13);
    }

    #[test]
    fn mmcv_decays_pos_embed_beit_does_not() {
        assert!(mmcv_layer_decay("backbone.pos_embed", 3, 12, 0.65).decay);
        assert!(!beit_layer_decay("pos_embed", 3, 12, 0.65, VIT_NO_WEIGHT_DECAY).decay);
        let g = mmcv_layer_decay("backbone.pos_embed", 3, 12, 0.5);
        assert_eq!(g.lr_scale, 0.5f64.powi(13));
        let g = beit_layer_decay("head.weight", 2, 12, 0.5, VIT_NO_WEIGHT_DECAY);
        assert_eq!(g.lr_scale, 1.0);
    }
}
