//! What `save` saved: a line per copy, one error per failure on stderr (naming no snapshot when
//! none was saved anywhere), or the records as a Kubernetes `List` (the same view as `ls`'s).

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
    let mut out = String::new();
    for r in records.iter().filter(|r| r.is_ready()) {
        out.push_str(&format!(
            "Snapshot {} saved to {} ({}, sha256 {}) in {:.1}s.\n",
            r.name,
            r.location,
            human_bytes(r.size),
            r.sha256.as_deref().unwrap_or("-"),
            took.as_secs_f64()
        ));
    }
    super::emit(&out)?;
    for line in failure_lines(records) {
        eprintln!("{line}");
    }
    Ok(())
}

/// One line per distinct failure. When no copy was saved the snapshot never existed: the lines
/// name the stores, not the snapshot, and one cause shared by every store is said once.
pub fn failure_lines(records: &[SnapshotRecord]) -> Vec<String> {
    let failed: Vec<(&SnapshotRecord, &str)> = records
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Failed { message } => Some((r, message.as_str())),
            Outcome::Ready => None,
        })
        .collect();
    let store = |r: &SnapshotRecord| r.storage.prefix().trim_end_matches('-').to_string();
    if failed.is_empty() {
        return Vec::new();
    }
    if failed.len() < records.len() {
        return failed
            .iter()
            .map(|(r, m)| format!("error: snapshot {} was not saved to {}: {m}", r.name, store(r)))
            .collect();
    }
    if failed.iter().all(|(_, m)| *m == failed[0].1) {
        return vec![format!("error: no snapshot saved: {}", failed[0].1)];
    }
    failed.iter().map(|(r, m)| format!("error: no snapshot saved to {}: {m}", store(r))).collect()
}
