//! `configs/data/*.toml`: parsing, path resolution, errors, split readers.

mod common;

use std::path::Path;

use common::*;
use features::{DataConfig, EvalTransform, Split, SplitSource};

fn load_err(path: &Path) -> String {
    format!("{:#}", DataConfig::load(path).unwrap_err())
}

#[test]
fn relative_paths_resolve_against_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    write_folder(&dir.path().join("data/train"), &[2, 1], 1);
    write_folder(&dir.path().join("data/val"), &[1, 1], 2);
    std::fs::write(
        dir.path().join("data/split.txt"),
        "# one image per class\na/00.png 0\nb/00.png 1\n",
    )
    .unwrap();
    let configs = dir.path().join("configs");
    std::fs::create_dir_all(&configs).unwrap();
    let path = configs.join("tiny.toml");
    std::fs::write(
        &path,
        r#"
name = "tiny"
transform = { resize = 40, crop = 32 }

[train]
format = "file_list"
list = "../data/split.txt"
root = "../data/train"

[val]
format = "image_folder"
root = "../data/val"
"#,
    )
    .unwrap();
    let config = DataConfig::load(&path).unwrap();
    assert_eq!(
        config.val,
        SplitSource::ImageFolder {
            root: configs.join("../data/val")
        }
    );
    assert_eq!(
        config.transform,
        EvalTransform {
            resize: 40,
            crop: 32
        }
    );
    let train = features::open_split_data(&config, Split::Train).unwrap();
    assert_eq!(train.dataset.len(), 2);
    assert_eq!(train.class_names, vec!["a", "b"]);
    assert_eq!(features::open_split(&config, Split::Val).unwrap().len(), 2);
    assert_eq!(
        features::class_names(&config, Split::Val).unwrap(),
        vec!["a", "b"]
    );

    // The transform defaults to Resize 256 / CenterCrop 224.
    std::fs::write(
        &path,
        "name = \"tiny\"\ntrain = { format = \"image_folder\", root = \"../data/train\" }\nval = { format = \"image_folder\", root = \"../data/val\" }\n",
    )
    .unwrap();
    assert_eq!(
        DataConfig::load(&path).unwrap().transform,
        EvalTransform::default()
    );
}

#[test]
fn bad_configs_fail_naming_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    write_folder(&dir.path().join("train"), &[1, 1], 1);
    let path = dir.path().join("bad.toml");
    let write = |text: &str| std::fs::write(&path, text).unwrap();
    let good_train = "[train]\nformat = \"image_folder\"\nroot = \"train\"\n";

    write(&format!(
        "name = \"x\"\ncolour = \"red\"\n{good_train}[val]\nformat = \"image_folder\"\nroot = \"train\"\n"
    ));
    let err = load_err(&path);
    assert!(err.contains("bad.toml") && err.contains("colour"), "{err}");

    write(&format!(
        "name = \"x\"\n{good_train}[val]\nformat = \"image_folder\"\nroot = \"train\"\nlist = \"x.txt\"\n"
    ));
    let err = load_err(&path);
    assert!(err.contains("bad.toml") && err.contains("list"), "{err}");

    write(&format!(
        "name = \"x\"\n{good_train}[val]\nformat = \"image_folder\"\nroot = \"missing-val\"\n"
    ));
    let err = load_err(&path);
    assert!(
        err.contains("bad.toml") && err.contains("val.root") && err.contains("missing-val"),
        "{err}"
    );

    write(&format!(
        "name = \"x\"\n{good_train}[val]\nformat = \"idx\"\nimages = \"nope-images.gz\"\nlabels = \"nope-labels.gz\"\n"
    ));
    let err = load_err(&path);
    assert!(
        err.contains("val.images") && err.contains("nope-images.gz"),
        "{err}"
    );

    write(&format!(
        "name = \"x\"\ntransform = {{ resize = 28, crop = 32 }}\n{good_train}[val]\nformat = \"image_folder\"\nroot = \"train\"\n"
    ));
    let err = load_err(&path);
    assert!(
        err.contains("crop 32 is larger than transform.resize 28"),
        "{err}"
    );

    let err = load_err(&dir.path().join("absent.toml"));
    assert!(err.contains("absent.toml"), "{err}");
}

#[test]
fn idx_splits_are_rgb_with_numeric_class_names() {
    let dir = tempfile::tempdir().unwrap();
    let pixels: Vec<u8> = (0..3 * 8 * 8).map(|i| (i * 7 % 256) as u8).collect();
    data::idx::write_idx(&dir.path().join("images.idx"), &[3, 8, 8], &pixels).unwrap();
    data::idx::write_idx(&dir.path().join("labels.idx"), &[3], &[2, 0, 1]).unwrap();
    let path = dir.path().join("idx.toml");
    std::fs::write(
        &path,
        "name = \"digits\"\ntransform = { resize = 8, crop = 8 }\n[train]\nformat = \"idx\"\nimages = \"images.idx\"\nlabels = \"labels.idx\"\n[val]\nformat = \"idx\"\nimages = \"images.idx\"\nlabels = \"labels.idx\"\n",
    )
    .unwrap();
    let config = DataConfig::load(&path).unwrap();
    let split = features::open_split_data(&config, Split::Val).unwrap();
    assert_eq!(split.class_names, vec!["0", "1", "2"]);
    assert_eq!(split.dataset.label(0), 2);
    let img = split.dataset.load(1).unwrap();
    assert_eq!(img.dimensions(), (8, 8));
    let p = img.get_pixel(3, 0).0;
    assert_eq!(p, [pixels[64 + 3]; 3]);

    // The content hash follows the bytes of the IDX files.
    let before = split.list_hash.clone();
    data::idx::write_idx(&dir.path().join("labels.idx"), &[3], &[2, 1, 1]).unwrap();
    let after = features::open_split_data(&config, Split::Val)
        .unwrap()
        .list_hash;
    assert_ne!(before, after);
}

#[test]
fn shipped_configs_parse() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/data");
    for name in ["fashion-mnist.toml", "imagenet.toml"] {
        let text = std::fs::read_to_string(root.join(name)).unwrap();
        // Parsing only: the data need not be installed where the tests run.
        let config: DataConfig = toml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!config.name.is_empty());
    }
    let fmnist: DataConfig =
        toml::from_str(&std::fs::read_to_string(root.join("fashion-mnist.toml")).unwrap()).unwrap();
    assert_eq!(fmnist.transform.crop % 4, 0, "crop works with patch 4");
    if Path::new("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").exists() {
        let config = DataConfig::load(&root.join("fashion-mnist.toml")).unwrap();
        let val = features::open_split_data(&config, Split::Val).unwrap();
        assert_eq!(val.dataset.len(), 10_000);
        assert_eq!(val.class_names.len(), 10);
    }
}
