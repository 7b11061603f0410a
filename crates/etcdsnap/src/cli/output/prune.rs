//! What `prune` planned and removed: each store's rule with what it keeps and removes (the
//! dry run's preview), a line per removal, or [`PruneView`].

use etcdsnap::ops::PruneReport;
use serde::Serialize;

/// Every store's rule, what it keeps and removes, and what was deleted.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PruneView {
    dry_run: bool,
    stores: Vec<StorePlan>,
    /// `<store>/<name>` of every snapshot deleted (none in a dry run).
    deleted: Vec<String>,
    /// Snapshots the rules remove that S3 Object Lock keeps for now, and until when.
    locked: Vec<LockedView>,
    errors: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LockedView {
    store: String,
    name: String,
    /// RFC 3339; absent when the bucket did not say.
    #[serde(skip_serializing_if = "Option::is_none")]
    until: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StorePlan {
    store: String,
    rule: String,
    kept: Vec<String>,
    /// Why each kept snapshot stays (`last snapshot, daily snapshot`).
    kept_because: std::collections::BTreeMap<String, String>,
    removed: Vec<String>,
}

impl PruneView {
    pub fn new(report: &PruneReport, dry_run: bool) -> PruneView {
        let stores = report
            .plans
            .iter()
            .map(|p| StorePlan {
                store: p.store.clone(),
                rule: p.rule.clone(),
                kept: p.kept.iter().map(ToString::to_string).collect(),
                kept_because: p.reasons.iter().map(|(n, r)| (n.to_string(), r.clone())).collect(),
                removed: p.removed.iter().map(ToString::to_string).collect(),
            })
            .collect();
        let deleted = report
            .plans
            .iter()
            .flat_map(|p| {
                let deleted = &report.deleted;
                p.removed
                    .iter()
                    .filter(|n| deleted.iter().any(|(k, d)| *k == p.storage && d == *n))
                    .map(|n| format!("{}/{n}", p.store))
            })
            .collect();
        let locked = report
            .locked
            .iter()
            .map(|l| LockedView {
                store: l.store.clone(),
                name: l.name.to_string(),
                until: l.until.map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
            })
            .collect();
        PruneView { dry_run, stores, deleted, locked, errors: report.errors.iter().map(ToString::to_string).collect() }
    }
}

/// A dry run: per store, the rule, then each snapshot it counts, kept or deleted, oldest
/// first; then what would happen in all.
pub fn preview_text(report: &PruneReport) -> String {
    let mut out = String::new();
    let (mut kept, mut removed) = (0, 0);
    for p in &report.plans {
        out.push_str(&format!("{}: {}\n", p.store, p.rule));
        let mut all: Vec<(&etcdsnap_api::SnapshotName, &str)> =
            p.kept.iter().map(|n| (n, "keep")).chain(p.removed.iter().map(|n| (n, "delete"))).collect();
        all.sort_by_key(|(n, _)| (etcdsnap_api::timestamp_from_name(n.as_str()), (*n).clone()));
        for (name, action) in all {
            match p.reasons.get(name) {
                Some(why) => out.push_str(&format!("  {action:<6} {name}  ({why})\n")),
                None => out.push_str(&format!("  {action:<6} {name}\n")),
            }
        }
        if p.kept.is_empty() && p.removed.is_empty() {
            out.push_str("  (no snapshot of this name)\n");
        }
        kept += p.kept.len();
        removed += p.removed.len();
    }
    out.push_str(&format!("Dry run: {removed} would be deleted, {kept} kept; nothing was deleted.\n"));
    out
}

/// A real prune: one line per snapshot deleted, K3s's `Snapshot <name> deleted.` with the store.
pub fn deleted_text(report: &PruneReport) -> String {
    let mut out = String::new();
    for p in &report.plans {
        for name in p.removed.iter().filter(|n| report.deleted.iter().any(|(k, d)| *k == p.storage && d == *n)) {
            out.push_str(&format!("Snapshot {name} deleted from {}.\n", p.store));
        }
    }
    for locked in &report.locked {
        out.push_str(&format!("Snapshot {} kept in {}: {}.\n", locked.name, locked.store, lock_text(locked.until)));
    }
    out
}

/// `locked until <date>` in words.
fn lock_text(until: Option<jiff::Timestamp>) -> String {
    match until {
        Some(t) => format!(
            "locked by S3 Object Lock until {}, removed by a prune after that",
            t.strftime("%Y-%m-%dT%H:%M:%SZ")
        ),
        None => "locked by S3 Object Lock (the bucket did not say until when)".to_string(),
    }
}
