//! Scheduled restore drills in the agent (`--drill-schedule`, daily by default): one drill at a
//! time, each node its own local snapshots, the leader the S3 ones. Each run drills the newest
//! snapshot of each store (the one a restore would pick) and one older snapshot in turn, so
//! every retained snapshot is drilled within its retention. SIGTERM stops a drill at once; its
//! private etcd is killed and its scratch directory removed.
//!
//! Drills of S3 snapshots run under the leader term they were picked in: the end of the term
//! stops them like SIGTERM does, and their results are kept (the S3 record, the resource)
//! through the term's fenced connection, checked right before each write, so a leader that lost
//! its term writes none of them.

use super::kube_duties::LeaderKube;
use super::metrics::Metrics;
use super::schedule::Schedule;
use crate::drill::{self, DrillOptions, DrillReport};
use crate::restore::SnapshotSource;
use crate::session::{Purpose, Session};
use etcdsnap_api::StorageKind;
use etcdsnap_storage::SnapshotRecord;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// When and how the agent drills.
#[derive(Debug, Clone)]
pub struct DrillSettings {
    pub schedule: Schedule,
    pub options: DrillOptions,
}

/// Which of a store's ready snapshots a run drills: the newest, and older ones in turn (oldest
/// first, continuing where the previous run stopped). Enough older ones per run that the
/// turn comes round within the time the store's snapshots span, so every retained snapshot
/// is drilled before retention removes it: with `interval` between runs and the oldest
/// `span` older than the newest, `ceil(older × interval / span)` of them.
pub fn pick(mut records: Vec<SnapshotRecord>, run: usize, interval: Duration) -> Vec<SnapshotRecord> {
    records.retain(SnapshotRecord::is_ready);
    records.sort_by_key(|r| r.created_at);
    let Some(newest) = records.pop() else { return Vec::new() };
    let older = records.len();
    let mut picked = vec![newest.clone()];
    if older == 0 {
        return picked;
    }
    let span = records.first().map(|oldest| newest.created_at.duration_since(oldest.created_at));
    let span = span.and_then(|s| Duration::try_from(s).ok()).unwrap_or_default();
    let per_run = match span.as_secs() {
        0 => older,
        secs => (older as u64 * interval.as_secs()).div_ceil(secs).clamp(1, older as u64) as usize,
    };
    let start = run.wrapping_mul(per_run) % older;
    picked.extend((0..per_run).map(|i| records[(start + i) % older].clone()));
    picked
}

/// How soon a drill of an S3 snapshot notices that its term's deadline passed while the
/// process or the machine was stopped (the term's own end is noticed at once).
const TERM_POLL: Duration = Duration::from_secs(1);

/// Runs drills on `settings.schedule` until `stop`. `leader` gives the current leader term and
/// its fenced connection, if this node leads now (S3 snapshots are the leader's to drill).
pub async fn drill_loop(
    session: Arc<Session>,
    settings: DrillSettings,
    metrics: Arc<Metrics>,
    leader: impl Fn() -> Option<LeaderKube>,
    stop: CancellationToken,
) {
    let mut run = 0usize;
    loop {
        let Some(wait) = settings.schedule.until_next() else { return };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let interval = settings.schedule.interval().unwrap_or(Duration::from_secs(86_400));
        let lead = leader();
        let sources = select(&session, lead.is_some(), run, interval).await;
        run = run.wrapping_add(1);
        for source in sources {
            // An S3 snapshot is drilled under the term it was picked in, or not at all.
            let term = lead.as_ref().filter(|_| source.record.storage == StorageKind::S3);
            if let Some(lost) = term.and_then(|l| l.term.check().err()) {
                tracing::info!(snapshot = %source.record.name, "S3 drill skipped: {lost}");
                continue;
            }
            let report = tokio::select! {
                _ = stop.cancelled() => {
                    tracing::info!(snapshot = %source.record.name, "drill stopped by shutdown");
                    return;
                }
                _ = term_over(term) => {
                    tracing::info!(snapshot = %source.record.name, "S3 drill stopped: this agent's leader term ended; the next leader drills S3");
                    continue;
                }
                r = drill::drill(&source, &settings.options, None) => r,
            };
            record(&session, &metrics, &source, &report, term).await;
        }
    }
}

/// Resolves when `lead`'s term is over; never without one.
async fn term_over(lead: Option<&LeaderKube>) {
    match lead {
        Some(l) => l.term.over(TERM_POLL).await,
        None => std::future::pending().await,
    }
}

/// The snapshots this run drills, from every store this node drills.
async fn select(session: &Session, leading: bool, run: usize, interval: Duration) -> Vec<SnapshotSource> {
    let ctx = session.context(Purpose::Read).await;
    let stores = ctx.shared_stores().into_iter().filter(|s| leading || s.kind() == StorageKind::Local);
    let mut sources = Vec::new();
    for store in stores {
        let listing = match store.list().await {
            Ok(listing) => listing,
            Err(e) => {
                tracing::warn!(store = %store.describe(), error = %e, "no drills of this store this time: it cannot be listed");
                continue;
            }
        };
        for record in pick(listing.records, run, interval) {
            let name = record.name.clone();
            let notes = listing.warnings.iter().filter(|w| w.contains(name.as_str())).cloned().collect();
            match SnapshotSource::from_listed(store.clone(), record, notes) {
                Ok(s) => sources.push(s),
                Err(e) => tracing::warn!(snapshot = %name, error = %e, "cannot drill"),
            }
        }
    }
    sources
}

/// The result into the log, the metrics, the snapshot's record and its resource: for an S3
/// snapshot (`lead`), through the term's fenced connection and only while the term lasts.
async fn record(
    session: &Session,
    metrics: &Metrics,
    source: &SnapshotSource,
    report: &DrillReport,
    lead: Option<&LeaderKube>,
) {
    let name = &report.record.name;
    if let Some(why) = report.not_compared.as_ref().filter(|_| report.passed()) {
        tracing::info!(snapshot = %name, level = ?report.level, seconds = report.duration.as_secs(), "restore drill: nothing failed, but the contents were not compared: {why}");
    } else if report.passed() {
        tracing::info!(snapshot = %name, level = ?report.level, seconds = report.duration.as_secs(), "restore drill passed");
    } else {
        tracing::error!(snapshot = %name, level = ?report.level, problems = ?report.problems, "restore drill failed");
    }
    metrics.drilled(report.passed());
    let (kube, term) = match lead {
        Some(l) => {
            etcdsnap_storage::failpoint::reached(etcdsnap_storage::failpoint::S3_DRILL_RESULT).await;
            (Some(&l.kube), Some(&l.term))
        }
        None => (session.kube(), None),
    };
    let signer = session.config().sealing.signing_key.clone();
    for problem in drill::keep_result(source, report, kube, session.node_name(), term, signer.as_deref()).await {
        tracing::warn!(snapshot = %name, "{problem}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdsnap_api::SnapshotName;
    use etcdsnap_storage::Outcome;

    fn record(secs: i64, ready: bool) -> SnapshotRecord {
        let name = SnapshotName::parse(&format!("etcd-snapshot-n1-{secs}")).unwrap();
        let mut r = SnapshotRecord::stored(
            name,
            StorageKind::Local,
            "n1".to_string(),
            String::new(),
            jiff::Timestamp::from_second(secs).unwrap(),
            1,
        );
        if !ready {
            r.outcome = Outcome::Failed { message: "x".into() };
        }
        r
    }

    fn names(picked: &[SnapshotRecord]) -> Vec<String> {
        picked.iter().map(|r| r.name.to_string()).collect()
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn each_run_takes_the_newest_and_walks_through_the_older_ones() {
        // Snapshots 10 s apart, runs 10 s apart: one older one per run suffices.
        let all = || vec![record(30, true), record(10, true), record(40, false), record(20, true)];
        let every = Duration::from_secs(10);
        assert_eq!(names(&pick(all(), 0, every)), ["etcd-snapshot-n1-30", "etcd-snapshot-n1-10"]);
        assert_eq!(names(&pick(all(), 1, every)), ["etcd-snapshot-n1-30", "etcd-snapshot-n1-20"]);
        assert_eq!(names(&pick(all(), 2, every)), ["etcd-snapshot-n1-30", "etcd-snapshot-n1-10"]);
        assert_eq!(names(&pick(vec![record(5, true)], 7, every)), ["etcd-snapshot-n1-5"]);
        assert!(pick(vec![record(5, false)], 0, every).is_empty());
    }

    /// K3s's defaults: a snapshot every 12 h, 5 kept (the oldest 48 h older than the newest),
    /// a drill every 24 h: two older ones per run, so all four are drilled within 48 h, before
    /// the oldest (60 h old by then) goes.
    #[test]
    fn every_retained_snapshot_is_drilled_before_retention_removes_it() {
        let snaps = || (0..5).map(|i| record(1_700_000_000 + i * 12 * 3600, true)).collect::<Vec<_>>();
        let mut drilled = std::collections::BTreeSet::new();
        for run in 0..2 {
            let picked = pick(snaps(), run, 24 * HOUR);
            assert_eq!(picked.len(), 3, "{:?}", names(&picked));
            drilled.extend(names(&picked));
        }
        assert_eq!(drilled.len(), 5, "{drilled:?}");
        // Drilling every hour needs only one older one per run.
        assert_eq!(pick(snaps(), 0, HOUR).len(), 2);
        // Runs rarer than the whole span drill everything every time.
        assert_eq!(pick(snaps(), 0, 100 * HOUR).len(), 5);
    }
}
