//! `ibot report DIR… --out DIR`: re-render and merge existing suite results (runs made on
//! different days side by side).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::report::{self, Report};

#[derive(Args)]
pub struct ReportArgs {
    /// Report directories written by `ibot suite` (each holds report.json).
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
    /// Where report.json, report.md and report.html are written (may be one of the inputs).
    #[arg(long)]
    out: PathBuf,
    /// Add a pretraining log (`ibot pretrain`'s log.jsonl) as NAME=PATH; repeatable.
    #[arg(long = "pretrain-log", value_name = "NAME=PATH")]
    pretrain_logs: Vec<String>,
}

pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let runs = args
        .dirs
        .iter()
        .map(|d| Ok((d.clone(), Report::load(d)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut merged = report::merge(&runs, &args.out)?;
    for spec in &args.pretrain_logs {
        let (name, path) = parse_named(spec, "--pretrain-log")?;
        merged
            .pretraining
            .insert(name, report::read_pretrain_log(&path)?);
    }
    merged.write_all(&args.out)?;
    eprintln!(
        "{} checkpoint(s) from {} run(s): wrote {}, {}, {} in {}",
        merged.checkpoints.len(),
        runs.len(),
        report::REPORT_JSON,
        report::REPORT_MD,
        report::REPORT_HTML,
        args.out.display()
    );
    Ok(())
}

/// `NAME=PATH` → (NAME, PATH).
pub fn parse_named(spec: &str, flag: &str) -> anyhow::Result<(String, PathBuf)> {
    match spec.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => {
            Ok((name.to_string(), PathBuf::from(path)))
        }
        _ => anyhow::bail!("{flag} {spec:?}: expected NAME=PATH"),
    }
}
