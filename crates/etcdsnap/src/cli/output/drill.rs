//! What `drill` found: a row per snapshot, its notes and a count, or [`DrillView`].

use super::{Cells, rfc3339, table};
use etcdsnap::drill::{DrillReport, HashBy, Level, Verdict};
use etcdsnap_api::KvHash;
use serde::Serialize;

#[derive(Serialize)]
pub struct DrillView {
    pub items: Vec<Drilled>,
}

/// One snapshot drilled.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Drilled {
    name: String,
    location: String,
    created_at: String,
    level: Level,
    /// Every check passed, the contents compared equal to the live member's (false when they
    /// could not be compared: see `result`).
    passed: bool,
    /// `passed`, `not compared: <why>` or `failed: <problem>`, as the resource's annotation says.
    result: Verdict,
    problems: Vec<String>,
    notes: Vec<String>,
    revision: Option<i64>,
    #[serde(rename = "recordedHashKV")]
    recorded_hash_kv: Option<KvHash>,
    #[serde(rename = "computedHashKV")]
    computed_hash_kv: Option<KvHash>,
    hashed_by: HashBy,
    recorded_kubernetes_keys: Option<i64>,
    booted: Option<BootedView>,
    seconds: f64,
}

/// What the private etcd of the boot level said.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BootedView {
    version: String,
    revision: i64,
    #[serde(rename = "hashKV")]
    hash_kv: KvHash,
    kubernetes_keys: i64,
}

impl DrillView {
    pub fn new(reports: &[DrillReport]) -> DrillView {
        DrillView { items: reports.iter().map(drilled).collect() }
    }
}

fn drilled(r: &DrillReport) -> Drilled {
    Drilled {
        name: r.record.name.to_string(),
        location: r.record.location.clone(),
        created_at: rfc3339(r.record.created_at),
        level: r.level,
        passed: r.verdict() == Verdict::Passed,
        result: r.verdict(),
        problems: r.problems.clone(),
        notes: r.notes.clone(),
        revision: r.revision,
        recorded_hash_kv: r.recorded,
        computed_hash_kv: r.computed,
        hashed_by: r.hashed_by,
        recorded_kubernetes_keys: r.record.etcd.as_ref().and_then(|e| e.kubernetes_keys),
        booted: r.booted.as_ref().map(|b| BootedView {
            version: b.version.clone(),
            revision: b.revision,
            hash_kv: b.hash,
            kubernetes_keys: b.kubernetes_keys,
        }),
        seconds: r.duration.as_secs_f64(),
    }
}

/// A row per snapshot, then each one's notes and why it was not compared, then how many
/// passed, were not compared and failed (adding up to how many were drilled).
pub fn table_of(reports: &[DrillReport], cells: Cells) -> String {
    let mut rows =
        vec![["Name", "Location", "Level", "Revision", "HashKV", "Took", "Result"].map(String::from).to_vec()];
    for r in reports {
        let result = match r.verdict() {
            Verdict::NotCompared { .. } => etcdsnap::drill::NOT_COMPARED.to_string(),
            other => other.to_string(),
        };
        rows.push(vec![
            r.record.name.to_string(),
            cells.location(&r.record.location),
            format!("{:?}", r.level).to_lowercase(),
            r.revision.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
            r.computed.map(|h| h.hash.to_string()).unwrap_or_else(|| "-".into()),
            format!("{:.1}s", r.duration.as_secs_f64()),
            result,
        ]);
    }
    let mut out = table(&rows);
    for r in reports {
        for n in &r.notes {
            out.push_str(&format!("note: {}: {n}\n", r.record.name));
        }
        if let Verdict::NotCompared { why } = r.verdict() {
            out.push_str(&format!("not compared: {}: {why}\n", r.record.name));
        }
    }
    let failed = reports.iter().filter(|r| !r.passed()).count();
    let not_compared = reports.iter().filter(|r| matches!(r.verdict(), Verdict::NotCompared { .. })).count();
    let passed = reports.len() - failed - not_compared;
    out.push_str(&format!(
        "{} drilled: {passed} passed, {not_compared} not compared, {failed} failed.\n",
        reports.len()
    ));
    out
}
