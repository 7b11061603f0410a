//! `etcdsnap verify [NAME|PATH...]`: every stored snapshot (or the named ones, or files) read
//! again and checked against its record and etcd's trailer, while no prune or delete may
//! remove it. `OK` only for what was checked against a record.

use crate::cli::flags::SnapshotFlags;
use crate::cli::output::{self, verify};
use crate::cli::progress::ProgressLine;
use crate::cli::seal::UnsealArgs;
use crate::cli::{exit, help, resolve};
use anyhow::bail;
use clap::Args;
use etcdsnap::ops::{self, VerifyResult};
use etcdsnap::restore::SnapshotSource;
use etcdsnap::session::Purpose;
use etcdsnap_storage::SnapshotRecord;
use etcdsnap_storage::seal::OpenKeys;
use etcdsnap_storage::store::SnapshotStore;
use etcdsnap_storage::store::local::LocalStore;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Args)]
#[command(
    after_help = EXAMPLES,
    mut_args(help::unused(help::READER_UNUSED)),
    mut_args(help::no_wide)
)]
pub struct VerifyArgs {
    /// Snapshots to verify: names as `ls` shows them, or file paths (anything containing a
    /// `/`, e.g. ./snap.db) [default: every snapshot of the snapshot directory and S3]
    #[arg(value_name = "NAME|PATH")]
    pub names: Vec<String>,
    #[command(flatten)]
    pub flags: SnapshotFlags,
    #[command(flatten)]
    pub unseal: UnsealArgs,
}

const EXAMPLES: &str = "Examples:
  # Every snapshot of the snapshot directory, against its record
  etcdsnap verify

  # Two snapshots by name, and a copy somewhere else by path
  etcdsnap verify on-demand-node-1-1700000000 etcd-snapshot-node-1-1700003600.zst ./copy/snap.db

  # Records must carry a good minisign signature; sealed snapshots opened to check their trailer
  etcdsnap verify --verify-key /etc/etcdsnap/sign.pub --decrypt-identity /root/etcd.agekey

  # Every snapshot in S3 too, the results as JSON
  etcdsnap verify --s3 --s3-bucket backups -o json
";

/// How long `verify` waits for a prune or delete of this node's snapshots to finish.
const VERIFY_LOCK_WAIT: Duration = Duration::from_secs(60);

pub async fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let keys = crate::cli::seal::open_keys(&args.unseal)?;
    let (paths, names): (Vec<&String>, Vec<&String>) = args.names.iter().partition(|n| n.contains('/'));
    let names = resolve::snapshot_names(&names.into_iter().cloned().collect::<Vec<_>>())?;
    let mut results = Vec::new();
    for path in &paths {
        results.push(verify_path(Path::new(path), &keys).await?);
    }
    let mut listing_errors = Vec::new();
    let mut ok = true;
    // Paths alone read no store: no session, no lock.
    if paths.is_empty() || !names.is_empty() {
        let session = resolve::command_session(&args.flags, false).await?;
        let ctx = session.context(Purpose::Read).await;
        listing_errors.extend(ctx.missing_local_error().map(|e| e.to_string()));
        if let Some(w) = ctx.missing_local_warning() {
            tracing::warn!("{w}");
        }
        // No prune or delete removes a snapshot while it is being read.
        let _reading = ctx.lock_for_reading(VERIFY_LOCK_WAIT).await?;
        let mut found = vec![false; names.len()];
        for store in ctx.stores_and_replicas() {
            let listing = match store.list().await {
                Ok(listing) => listing,
                // The other stores are still checked; this one is reported after the results.
                Err(e) => {
                    listing_errors.push(format!("listing {}: {e}; its snapshots were not verified", store.describe()));
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
                results.push(verify_one(store, &record, &keys).await);
            }
        }
        for (name, _) in names.iter().zip(&found).filter(|(_, f)| !**f) {
            ok = false;
            if listing_errors.is_empty() {
                eprintln!("Snapshot {name} not found in {}.", ctx.describe_stores());
            } else {
                eprintln!("Snapshot {name} not found in the stores that could be listed.");
            }
        }
        if results.is_empty() && names.is_empty() && listing_errors.is_empty() {
            bail!("nothing to verify: no snapshots in {}", ctx.describe_stores());
        }
    }
    ok &= listing_errors.is_empty() && results.iter().all(VerifyResult::ok);
    // A table of nothing says nothing: the errors below say why.
    if !(results.is_empty() && args.flags.output.output.is_table()) {
        output::print(
            args.flags.output.output,
            || verify::VerifyView::new(&results, listing_errors.clone()),
            |cells| verify::table_of(&results, cells),
        )?;
    }
    for e in &listing_errors {
        eprintln!("error: {e}");
    }
    for r in results.iter().filter(|r| r.ok() && r.check.as_ref().is_some_and(|c| !c.trailer_checked)) {
        eprintln!(
            "note: {} is sealed: its bytes match its record; give --decrypt-identity to check etcd's trailer inside too",
            r.record.location
        );
    }
    for r in results.iter().filter(|r| r.ok() && !r.against_record()) {
        eprintln!(
            "warning: {} has no record: etcd's integrity trailer is valid, but its sha256 and size could not be checked",
            r.record.location
        );
    }
    Ok(exit(ok))
}

/// One stored snapshot, read again with a progress line.
async fn verify_one(store: &dyn SnapshotStore, record: &SnapshotRecord, keys: &OpenKeys) -> VerifyResult {
    let progress = ProgressLine::start(&format!("Verifying {}", record.name));
    let result = ops::verify_record(store, record, keys, Some(progress.counter())).await;
    progress.finish();
    result
}

/// A snapshot file given by path, checked against the record kept beside its directory (as
/// `restore` and `drill` find it).
async fn verify_path(path: &Path, keys: &OpenKeys) -> anyhow::Result<VerifyResult> {
    let source = SnapshotSource::from_path(path)?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let store = LocalStore::open(dir, false, &source.record.node_name)?;
    for note in &source.notes {
        tracing::warn!("{note}");
    }
    Ok(verify_one(&store, &source.record, keys).await)
}
