//! What `save` saved: a line per copy (failures on stderr), or the records as a Kubernetes
//! `List` (the same view as `ls`'s).

use super::records;
use super::{human_bytes, print_structured};
use crate::cli::flags::OutputFormat;
use etcdsnap_storage::{Outcome, SnapshotRecord};
use std::time::Duration;

/// Prints each copy of the snapshot (and the copies the catch-up uploaded), saved or failed.
pub fn print(records: &[SnapshotRecord], took: Duration, format: OutputFormat) -> std::io::Result<()> {
    if format != OutputFormat::Table {
        return print_structured(&records::view(records), format);
    }
    for r in records {
        match &r.outcome {
            Outcome::Ready => println!(
                "Snapshot {} saved to {} ({}, sha256 {}) in {:.1}s.",
                r.name,
                r.location,
                human_bytes(r.size),
                r.sha256.as_deref().unwrap_or("-"),
                took.as_secs_f64()
            ),
            Outcome::Failed { message } => {
                eprintln!("Snapshot {} failed ({}): {message}", r.name, r.storage.prefix().trim_end_matches('-'))
            }
        }
    }
    Ok(())
}
