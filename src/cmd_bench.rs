//! `ibot bench …`: throughput measurements (never asserted by tests).

use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {
    #[command(flatten)]
    Backbone(crate::cmd_backbone::BenchBackbone),
    #[command(flatten)]
    Data(crate::cmd_data::BenchData),
    #[command(flatten)]
    Metrics(crate::cmd_metrics::BenchMetrics),
    #[command(flatten)]
    Eval(crate::cmd_eval::BenchEval),
    #[command(flatten)]
    Pretrain(crate::cmd_pretrain::BenchPretrain),
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Backbone(c) => crate::cmd_backbone::run_bench(c),
        BenchCommand::Data(c) => crate::cmd_data::run_bench(c),
        BenchCommand::Metrics(c) => crate::cmd_metrics::run_bench(c),
        BenchCommand::Eval(c) => crate::cmd_eval::run_bench(c),
        BenchCommand::Pretrain(c) => crate::cmd_pretrain::run_bench(c),
    }
}
