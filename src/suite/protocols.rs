//! The suite's tasks → the protocols' `evaluate` functions (one arm per protocol).

use std::path::Path;

use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

use crate::cmd_eval::{self, EvalContext};

use super::attention;

pub enum Outcome {
    Done(Value),
    /// The task is listed by the suite but this build has no implementation of it.
    NotAvailable(String),
}

/// Options a task table turns into, checked before any work starts: `Ok(Some(effective options
/// with defaults filled in))`, `Ok(None)` when the protocol is not available in this build.
pub fn check_options(task: &str, table: &toml::Value) -> anyhow::Result<Option<Value>> {
    Ok(match task {
        "knn" => Some(options::<cmd_eval::knn::KnnOptions>(task, table)?.1),
        "linear" => Some(options::<cmd_eval::linear::LinearOptions>(task, table)?.1),
        "semisup" => Some(options::<cmd_eval::semisup::SemisupOptions>(task, table)?.1),
        "cluster" => Some(options::<cmd_eval::cluster::ClusterOptions>(task, table)?.1),
        "attention" => Some(options::<attention::AttentionOptions>(task, table)?.1),
        _ => None,
    })
}

/// Why a listed task cannot run in this build.
pub fn unavailable_reason(task: &str) -> String {
    format!("the {task} protocol is not available in this build of ibot")
}

/// Run one task for one checkpoint; `out` is the report directory (attention writes images there).
pub fn run(
    task: &str,
    table: &toml::Value,
    ctx: &EvalContext,
    checkpoint_name: &str,
    out: &Path,
) -> anyhow::Result<Outcome> {
    Ok(match task {
        "knn" => {
            let (o, _) = options::<cmd_eval::knn::KnnOptions>(task, table)?;
            Outcome::Done(cmd_eval::knn::evaluate(ctx, &o)?)
        }
        "linear" => {
            let (o, _) = options::<cmd_eval::linear::LinearOptions>(task, table)?;
            Outcome::Done(cmd_eval::linear::evaluate(ctx, &o)?)
        }
        "semisup" => {
            let (o, _) = options::<cmd_eval::semisup::SemisupOptions>(task, table)?;
            Outcome::Done(cmd_eval::semisup::evaluate(ctx, &o)?)
        }
        "cluster" => {
            let (o, _) = options::<cmd_eval::cluster::ClusterOptions>(task, table)?;
            Outcome::Done(cmd_eval::cluster::evaluate(ctx, &o)?)
        }
        "attention" => {
            let (o, _) = options::<attention::AttentionOptions>(task, table)?;
            Outcome::Done(attention::evaluate(ctx, &o, checkpoint_name, out)?)
        }
        _ => Outcome::NotAvailable(unavailable_reason(task)),
    })
}

/// The protocol's options from its suite table (its `deny_unknown_fields` rejects typos), and
/// the effective options (defaults filled in) as JSON for the record and the resume key.
fn options<T: DeserializeOwned + Serialize>(
    task: &str,
    table: &toml::Value,
) -> anyhow::Result<(T, Value)> {
    let opts: T = table
        .clone()
        .try_into()
        .map_err(|e| anyhow::anyhow!("[{task}]: {e}"))?;
    let json = serde_json::to_value(&opts)?;
    Ok((opts, json))
}
