//! Readers round-trip what the generator and writers produce; bad inputs give errors that name
//! the file and the problem.

use std::path::Path;
use std::sync::Arc;

use data::augment::{sample_rng, RandomResizedCrop, Transform};
use data::cifar::{read_cifar_batch, CifarKind};
use data::coco::{CocoDataset, OrphanPolicy, Segmentation};
use data::folder::{list_images, ImageFolder};
use data::idx::{read_idx_classification, write_idx};
use data::image_io::{load_label_png, load_rgb, save_label_png, LabelMap};
use data::loader::{InMemory, Loader, LoaderConfig};
use data::rle::Rle;
use data::segmentation::{SegPairs, IGNORE};
use data::splits::{balanced_subset, SplitSize};
use data::synth::{generate, SynthConfig, CLASSES};
use data::transforms::Interpolation;

fn synth_once(dir: &Path, seed: u64) -> data::synth::SynthSummary {
    generate(
        dir,
        &SynthConfig {
            seed,
            images: 24,
            size: 96,
        },
    )
    .unwrap()
}

fn tree_bytes(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn synth_is_byte_identical_for_a_seed_and_readers_round_trip() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let c = tempfile::tempdir().unwrap();
    let summary = synth_once(a.path(), 3);
    synth_once(b.path(), 3);
    synth_once(c.path(), 4);
    let (ta, tb, tc) = (
        tree_bytes(a.path()),
        tree_bytes(b.path()),
        tree_bytes(c.path()),
    );
    assert_eq!(ta, tb, "same seed must give byte-identical files");
    assert_ne!(ta, tc, "another seed must give other images");

    // Classification: ImageFolder sees every class and image, labels by class order.
    let train = ImageFolder::open(&a.path().join("classification/train")).unwrap();
    let mut sorted: Vec<String> = CLASSES.iter().map(|s| s.to_string()).collect();
    sorted.sort();
    assert_eq!(train.classes, sorted);
    assert_eq!(train.len(), summary.classification[0]);
    let img = load_rgb(&train.samples[0].path).unwrap();
    assert_eq!(img.dimensions(), (96, 96));

    // COCO: polygons rasterise to the stated area and box; RLE masks agree with their area.
    for split in ["train", "val"] {
        let path = a
            .path()
            .join(format!("coco/annotations/instances_{split}.json"));
        let coco = CocoDataset::load(&path, OrphanPolicy::Error)
            .unwrap()
            .dataset;
        assert_eq!(coco.categories.len(), CLASSES.len());
        let mut kinds = [0usize; 3];
        for ann in &coco.annotations {
            let img = coco.images.iter().find(|i| i.id == ann.image_id).unwrap();
            let rle = ann.rle(img.height, img.width).unwrap();
            assert_eq!(rle.area() as f64, ann.area, "annotation {}", ann.id);
            assert_eq!(rle.bbox(), ann.bbox, "annotation {}", ann.id);
            match (&ann.segmentation, ann.iscrowd) {
                (Some(Segmentation::Polygons(_)), 0) => kinds[0] += 1,
                (Some(Segmentation::Rle(_)), 0) => kinds[1] += 1,
                (Some(Segmentation::Rle(_)), 1) => kinds[2] += 1,
                other => panic!("unexpected segmentation {other:?}"),
            }
            assert!(coco
                .image_path(&a.path().join("coco").join(split), img)
                .is_file());
        }
        assert!(kinds[0] > 0, "{split}: no polygon annotations");
        if split == "train" {
            assert!(kinds[1] > 0 && kinds[2] > 0, "{split}: kinds {kinds:?}");
        }
    }
    assert!(
        summary.coco_area_ranges.iter().all(|&n| n > 0),
        "{:?}",
        summary.coco_area_ranges
    );

    // ADE: every image has its label map; labels are 0..=K, reduce_zero_label maps 0 → 255.
    let ade = SegPairs::ade(&a.path().join("ade"), "training", CLASSES.len(), true).unwrap();
    assert_eq!(ade.pairs.len(), summary.ade_images[0]);
    let labels = ade.load_labels(0).unwrap();
    assert!(labels.labels.contains(&IGNORE));
    let raw = SegPairs::ade(
        &a.path().join("ade"),
        "validation",
        CLASSES.len() + 1,
        false,
    )
    .unwrap();
    raw.load_labels(0).unwrap();
}

#[test]
fn rle_round_trips_and_matches_polygon_rasterisation() {
    // A square polygon covering pixel centres 2..=5 in x and 1..=3 in y.
    let poly = [1.5, 0.5, 5.5, 0.5, 5.5, 3.5, 1.5, 3.5];
    let rle = Rle::from_polygon(&poly, 6, 8);
    let mask = rle.to_mask().unwrap();
    assert_eq!(rle.area(), mask.iter().map(|&m| m as u64).sum::<u64>());
    assert_eq!(Rle::from_mask(&mask, 6, 8), rle);
    let s = rle.to_compressed();
    assert_eq!(Rle::from_compressed(&s, 6, 8).unwrap(), rle);
    // Large counts exercise multi-character and negative-delta encodings.
    let big = Rle {
        height: 300,
        width: 300,
        counts: vec![5, 40_000, 3, 2, 49_950],
    };
    assert_eq!(
        Rle::from_compressed(&big.to_compressed(), 300, 300).unwrap(),
        big
    );
    assert!(Rle::from_compressed("#", 2, 2).is_err());
    assert!(Rle {
        height: 2,
        width: 2,
        counts: vec![1, 2]
    }
    .to_mask()
    .is_err());
}

#[test]
fn idx_and_cifar_readers_round_trip_and_reject_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let (n, h, w) = (5usize, 4usize, 3usize);
    let pixels: Vec<u8> = (0..n * h * w).map(|i| (i * 7 % 256) as u8).collect();
    let labels: Vec<u8> = vec![0, 3, 9, 1, 2];
    let imgs = dir.path().join("imgs.idx");
    let labs = dir.path().join("labs.idx");
    write_idx(&imgs, &[n, h, w], &pixels).unwrap();
    write_idx(&labs, &[n], &labels).unwrap();
    let (images, got) = read_idx_classification(&imgs, &labs).unwrap();
    assert_eq!(got, vec![0, 3, 9, 1, 2]);
    assert_eq!(images[1].get_pixel(2, 1).0, [pixels[h * w + w + 2]; 3]);

    // gzip is detected from the content.
    let gz = dir.path().join("imgs.idx.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut enc, &std::fs::read(&imgs).unwrap()).unwrap();
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    assert_eq!(read_idx_classification(&gz, &labs).unwrap().0, images);

    // Truncated data and mismatched label counts name the file.
    let bytes = std::fs::read(&imgs).unwrap();
    std::fs::write(&imgs, &bytes[..bytes.len() - 1]).unwrap();
    let err = read_idx_classification(&imgs, &labs)
        .unwrap_err()
        .to_string();
    assert!(err.contains("imgs.idx") && err.contains("bytes"), "{err}");
    write_idx(&imgs, &[n, h, w], &pixels).unwrap();
    write_idx(&labs, &[n - 1], &labels[..n - 1]).unwrap();
    let err = read_idx_classification(&imgs, &labs)
        .unwrap_err()
        .to_string();
    assert!(err.contains("labs.idx"), "{err}");

    // Real Fashion-MNIST, when the Debian package is installed.
    let fm = Path::new("/usr/share/datasets/fashion-mnist");
    if fm.join("t10k-images-idx3-ubyte.gz").is_file() {
        let (imgs, labels) = read_idx_classification(
            &fm.join("t10k-images-idx3-ubyte.gz"),
            &fm.join("t10k-labels-idx1-ubyte.gz"),
        )
        .unwrap();
        assert_eq!(imgs.len(), 10_000);
        assert_eq!(imgs[0].dimensions(), (28, 28));
        assert!(labels.iter().all(|&l| l < 10));
        assert_eq!(labels.iter().filter(|&&l| l == 0).count(), 1000);
    }

    // CIFAR-10: one label byte then R, G, B planes.
    let mut rec = vec![7u8];
    rec.extend((0..3072).map(|i| (i / 1024 * 100 + i % 5) as u8));
    let path = dir.path().join("data_batch_1.bin");
    std::fs::write(&path, [rec.clone(), rec.clone()].concat()).unwrap();
    let (imgs, labels) = read_cifar_batch(&path, CifarKind::Cifar10).unwrap();
    assert_eq!(labels, vec![7, 7]);
    assert_eq!(imgs[0].get_pixel(1, 0).0, [1, 100, 204]);
    std::fs::write(&path, &rec[..100]).unwrap();
    let err = read_cifar_batch(&path, CifarKind::Cifar10)
        .unwrap_err()
        .to_string();
    assert!(err.contains("data_batch_1.bin"), "{err}");
}

#[test]
fn bad_inputs_give_errors_naming_file_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    // Truncated PNG.
    let img = image::RgbImage::from_pixel(16, 16, image::Rgb([10, 200, 30]));
    let png = dir.path().join("ok.png");
    img.save(&png).unwrap();
    let bytes = std::fs::read(&png).unwrap();
    let bad = dir.path().join("truncated.png");
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_rgb(&bad).unwrap_err().to_string();
    assert!(
        err.contains("truncated.png") && err.contains("decode"),
        "{err}"
    );
    let err = load_rgb(&dir.path().join("missing.jpg"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.jpg"), "{err}");

    // COCO JSON with a missing field, and with an orphan annotation.
    let json = dir.path().join("instances.json");
    std::fs::write(
        &json,
        r#"{"images":[{"id":1,"width":4,"height":4}],"annotations":[],"categories":[]}"#,
    )
    .unwrap();
    let err = CocoDataset::load(&json, OrphanPolicy::Error)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("instances.json")
            && err.contains("images[0] (id 1)")
            && err.contains("file_name"),
        "{err}"
    );
    std::fs::write(
        &json,
        r#"{"images":[{"id":1,"width":4,"height":4,"file_name":"a.jpg"}],
            "categories":[{"id":1,"name":"x"}],
            "annotations":[{"id":1,"image_id":1,"category_id":1,"bbox":[0,0,1,1],"area":1,"iscrowd":0},
                           {"id":7,"image_id":1,"category_id":1,"area":1,"iscrowd":0}]}"#,
    )
    .unwrap();
    let err = CocoDataset::load(&json, OrphanPolicy::Error)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("instances.json")
            && err.contains("annotations[1] (id 7)")
            && err.contains("missing field `bbox`"),
        "{err}"
    );
    std::fs::write(&json, r#"{"images":[}"#).unwrap();
    let err = CocoDataset::load(&json, OrphanPolicy::Error)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("instances.json") && err.contains("invalid JSON"),
        "{err}"
    );
    std::fs::write(
        &json,
        r#"{"images":[{"id":1,"width":4,"height":4,"file_name":"sub/a.jpg"}],
            "categories":[{"id":0,"name":"_background_"}],
            "annotations":[{"id":1,"image_id":2,"category_id":0,"bbox":[0,0,1,1],"area":1,"iscrowd":0}]}"#,
    )
    .unwrap();
    let err = CocoDataset::load(&json, OrphanPolicy::Error)
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing image 2"), "{err}");
    let load = CocoDataset::load(&json, OrphanPolicy::Drop).unwrap();
    assert_eq!((load.dropped, load.dataset.annotations.len()), (1, 0));

    // Label map with a label beyond the class count.
    let imgs = dir.path().join("images");
    let anns = dir.path().join("labels");
    std::fs::create_dir_all(&imgs).unwrap();
    std::fs::create_dir_all(&anns).unwrap();
    img.save(imgs.join("a.png")).unwrap();
    let mut map = LabelMap::new(16, 16, 1);
    map.labels[5] = 21;
    map.labels[6] = IGNORE;
    save_label_png(&map, &anns.join("a.png")).unwrap();
    assert_eq!(load_label_png(&anns.join("a.png")).unwrap(), map);
    let pairs = SegPairs::pairs(&imgs, &anns, 21, false).unwrap();
    let err = pairs.load_labels(0).unwrap_err().to_string();
    assert!(err.contains("a.png") && err.contains("label 21"), "{err}");
    assert!(SegPairs::pairs(&imgs, &anns, 22, false)
        .unwrap()
        .load_labels(0)
        .is_ok());
}

#[test]
fn folder_listing_order_and_file_lists() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let img = image::RgbImage::from_pixel(4, 4, image::Rgb([1, 2, 3]));
    for rel in [
        "b/z.png",
        "b/sub/a.PNG",
        "a/x.jpg.png",
        "a/notes.txt",
        "c/d/e.png",
    ] {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        if rel.ends_with(".txt") {
            std::fs::write(&p, "x").unwrap();
        } else {
            img.save_with_format(&p, image::ImageFormat::Png).unwrap();
        }
    }
    let listed: Vec<String> = list_images(root)
        .unwrap()
        .iter()
        .map(|p| p.strip_prefix(root).unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        listed,
        ["a/x.jpg.png", "b/sub/a.PNG", "b/z.png", "c/d/e.png"]
    );
    let folder = ImageFolder::open(root).unwrap();
    assert_eq!(folder.classes, ["a", "b", "c"]);
    // torchvision walks sorted(os.walk()): files of b/ before those of b/sub/.
    let rel: Vec<String> = (0..folder.len()).map(|i| folder.relative_path(i)).collect();
    assert_eq!(rel, ["a/x.jpg.png", "b/z.png", "b/sub/a.PNG", "c/d/e.png"]);
    assert_eq!(folder.labels(), [0, 1, 1, 2]);

    let list = root.join("list.txt");
    std::fs::write(&list, "b/z.png 1\n# comment\nc/d/e.png 2\n").unwrap();
    let sub = ImageFolder::open_with_list(root, &list).unwrap();
    assert_eq!(sub.labels(), [1, 2]);
    std::fs::write(&list, "b/z.png 0\n").unwrap();
    let err = ImageFolder::open_with_list(root, &list)
        .unwrap_err()
        .to_string();
    assert!(err.contains("list.txt") && err.contains("line 1"), "{err}");
}

#[test]
fn splits_are_balanced_and_deterministic() {
    let labels: Vec<usize> = (0..1000).map(|i| i % 10).collect();
    let a = balanced_subset(&labels, SplitSize::Fraction(0.1), 5);
    assert_eq!(a, balanced_subset(&labels, SplitSize::Fraction(0.1), 5));
    assert_ne!(a, balanced_subset(&labels, SplitSize::Fraction(0.1), 6));
    assert_eq!(a.len(), 100);
    for c in 0..10 {
        assert_eq!(a.iter().filter(|&&i| labels[i] == c).count(), 10);
    }
    let b = balanced_subset(&labels, "3-per-class".parse().unwrap(), 0);
    assert_eq!(b.len(), 30);
    assert_eq!(balanced_subset(&labels, "1%".parse().unwrap(), 0).len(), 10);
    assert!("0%".parse::<SplitSize>().is_err());
}

#[test]
fn loader_is_deterministic_and_respects_order_options() {
    let images: Vec<image::RgbImage> = (0..10)
        .map(|i| {
            let mut rng = sample_rng(1, 0, i);
            data::synth::classification_image(i as usize % 8, 40, &mut rng)
        })
        .collect();
    let labels: Vec<usize> = (0..10).collect();
    let ds = Arc::new(InMemory { images, labels });
    let config = LoaderConfig {
        batch_size: 4,
        shuffle: true,
        seed: 9,
        drop_last: true,
        prefetch: 1,
        skip_corrupt: false,
        threads: 2,
    };
    let transform = Transform::CropJitter {
        size: 16,
        scale: (0.25, 1.0),
    };
    let loader = Loader::new(ds.clone(), transform.clone(), config.clone()).unwrap();
    let run = |l: &Loader, e| l.epoch(e).collect::<Result<Vec<_>, _>>().unwrap();
    let e0 = run(&loader, 0);
    assert_eq!(e0.len(), 2, "drop_last drops the partial batch");
    assert_eq!(e0[0].shape, [4, 3, 16, 16]);
    let single = Loader::new(
        ds.clone(),
        transform.clone(),
        LoaderConfig {
            threads: 1,
            ..config.clone()
        },
    )
    .unwrap();
    assert_eq!(
        e0,
        run(&single, 0),
        "results must not depend on the thread count"
    );
    assert_ne!(
        e0[0].indices,
        run(&loader, 1)[0].indices,
        "each epoch reshuffles"
    );
    for b in &e0 {
        assert_eq!(b.labels, b.indices);
    }

    let eval = Loader::new(
        ds,
        Transform::Eval {
            resize: 20,
            crop: 16,
        },
        LoaderConfig {
            shuffle: false,
            drop_last: false,
            ..config
        },
    )
    .unwrap();
    let batches = run(&eval, 0);
    let order: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
    assert_eq!(order, (0..10).collect::<Vec<_>>());
    assert_eq!(batches.last().unwrap().shape[0], 2);
}

#[test]
fn loader_reports_or_skips_corrupt_images() {
    let dir = tempfile::tempdir().unwrap();
    let good = image::RgbImage::from_pixel(20, 20, image::Rgb([9, 9, 9]));
    for i in 0..4 {
        good.save(dir.path().join(format!("{i}.png"))).unwrap();
    }
    std::fs::write(dir.path().join("2.png"), b"not a png").unwrap();
    let paths = list_images(dir.path()).unwrap();
    let ds = Arc::new(data::loader::FileList {
        labels: vec![0; paths.len()],
        paths,
    });
    let transform = Transform::Eval {
        resize: 16,
        crop: 16,
    };
    let config = LoaderConfig {
        batch_size: 2,
        ..Default::default()
    };
    let strict = Loader::new(ds.clone(), transform.clone(), config.clone()).unwrap();
    let err = strict
        .epoch(0)
        .collect::<Result<Vec<_>, _>>()
        .unwrap_err()
        .to_string();
    assert!(err.contains("2.png"), "{err}");
    let lenient = Loader::new(
        ds,
        transform,
        LoaderConfig {
            skip_corrupt: true,
            ..config
        },
    )
    .unwrap();
    let mut it = lenient.epoch(0);
    let total: usize = it.by_ref().map(|b| b.unwrap().shape[0]).sum();
    assert_eq!((total, it.skipped()), (3, 1));
}

#[test]
fn random_resized_crop_follows_torchvision_bounds_and_fallback() {
    let rrc = RandomResizedCrop::new(8, (0.08, 1.0), Interpolation::Bilinear);
    let mut rng = sample_rng(0, 0, 0);
    for _ in 0..500 {
        let (i, j, h, w) = rrc.params(100, 60, &mut rng);
        assert!(i + h <= 60 && j + w <= 100 && h > 0 && w > 0);
        let area = (h * w) as f64 / 6000.0;
        assert!((0.06..=1.02).contains(&area), "area fraction {area}");
        let ratio = w as f64 / h as f64;
        assert!((0.7..=1.4).contains(&ratio), "ratio {ratio}");
    }
    // A 1000x10 strip never fits the ratio range: fallback is the central crop clamped to 4/3.
    let strict = RandomResizedCrop::new(8, (0.9, 1.0), Interpolation::Bilinear);
    assert_eq!(strict.params(1000, 10, &mut rng), (0, 493, 10, 13));
    assert_eq!(strict.params(10, 1000, &mut rng), (493, 0, 13, 10));
    // Same (seed, epoch, index) → same crop.
    let a = rrc.params(100, 60, &mut sample_rng(1, 2, 3));
    assert_eq!(a, rrc.params(100, 60, &mut sample_rng(1, 2, 3)));
}
