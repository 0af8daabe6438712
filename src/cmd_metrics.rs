//! `ibot metrics …`: reference-exact metrics on predictions users bring, and `ibot bench` for them.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Subcommand;
use metrics::cluster::{ClusterScores, Contingency};
use metrics::coco::{CocoOptions, CocoSummary, IouType};
use metrics::segmentation::{SegmentationConfig, SegmentationScores};
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum MetricsCommand {
    /// COCO detection / instance-segmentation AP and AR, exactly as pycocotools computes them.
    Coco {
        /// Ground-truth COCO annotations JSON.
        #[arg(long)]
        gt: PathBuf,
        /// Detections: a results JSON list of {image_id, category_id, bbox|segmentation, score}.
        #[arg(long)]
        dt: PathBuf,
        /// What to evaluate.
        #[arg(long, value_parser = ["bbox", "segm"])]
        iou_type: String,
        /// Detection caps, comma-separated (at least three; e.g. mmdet's 100,300,1000).
        #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
        max_dets: Vec<usize>,
        /// Print JSON (fractions) instead of a table (percentages).
        #[arg(long)]
        json: bool,
    },
    /// Clustering ACC (Hungarian), NMI, ARI, FMI as scikit-learn / scipy compute them.
    Cluster {
        /// True labels, one integer per line.
        #[arg(long)]
        truth: PathBuf,
        /// Cluster assignments, one integer per line (same order as --truth).
        #[arg(long)]
        pred: PathBuf,
        /// Print JSON (fractions) instead of a table (percentages).
        #[arg(long)]
        json: bool,
    },
    /// Semantic segmentation aAcc / mAcc / mIoU as mmsegmentation computes them.
    Segmentation {
        /// Directory of ground-truth label PNGs.
        #[arg(long)]
        gt_dir: PathBuf,
        /// Directory of predicted label PNGs, matched to ground truth by file stem.
        #[arg(long)]
        pred_dir: PathBuf,
        /// Number of classes.
        #[arg(long)]
        num_classes: usize,
        /// Ground-truth value whose pixels are not evaluated.
        #[arg(long, default_value_t = 255)]
        ignore_index: u32,
        /// ADE20K-style labels: ground truth 0 is ignored and every other value shifts down by one.
        #[arg(long)]
        reduce_zero_label: bool,
        /// With --reduce-zero-label: `annotation` = the prediction PNGs are in the annotations'
        /// space (ADE20K submission format, 1..=N; what `ibot eval segment` writes) and are reduced
        /// like the ground truth; `reduced` = they hold class indices 0..N (mmseg's in-memory
        /// predictions) and only the ground truth is reduced.
        #[arg(long, value_enum, default_value = "annotation")]
        pred_space: PredSpaceArg,
        /// Print JSON (fractions) instead of a table (percentages).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum PredSpaceArg {
    Annotation,
    Reduced,
}

#[derive(Subcommand)]
pub enum BenchMetrics {
    /// COCO evaluation on a generated COCO-val-sized case (bbox and segm), whole process.
    Coco {
        /// Where to write gt.json, dt_bbox.json, dt_segm.json (kept, so other tools can be timed on
        /// the same files); a temporary directory when omitted.
        #[arg(long)]
        out_dir: Option<PathBuf>,
        #[arg(long, default_value_t = 5000)]
        images: usize,
        #[arg(long, default_value_t = 100)]
        dets_per_image: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Repetitions of each timed evaluation (the best is reported).
        #[arg(long, default_value_t = 1)]
        repeat: usize,
    },
    /// Clustering scores on generated labels (1M samples, 1000 classes and clusters by default).
    Cluster {
        #[arg(long, default_value_t = 1_000_000)]
        samples: usize,
        #[arg(long, default_value_t = 1000)]
        classes: i64,
        #[arg(long, default_value_t = 1000)]
        clusters: i64,
        #[arg(long, default_value_t = 3)]
        repeat: usize,
    },
    /// Segmentation accumulation over generated ADE20K-sized label maps (2,000 by default).
    Segmentation {
        #[arg(long, default_value_t = 2000)]
        images: usize,
        #[arg(long, default_value_t = 512)]
        height: usize,
        #[arg(long, default_value_t = 683)]
        width: usize,
        #[arg(long, default_value_t = 150)]
        num_classes: u8,
        #[arg(long, default_value_t = 3)]
        repeat: usize,
    },
}

pub fn run(cmd: MetricsCommand) -> anyhow::Result<()> {
    match cmd {
        MetricsCommand::Coco {
            gt,
            dt,
            iou_type,
            max_dets,
            json,
        } => {
            let iou_type: IouType = iou_type.parse().map_err(anyhow::Error::msg)?;
            let options = CocoOptions { iou_type, max_dets };
            let summary = metrics::coco::evaluate_files(&gt, &dt, &options)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&coco_json(&summary))?);
            } else {
                print!("{}", coco_table(&summary));
            }
        }
        MetricsCommand::Cluster { truth, pred, json } => {
            let t = read_labels(&truth)?;
            let p = read_labels(&pred)?;
            if t.len() != p.len() {
                bail!(
                    "{} has {} labels but {} has {}",
                    truth.display(),
                    t.len(),
                    pred.display(),
                    p.len()
                );
            }
            if t.is_empty() {
                bail!("{}: no labels", truth.display());
            }
            let scores = ClusterScores::compute(&t, &p)?;
            let c = Contingency::new(&t, &p)?;
            let out = json!({
                "acc": scores.acc,
                "nmi": scores.nmi,
                "ari": scores.ari,
                "fmi": scores.fmi,
                "n_samples": t.len(),
                "n_classes": c.classes().len(),
                "n_clusters": c.clusters().len(),
            });
            if json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!(
                    "{} samples, {} classes, {} clusters",
                    t.len(),
                    c.classes().len(),
                    c.clusters().len()
                );
                for (name, v) in [
                    ("ACC", scores.acc),
                    ("NMI", scores.nmi),
                    ("ARI", scores.ari),
                    ("FMI", scores.fmi),
                ] {
                    println!("{name:>4} {:>7.2}", v * 100.0);
                }
            }
        }
        MetricsCommand::Segmentation {
            gt_dir,
            pred_dir,
            num_classes,
            ignore_index,
            reduce_zero_label,
            pred_space,
            json,
        } => {
            if num_classes == 0 {
                bail!("--num-classes must be at least 1");
            }
            let config = SegmentationConfig {
                num_classes,
                ignore_index,
                reduce_zero_label,
            };
            let pairs = metrics::segmentation::pair_label_pngs(&gt_dir, &pred_dir)?;
            let space = match pred_space {
                PredSpaceArg::Annotation => metrics::segmentation::PredSpace::Annotation,
                PredSpaceArg::Reduced => metrics::segmentation::PredSpace::Reduced,
            };
            let scores = metrics::segmentation::evaluate_pngs_in(&pairs, config, space)?;
            if json {
                let out = segmentation_json(&scores, pairs.len());
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                print!("{}", segmentation_table(&scores, pairs.len()));
            }
        }
    }
    Ok(())
}

/// One integer label per line; blank lines only at the end.
fn read_labels(path: &Path) -> anyhow::Result<Vec<i64>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let lines: Vec<&str> = text.trim_end().lines().collect();
    if lines.len() == 1 && lines[0].trim().is_empty() {
        return Ok(Vec::new());
    }
    lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            line.trim().parse::<i64>().map_err(|_| {
                anyhow::anyhow!(
                    "{}:{}: expected one integer label per line, found {:?}",
                    path.display(),
                    i + 1,
                    line
                )
            })
        })
        .collect()
}

/// A JSON number, or null for NaN (JSON has no NaN).
fn number(v: f64) -> Value {
    if v.is_nan() {
        Value::Null
    } else {
        json!(v)
    }
}

fn coco_json(s: &CocoSummary) -> Value {
    let mut out = serde_json::Map::new();
    out.insert("iou_type".into(), json!(s.iou_type.as_str()));
    out.insert("max_dets".into(), json!(s.max_dets));
    out.insert("stats".into(), json!(s.stats));
    for (name, v) in s.named_stats() {
        out.insert(name.into(), json!(v));
    }
    out.insert("per_category".into(), json!(s.per_category));
    Value::Object(out)
}

fn percent_or_dash(v: f64) -> String {
    if v < 0.0 || v.is_nan() {
        "      -".to_string()
    } else {
        format!("{:>7.2}", v * 100.0)
    }
}

fn coco_table(s: &CocoSummary) -> String {
    let md = &s.max_dets;
    let rows = [
        ("AP", "0.50:0.95", "all", 100),
        ("AP", "0.50", "all", md[2]),
        ("AP", "0.75", "all", md[2]),
        ("AP", "0.50:0.95", "small", md[2]),
        ("AP", "0.50:0.95", "medium", md[2]),
        ("AP", "0.50:0.95", "large", md[2]),
        ("AR", "0.50:0.95", "all", md[0]),
        ("AR", "0.50:0.95", "all", md[1]),
        ("AR", "0.50:0.95", "all", md[2]),
        ("AR", "0.50:0.95", "small", md[2]),
        ("AR", "0.50:0.95", "medium", md[2]),
        ("AR", "0.50:0.95", "large", md[2]),
    ];
    let mut out = format!("COCO {} evaluation (percent; - = undefined)\n", s.iou_type);
    for ((kind, iou, area, max_det), (name, v)) in rows.iter().zip(s.named_stats()) {
        out.push_str(&format!(
            " {name:<6} {kind} @[ IoU={iou:<9} | area={area:>6} | maxDets={max_det:>4} ] {}\n",
            percent_or_dash(v)
        ));
    }
    out.push_str("\nper-category AP\n");
    for c in &s.per_category {
        out.push_str(&format!(
            " {:>6} {:<24} {}\n",
            c.category_id,
            c.name,
            percent_or_dash(c.ap)
        ));
    }
    out
}

fn segmentation_json(s: &SegmentationScores, images: usize) -> Value {
    let per_class: Vec<Value> = (0..s.iou.len())
        .map(|c| json!({"class": c, "IoU": number(s.iou[c]), "Acc": number(s.acc[c])}))
        .collect();
    json!({
        "aAcc": number(s.a_acc),
        "mAcc": number(s.m_acc),
        "mIoU": number(s.m_iou),
        "per_class": per_class,
        "images": images,
    })
}

fn segmentation_table(s: &SegmentationScores, images: usize) -> String {
    let pct = |v: f64| {
        if v.is_nan() {
            "    nan".to_string()
        } else {
            format!("{:>7.2}", v * 100.0)
        }
    };
    let mut out = format!("{images} images, {} classes (percent)\n", s.iou.len());
    out.push_str(&format!(
        " aAcc {}  mAcc {}  mIoU {}\n\n class     IoU     Acc\n",
        pct(s.a_acc),
        pct(s.m_acc),
        pct(s.m_iou)
    ));
    for c in 0..s.iou.len() {
        out.push_str(&format!(" {c:>5} {} {}\n", pct(s.iou[c]), pct(s.acc[c])));
    }
    out
}

fn best_of<T>(repeat: usize, mut f: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<(f64, T)> {
    let mut best = f64::INFINITY;
    let mut last = None;
    for _ in 0..repeat.max(1) {
        let start = Instant::now();
        let out = f()?;
        best = best.min(start.elapsed().as_secs_f64());
        last = Some(out);
    }
    Ok((best, last.expect("at least one run")))
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn write_json_file(path: &Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    serde_json::to_writer(std::io::BufWriter::new(file), value)
        .with_context(|| format!("writing {}", path.display()))
}

pub fn run_bench(cmd: BenchMetrics) -> anyhow::Result<()> {
    match cmd {
        BenchMetrics::Coco {
            out_dir,
            images,
            dets_per_image,
            seed,
            repeat,
        } => {
            let temp;
            let dir = match out_dir {
                Some(d) => {
                    std::fs::create_dir_all(&d)
                        .with_context(|| format!("creating {}", d.display()))?;
                    d
                }
                None => {
                    temp = tempfile::tempdir()?;
                    temp.path().to_path_buf()
                }
            };
            let spinner = indicatif::ProgressBar::new_spinner();
            spinner.set_message(format!(
                "generating {images} images x {dets_per_image} detections"
            ));
            spinner.enable_steady_tick(std::time::Duration::from_millis(200));
            let case = metrics::synthetic::coco_case(images, dets_per_image, seed)?;
            let size = case.size();
            let gt = dir.join("gt.json");
            write_json_file(&gt, &case.ground_truth)?;
            let mut results = serde_json::Map::new();
            for (iou_type, dets) in [
                (IouType::Bbox, &case.bbox_detections),
                (IouType::Segm, &case.segm_detections),
            ] {
                let dt = dir.join(format!("dt_{iou_type}.json"));
                write_json_file(&dt, dets)?;
                spinner.set_message(format!("evaluating {iou_type}"));
                let options = CocoOptions::new(iou_type);
                let (seconds, summary) = best_of(repeat, || {
                    Ok(metrics::coco::evaluate_files(&gt, &dt, &options)?)
                })?;
                results.insert(
                    iou_type.as_str().into(),
                    json!({"seconds": seconds, "stats": summary.stats, "dt": dt}),
                );
            }
            spinner.finish_and_clear();
            let out = json!({
                "benchmark": "coco",
                "what": "whole evaluation: load ground truth + detections JSON, evaluate, accumulate, summarize",
                "case": size,
                "gt": gt,
                "threads": threads(),
                "results": results,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        BenchMetrics::Cluster {
            samples,
            classes,
            clusters,
            repeat,
        } => {
            let (truth, pred) = metrics::synthetic::cluster_labels(samples, classes, clusters, 0);
            let (seconds, scores) = best_of(repeat, || Ok(ClusterScores::compute(&truth, &pred)?))?;
            let out = json!({
                "benchmark": "cluster",
                "samples": samples, "classes": classes, "clusters": clusters,
                "seconds": seconds,
                "acc": scores.acc, "nmi": scores.nmi, "ari": scores.ari, "fmi": scores.fmi,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        BenchMetrics::Segmentation {
            images,
            height,
            width,
            num_classes,
            repeat,
        } => {
            // A pool of distinct maps, reused: 2,000 ADE-sized pairs would need ~1.4 GB.
            let pool = images.clamp(1, 32);
            let gts = metrics::synthetic::label_maps(pool, height, width, num_classes, 1);
            let preds = metrics::synthetic::label_maps(pool, height, width, num_classes, 2);
            let config = SegmentationConfig {
                num_classes: num_classes as usize,
                ignore_index: 255,
                reduce_zero_label: false,
            };
            let (seconds, scores) = best_of(repeat, || {
                Ok(metrics::segmentation::accumulate_par(
                    images,
                    config,
                    |i, acc| acc.add_u8(&preds[i % pool], &gts[i % pool]),
                )?)
            })?;
            let out = json!({
                "benchmark": "segmentation",
                "what": "accumulate + score in-memory label maps (PNG decoding excluded)",
                "images": images, "height": height, "width": width, "num_classes": num_classes,
                "threads": threads(),
                "seconds": seconds,
                "mIoU": number(scores.m_iou),
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
    }
    Ok(())
}
