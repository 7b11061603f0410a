//! `etcdsnap delete NAME...`: the snapshots and their records from every store, then their
//! resources.

use crate::cli::flags::SnapshotFlags;
use crate::cli::{exit, resolve};
use anyhow::bail;
use clap::Args;
use etcdsnap::ops::{self, DeleteResult, remove};
use etcdsnap::session::Purpose;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Snapshot names (file names, as `ls` shows them).
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
    #[command(flatten)]
    pub flags: SnapshotFlags,
}

pub async fn run(args: DeleteArgs) -> anyhow::Result<ExitCode> {
    let names = resolve::snapshot_names(&args.names)?;
    let session = resolve::command_session(&args.flags, false).await?;
    let ctx = session.context(Purpose::Write).await;
    if ctx.stores().is_empty() {
        bail!("no snapshot storage found: the snapshot directory does not exist and S3 is not configured");
    }
    let results = match ops::delete(&ctx, &names).await {
        Ok(results) => results,
        Err(e) => {
            // The removal lock was not taken: nothing was removed anywhere.
            for name in &names {
                for store in ctx.stores() {
                    eprintln!("error: deleting {name} from {}: {e}", store.describe());
                }
            }
            return Ok(exit(false));
        }
    };
    let mut ok = true;
    for name in &names {
        let mine: Vec<_> = results.iter().filter(|d| d.name == *name).collect();
        for d in &mine {
            match &d.result {
                DeleteResult::Deleted => println!("Snapshot {name} deleted from {}.", d.store),
                DeleteResult::NotFound => {}
                DeleteResult::Failed(e) => {
                    ok = false;
                    eprintln!("error: deleting {name} from {}: {e}", d.store);
                }
            }
        }
        if mine.iter().all(|d| matches!(d.result, DeleteResult::NotFound)) {
            ok = false;
            eprintln!("Snapshot {name} not found.");
        }
    }
    session.after_removal(&ctx, &remove::deleted(&results)).await;
    Ok(exit(ok))
}
