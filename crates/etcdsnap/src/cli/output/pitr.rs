//! A point-in-time restore (`restore --to-revision|--to-time`): the plan (base, segments, the
//! chains with their gaps), the replay, where the result went; as text as each step ends, or
//! [`PitrView`] at the end.

use super::chains::{ChainView, gaps, ms_time};
use super::restore::{Restored, installed_text};
use super::{human_bytes, table};
use crate::cli::commands::restore::members::ClusterView;
use etcdsnap::pitr::restore::{PitrPlan, RolledForward};
use etcdsnap::restore::{Installed, MemberSettings};
use etcdsnap_storage::pitr::history;
use serde::Serialize;

/// What `-o json|yaml` prints.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PitrView {
    base: String,
    base_revision: i64,
    /// The history the base and segments belong to (an ID, or `legacy`).
    history: String,
    target_revision: i64,
    segments: Vec<String>,
    chains: Vec<ChainView>,
    warnings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    replayed: Option<Replayed>,
    #[serde(skip_serializing_if = "Option::is_none")]
    restored: Option<Restored>,
    /// With --all-members: the member set, its token and each other node's command.
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<ClusterView>,
    dry_run: bool,
}

/// What the replay did.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Replayed {
    revision: i64,
    revisions: u64,
    events: u64,
    /// Events whose key's previous state in the replay was the one the capture saw.
    events_proven: u64,
    leases_granted: u64,
    hash_kv: u32,
    hash_checked: bool,
    notes: Vec<String>,
    seconds: f64,
}

impl PitrView {
    /// The plan, before anything is replayed.
    pub fn new(plan: &PitrPlan, dry_run: bool) -> PitrView {
        PitrView {
            base: plan.base.name.to_string(),
            base_revision: plan.replay.base.revision,
            history: history::label(plan.history.as_deref()).to_string(),
            target_revision: plan.replay.stop_at,
            segments: plan.replay.segments.iter().map(|s| format!("{}/{}", s.chain, s.segment_name())).collect(),
            chains: plan.chains.iter().map(ChainView::new).collect(),
            warnings: plan.warnings.clone(),
            replayed: None,
            restored: None,
            cluster: None,
            dry_run,
        }
    }
}

impl PitrView {
    /// The replay's outcome: the revision reached, and whether its HashKV was compared with
    /// one recorded at the target revision (`hash_checked`).
    pub fn replayed(&mut self, rolled: &RolledForward, hash_checked: bool) {
        self.target_revision = rolled.report.revision;
        self.replayed = Some(Replayed::new(rolled, hash_checked));
    }

    /// Where the restore put the result.
    pub fn restored(&mut self, restored: Restored) {
        self.restored = Some(restored);
    }

    /// The member set of an --all-members restore.
    pub fn cluster(&mut self, cluster: ClusterView) {
        self.cluster = Some(cluster);
    }
}

impl Replayed {
    fn new(rolled: &RolledForward, hash_checked: bool) -> Replayed {
        let r = &rolled.report;
        Replayed {
            revision: r.revision,
            revisions: r.revisions_applied,
            events: r.events_applied,
            events_proven: r.events_proven,
            leases_granted: r.leases_granted,
            hash_kv: r.hash.hash,
            hash_checked: hash_checked && r.hash_compared,
            notes: r.notes.clone(),
            seconds: r.duration.as_secs_f64(),
        }
    }
}

fn time(ms: i64) -> String {
    ms_time(Some(ms)).unwrap_or_else(|| ms.to_string())
}

/// The chain it will replay: base, segments, and each chain's gaps.
pub fn plan_text(plan: &PitrPlan) -> String {
    let p = &plan.replay;
    let segments = &p.segments;
    let mut rows = vec![
        vec![
            "Base".to_string(),
            format!("{} (revision {}, taken {})", p.base.name, p.base.revision, time(p.base.taken_ms)),
        ],
        vec!["Target".into(), format!("revision {}", p.stop_at)],
        vec!["History".into(), history::label(plan.history.as_deref()).to_string()],
        vec![
            "Replay".into(),
            match (segments.first(), segments.last()) {
                (Some(first), Some(last)) => format!(
                    "{} revisions in {} segment{}, observed {} to {}, {}",
                    p.stop_at - p.base.revision,
                    segments.len(),
                    if segments.len() == 1 { "" } else { "s" },
                    time(first.first_observed_ms),
                    time(last.last_observed_ms),
                    human_bytes(segments.iter().map(|s| s.stored_bytes).sum())
                ),
                _ => "nothing: the snapshot is at the target".into(),
            },
        ],
    ];
    for c in &plan.chains {
        let gaps = gaps(c);
        let state = match (&c.broken, gaps.is_empty()) {
            (Some(why), _) => format!("broken after {}: {why}", c.last_revision),
            (None, true) => "no gaps".into(),
            (None, false) => format!("gaps {}", gaps.join(", ")),
        };
        rows.push(vec![
            "Chain".into(),
            format!("{} (from {}, reaches {}; {state})", c.chain, c.base_revision, c.reachable),
        ]);
    }
    let mut out = format!("Point-in-time restore to revision {}\n\n", p.stop_at);
    for line in table(&rows).lines() {
        out.push_str(&format!("  {line}\n"));
    }
    for w in &plan.warnings {
        out.push_str(&format!("  warning: {w}\n"));
    }
    out.push('\n');
    out
}

/// The replay's outcome: how much of it was proven against the capture, whether its HashKV
/// matched the live cluster's, and anything else worth knowing.
pub fn replayed_text(rolled: &RolledForward) -> String {
    let r = &rolled.report;
    let hash = if r.hash_compared {
        format!("HashKV {} matches the live cluster's at that revision", r.hash.hash)
    } else {
        format!("HashKV {}", r.hash.hash)
    };
    let mut text = format!(
        "Replayed {} revisions ({} events, {} proven against the capture; {} leases granted) to revision {} in {:.1}s; {hash}.",
        r.revisions_applied,
        r.events_applied,
        r.events_proven,
        r.leases_granted,
        r.revision,
        r.duration.as_secs_f64()
    );
    for note in &r.notes {
        text.push_str(&format!("\n  note: {note}"));
    }
    text
}

/// What was done and how to start etcd on it.
pub fn done_text(plan: &PitrPlan, rolled: &RolledForward, installed: &Installed, m: &MemberSettings) -> String {
    format!(
        "Restored {} rolled forward to revision {} into {}.\n{}",
        plan.base.name,
        rolled.report.revision,
        installed.data_dir.display(),
        installed_text(installed, m).trim_end()
    )
}
