//! Parameter groups against BEiT `get_parameter_groups`, iBOT's mmcv_custom constructor and timm's
//! `param_groups_weight_decay` (tests/reference/train_reference.py).

use serde_json::Value;
use train::param_groups::{
    beit_layer_decay, group_table, mmcv_layer_decay, timm_no_decay, ParamGroup, VIT_NO_WEIGHT_DECAY,
};

use crate::common::{golden, usize_of};

fn check(case: &Value, rule: &dyn Fn(&str, usize) -> ParamGroup) {
    let wd = case["weight_decay"].as_f64().unwrap();
    let params = case["params"].as_array().unwrap();
    let ours: Vec<(String, ParamGroup)> = params
        .iter()
        .map(|p| {
            let name = p[0].as_str().unwrap().to_string();
            let rank = p[1].as_array().unwrap().len();
            let g = rule(&name, rank);
            (name, g)
        })
        .collect();
    let table = group_table(ours.iter().map(|(n, g)| (n.as_str(), *g)), wd);
    let want = case["groups"].as_array().unwrap();
    assert_eq!(table.len(), want.len());
    for (row, w) in table.iter().zip(want) {
        assert_eq!(row.name, w["name"].as_str().unwrap());
        let scale = w["lr_scale"].as_f64().unwrap();
        assert!(
            (row.lr_scale - scale).abs() <= 1e-15 * scale.abs(),
            "{}: lr_scale {} vs {scale}",
            row.name,
            row.lr_scale
        );
        assert_eq!(
            row.weight_decay,
            w["weight_decay"].as_f64().unwrap(),
            "{}",
            row.name
        );
    }
}

#[test]
fn beit_layer_decay_matches_get_parameter_groups() {
    let g = golden("groups.json");
    for case in g["beit"].as_array().unwrap() {
        let depth = usize_of(&case["depth"]);
        let decay = case["decay"].as_f64().unwrap();
        check(case, &|n, r| {
            beit_layer_decay(n, r, depth, decay, VIT_NO_WEIGHT_DECAY)
        });
    }
}

#[test]
fn mmcv_layer_decay_matches_the_constructor() {
    let g = golden("groups.json");
    for case in g["mmcv"].as_array().unwrap() {
        let layers = usize_of(&case["num_layers"]);
        let rate = case["rate"].as_f64().unwrap();
        check(case, &|n, r| mmcv_layer_decay(n, r, layers, rate));
    }
}

#[test]
fn timm_no_decay_matches_timm() {
    let g = golden("groups.json");
    for case in g["timm"].as_array().unwrap() {
        check(case, &|n, r| timm_no_decay(n, r, VIT_NO_WEIGHT_DECAY));
    }
}
