//! Scheduled restore drills in the agent (`--drill-schedule`, daily by default): one drill at a
//! time, each node its own local snapshots, the leader the S3 ones. Each run drills the newest
//! snapshot of each store (the one a restore would pick) and one older snapshot in turn, so
//! every retained snapshot is drilled within its retention. SIGTERM stops a drill at once; its
//! private etcd is killed and its scratch directory removed.

use super::metrics::Metrics;
use super::schedule::Schedule;
use crate::drill::{self, DrillOptions, DrillReport};
use crate::restore::SnapshotSource;
use crate::session::{Purpose, Session};
use etcdsnap_storage::SnapshotRecord;
use etcdsnap_storage::store::SnapshotStore;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// When and how the agent drills.
#[derive(Debug, Clone)]
pub struct DrillSettings {
    pub schedule: Schedule,
    pub options: DrillOptions,
}

/// Which of a store's ready snapshots a run drills: the newest, and the `run`-th older one in
/// turn (oldest first), so consecutive runs walk through all of them.
pub fn pick(mut records: Vec<SnapshotRecord>, run: usize) -> Vec<SnapshotRecord> {
    records.retain(SnapshotRecord::is_ready);
    records.sort_by_key(|r| r.created_at);
    let Some(newest) = records.pop() else { return Vec::new() };
    let mut picked = vec![newest];
    if !records.is_empty() {
        picked.push(records.swap_remove(run % records.len()));
    }
    picked
}

/// Runs drills on `settings.schedule` until `stop`. `leading` says whether this node leads now
/// (S3 snapshots are the leader's to drill).
pub async fn drill_loop(
    session: Arc<Session>,
    settings: DrillSettings,
    metrics: Arc<Metrics>,
    leading: impl Fn() -> bool,
    stop: CancellationToken,
) {
    let mut run = 0usize;
    loop {
        let Some(wait) = settings.schedule.until_next() else { return };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let sources = select(&session, leading(), run).await;
        run = run.wrapping_add(1);
        for source in sources {
            let report = tokio::select! {
                _ = stop.cancelled() => {
                    tracing::info!(snapshot = %source.record.name, "drill stopped by shutdown");
                    return;
                }
                r = drill::drill(&source, &settings.options, None) => r,
            };
            record(&session, &metrics, &source, &report).await;
        }
    }
}

/// The snapshots this run drills, from every store this node drills.
async fn select(session: &Session, leading: bool, run: usize) -> Vec<SnapshotSource> {
    let ctx = session.context(Purpose::Read).await;
    let mut stores: Vec<Arc<dyn SnapshotStore>> = Vec::new();
    if let Some(local) = &ctx.local {
        stores.push(Arc::new(local.clone()));
    }
    if let Some(remote) = ctx.remote.clone().filter(|_| leading) {
        stores.push(remote);
    }
    let mut sources = Vec::new();
    for store in stores {
        let records = match store.list().await {
            Ok(listing) => listing.records,
            Err(e) => {
                tracing::warn!(store = %store.describe(), error = %e, "no drills of this store this time: it cannot be listed");
                continue;
            }
        };
        for record in pick(records, run) {
            match SnapshotSource::from_store(store.clone(), &record.name).await {
                Ok(s) => sources.push(s),
                Err(e) => tracing::warn!(snapshot = %record.name, error = %e, "cannot drill"),
            }
        }
    }
    sources
}

/// The result into the log, the metrics and the snapshot's resource.
async fn record(session: &Session, metrics: &Metrics, source: &SnapshotSource, report: &DrillReport) {
    let name = &report.record.name;
    if report.passed() {
        tracing::info!(snapshot = %name, level = ?report.level, seconds = report.duration.as_secs(), "restore drill passed");
    } else {
        tracing::error!(snapshot = %name, level = ?report.level, problems = ?report.problems, "restore drill failed");
    }
    metrics.drilled(report.passed());
    for problem in drill::keep_result(source, report, session.kube(), session.node_name()).await {
        tracing::warn!(snapshot = %name, "{problem}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdsnap_api::{SnapshotName, StorageKind};
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

    #[test]
    fn each_run_takes_the_newest_and_walks_through_the_older_ones() {
        let all = || vec![record(30, true), record(10, true), record(40, false), record(20, true)];
        assert_eq!(names(&pick(all(), 0)), ["etcd-snapshot-n1-30", "etcd-snapshot-n1-10"]);
        assert_eq!(names(&pick(all(), 1)), ["etcd-snapshot-n1-30", "etcd-snapshot-n1-20"]);
        assert_eq!(names(&pick(all(), 2)), ["etcd-snapshot-n1-30", "etcd-snapshot-n1-10"]);
        assert_eq!(names(&pick(vec![record(5, true)], 7)), ["etcd-snapshot-n1-5"]);
        assert!(pick(vec![record(5, false)], 0).is_empty());
    }
}
