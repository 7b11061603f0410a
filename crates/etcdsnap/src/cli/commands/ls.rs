//! `etcdsnap ls`: this node's stored snapshots; with `--cluster` every node's resources from the
//! API server; with `--deltas` the delta chains of point-in-time recovery.

use crate::cli::flags::{OutputFormat, SnapshotFlags};
use crate::cli::output::{self, chains, records, resources};
use crate::cli::{exit, help, resolve};
use anyhow::bail;
use clap::Args;
use etcdsnap::ops;
use etcdsnap::session::Purpose;
use etcdsnap_api::ETCDSnapshotFile;
use etcdsnap_kube::resources as kube_resources;
use etcdsnap_storage::pitr::{local, summarize};
use etcdsnap_storage::store::StoreError;
use std::path::Path;
use std::process::ExitCode;

#[derive(Debug, Args)]
#[command(
    after_help = EXAMPLES,
    mut_args(help::unused(&[
        help::ETCD, help::TOKEN, help::COMPRESS, help::RETENTION, help::KUBE_DUTIES, help::SAVE_ONLY,
        &["name", "cluster_id"],
    ])),
    mut_arg("output", |a| a.help("Output format: table, wide (more columns), json or yaml"))
)]
pub struct LsArgs {
    /// List the ETCDSnapshotFile resources of every node (from the API server) instead of this
    /// node's storage.
    #[arg(long, conflicts_with = "no_kube")]
    pub cluster: bool,
    /// List the delta chains of point-in-time recovery (`agent --deltas`) beside the snapshot
    /// directory: base, revisions and times covered, gaps.
    #[arg(long, conflicts_with = "cluster")]
    pub deltas: bool,
    #[command(flatten)]
    pub flags: SnapshotFlags,
}

const EXAMPLES: &str = "Examples:
  # This node's snapshots, locally and in S3 (columns that fit the terminal)
  etcdsnap ls --s3 --s3-bucket backups

  # With the location, revision, compression, cluster id, history and S3 lock of each
  etcdsnap ls -o wide

  # K3s's columns with whole bytes, for a script (as into any pipe)
  etcdsnap ls | awk '{print $1, $3}'

  # Every node's snapshots, from the API server; the delta chains of point-in-time recovery
  etcdsnap ls --cluster
  etcdsnap ls --deltas
";

pub async fn run(args: LsArgs) -> anyhow::Result<ExitCode> {
    if args.cluster {
        return cluster(&args).await;
    }
    let session = resolve::command_session(&args.flags, false).await?;
    let ctx = session.context(Purpose::Read).await;
    if args.deltas {
        let Some(local) = &ctx.local else {
            bail!("delta chains live beside the local snapshot directory, which does not exist (pass --dir)");
        };
        return Ok(exit(deltas(local.dir(), args.flags.output.output)?));
    }
    let report = ops::list(&ctx).await;
    for w in &report.warnings {
        tracing::warn!("{w}");
    }
    for (store, e) in &report.errors {
        match e {
            StoreError::MissingDir(_) => eprintln!("error: {e}"),
            e => eprintln!("error: listing {store}: {e}"),
        }
    }
    let format = args.flags.output.output;
    if format.is_table() && report.records.is_empty() {
        // Like kubectl's "No resources found": nothing on stdout, where a script expects rows.
        if report.errors.is_empty() {
            eprintln!("No snapshots found in {}.", ctx.describe_stores());
        }
        return Ok(exit(report.errors.is_empty()));
    }
    let wide = format == OutputFormat::Wide;
    output::print(format, || records::view(&report.records), |cells| records::table_of(&report.records, cells, wide))?;
    Ok(exit(report.errors.is_empty()))
}

/// `ls --cluster`: every node's resources, from the API server.
async fn cluster(args: &LsArgs) -> anyhow::Result<ExitCode> {
    let kube = resolve::kube_only(&args.flags.node.kube, "ls --cluster").await?;
    let mut items = kube_resources::list(&kube.client, None).await?;
    items.sort_by(|a, b| {
        let time = |c: &ETCDSnapshotFile| c.status.as_ref().and_then(|s| s.creation_time.as_ref()).map(|t| t.0);
        (time(a), &a.spec.snapshot_name).cmp(&(time(b), &b.spec.snapshot_name))
    });
    output::print(
        args.flags.output.output,
        || records::KubeList::new(items.iter().collect()),
        |cells| resources::table_of(&items, cells),
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `ls --deltas`: the chains beside `snapshot_dir`; false when a record could not be read.
fn deltas(snapshot_dir: &Path, format: OutputFormat) -> std::io::Result<bool> {
    let (found, warnings) = local::read_all(&local::dir_beside(snapshot_dir));
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let summaries = summarize(&found);
    if format.is_table() && summaries.is_empty() {
        eprintln!("No delta chains beside {} (run the agent with --deltas).", snapshot_dir.display());
        return Ok(warnings.is_empty());
    }
    let view = || summaries.iter().map(chains::ChainView::new).collect::<Vec<_>>();
    output::print(format, view, |_| chains::table_of(&summaries))?;
    Ok(warnings.is_empty())
}
