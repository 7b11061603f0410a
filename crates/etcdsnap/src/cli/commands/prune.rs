//! `etcdsnap prune`: retention applied now, then the removed snapshots' resources.

use crate::cli::flags::SnapshotFlags;
use crate::cli::{exit, resolve};
use clap::Args;
use etcdsnap::ops::{self, PruneOptions};
use etcdsnap::session::Purpose;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub flags: SnapshotFlags,
}

pub async fn run(args: PruneArgs) -> anyhow::Result<ExitCode> {
    let flags = &args.flags;
    let session = resolve::command_session(flags, false).await?;
    let ctx = session.context(Purpose::Write).await;
    let keep = flags.retention.retention;
    let options =
        PruneOptions { base_name: flags.name.clone(), keep_local: keep, keep_remote: ctx.s3_retention.unwrap_or(keep) };
    let report = ops::prune(&ctx, &options).await;
    for (_, name) in &report.deleted {
        println!("Snapshot {name} deleted.");
    }
    for e in &report.errors {
        eprintln!("error: {e}");
    }
    session.after_removal(&ctx, &report.deleted).await;
    Ok(exit(report.errors.is_empty()))
}
