//! `ibot demo`: the whole job on the embedded default — generate scenes, pretrain a small ViT with
//! iBOT for a couple of minutes, evaluate it against its own random initialisation with every
//! protocol of the demo suite, and write the report.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

const RECIPE: &str = include_str!("../configs/pretrain/demo.toml");
const SUITE: &str = include_str!("../configs/suites/demo.toml");
const SEG_DATA: &str = include_str!("../configs/data/synth-ade.toml");
const DET_DATA: &str = include_str!("../configs/data/synth-coco.toml");
const CLS_DATA: &str = include_str!("../configs/data/synth-demo.toml");

#[derive(Args)]
pub struct DemoArgs {
    /// Output directory (data/, pretrain/, report/).
    #[arg(long, default_value = "ibot-demo")]
    out: PathBuf,
    /// Training images to generate (validation gets a quarter).
    #[arg(long, default_value_t = 320)]
    images: usize,
    /// Pretraining epochs (the recipe's default is 100).
    #[arg(long)]
    epochs: Option<usize>,
    /// Pretraining seed (the generated scenes stay the same).
    #[arg(long)]
    seed: Option<u64>,
    /// Hide progress bars.
    #[arg(long)]
    quiet: bool,
    /// Also the slower dense protocols: UperNet segmentation instead of the linear probe, and
    /// Mask R-CNN detection on the generated COCO scenes.
    #[arg(long)]
    full: bool,
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let out = &args.out;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let out = out.canonicalize()?;
    let data_dir = out.join("data");
    let synth = data::synth::SynthConfig {
        seed: 0,
        images: args.images,
        size: 32,
    };
    if !data_dir.join("synth.json").exists() {
        eprintln!(
            "[1/3] generating {} scenes in {}",
            synth.total_images(),
            data_dir.display()
        );
        data::synth::generate(&data_dir, &synth)
            .with_context(|| format!("generating scenes in {}", data_dir.display()))?;
    }
    let train = data_dir.join("classification/train");
    let val = data_dir.join("classification/val");

    let mut recipe: pretrain::config::PretrainConfig =
        toml::from_str(RECIPE).context("the embedded demo recipe")?;
    recipe.data = pretrain::config::DataSource::ImageFolder {
        root: train.clone(),
    };
    if let Some(e) = args.epochs {
        recipe.optim.epochs = e;
    }
    if let Some(seed) = args.seed {
        recipe.run.seed = seed;
    }
    // The k-NN monitor reads the generated labelled scenes.
    let cls_data = out.join("synth-demo.toml");
    std::fs::write(&cls_data, classification_data_config(&train, &val))
        .with_context(|| format!("writing {}", cls_data.display()))?;
    if let Some(eval) = recipe.eval.as_mut() {
        eval.data = pretrain::config::EvalData::File(cls_data.clone());
    }
    let pre = out.join("pretrain");
    let done = pre.join(pretrain::trainer::SUMMARY).exists();
    if !done {
        eprintln!(
            "[2/3] pretraining a {}-block ViT with iBOT ({} epochs)",
            recipe.student_vit()?.depth,
            recipe.optim.epochs
        );
        let resume = pre.join(pretrain::trainer::CHECKPOINT).exists();
        let mut trainer = pretrain::trainer::Trainer::new(
            recipe,
            pretrain::trainer::RunOptions {
                out: pre.clone(),
                resume,
                device: crate::cmd_pretrain::device(crate::cmd_pretrain::DeviceChoice::Auto)?,
                max_steps: None,
                progress: !args.quiet,
            },
        )?;
        let s = trainer.run()?;
        eprintln!(
            "      {} steps in {:.0} s, last loss {:.3}",
            s.steps,
            s.seconds,
            s.last_loss.unwrap_or(f64::NAN)
        );
    }

    eprintln!("[3/3] evaluating the pretrained teacher and its random initialisation");
    let suite_path = out.join("demo-suite.toml");
    let seg_data = out.join("synth-ade.toml");
    std::fs::write(&seg_data, with_root(SEG_DATA, &data_dir.join("ade")))
        .with_context(|| format!("writing {}", seg_data.display()))?;
    let det_data = out.join("synth-coco.toml");
    std::fs::write(&det_data, with_root(DET_DATA, &data_dir.join("coco")))
        .with_context(|| format!("writing {}", det_data.display()))?;
    let mut suite = demo_suite(&train, &val, &seg_data, args.full);
    if args.full {
        suite += &format!(
            "\n# Mask R-CNN on the ViT pyramid + FPN, trained on the generated COCO scenes (recipe\n\
             # configs/detection/demo.toml: 12 epochs of 80 steps).\n\
             [detection]\ndata = {:?}\nrecipe = \"demo\"\nimages = 3\n",
            path(&det_data)
        );
    }
    std::fs::write(&suite_path, suite)
        .with_context(|| format!("writing {}", suite_path.display()))?;
    let report = out.join("report");
    let mut argv: Vec<String> = vec![
        "ibot".into(),
        "suite".into(),
        "--config".into(),
        path(&suite_path),
        // the raw-pixel baseline (frozen-feature protocols only)
        "--checkpoint".into(),
        "pixels".into(),
        "--checkpoint".into(),
        format!("random-init={}", path(&pre.join(pretrain::trainer::INIT))),
        "--checkpoint".into(),
        format!("ibot={}", path(&pre.join(pretrain::trainer::TEACHER))),
        "--pretrain-log".into(),
        format!("ibot={}", path(&pre.join(pretrain::trainer::LOG))),
        "--out".into(),
        path(&report),
    ];
    if args.quiet {
        argv.push("--quiet".into());
    }
    crate::run_argv(&argv)?;
    eprintln!(
        "demo finished in {:.0} s: {}/report.md, report.html, report.json",
        started.elapsed().as_secs_f64(),
        report.display()
    );
    Ok(())
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// The shipped classification data config, pointed at the generated splits.
fn classification_data_config(train: &Path, val: &Path) -> String {
    CLS_DATA
        .lines()
        .scan("", |section, line| {
            if line.starts_with('[') {
                *section = if line.starts_with("[train]") {
                    "train"
                } else {
                    "val"
                };
            }
            Some(match (*section, line.starts_with("root = ")) {
                ("train", true) => format!("root = {:?}", path(train)),
                ("val", true) => format!("root = {:?}", path(val)),
                _ => line.to_string(),
            })
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// A shipped data config of the scenes, pointed at the generated ones.
fn with_root(config: &str, root: &Path) -> String {
    config
        .lines()
        .map(|line| {
            if line.starts_with("root = ") {
                format!("root = {:?}", path(root))
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// The shipped demo suite with its data paths pointed at the generated scenes; `full` trains
/// UperNet instead of the linear segmentation probe.
fn demo_suite(train: &Path, val: &Path, seg_data: &Path, full: bool) -> String {
    SUITE
        .lines()
        .map(|line| {
            if line.starts_with("train = ") {
                format!(
                    "train = {{ format = \"image_folder\", root = {:?} }}",
                    path(train)
                )
            } else if line.starts_with("val = ") {
                format!(
                    "val = {{ format = \"image_folder\", root = {:?} }}",
                    path(val)
                )
            } else if line.starts_with("data = ") {
                format!("data = {:?}", path(seg_data))
            } else if full && line.starts_with("recipe = \"demo-linear\"") {
                "recipe = \"demo\"".to_string()
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_configs_parse_and_point_at_the_generated_scenes() {
        let recipe: pretrain::config::PretrainConfig = toml::from_str(RECIPE).unwrap();
        assert!(recipe.eval.is_some(), "the demo recipe monitors k-NN");
        let (train, val) = (Path::new("/d/train"), Path::new("/d/val"));
        let cls: features::DataConfig =
            toml::from_str(&classification_data_config(train, val)).unwrap();
        let text = classification_data_config(train, val);
        assert!(text.contains("root = \"/d/train\"") && text.contains("root = \"/d/val\""));
        assert_eq!(cls.name, "synth-demo");
        let det: detection::DetDataConfig =
            toml::from_str(&with_root(DET_DATA, Path::new("/d/coco"))).unwrap();
        assert_eq!(det.root, Path::new("/d/coco"));
        let seg: segmentation::SegDataConfig =
            toml::from_str(&with_root(SEG_DATA, Path::new("/d/ade"))).unwrap();
        assert_eq!(seg.root, Path::new("/d/ade"));
        let suite: toml::Value =
            toml::from_str(&demo_suite(train, val, Path::new("/d/s.toml"), true)).unwrap();
        assert_eq!(suite["segmentation"]["recipe"].as_str(), Some("demo"));
    }
}
