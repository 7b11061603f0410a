//! `etcdsnap watch`: additions, changes and deletions of ETCDSnapshotFile resources as they
//! happen, a line each.

use crate::cli::flags::{KubeArgs, heading};
use crate::cli::output::{Cells, resources};
use crate::cli::{help, resolve};
use clap::{Args, ValueEnum};
use etcdsnap_kube::watch as kwatch;
use futures::StreamExt;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq, Default)]
pub enum WatchFormat {
    #[default]
    Table,
    /// One JSON object per line: {"type": "ADDED|MODIFIED|DELETED", "object": {...}}.
    Json,
}

#[derive(Debug, Args)]
#[command(after_help = EXAMPLES, mut_args(help::unused(&[help::KUBE_DUTIES, help::SAVE_ONLY, &["s3_config_secret"]])))]
pub struct WatchArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table", help_heading = heading::OUTPUT)]
    pub output: WatchFormat,
    #[command(flatten)]
    pub kube: KubeArgs,
}

const EXAMPLES: &str = "Examples:
  # Snapshots appearing, changing and going away on every node, as they happen
  etcdsnap watch

  # One JSON event per line, for a program
  etcdsnap watch -o json | jq -r 'select(.type == \"ADDED\") | .object.spec.snapshotName'
";

pub async fn run(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let kube = resolve::kube_only(&args.kube, "watch").await?;
    let mut stream = Box::pin(kwatch::changes(&kube.client));
    let cells = Cells::for_stdout();
    if args.output == WatchFormat::Table {
        crate::cli::output::emit(&format!("EVENT {}\n", resources::HEADER.join(" ")))?;
    }
    while let Some(change) = stream.next().await {
        let change = match change {
            Ok(c) => c,
            Err(e) => {
                // The watcher retries on its own; say so and keep going.
                tracing::warn!("watch interrupted, resuming: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let line = match args.output {
            WatchFormat::Json => {
                serde_json::to_string(&resources::WatchEvent { kind: change.kind(), object: change.object() })?
            }
            WatchFormat::Table => format!("{} {}", change.kind(), resources::row(change.object(), cells).join(" ")),
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}
