//! `etcdsnap restore-check NAME --endpoints ...`: after a restore, whether the cluster that
//! runs is the snapshot's ([`etcdsnap::restore::cluster_check`]); a verdict, a non-zero exit
//! when it is not, and an Event on the snapshot's resource when Kubernetes answers.

use super::restore::{open_snapshot_dir, resolve_s3};
use crate::cli::args::parse_duration;
use crate::cli::flags::{EtcdArgs, KubeArgs, OutputArgs, S3Args, heading};
use crate::cli::output::{emit, print_structured, table};
use crate::cli::{EXIT_FAILURE, resolve};
use anyhow::Context as _;
use clap::Args;
use etcdsnap::restore::SnapshotSource;
use etcdsnap::restore::cluster_check::{ClusterCheck, check};
use etcdsnap_api::SnapshotName;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Args)]
#[command(after_help = EXAMPLES, mut_args(crate::cli::help::unused(&[&["record_hashkv"]])))]
pub struct RestoreCheckArgs {
    /// The snapshot the cluster was restored from, as `ls` shows it.
    #[arg(value_name = "NAME")]
    pub snapshot: String,
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// How long to wait for every member to answer with one leader and one revision.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1m")]
    pub wait: Duration,
    /// Snapshot directory in which NAME is looked up [default: as for restore]
    #[arg(long, visible_alias = "etcd-snapshot-dir", env = "ETCDSNAP_DIR", value_name = "DIR", help_heading = heading::STORAGE)]
    pub dir: Option<PathBuf>,
    #[command(flatten)]
    pub s3: S3Args,
    #[command(flatten)]
    pub kube: KubeArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

const EXAMPLES: &str = "Examples:
  # After restoring every member with restore --all-members and starting them
  etcdsnap restore-check on-demand-m0-1700000000.zst --endpoints https://10.0.0.5:2379,https://10.0.0.6:2379,https://10.0.0.7:2379
";

pub async fn run(args: RestoreCheckArgs) -> anyhow::Result<ExitCode> {
    let source = match args.s3.enabled {
        true => resolve_s3(&args.snapshot, resolve::s3_settings(&args.s3, None)).await?,
        false => {
            let name = SnapshotName::parse(&args.snapshot)
                .with_context(|| format!("{:?} is not a snapshot name", args.snapshot))?;
            let store = open_snapshot_dir(args.dir.as_deref(), &format!("snapshot {name} not found"), name.as_ref())?;
            SnapshotSource::from_local_store(&store, &name)?
        }
    };
    let etcd = resolve::etcd_config(&args.etcd, None);
    let report = check(&etcd, &source.record, args.wait).await;
    if !args.kube.no_kube {
        super::restore_check_event::record(&args.kube, &source.record, &report).await;
    }
    match args.output.output.is_table() {
        true => emit(&text(&report))?,
        false => print_structured(&report, args.output.output)?,
    }
    Ok(if report.ok { ExitCode::SUCCESS } else { ExitCode::from(EXIT_FAILURE) })
}

fn text(report: &ClusterCheck) -> String {
    let mut rows = vec![vec!["CHECK".to_string(), "RESULT".into(), "DETAIL".into()]];
    for c in &report.checks {
        rows.push(vec![c.check.into(), if c.ok { "ok" } else { "FAIL" }.into(), c.detail.clone()]);
    }
    let verdict = match report.ok {
        true => format!("Verified: the cluster is snapshot {}.\n", report.snapshot),
        false => format!("FAILED: the cluster is not snapshot {}: {}\n", report.snapshot, report.failures().join("; ")),
    };
    format!("{}{verdict}", table(&rows))
}
