//! The pass over the bytes: the sha256 against the recorded one, etcd's trailer, the revision.

use super::report::{CheckStatus, PreflightReport};
use crate::units::human_bytes as human;
use etcdsnap_storage::pipeline::verify::StoredCheck;

/// Adds the results of the pass over the bytes.
pub(crate) fn add_integrity(report: &mut PreflightReport, result: Result<StoredCheck, String>) {
    let check = match result {
        Ok(c) => c,
        Err(e) => {
            report.push(
                "sha256",
                CheckStatus::Fail,
                format!("cannot read the snapshot to its end: {e}"),
                Some("the snapshot is damaged, truncated or not an etcd snapshot: restore another one".into()),
            );
            report.push("trailer", CheckStatus::Skipped, "the snapshot could not be read", None);
            return;
        }
    };
    let i = &mut report.integrity;
    i.computed_sha256 = Some(check.stored_sha256.clone());
    i.bytes_read = Some(check.stored_size);
    i.decompressed_size = Some(check.raw_size);
    i.trailer_valid = Some(check.trailer.is_valid());
    i.zip_entry = check.zip_entry.clone();
    match report.integrity.recorded_sha256.clone() {
        Some(recorded) if recorded == check.stored_sha256 => {
            report.push("sha256", CheckStatus::Pass, format!("the bytes hash to {recorded}, as recorded"), None)
        }
        Some(recorded) => report.push(
            "sha256",
            CheckStatus::Fail,
            format!(
                "recorded {recorded}, but the bytes hash to {}: the snapshot changed after it was saved",
                check.stored_sha256
            ),
            Some("restore another snapshot".into()),
        ),
        None => report.push(
            "sha256",
            CheckStatus::Warn,
            format!("the bytes hash to {}; no recorded sha256 to compare", check.stored_sha256),
            None,
        ),
    }
    match check.trailer.problem() {
        None => report.push(
            "trailer",
            CheckStatus::Pass,
            format!("etcd's sha256 trailer matches ({} of etcd data)", human(check.raw_size)),
            None,
        ),
        Some(p) => report.push("trailer", CheckStatus::Fail, p, Some("restore another snapshot".into())),
    }
    add_revision(report, &check);
}

/// The revision the file holds against its record's. A mismatch is a warning: the bytes are
/// etcd's and restore as they are, but the record (written by an etcdsnap that took the
/// revision from a Status call before the stream) understates what they hold.
fn add_revision(report: &mut PreflightReport, check: &StoredCheck) {
    let (Some(recorded), Some(read)) = (report.snapshot.etcd_revision, check.revision.as_ref()) else { return };
    match read {
        Ok(found) if found.revision == recorded => {
            report.push("revision", CheckStatus::Pass, format!("the file holds revision {recorded}, as recorded"), None)
        }
        Ok(found) => report.push(
            "revision",
            CheckStatus::Warn,
            format!("the file holds revision {}, its record says {recorded}", found.revision),
            Some("the restored etcd starts at the file's revision; check that this is the snapshot you meant".into()),
        ),
        Err(e) => report.push(
            "revision",
            CheckStatus::Warn,
            format!("the revision the file holds could not be read from its pages: {e}"),
            None,
        ),
    }
}
