//! `agent --deltas`: point-in-time capture by the leader (deltas are cluster-wide; one copy is
//! enough, and followers would only add load on etcd).
//!
//! While this agent leads (always, without Kubernetes), it captures etcd's changes after its
//! newest local full snapshot of the live cluster into `.etcdsnap-deltas/` beside the snapshot
//! directory ([`crate::pitr::capture`]). A restarted agent continues the chain after its
//! durable segments. When the chain cannot continue (the revisions after it were compacted,
//! the watch failed) the gap is marked, a full snapshot is taken at once and a new chain starts
//! from it. When the term ends, capture stops at once: what was pending is written, and the
//! next leader continues from its own newest snapshot.
//!
//! Segments are uploaded to S3 by [`upload_loop`]; their retention, run after each prune, is
//! `etcdsnap_storage::pitr::retention`, beside the snapshots' own.

use super::Agent;
use crate::pitr::capture::{self, CaptureError, CaptureEvent, CaptureSettings};
use crate::session::Purpose;
use etcdsnap_storage::SnapshotRecord;
use etcdsnap_storage::pitr::local;
use etcdsnap_storage::store::SnapshotStore;
use etcdsnap_storage::store::local::LocalStore;
use etcdsnap_storage::store::s3::S3Store;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the newest snapshot's resource may be told how far it rolls forward.
const ANNOTATE_EVERY: Duration = Duration::from_secs(5);
/// How often a follower checks whether it leads now, and a leader whether it still does.
const TERM_CHECK: Duration = Duration::from_secs(1);
/// First and longest wait after a capture could not run.
const BACKOFF_MIN: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Why one capture term ended.
#[derive(Debug, thiserror::Error)]
enum TermError {
    #[error("no local snapshot of this cluster to start from")]
    NoBase,
    #[error("--deltas needs a local snapshot directory (segments are written beside it)")]
    NoLocal,
    #[error("{0}")]
    Capture(#[from] CaptureError),
    #[error("{0}")]
    Other(String),
}

impl TermError {
    /// Whether a full snapshot now lets capture go on (a new chain starts from it).
    fn needs_snapshot(&self) -> bool {
        matches!(self, TermError::NoBase | TermError::Capture(CaptureError::Broken { .. }))
    }
}

/// Captures while `leading()` until `stop` is cancelled.
pub async fn capture_loop(
    agent: Arc<Agent>,
    settings: CaptureSettings,
    leading: impl Fn() -> bool + Send + Sync + 'static,
    stop: CancellationToken,
) {
    let leading = Arc::new(leading);
    let mut backoff = BACKOFF_MIN;
    while !stop.is_cancelled() {
        if !leading() {
            agent.metrics.pitr.set_capturing(false, now_ms());
            wait(TERM_CHECK, &stop).await;
            continue;
        }
        let result = capture_term(&agent, settings.clone(), leading.clone(), &stop).await;
        agent.metrics.pitr.set_capturing(false, now_ms());
        let Err(e) = result else {
            backoff = BACKOFF_MIN;
            continue;
        };
        if matches!(e, TermError::Capture(CaptureError::Broken { .. })) {
            agent.metrics.pitr.breaks.inc();
        }
        if e.needs_snapshot() && !stop.is_cancelled() {
            tracing::warn!(reason = %e, "taking a full snapshot to start a new delta chain");
            if agent.snapshot_now(stop.clone()).await {
                backoff = BACKOFF_MIN;
                continue;
            }
        } else {
            tracing::error!(error = %e, "delta capture failed");
        }
        wait(backoff, &stop).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    agent.metrics.pitr.set_capturing(false, now_ms());
}

/// One term of capture: from the newest base, until the term or the agent ends.
async fn capture_term(
    agent: &Agent,
    settings: CaptureSettings,
    leading: Arc<impl Fn() -> bool + Send + Sync + 'static>,
    stop: &CancellationToken,
) -> Result<(), TermError> {
    let ctx = agent.session.context(Purpose::Save).await;
    let local = ctx.local.as_ref().ok_or(TermError::NoLocal)?;
    let (member, status) = ctx.etcd.connect_member().await.map_err(|e| TermError::Other(e.to_string()))?;
    let cluster = format!("{:x}", status.cluster_id);
    let listing = local.list().await.map_err(|e| TermError::Other(e.to_string()))?;
    let base = newest_snapshot(&listing.records, &ctx.node_name, &cluster)
        .and_then(local::base_of)
        .ok_or(TermError::NoBase)?;
    let deltas_dir: PathBuf = local::dir_beside(local.dir());
    let term = stop.child_token();
    let watcher = tokio::spawn(end_of_term(leading, term.clone()));
    let annotating = agent.session.kube().map(|kube| {
        let (client, metrics, local) = (kube.client.clone(), agent.metrics.clone(), local.clone());
        let (node, term) = (ctx.node_name.clone(), term.clone());
        tokio::spawn(async move { annotate_loop(client, metrics, local, node, cluster, term).await })
    });
    let metrics = agent.metrics.clone();
    metrics.pitr.set_capturing(true, now_ms());
    let mut observe = move |event: CaptureEvent<'_>| match event {
        CaptureEvent::Segment(r) => {
            metrics.pitr.bytes.inc_by(r.stored_bytes);
            metrics.pitr.events.inc_by(r.events);
            metrics.pitr.segment_written(r.last_revision, r.last_observed_ms);
        }
        CaptureEvent::CaughtUp { at_ms, revision } => {
            metrics.pitr.durable_revision.set(revision);
            metrics.pitr.durable_until(at_ms);
        }
    };
    let mut client = member.into_client();
    let result = capture::capture_observed(&mut client, &base, &deltas_dir, settings, term, &mut observe).await;
    watcher.abort();
    if let Some(a) = annotating {
        a.abort();
    }
    result.map(|_| ()).map_err(TermError::from)
}

/// The newest ready snapshot of `node` taken from cluster `cluster`, with its revision: the
/// chain starts there (another node's snapshot is on another disk; another cluster's would
/// replay the wrong history).
fn newest_snapshot<'a>(records: &'a [SnapshotRecord], node: &str, cluster: &str) -> Option<&'a SnapshotRecord> {
    records
        .iter()
        .filter(|r| r.node_name == node && r.etcd.as_ref().is_some_and(|e| e.cluster_id == cluster))
        .filter_map(|r| local::base_of(r).map(|b| (r, b)))
        .max_by_key(|(_, b)| (b.revision, b.taken_ms))
        .map(|(r, _)| r)
}

/// While capturing, says on the newest snapshot's resource how far it rolls forward
/// (`etcdsnap.io/rolls-forward-to-revision` and `-until`), each time that changes, at most
/// every [`ANNOTATE_EVERY`]. A snapshot without a resource yet is tried again next time.
async fn annotate_loop(
    client: kube::Client,
    metrics: Arc<super::metrics::Metrics>,
    local: LocalStore,
    node: String,
    cluster: String,
    term: CancellationToken,
) {
    let mut said: Option<(String, i64)> = None;
    loop {
        wait(ANNOTATE_EVERY, &term).await;
        if term.is_cancelled() {
            return;
        }
        let (revision, observed_ms) = (metrics.pitr.durable_revision.get(), metrics.pitr.segment_observed_ms());
        let Ok(observed) = jiff::Timestamp::from_millisecond(observed_ms) else { continue };
        let Ok(listing) = local.list().await else { continue };
        let Some(newest) = newest_snapshot(&listing.records, &node, &cluster) else { continue };
        let now = (newest.name.to_string(), revision);
        if observed_ms == 0
            || newest.etcd.as_ref().is_some_and(|e| e.revision >= revision)
            || said.as_ref() == Some(&now)
        {
            continue;
        }
        match etcdsnap_kube::pitr::record_reach(&client, newest, revision, observed).await {
            Ok(true) => said = Some(now),
            Ok(false) => {}
            Err(e) => tracing::debug!(error = %e, "roll-forward annotation not written"),
        }
    }
}

/// Cancels `term` when this agent stops leading.
async fn end_of_term(leading: Arc<impl Fn() -> bool + Send + Sync + 'static>, term: CancellationToken) {
    while leading() {
        tokio::select! {
            () = term.cancelled() => return,
            () = tokio::time::sleep(TERM_CHECK) => {}
        }
    }
    tracing::info!("leadership lost: delta capture stops");
    term.cancel();
}

/// Copies durable local segments to S3, each segment before its record (so a record in S3
/// always has its segment), checked against the record's sha256 first. Runs on every agent with
/// --deltas and S3: whichever node wrote segments while it led uploads them, and an outage only
/// delays uploads (the local copies are durable already; the next pass retries).
pub async fn upload_loop(agent: Arc<Agent>, every: Duration, stop: CancellationToken) {
    let mut uploader = Uploader::default();
    loop {
        wait(every, &stop).await;
        if stop.is_cancelled() {
            return;
        }
        let ctx = agent.session.context(Purpose::Read).await;
        let (Some(local), Some(s3)) = (&ctx.local, ctx.remote.as_ref().and_then(|r| r.as_s3())) else { continue };
        match uploader.pass(&local::dir_beside(local.dir()), s3).await {
            Ok(n) => {
                if uploader.failing {
                    tracing::info!(uploaded = n, "delta uploads to S3 work again");
                }
                uploader.failing = false;
                if let Some(rev) = uploader.newest {
                    agent.metrics.pitr.uploaded_revision.set(rev);
                }
            }
            Err(e) => {
                agent.metrics.pitr.upload_failures.inc();
                if !uploader.failing {
                    tracing::warn!(error = %e, "delta upload to S3 failed; retrying every {}s", every.as_secs());
                }
                uploader.failing = true;
            }
        }
    }
}

/// What is in S3 already (known after the first listing) and how the last pass went.
#[derive(Default)]
struct Uploader {
    present: Option<HashSet<(String, String)>>,
    newest: Option<i64>,
    failing: bool,
}

impl Uploader {
    /// Uploads what S3 lacks; returns how many files were uploaded.
    async fn pass(&mut self, deltas_dir: &Path, s3: &S3Store) -> Result<usize, String> {
        if self.present.is_none() {
            let listed = s3.list_pitr_objects().await.map_err(|e| e.to_string())?;
            self.present = Some(listed.into_iter().map(|o| (o.chain, o.file)).collect());
        }
        let present = self.present.get_or_insert_with(HashSet::new);
        let (records, warnings) = local::read_all(deltas_dir);
        for w in warnings {
            tracing::debug!("{w}");
        }
        // Only what is still on disk can need an upload: forget the rest (pruned), so the set
        // stays as small as the local chains.
        let local_files: HashSet<(String, String)> = records
            .iter()
            .flat_map(|r| [(r.chain.clone(), r.segment_name()), (r.chain.clone(), r.record_name())])
            .collect();
        present.retain(|f| local_files.contains(f));
        let mut uploaded = 0;
        for r in records {
            let (segment, record) = ((r.chain.clone(), r.segment_name()), (r.chain.clone(), r.record_name()));
            if !present.contains(&record) {
                if !present.contains(&segment) {
                    let bytes = read_checked(&deltas_dir.join(&r.chain).join(r.segment_name()), &r.sha256)?;
                    s3.put_pitr_object(&r.chain, &segment.1, bytes).await.map_err(|e| e.to_string())?;
                    present.insert(segment);
                    uploaded += 1;
                }
                s3.put_pitr_object(&r.chain, &record.1, r.to_json()).await.map_err(|e| e.to_string())?;
                present.insert(record);
                uploaded += 1;
            }
            self.newest = self.newest.max(Some(r.last_revision));
        }
        Ok(uploaded)
    }
}

/// A local segment's bytes, if they still match its record (a damaged copy is not spread).
fn read_checked(path: &Path, sha256: &str) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read delta segment {}: {e}", path.display()))?;
    let found = hex::encode(Sha256::digest(&bytes));
    if !found.eq_ignore_ascii_case(sha256) {
        return Err(format!(
            "delta segment {} is damaged (sha256 {found}, its record says {sha256}): not uploaded",
            path.display()
        ));
    }
    Ok(bytes)
}

async fn wait(d: Duration, stop: &CancellationToken) {
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(d) => {}
    }
}

fn now_ms() -> i64 {
    etcdsnap_storage::clock::now().as_millisecond()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pitr::restore::tests::snap;

    #[test]
    fn the_base_is_this_nodes_newest_snapshot_of_the_live_cluster() {
        let records = [
            snap("node-a", 100, 50, "c1"),
            snap("node-a", 200, 90, "c1"),
            // A node whose name ends in this one's, another cluster in the same folder.
            snap("x-node-a", 300, 120, "c1"),
            snap("node-a", 400, 200, "c2"),
        ];
        let base = newest_snapshot(&records, "node-a", "c1").and_then(local::base_of).unwrap();
        assert_eq!((base.name.as_str(), base.revision), ("etcd-snapshot-node-a-200", 90));
        assert!(newest_snapshot(&records, "node-b", "c1").is_none());
    }
}
