//! `ibot`: pretrain ViTs with iBOT and evaluate checkpoints across the standard protocols.

mod cmd_backbone;
mod cmd_bench;
mod cmd_data;
mod cmd_demo;
mod cmd_eval;
mod cmd_metrics;
mod cmd_pretrain;
mod cmd_report;
mod protocols;
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
    /// The whole job on generated data in a few minutes: scenes → iBOT pretraining → every
    /// protocol for the pretrained and the random-init model → report.
    Demo(cmd_demo::DemoArgs),
    /// Run a benchmark suite (configs/suites/*.toml) on checkpoints and write the report.
    Suite(suite::SuiteArgs),
    /// Re-render and merge benchmark reports written by `ibot suite`.
    Report(cmd_report::ReportArgs),
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Backbone(c) => cmd_backbone::run(c),
        Command::Data(c) => cmd_data::run(c),
        Command::Metrics(c) => cmd_metrics::run(c),
        Command::Eval(c) => cmd_eval::run(c),
        Command::Pretrain(c) => cmd_pretrain::run(c),
        Command::Bench(c) => cmd_bench::run(c),
        Command::Demo(c) => cmd_demo::run(c),
        Command::Suite(c) => suite::run(c),
        Command::Report(c) => cmd_report::run(c),
    }
}

/// Runs a command line in-process (`ibot demo` drives `ibot suite` this way).
pub fn run_argv(argv: &[String]) -> anyhow::Result<()> {
    let cli = Cli::try_parse_from(argv)?;
    dispatch(cli.command)
}

fn main() {
    let cli = Cli::parse();
    if let Err(err) = dispatch(cli.command) {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
