//! The leader's controller of the legacy ConfigMap: it follows the `ETCDSnapshotFile` resources
//! within seconds, the way K3s's leader-elected controller does, instead of waiting for the next
//! periodic reconcile.
//!
//! A watch keeps a local copy of every resource (kube-runtime's reflector); the first change after
//! a quiet period opens a short window ([`DEBOUNCE`]) that gathers a burst of changes (a save
//! writes one resource per copy, a reconcile many) into one sync. Each sync is the same shape as
//! a reconcile: observe (the resources, the ConfigMap, the heartbeats), plan
//! ([`legacy::plan`]), act (one write, or none when nothing differs). A failed sync is retried
//! after [`RETRY_AFTER`]; the controller stops when the leader's term ends or `stop` is
//! cancelled (shutdown), and checks the term before each write.

use crate::Kube;
use crate::leader::LeaderTerm;
use crate::lease::NodeLiveness;
use crate::legacy::{self, SyncReport, SyncScope};
use crate::reconcile::ReconcileError;
use crate::resources::{self, PAGE_SIZE};
use etcdsnap_api::ETCDSnapshotFile;
use futures::StreamExt;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long changes are gathered before one sync.
pub const DEBOUNCE: Duration = Duration::from_secs(1);
/// How long after a failed sync the next one is tried.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);

/// What the leader's reconcile passes tell the controller about storage.
#[derive(Debug, Default)]
pub struct StorageHints {
    /// The last pass listed S3, so the S3 resources are complete and an S3 entry without one
    /// is stale. Until a pass says so, such entries are kept.
    s3_listed: AtomicBool,
}

impl StorageHints {
    pub fn set_s3_listed(&self, listed: bool) {
        self.s3_listed.store(listed, Ordering::Relaxed);
    }

    fn s3_listed(&self) -> bool {
        self.s3_listed.load(Ordering::Relaxed)
    }
}

/// Runs until `term` ends or `stop`; `on_sync` is told the outcome of every sync (for metrics
/// and logs).
pub async fn run(
    kube: Kube,
    hints: Arc<StorageHints>,
    term: LeaderTerm,
    stop: CancellationToken,
    on_sync: impl Fn(&Result<SyncReport, ReconcileError>) + Send,
) {
    let (store, writer) = reflector::store::<ETCDSnapshotFile>();
    let config = watcher::Config::default().page_size(PAGE_SIZE);
    let events = reflector::reflector(writer, watcher::watcher(resources::api(&kube.client), config)).default_backoff();
    let mut events = std::pin::pin!(events);
    let mut ready = false;
    let mut due: Option<Instant> = None;
    loop {
        let wait = due.filter(|_| ready);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = term.ended().cancelled() => return,
            event = events.next() => match event {
                None => return,
                Some(Ok(Event::InitDone)) => {
                    ready = true;
                    due = Some(due.unwrap_or_else(Instant::now));
                }
                Some(Ok(Event::Init | Event::InitApply(_))) => {}
                Some(Ok(Event::Apply(_) | Event::Delete(_))) => {
                    due = Some(due.unwrap_or_else(|| Instant::now() + DEBOUNCE));
                }
                Some(Err(e)) => tracing::debug!(error = %e, "watch of ETCDSnapshotFile resources interrupted; resuming"),
            },
            _ = sleep_until(wait), if wait.is_some() => {
                let outcome = sync_once(&kube, &store, &hints, &term).await;
                due = outcome.is_err().then(|| Instant::now() + RETRY_AFTER);
                on_sync(&outcome);
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One sync from the watched resources: observe, plan, act.
async fn sync_once(
    kube: &Kube,
    store: &Store<ETCDSnapshotFile>,
    hints: &StorageHints,
    term: &LeaderTerm,
) -> Result<SyncReport, ReconcileError> {
    let resources: Vec<ETCDSnapshotFile> = store.state().iter().map(|cr| (**cr).clone()).collect();
    let existing = legacy::read(&kube.client, kube.settings.program).await.map_err(ReconcileError::Read)?;
    let liveness = NodeLiveness::read(&kube.client).await.map_err(ReconcileError::Read)?;
    let scope = SyncScope {
        live_nodes: liveness.live_nodes(kube.settings.orphan_ttl),
        s3_listed: hints.s3_listed(),
        deleted: Default::default(),
    };
    legacy::sync(kube, &resources, existing, &scope, term).await.map_err(ReconcileError::from)
}
