//! The recipes in configs/detection/: every file parses (unknown fields are errors) and validates;
//! the ViT-S recipe is the built-in official default, field for field.

use std::path::PathBuf;

use detection::config::{DetectionConfig, Kind};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs/detection")
}

#[test]
fn every_recipe_parses_and_validates() {
    let mut n = 0;
    for e in std::fs::read_dir(dir()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().and_then(|s| s.to_str()) == Some("toml") {
            let cfg = DetectionConfig::load(&p).unwrap();
            assert!(
                cfg.name == p.file_stem().unwrap().to_str().unwrap(),
                "{}: name {:?} is not the file name",
                p.display(),
                cfg.name
            );
            n += 1;
        }
    }
    assert!(n >= 3, "{n} recipes");
}

#[test]
fn official_recipes_match_the_defaults() {
    let official = DetectionConfig::cascade_mask_rcnn_ibot();
    let s = DetectionConfig::load(&dir().join(format!("{}.toml", official.name))).unwrap();
    assert_eq!(s.model, official.model);
    assert_eq!(s.train, official.train);
    assert_eq!(s.data, official.data);
    assert_eq!(s.test, official.test);
    let b =
        DetectionConfig::load(&dir().join("cascade_mask_rcnn_vit_base_giou_4conv1f_coco_1x.toml"))
            .unwrap();
    assert_eq!(b.model.img_size, [672, 1092]);
    assert_eq!(
        (
            b.model.drop_path,
            b.train.layer_decay_rate,
            b.train.batch_size
        ),
        (0.2, 0.75, 16)
    );
    let mut b_as_s = b.clone();
    b_as_s.model.img_size = s.model.img_size;
    b_as_s.model.drop_path = s.model.drop_path;
    b_as_s.train.layer_decay_rate = s.train.layer_decay_rate;
    b_as_s.train.batch_size = s.train.batch_size;
    assert_eq!(b_as_s.model, s.model);
    assert_eq!(b_as_s.train, s.train);
    assert_eq!(b_as_s.data, s.data);
    let demo = DetectionConfig::load(&dir().join("demo.toml")).unwrap();
    assert_eq!(demo.model.kind, Kind::MaskRcnn);
    assert!(!demo.deviations.is_empty());
    // unknown fields are errors
    let bad = std::fs::read_to_string(dir().join("demo.toml"))
        .unwrap()
        .replace("[test]", "[test]\nscore_threshold = 0.1");
    assert!(toml::from_str::<DetectionConfig>(&bad).is_err());
}
