//! `etcdsnap verify [NAME...]`: every stored snapshot (or the named ones) read again and checked
//! against its record and etcd's trailer, while no prune or delete may remove it.

use crate::cli::flags::SnapshotFlags;
use crate::cli::output::{self, verify};
use crate::cli::progress::ProgressLine;
use crate::cli::{exit, resolve};
use clap::Args;
use etcdsnap::ops;
use etcdsnap::session::Purpose;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Snapshots to verify [default: all]
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
    #[command(flatten)]
    pub flags: SnapshotFlags,
}

/// How long `verify` waits for a prune or delete of this node's snapshots to finish.
const VERIFY_LOCK_WAIT: Duration = Duration::from_secs(60);

pub async fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let names = resolve::snapshot_names(&args.names)?;
    let session = resolve::command_session(&args.flags, false).await?;
    let ctx = session.context(Purpose::Read).await;
    // No prune or delete removes a snapshot while it is being read.
    let _reading = ctx.lock_for_reading(VERIFY_LOCK_WAIT).await?;
    let mut results = Vec::new();
    let mut listing_errors = Vec::new();
    let mut ok = true;
    let mut found = vec![false; names.len()];
    for store in ctx.stores() {
        let listing = match store.list().await {
            Ok(listing) => listing,
            // The other stores are still checked; this one is reported after the results.
            Err(e) => {
                listing_errors.push(format!("listing {}: {e}", store.describe()));
                continue;
            }
        };
        for w in &listing.warnings {
            tracing::warn!("{w}");
        }
        for record in listing.records {
            if !names.is_empty() {
                let Some(i) = names.iter().position(|n| *n == record.name) else {
                    continue;
                };
                found[i] = true;
            }
            let progress = ProgressLine::start(&format!("Verifying {}", record.name));
            let result = ops::verify_record(store, &record, Some(progress.counter())).await;
            progress.finish();
            ok &= result.ok();
            results.push(result);
        }
    }
    for (name, _) in names.iter().zip(&found).filter(|(_, f)| !**f) {
        ok = false;
        if listing_errors.is_empty() {
            eprintln!("Snapshot {name} not found.");
        } else {
            eprintln!("Snapshot {name} not found in the stores that could be listed.");
        }
    }
    ok &= listing_errors.is_empty();
    output::print(
        args.flags.output.output,
        || verify::VerifyView::new(&results, listing_errors.clone()),
        |cells| verify::table_of(&results, cells),
    )?;
    for e in &listing_errors {
        eprintln!("error: {e}; its snapshots were not verified");
    }
    Ok(exit(ok))
}
