//! The feature cache: content keys, cache hits, resumable extraction.

mod common;

use std::collections::HashMap;

use common::*;
use features::{EvalTransform, FeatureSpec, FeatureStore, Split};
use ndarray::{s, Array2};
use serde_json::json;

fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn cache_hit_returns_identical_features_without_reextraction() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("vit.safetensors");
    save_tiny_vit(&ckpt, 1);
    let data = tiny_data(dir.path(), &[3, 2], &[2, 2]);
    let store = FeatureStore::new(dir.path().join("cache")).with_batch_size(2);

    let first = store
        .get(&model(&ckpt), &data, Split::Train, &FeatureSpec::Cls)
        .unwrap();
    assert_eq!(first.x.dim(), (5, 16));
    assert_eq!(first.labels, vec![0, 0, 0, 1, 1]);
    assert_eq!(first.class_names, vec!["a", "b"]);
    let m = &first.manifest;
    assert_eq!(m["cache"]["from_cache"], false);
    assert_eq!(m["features"]["dim"], 16);
    assert_eq!(m["features"]["spec"], "cls");
    assert_eq!(m["data"]["num_images"], 5);
    assert_eq!(m["data"]["split"], "train");
    assert_eq!(m["data"]["name"], "tiny");
    assert_eq!(m["checkpoint"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(m["transform"]["crop"], 32);
    assert!(m["extraction"]["seconds"].as_f64().unwrap() > 0.0);
    let key = m["cache"]["key"].as_str().unwrap().to_string();
    assert_eq!(
        entries(store.root()),
        vec![format!("{key}.safetensors")],
        "the partial directory is removed once the final file exists"
    );

    // Garbage of the same size keeps the key: a hit must not decode a single image.
    for class in ["a", "b"] {
        for f in std::fs::read_dir(dir.path().join("train").join(class)).unwrap() {
            corrupt_same_size(&f.unwrap().path());
        }
    }
    let again = store
        .get(&model(&ckpt), &data, Split::Train, &FeatureSpec::Cls)
        .unwrap();
    assert_eq!(again.x, first.x);
    assert_eq!(again.labels, first.labels);
    assert_eq!(again.manifest["cache"]["from_cache"], true);
    assert_eq!(again.manifest["extraction"], first.manifest["extraction"]);

    // A fresh store on the same root (a later process) hits as well.
    let other = FeatureStore::new(store.root());
    let third = other
        .get(&model(&ckpt), &data, Split::Train, &FeatureSpec::Cls)
        .unwrap();
    assert_eq!(third.x, first.x);
}

#[test]
fn cache_key_tracks_checkpoint_list_transform_and_spec() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("vit.safetensors");
    save_tiny_vit(&ckpt, 1);
    let mut data = tiny_data(dir.path(), &[2, 2], &[1, 1]);
    let store = FeatureStore::new(dir.path().join("cache"));
    let key = |store: &FeatureStore, ckpt: &std::path::Path, data: &features::DataConfig, spec| {
        store
            .cache_key(&model(ckpt), data, Split::Train, &spec)
            .unwrap()
    };
    let base = key(&store, &ckpt, &data, FeatureSpec::Cls);
    assert_eq!(base.len(), 32);

    // Same bytes elsewhere, another data-set name, another spelling of the same layout: same key.
    let copy = dir.path().join("copy.safetensors");
    std::fs::copy(&ckpt, &copy).unwrap();
    assert_eq!(key(&store, &copy, &data, FeatureSpec::Cls), base);
    let mut renamed = data.clone();
    renamed.name = "other-name".into();
    assert_eq!(key(&store, &ckpt, &renamed, FeatureSpec::Cls), base);
    assert_eq!(
        key(&store, &ckpt, &data, FeatureSpec::ClsLastN { n: 1 }),
        base
    );

    // Everything the numbers depend on changes it.
    let mut seen = vec![base.clone()];
    let mut differs = |k: String, what: &str| {
        assert!(!seen.contains(&k), "{what} did not change the key");
        seen.push(k);
    };
    let reseeded = dir.path().join("reseeded.safetensors");
    save_tiny_vit(&reseeded, 2);
    differs(
        key(&store, &reseeded, &data, FeatureSpec::Cls),
        "checkpoint",
    );
    differs(key(&store, &ckpt, &data, FeatureSpec::AvgPatch), "spec avg");
    differs(
        key(&store, &ckpt, &data, FeatureSpec::ClsLastN { n: 2 }),
        "spec cls-last-2",
    );
    differs(
        key(
            &store,
            &ckpt,
            &data,
            FeatureSpec::ClsAvg {
                n: 1,
                interleaved: true,
            },
        ),
        "interleaved",
    );
    data.transform = EvalTransform {
        resize: 40,
        crop: 32,
    };
    differs(key(&store, &ckpt, &data, FeatureSpec::Cls), "transform");
    data.transform = EvalTransform {
        resize: 32,
        crop: 32,
    };
    assert_eq!(key(&store, &ckpt, &data, FeatureSpec::Cls), base);

    let train = dir.path().join("train");
    write_image(&train.join("a/extra.png"), 99, 0, 36, 36);
    differs(
        key(&store, &ckpt, &data, FeatureSpec::Cls),
        "an added image",
    );
    std::fs::rename(train.join("a/extra.png"), train.join("b/extra.png")).unwrap();
    differs(
        key(&store, &ckpt, &data, FeatureSpec::Cls),
        "a relabelled image",
    );
    write_image(&train.join("b/extra.png"), 7, 1, 44, 44);
    differs(
        key(&store, &ckpt, &data, FeatureSpec::Cls),
        "a rewritten image",
    );
    std::fs::remove_file(train.join("b/extra.png")).unwrap();
    assert_eq!(key(&store, &ckpt, &data, FeatureSpec::Cls), base);

    // The val split is other images: another key.
    let val = store
        .cache_key(&model(&ckpt), &data, Split::Val, &FeatureSpec::Cls)
        .unwrap();
    differs(val, "split");
}

#[test]
fn a_replaced_checkpoint_is_never_served_from_a_stale_cache() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("vit.safetensors");
    save_tiny_vit(&ckpt, 1);
    let data = tiny_data(dir.path(), &[2, 1], &[1, 1]);
    let store = FeatureStore::new(dir.path().join("cache"));
    let a = store
        .get(&model(&ckpt), &data, Split::Val, &FeatureSpec::Cls)
        .unwrap();
    save_tiny_vit(&ckpt, 2); // same path, new weights
    let b = store
        .get(&model(&ckpt), &data, Split::Val, &FeatureSpec::Cls)
        .unwrap();
    assert_eq!(b.manifest["cache"]["from_cache"], false);
    assert_ne!(a.x, b.x);
    assert_ne!(
        a.manifest["checkpoint"]["sha256"],
        b.manifest["checkpoint"]["sha256"]
    );
}

#[test]
fn an_interrupted_extraction_resumes_to_identical_features() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("vit.safetensors");
    save_tiny_vit(&ckpt, 3);
    let data = tiny_data(dir.path(), &[6, 4], &[1, 1]);
    let spec = FeatureSpec::ClsAvg {
        n: 2,
        interleaved: false,
    };
    let uninterrupted = FeatureStore::new(dir.path().join("cache-a"))
        .with_batch_size(2)
        .with_chunk_size(4)
        .get(&model(&ckpt), &data, Split::Train, &spec)
        .unwrap();
    assert_eq!(uninterrupted.x.dim(), (10, 48));

    // Image 9 (b/03.png) is unreadable: the run fails after chunks 0 and 1 (images 0..8).
    let last = dir.path().join("train/b/03.png");
    let good = std::fs::read(&last).unwrap();
    corrupt_same_size(&last);
    let store = FeatureStore::new(dir.path().join("cache-b"))
        .with_batch_size(2)
        .with_chunk_size(4);
    let err = format!(
        "{:#}",
        store
            .get(&model(&ckpt), &data, Split::Train, &spec)
            .unwrap_err()
    );
    assert!(err.contains("b/03.png"), "{err}");
    let key = store
        .cache_key(&model(&ckpt), &data, Split::Train, &spec)
        .unwrap();
    assert_eq!(
        entries(&store.partial_dir(&key)),
        vec!["chunk-000000.safetensors", "chunk-000001.safetensors"]
    );
    assert!(!store.cache_path(&key).exists());

    std::fs::write(&last, good).unwrap();
    let resumed = store
        .get(&model(&ckpt), &data, Split::Train, &spec)
        .unwrap();
    assert_eq!(resumed.manifest["cache"]["resumed_images"], 8);
    assert_eq!(resumed.manifest["extraction"]["images"], 2);
    assert_eq!(resumed.x, uninterrupted.x, "bit-identical to one run");
    assert!(!store.partial_dir(&key).exists());
}

#[test]
fn finished_chunks_are_taken_as_they_are_and_foreign_ones_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("vit.safetensors");
    save_tiny_vit(&ckpt, 4);
    let data = tiny_data(dir.path(), &[5, 5], &[1, 1]);
    let reference = FeatureStore::new(dir.path().join("ref"))
        .get(&model(&ckpt), &data, Split::Train, &FeatureSpec::Cls)
        .unwrap();

    let store = FeatureStore::new(dir.path().join("cache"))
        .with_batch_size(4)
        .with_chunk_size(4);
    let key = store
        .cache_key(&model(&ckpt), &data, Split::Train, &FeatureSpec::Cls)
        .unwrap();
    let partial = store.partial_dir(&key);
    let labels = |a: usize, b: usize| -> Vec<i64> {
        reference.labels[a..b].iter().map(|&l| l as i64).collect()
    };
    // Chunk 1 (images 4..8) "finished" with marker values: they must come back untouched.
    features::write_feature_file(
        &partial.join("chunk-000001.safetensors"),
        &Array2::from_elem((4, 16), 7.0),
        &labels(4, 8),
        &[],
        &json!({"cache_key": key, "start": 4, "end": 8}),
        HashMap::new(),
    )
    .unwrap();
    // Chunk 0 written for another extraction: recomputed.
    features::write_feature_file(
        &partial.join("chunk-000000.safetensors"),
        &Array2::from_elem((4, 16), 9.0),
        &labels(0, 4),
        &[],
        &json!({"cache_key": "0123", "start": 0, "end": 4}),
        HashMap::new(),
    )
    .unwrap();
    let got = store
        .get(&model(&ckpt), &data, Split::Train, &FeatureSpec::Cls)
        .unwrap();
    assert_eq!(got.manifest["cache"]["resumed_images"], 4);
    assert!(got.x.slice(s![4..8, ..]).iter().all(|&v| v == 7.0));
    assert_eq!(got.x.slice(s![0..4, ..]), reference.x.slice(s![0..4, ..]));
    assert_eq!(got.x.slice(s![8..10, ..]), reference.x.slice(s![8..10, ..]));
}

#[test]
fn cache_files_use_the_feature_file_format() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("vit.safetensors");
    save_tiny_vit(&ckpt, 5);
    let data = tiny_data(dir.path(), &[2, 1], &[1, 1]);
    let store = FeatureStore::new(dir.path().join("cache"));
    let f = store
        .get(&model(&ckpt), &data, Split::Train, &FeatureSpec::AvgPatch)
        .unwrap();
    let key = f.manifest["cache"]["key"].as_str().unwrap();
    let file = features::read_feature_file(&store.cache_path(key)).unwrap();
    assert_eq!(file.x, f.x);
    assert_eq!(file.labels, vec![0, 0, 1]);
    assert_eq!(file.class_names, vec!["a", "b"]);
    assert_eq!(file.manifest["cache"]["key"], key);
    assert_eq!(file.manifest["features"]["spec"], "avg");

    // A damaged cache entry is reported and replaced, not trusted.
    std::fs::write(store.cache_path(key), b"garbage").unwrap();
    let again = store
        .get(&model(&ckpt), &data, Split::Train, &FeatureSpec::AvgPatch)
        .unwrap();
    assert_eq!(again.manifest["cache"]["from_cache"], false);
    assert_eq!(again.x, f.x);
}
