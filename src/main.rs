//! `ibot`: pretrain ViTs with iBOT and evaluate checkpoints across the standard protocols.

mod cmd_backbone;
mod cmd_bench;
mod cmd_data;
mod cmd_eval;
mod cmd_metrics;
mod cmd_pretrain;
mod cmd_report;
mod report;
mod suite;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ibot",
    version,
    about = "iBOT pretraining and evaluation suite"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Backbone(cmd_backbone::BackboneCommand),
    /// Datasets: synthetic scenes, splits, loaders.
    #[command(subcommand)]
    Data(cmd_data::DataCommand),
    /// Metrics on predictions you bring (COCO, clustering, segmentation).
    #[command(subcommand)]
    Metrics(cmd_metrics::MetricsCommand),
    /// Evaluation protocols on frozen features.
    #[command(subcommand)]
    Eval(cmd_eval::EvalCommand),
    /// iBOT pretraining from a recipe (configs/pretrain/*.toml); resumable.
    Pretrain(cmd_pretrain::PretrainArgs),
    /// Throughput benchmarks.
    #[command(subcommand)]
    Bench(cmd_bench::BenchCommand),
    /// Run a benchmark suite (configs/suites/*.toml) on checkpoints and write the report.
    Suite(suite::SuiteArgs),
    /// Re-render and merge benchmark reports written by `ibot suite`.
    Report(cmd_report::ReportArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Backbone(c) => cmd_backbone::run(c),
        Command::Data(c) => cmd_data::run(c),
        Command::Metrics(c) => cmd_metrics::run(c),
        Command::Eval(c) => cmd_eval::run(c),
        Command::Pretrain(c) => cmd_pretrain::run(c),
        Command::Bench(c) => cmd_bench::run(c),
        Command::Suite(c) => suite::run(c),
        Command::Report(c) => cmd_report::run(c),
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
