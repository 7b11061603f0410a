//! What `verify` found: a row per snapshot and a count, or [`VerifyView`].

use super::{Cells, fit, table};
use etcdsnap::ops::VerifyResult;
use serde::Serialize;

/// Every snapshot checked, and the stores that could not be listed.
#[derive(Serialize)]
pub struct VerifyView {
    pub items: Vec<Verified>,
    /// `listing <store>: <error>`, one per store whose snapshots were not verified.
    pub errors: Vec<String>,
}

/// One snapshot checked.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verified {
    name: String,
    location: String,
    /// Nothing found wrong.
    ok: bool,
    /// The stored bytes were compared with a recorded sha256; false when only etcd's trailer
    /// could be checked (no record).
    against_record: bool,
    /// Empty when every check passed.
    problems: Vec<String>,
    recorded_sha256: Option<String>,
    stored_sha256: Option<String>,
    stored_size: Option<u64>,
    trailer_valid: Option<bool>,
}

impl VerifyView {
    pub fn new(results: &[VerifyResult], errors: Vec<String>) -> VerifyView {
        let items = results
            .iter()
            .map(|r| Verified {
                name: r.record.name.to_string(),
                location: r.record.location.clone(),
                ok: r.ok(),
                against_record: r.against_record(),
                problems: r.problems.clone(),
                recorded_sha256: r.record.sha256.clone(),
                stored_sha256: r.check.as_ref().map(|c| c.stored_sha256.clone()),
                stored_size: r.check.as_ref().map(|c| c.stored_size),
                trailer_valid: r.check.as_ref().filter(|c| c.trailer_checked).map(|c| c.trailer.is_valid()),
            })
            .collect();
        VerifyView { items, errors }
    }
}

/// What a row's Result says: `OK` only for a snapshot checked against its record.
pub fn result_text(r: &VerifyResult) -> String {
    match (r.ok(), r.against_record()) {
        (false, _) => format!("FAILED: {}", r.problems.join("; ")),
        (true, true) => "OK".to_string(),
        (true, false) => "WARNING: no record: trailer valid, sha256 and size not checked".to_string(),
    }
}

/// The count under the table, adding up to the snapshots checked.
pub fn summary(results: &[VerifyResult]) -> String {
    let verified = results.iter().filter(|r| r.verified()).count();
    let unrecorded = results.iter().filter(|r| r.ok() && !r.against_record()).count();
    let failed = results.iter().filter(|r| !r.ok()).count();
    format!(
        "{} checked: {verified} verified against their record, {unrecorded} trailer only (no record), {failed} failed.",
        results.len()
    )
}

/// A row per snapshot (the recorded size and time), then how many were verified and failed.
/// On a terminal, where the copy is instead of its location, the names fitted to the width;
/// into a pipe, the location in full.
pub fn table_of(results: &[VerifyResult], cells: Cells) -> String {
    let second = if cells.terminal() { "Where" } else { "Location" };
    let mut rows = vec![["Name", second, "Size", "Created", "Result"].map(String::from).to_vec()];
    for r in results {
        rows.push(vec![
            r.record.name.to_string(),
            match cells.terminal() {
                true => r.record.storage.prefix().trim_end_matches('-').to_string(),
                false => r.record.location.clone(),
            },
            cells.size(r.record.size),
            cells.created(r.record.created_at),
            result_text(r),
        ]);
    }
    let rows = match cells.width() {
        Some(width) => fit(rows, width, false),
        None => rows,
    };
    format!("{}{}\n", table(&rows), summary(results))
}
