//! `etcdsnap delete NAME...`: the snapshots and their records from every store, then their
//! resources; with `--dry-run`, where each one would be deleted from.

use crate::cli::flags::SnapshotFlags;
use crate::cli::output::emit;
use crate::cli::{exit, help, resolve};
use anyhow::bail;
use clap::Args;
use etcdsnap::ops::{self, Context, DeleteResult, remove};
use etcdsnap::session::Purpose;
use etcdsnap_api::SnapshotName;
use std::process::ExitCode;

#[derive(Debug, Args)]
#[command(
    after_help = EXAMPLES,
    mut_args(help::unused(&[
        help::ETCD, help::TOKEN, help::COMPRESS, help::RETENTION, help::KUBE_DUTIES, help::SAVE_ONLY,
        &["name", "cluster_id", "output"],
    ]))
)]
pub struct DeleteArgs {
    /// Snapshot names (file names, as `ls` shows them).
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
    /// Say where each snapshot would be deleted from, and delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub flags: SnapshotFlags,
}

const EXAMPLES: &str = "Examples:
  # Where a snapshot would be deleted from, without deleting it
  etcdsnap delete on-demand-node-1-1700000000 --dry-run

  # Delete two snapshots, with their records, locally and in S3
  etcdsnap delete on-demand-node-1-1700000000 on-demand-node-1-1700003600.zst --s3 --s3-bucket backups
";

pub async fn run(args: DeleteArgs) -> anyhow::Result<ExitCode> {
    let names = resolve::snapshot_names(&args.names)?;
    let session = resolve::command_session(&args.flags, false).await?;
    let ctx = session.context(Purpose::Write).await;
    let missing = ctx.missing_local_error();
    if let Some(w) = ctx.missing_local_warning() {
        tracing::warn!("{w}");
    }
    match (&missing, ctx.stores().is_empty()) {
        (Some(e), true) => bail!("{e}"),
        (None, true) => bail!(
            "no snapshot storage: no local copies are kept (--no-local) and no remote store (S3, GCS, Azure) is configured"
        ),
        (Some(e), false) => eprintln!("error: {e}"),
        (None, false) => {}
    }
    if args.dry_run {
        return Ok(exit(preview(&ctx, &names).await? && missing.is_none()));
    }
    let results = match ops::delete(&ctx, &names).await {
        Ok(results) => results,
        Err(e) => {
            // The removal lock was not taken: nothing was removed anywhere.
            eprintln!("error: {e}");
            return Ok(exit(false));
        }
    };
    let mut ok = missing.is_none();
    for name in &names {
        let mine: Vec<_> = results.iter().filter(|d| d.name == *name).collect();
        for d in &mine {
            match &d.result {
                DeleteResult::Deleted => emit(&format!("Snapshot {name} deleted from {}.\n", d.store))?,
                DeleteResult::NotFound => {}
                DeleteResult::Failed(e) => {
                    ok = false;
                    eprintln!("error: deleting {name} from {}: {e}", d.store);
                }
            }
        }
        if mine.iter().all(|d| matches!(d.result, DeleteResult::NotFound)) {
            ok = false;
            eprintln!("Snapshot {name} not found in {}.", ctx.describe_stores());
        }
    }
    session.after_removal(&ctx, &remove::deleted(&results)).await;
    Ok(exit(ok))
}

/// `--dry-run`: a line per store that holds each name; false when a name is nowhere or a store
/// could not be asked.
async fn preview(ctx: &Context, names: &[SnapshotName]) -> std::io::Result<bool> {
    let mut ok = true;
    for name in names {
        let mut found = false;
        for store in ctx.stores() {
            match store.exists(name).await {
                Ok(true) => {
                    found = true;
                    emit(&format!("Snapshot {name} would be deleted from {}.\n", store.describe()))?;
                }
                Ok(false) => {}
                Err(e) => {
                    ok = false;
                    eprintln!("error: looking for {name} in {}: {e}", store.describe());
                }
            }
        }
        if !found {
            ok = false;
            eprintln!("Snapshot {name} not found in {}.", ctx.describe_stores());
        }
    }
    emit("Dry run: nothing was deleted.\n")?;
    Ok(ok)
}
