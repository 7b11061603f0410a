//! What `verify` found: a row per snapshot and a count, or [`VerifyView`].

use super::{Cells, table};
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
    ok: bool,
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
                problems: r.problems.clone(),
                recorded_sha256: r.record.sha256.clone(),
                stored_sha256: r.check.as_ref().map(|c| c.stored_sha256.clone()),
                stored_size: r.check.as_ref().map(|c| c.stored_size),
                trailer_valid: r.check.as_ref().map(|c| c.trailer.is_valid()),
            })
            .collect();
        VerifyView { items, errors }
    }
}

/// A row per snapshot (the recorded size and time), then how many were verified and failed.
pub fn table_of(results: &[VerifyResult], cells: Cells) -> String {
    let mut rows = vec![["Name", "Location", "Size", "Created", "Result"].map(String::from).to_vec()];
    for r in results {
        let result = if r.ok() { "OK".to_string() } else { format!("FAILED: {}", r.problems.join("; ")) };
        rows.push(vec![
            r.record.name.to_string(),
            cells.location(&r.record.location),
            cells.size(r.record.size),
            cells.created(r.record.created_at),
            result,
        ]);
    }
    let failed = results.iter().filter(|r| !r.ok()).count();
    format!("{}{} verified, {failed} failed.\n", table(&rows), results.len())
}
