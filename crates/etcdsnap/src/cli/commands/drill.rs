//! `etcdsnap drill [NAME|PATH...]`: restore drills of stored snapshots (by default the newest of
//! this node in each store), their results kept on the records and resources.

use crate::cli::flags::{DrillToolArgs, SnapshotFlags};
use crate::cli::output::{self, drill as view};
use crate::cli::progress::ProgressLine;
use crate::cli::seal::UnsealArgs;
use crate::cli::{exit, help, resolve};
use anyhow::{Context as _, bail};
use clap::Args;
use etcdsnap::drill::{self, DrillReport};
use etcdsnap::ops::Context;
use etcdsnap::restore::SnapshotSource;
use etcdsnap::session::Purpose;
use etcdsnap_api::SnapshotName;
use etcdsnap_storage::store::SnapshotStore;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Debug, Args)]
#[command(
    after_help = EXAMPLES,
    mut_args(help::unused(help::READER_UNUSED)),
    mut_args(help::no_wide)
)]
pub struct DrillArgs {
    /// Snapshots to drill: names as `ls` shows them (looked up locally, then in S3), or file
    /// paths (anything containing a `/`) [default: the newest snapshot of this node in each
    /// store, the ones a restore would pick]
    #[arg(value_name = "NAME|PATH")]
    pub snapshots: Vec<String>,
    #[command(flatten)]
    pub flags: SnapshotFlags,
    #[command(flatten)]
    pub tools: DrillToolArgs,
    #[command(flatten)]
    pub unseal: UnsealArgs,
}

const EXAMPLES: &str = "Examples:
  # The newest snapshot of this node in each store: hashed with etcdutl 3.7+, compared
  etcdsnap drill --etcdutl /usr/local/bin/etcdutl

  # One snapshot, restored and booted in a private etcd on loopback as well
  etcdsnap drill on-demand-node-1-1700000000 --drill-etcd /usr/local/bin/etcd

  # A sealed snapshot, opened with an age identity; only signed records are drilled
  etcdsnap drill --decrypt-identity /root/etcd.agekey --verify-key /etc/etcdsnap/sign.pub

  # A copy elsewhere, by path
  etcdsnap drill ./copy/on-demand-node-1-1700000000.zst
";

pub async fn run(args: DrillArgs) -> anyhow::Result<ExitCode> {
    let mut opts = resolve::drill_options(&args.tools).await?;
    opts.keys = crate::cli::seal::open_keys(&args.unseal)?;
    let session = resolve::command_session(&args.flags, false).await?;
    let ctx = session.context(Purpose::Read).await;
    if let Some(e) = ctx.missing_local_error() {
        bail!(e);
    }
    if let Some(w) = ctx.missing_local_warning() {
        tracing::warn!("{w}");
    }
    let sources = select(&ctx, &args.snapshots).await?;
    if sources.is_empty() {
        bail!(
            "no snapshots of node {} to drill in {}: take one with `etcdsnap save`",
            ctx.node_name,
            ctx.describe_stores()
        );
    }
    let mut reports = Vec::new();
    for source in &sources {
        let progress = ProgressLine::start(&format!("Drilling {}", source.record.name));
        let report = drill::drill(source, &opts, Some(progress.counter())).await;
        progress.finish();
        for problem in drill::keep_result(source, &report, session.kube(), &ctx.node_name, None, None).await {
            eprintln!("warning: {problem}");
        }
        reports.push(report);
    }
    output::print(
        args.flags.output.output,
        || view::DrillView::new(&reports),
        |cells| view::table_of(&reports, cells),
    )?;
    Ok(exit(reports.iter().all(DrillReport::passed)))
}

/// The snapshots named (or by default the newest of this node in each store and replica), as
/// sources.
async fn select(ctx: &Context, given: &[String]) -> anyhow::Result<Vec<SnapshotSource>> {
    let stores = ctx.shared_stores_and_replicas();
    if given.is_empty() {
        let mut out = Vec::new();
        for store in stores {
            let listing = store.list().await.with_context(|| format!("listing {}", store.describe()))?;
            let newest = listing
                .records
                .into_iter()
                .filter(|r| r.is_ready() && r.node_name == ctx.node_name)
                .max_by_key(|r| r.created_at);
            if let Some(r) = newest {
                let notes = listing.warnings.into_iter().filter(|w| w.contains(r.name.as_str())).collect();
                out.push(SnapshotSource::from_listed(store, r, notes)?);
            }
        }
        return Ok(out);
    }
    let mut out = Vec::new();
    for g in given {
        if g.contains('/') {
            out.push(SnapshotSource::from_path(Path::new(g))?);
            continue;
        }
        let name = SnapshotName::parse(g).with_context(|| format!("{g:?} is neither a path nor a snapshot name"))?;
        out.push(find(&stores, &name).await?);
    }
    Ok(out)
}

/// The local store first, then S3, then the replicas: a name is drilled where a restore would
/// take it from.
async fn find(stores: &[Arc<dyn SnapshotStore>], name: &SnapshotName) -> anyhow::Result<SnapshotSource> {
    let mut misses = Vec::new();
    for store in stores {
        match store.exists(name).await {
            Ok(true) => return Ok(SnapshotSource::from_store(store.clone(), name).await?),
            Ok(false) => misses.push(store.describe()),
            Err(e) => misses.push(format!("{} ({e})", store.describe())),
        }
    }
    bail!("snapshot {name} not found in {}", misses.join(", "))
}
