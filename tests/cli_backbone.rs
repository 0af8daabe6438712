//! End-to-end tests of `ibot inspect | convert | extract | attention` on the PyTorch fixtures of
//! `tests/reference/backbone_reference.py`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{ibot, s, stdout_of as ok};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("backbone/tests/fixtures")
        .join(name)
}

fn failed(out: &Output) -> String {
    assert!(!out.status.success(), "ibot should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout)
}

fn read_f32_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let arr: ndarray::Array2<f32> = ndarray_npy::read_npy(path).unwrap();
    (arr.shape().to_vec(), arr.iter().cloned().collect())
}

#[test]
fn inspect_reports_format_key_and_architecture() {
    let json = ok(&ibot(&[
        "inspect",
        s(&fixture("vit_p16_full.pth")),
        "--heads",
        "2",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["format"], "pth");
    assert_eq!(v["selected_key"], "teacher");
    assert_eq!(v["config"]["embed_dim"], 24);
    assert_eq!(v["config"]["depth"], 4);
    assert_eq!(v["config"]["patch_size"], 16);
    assert_eq!(v["load"]["loaded"].as_array().unwrap().len(), 54);
    let text = ok(&ibot(&[
        "inspect",
        s(&fixture("vit_p8.safetensors")),
        "--heads",
        "2",
    ]));
    assert!(
        text.contains("Safetensors") && text.contains("patch 8"),
        "{text}"
    );
    ok(&ibot(&["inspect", "--demo", "--arch", "vit_tiny"]));
}

#[test]
fn convert_then_extract_gives_the_same_features() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("teacher.safetensors");
    let bb = dir.path().join("backbone.safetensors");
    ok(&ibot(&[
        "convert",
        s(&fixture("vit_p16_full.pth")),
        s(&full),
        "--key",
        "teacher",
        "--heads",
        "2",
    ]));
    ok(&ibot(&[
        "convert",
        s(&fixture("vit_p16_full.pth")),
        s(&bb),
        "--backbone-only",
        "--heads",
        "2",
    ]));
    // The shared last layer is written once and recorded as an alias.
    let bytes = std::fs::read(&full).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let names: Vec<String> = st.names().into_iter().map(|n| n.to_string()).collect();
    assert!(names.contains(&"head.last_layer.weight_v".to_string()));
    assert!(!names.contains(&"head.last_layer2.weight_v".to_string()));
    assert!(names.contains(&"backbone.blocks.0.attn.qkv.weight".to_string()));

    let images = fixture("images");
    let mut feats = Vec::new();
    for ckpt in [fixture("vit_p16_full.pth"), full.clone(), bb.clone()] {
        let out = dir.path().join("f.npy");
        // Heads come from the safetensors metadata for converted files; the .pth needs --heads.
        let mut args = vec![
            "extract",
            "--checkpoint",
            s(&ckpt),
            "--images",
            s(&images),
            "--out",
            s(&out),
        ];
        args.extend([
            "--layers",
            "2",
            "--pool",
            "cls+avg",
            "--resize",
            "64",
            "--crop",
            "48",
            "--batch-size",
            "2",
        ]);
        if ckpt.extension().unwrap() == "pth" {
            args.extend(["--heads", "2"]);
        }
        ok(&ibot(&args));
        feats.push(read_f32_npy(&out));
    }
    assert_eq!(feats[0].0, vec![3, 3 * 24]);
    assert_eq!(feats[0], feats[1]);
    assert_eq!(feats[0], feats[2]);

    // Against torchvision's Resize(64, bicubic) + CenterCrop(48) + Normalize and the PyTorch model.
    // The resize reproduces PIL's uint8 output exactly, so features agree to f32 accuracy
    // (measured 3.3e-7 relative).
    let g =
        candle_core::safetensors::load(fixture("goldens.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let want: Vec<f32> = g["extract.cls2_avg"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let got = &feats[0].1;
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = got
        .iter()
        .zip(&want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale;
    assert!(err < 1e-5, "extract vs PyTorch relative error {err:e}");
}

#[test]
fn extract_writes_safetensors_with_file_order() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("f.safetensors");
    ok(&ibot(&[
        "extract",
        "--checkpoint",
        s(&fixture("vit_p8.safetensors")),
        "--heads",
        "2",
        "--images",
        s(&fixture("images")),
        "--out",
        s(&out),
        "--resize",
        "0",
        "--crop",
        "48",
    ]));
    let bytes = std::fs::read(&out).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let files = &meta.metadata().as_ref().unwrap()["files"];
    assert_eq!(files, r#"["img0.png","img1.png","img2.png"]"#);
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("features").unwrap().shape(), &[3, 16]);
}

#[test]
fn attention_writes_one_map_and_mask_per_head() {
    let dir = tempfile::tempdir().unwrap();
    ok(&ibot(&[
        "attention",
        "--checkpoint",
        s(&fixture("vit_p8.safetensors")),
        "--heads",
        "2",
        "--image",
        s(&fixture("images/img1.png")),
        "--out",
        s(dir.path()),
        "--resize",
        "0",
    ]));
    for f in [
        "img.png",
        "attn-head0.png",
        "attn-head1.png",
        "attn-head0-th0.6.png",
        "attn-head1-th0.6.png",
        "attention.json",
    ] {
        assert!(dir.path().join(f).exists(), "{f} missing");
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("attention.json")).unwrap())
            .unwrap();
    // 90×61 cropped to 88×56 → an 11×7 grid of 8-px patches.
    assert_eq!(v["grid"], serde_json::json!([11, 7]));
}

#[test]
fn bad_inputs_fail_clearly_and_leave_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("f.npy");
    let images = fixture("images");
    let extract = |ckpt: &Path, extra: &[&str]| {
        let mut args = vec![
            "extract",
            "--checkpoint",
            s(ckpt),
            "--images",
            s(&images),
            "--out",
            s(&out),
            "--heads",
            "2",
        ];
        args.extend(extra);
        ibot(&args)
    };

    let bytes = std::fs::read(fixture("vit_p16_full.pth")).unwrap();
    let truncated = dir.path().join("truncated.pth");
    std::fs::write(&truncated, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let msg = failed(&extract(&truncated, &[]));
    assert!(msg.contains("truncated.pth"), "{msg}");

    let junk = dir.path().join("notzip.pth");
    std::fs::write(&junk, b"<html>404</html>").unwrap();
    let msg = failed(&extract(&junk, &[]));
    assert!(
        msg.contains("notzip.pth") && msg.contains("neither a PyTorch"),
        "{msg}"
    );

    let msg = failed(&extract(&fixture("vit_p16_full.pth"), &["--key", "model"]));
    assert!(
        msg.contains("\"model\" not found") && msg.contains("teacher"),
        "{msg}"
    );

    let msg = failed(&extract(
        &fixture("vit_p16_full.pth"),
        &["--arch", "vit_small"],
    ));
    assert!(
        msg.contains("mis-shaped") && msg.contains("cls_token"),
        "{msg}"
    );

    let bad_images = dir.path().join("imgs");
    std::fs::create_dir_all(&bad_images).unwrap();
    std::fs::copy(fixture("images/img0.png"), bad_images.join("a.png")).unwrap();
    std::fs::write(bad_images.join("b.png"), b"definitely not a png").unwrap();
    let out2 = dir.path().join("g.npy");
    let o = ibot(&[
        "extract",
        "--checkpoint",
        s(&fixture("vit_p8.safetensors")),
        "--heads",
        "2",
        "--images",
        s(&bad_images),
        "--out",
        s(&out2),
    ]);
    let msg = failed(&o);
    assert!(msg.contains("b.png"), "{msg}");

    assert!(
        !out.exists() && !out2.exists(),
        "no output may be left behind"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
