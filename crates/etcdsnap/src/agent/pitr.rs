//! `agent --deltas`: point-in-time capture by the leader (deltas are cluster-wide; one copy is
//! enough, and followers would only add load on etcd).
//!
//! While this agent leads (always, without Kubernetes), it captures etcd's changes into
//! `.etcdsnap-deltas/` beside the snapshot directory ([`crate::pitr::capture`]). Each term
//! continues the newest chain of the live cluster from its last durable revision, here or in S3,
//! as long as etcd still holds the revisions after it ([`super::resume`]); a restart or a leader
//! change therefore leaves no gap. Only a chain etcd compacted past ends, marked so; capture
//! then starts from the newest local snapshot, or a full snapshot is taken at once and a new
//! chain starts from it. A watch that fails is resumed the same way. When the term ends,
//! capture stops at once: what was pending is written. The roll-forward
//! annotations written meanwhile go through the term's fenced connection and stop with the term.
//!
//! Segments are uploaded to S3 by [`upload_loop`]; their retention, run after each prune, is
//! `etcdsnap_storage::pitr::retention`'s rule, beside the snapshots' own. In S3 it is the
//! leader's ([`prune_s3_segments`]), each delete made only while its term lasts.

use super::kube_duties::LeaderKube;
use super::{Agent, Lead, resume};
use crate::pitr::capture::{self, CaptureError, CaptureEvent, CaptureSettings};
use crate::pitr::history;
use crate::session::Purpose;
use etcdsnap_kube::leader::LeaderTerm;
use etcdsnap_storage::SnapshotRecord;
use etcdsnap_storage::failpoint;
use etcdsnap_storage::pitr::local;
use etcdsnap_storage::pitr::retention as pitr_retention;
use etcdsnap_storage::store::SnapshotStore;
use etcdsnap_storage::store::local::LocalStore;
use etcdsnap_storage::store::s3::S3Store;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the newest snapshot's resource may be told how far it rolls forward.
const ANNOTATE_EVERY: Duration = Duration::from_secs(5);
/// How long the annotations may take to stop once capture stopped.
const ANNOTATE_GRACE: Duration = Duration::from_secs(5);
/// How often a follower checks whether it leads now, and a leader whether it still does.
const TERM_CHECK: Duration = Duration::from_secs(1);
/// How much longer than a flush interval a new leader waits for the previous leader's last
/// segment to reach S3 before it continues that leader's chain.
const HANDOVER_MARGIN: Duration = Duration::from_secs(2);
/// First and longest wait after a capture could not run.
const BACKOFF_MIN: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Why one capture term ended.
#[derive(Debug, thiserror::Error)]
enum TermError {
    #[error("no delta chain or local snapshot of this cluster that etcd can continue")]
    NoBase,
    #[error("--deltas needs a local snapshot directory (segments are written beside it)")]
    NoLocal,
    #[error(transparent)]
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

/// Captures while this agent leads ([`Agent::lead`]) until `stop` is cancelled.
pub async fn capture_loop(agent: Arc<Agent>, settings: CaptureSettings, stop: CancellationToken) {
    let mut backoff = BACKOFF_MIN;
    while !stop.is_cancelled() {
        let Some(lead) = agent.lead() else {
            agent.metrics.pitr.set_capturing(false, now_ms());
            wait(TERM_CHECK, &stop).await;
            continue;
        };
        let result = capture_term(&agent, settings.clone(), lead, &stop).await;
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
    lead: Lead,
    stop: &CancellationToken,
) -> Result<(), TermError> {
    let ctx = agent.session.context(Purpose::Save).await;
    let local = ctx.local.as_ref().ok_or(TermError::NoLocal)?;
    let (member, status) = ctx.etcd.connect_member().await.map_err(|e| TermError::Other(e.to_string()))?;
    let cluster = format!("{:x}", status.cluster_id);
    let listing = local.list().await.map_err(|e| TermError::Other(e.to_string()))?;
    let deltas_dir: PathBuf = local::dir_beside(local.dir());
    let (mut records, _) = local::read_all(&deltas_dir);
    let s3 = ctx.remote.as_ref().and_then(|r| r.as_s3());
    if let Some(s3) = s3
        && let Some(r) = history::newest_in_s3(s3, &cluster, i64::MIN, &|_| true).await
    {
        records.push(r);
    }
    let mut client = member.into_client();
    // Which recorded history the live etcd is: only its chains and snapshots are continued.
    let tips = etcdsnap_storage::pitr::history::candidates(&listing.records, &records, &cluster);
    let live = history::live_history(&mut client, &tips).await.map_err(|e| TermError::Other(e.to_string()))?;
    let Some(live) = live else {
        // Where capture stood: the newest chain, else the newest snapshot it would have started
        // from. When etcd compacted past it, the revisions after it are a gap.
        let compacted = match resume::newest_chain(&records, &cluster, None) {
            Some(newest) => resume::end_unmatched(&mut client, &newest, &deltas_dir).await.map_err(TermError::Other)?,
            None => match newest_snapshot_of(&listing.records, &ctx.node_name, &cluster, |_| true)
                .and_then(local::base_of)
            {
                Some(base) => match resume::held(&mut client, base.revision).await {
                    Ok(resume::Held::Compacted) => Some(base.revision),
                    _ => None,
                },
                None => None,
            },
        };
        if let Some(revision) = compacted {
            tracing::warn!(revision, "etcd compacted past where delta capture stood: the revisions after it are a gap");
            agent.metrics.pitr.breaks.inc();
        }
        return Err(TermError::NoBase);
    };
    let mut chain = resume::newest_chain(&records, &cluster, Some(&live));
    if let Some(s3) = s3 {
        let after = chain.as_ref().map_or(i64::MIN, |c| c.durable);
        let wanted = |r: &etcdsnap_storage::pitr::SegmentRecord| {
            r.chain_broken.is_none() && r.history.as_deref() == Some(live.as_str())
        };
        let mut newer = history::newest_in_s3(s3, &cluster, after, &wanted).await;
        if newer.is_some() && lead.term().is_some() {
            // Another leader wrote it. Its term has ended (the fence sees to that), but the
            // changes it held then may still be on their way to S3: they are waited for, so
            // that this term does not capture the same revisions again under the same names.
            wait(settings.flush_interval + HANDOVER_MARGIN, stop).await;
            newer = history::newest_in_s3(s3, &cluster, after, &wanted).await;
        }
        if let Some(r) = newer {
            let (base_revision, durable) = (r.base_revision, r.last_revision);
            chain = Some(resume::Resumable { chain: r.chain, history: r.history, base_revision, durable });
        }
    }
    let snapshot = newest_snapshot(&listing.records, &ctx.node_name, &cluster, &live);
    let choice = resume::choose(&mut client, chain, snapshot, &deltas_dir).await.map_err(TermError::Other)?;
    if let Some(revision) = choice.compacted {
        tracing::warn!(revision, "etcd compacted past where delta capture stood: the revisions after it are a gap");
        agent.metrics.pitr.breaks.inc();
    }
    let start = choice.start.ok_or(TermError::NoBase)?;
    let term = stop.child_token();
    let watcher = tokio::spawn(end_of_term(lead.term().cloned(), term.clone()));
    let annotating = match lead {
        Lead::Term(leader) => {
            let (metrics, local) = (agent.metrics.clone(), local.clone());
            let (node, term, live) = (ctx.node_name.clone(), term.clone(), live.clone());
            let history = (cluster, live);
            Some(tokio::spawn(async move { annotate_loop(leader, metrics, local, node, history, term).await }))
        }
        Lead::Alone => None,
    };
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
    let stopped = term.clone();
    let result =
        capture::capture_observed(&mut client, &start.base, start.durable, &deltas_dir, settings, term, &mut observe)
            .await;
    watcher.abort();
    // The annotations stop on their own (an annotation under way is refused by the fence once
    // the term ended); one stuck on the API server is cut off.
    stopped.cancel();
    if let Some(mut a) = annotating
        && tokio::time::timeout(ANNOTATE_GRACE, &mut a).await.is_err()
    {
        a.abort();
    }
    result.map(|_| ()).map_err(TermError::from)
}

/// The newest ready snapshot of `node` taken from cluster `cluster` in history `history`, with
/// its revision: the chain starts there (another node's snapshot is on another disk; another
/// cluster's or another history's would replay the wrong changes).
fn newest_snapshot<'a>(
    records: &'a [SnapshotRecord],
    node: &str,
    cluster: &str,
    history: &str,
) -> Option<&'a SnapshotRecord> {
    newest_snapshot_of(records, node, cluster, |h| h == Some(history))
}

/// The newest ready snapshot of `node` taken from cluster `cluster`, in a history that
/// `history` takes.
fn newest_snapshot_of<'a>(
    records: &'a [SnapshotRecord],
    node: &str,
    cluster: &str,
    history: impl Fn(Option<&str>) -> bool,
) -> Option<&'a SnapshotRecord> {
    records
        .iter()
        .filter(|r| r.node_name == node)
        .filter(|r| r.etcd.as_ref().is_some_and(|e| e.cluster_id == cluster && history(e.history.as_deref())))
        .filter_map(|r| local::base_of(r).map(|b| (r, b)))
        .max_by_key(|(_, b)| (b.revision, b.taken_ms))
        .map(|(r, _)| r)
}

/// While capturing, says on the newest snapshot's resource how far it rolls forward
/// (`etcdsnap.io/rolls-forward-to-revision` and `-until`), each time that changes, at most
/// every [`ANNOTATE_EVERY`]. A snapshot without a resource yet is tried again next time. It
/// writes through the term's fenced connection, after checking the term, and stops with it.
async fn annotate_loop(
    leader: LeaderKube,
    metrics: Arc<super::metrics::Metrics>,
    local: LocalStore,
    node: String,
    (cluster, history): (String, String),
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
        let Some(newest) = newest_snapshot(&listing.records, &node, &cluster, &history) else { continue };
        let now = (newest.name.to_string(), revision);
        if observed_ms == 0
            || newest.etcd.as_ref().is_some_and(|e| e.revision >= revision)
            || said.as_ref() == Some(&now)
        {
            continue;
        }
        failpoint::reached(failpoint::ROLL_FORWARD_ANNOTATION).await;
        if let Err(lost) = leader.term.check() {
            return tracing::info!("roll-forward annotation not written: {lost}");
        }
        match etcdsnap_kube::pitr::record_reach(&leader.kube.client, newest, revision, observed).await {
            Ok(true) => said = Some(now),
            Ok(false) => {}
            Err(e) => tracing::info!(error = %e, "roll-forward annotation not written"),
        }
    }
}

/// Cancels `capture` when the leader term ends (never without one: alone, capture stops with
/// the agent only).
async fn end_of_term(term: Option<LeaderTerm>, capture: CancellationToken) {
    let Some(term) = term else { return };
    tokio::select! {
        () = capture.cancelled() => return,
        () = term.over(TERM_CHECK) => {}
    }
    tracing::info!("leadership lost: delta capture stops");
    capture.cancel();
}

/// S3 retention of delta segments (the rule is `etcdsnap_storage::pitr::retention`'s): the
/// leader's duty, since the segments are the cluster's. Each delete is made only while `lead`'s
/// term lasts; a pass cut short by the end of the term, or by a failed request, is finished by
/// the next one.
pub(super) async fn prune_s3_segments(s3: &S3Store, snapshots: &[SnapshotRecord], lead: &Lead) {
    let Some(oldest) = pitr_retention::oldest_base_revision(snapshots) else {
        return tracing::debug!(snapshots = snapshots.len(), "S3 delta retention: no S3 snapshot with a revision");
    };
    let listed = match s3.list_pitr_objects().await {
        Ok(l) => l,
        Err(e) => return tracing::warn!(error = %e, "S3 delta retention skipped"),
    };
    let mut removed = 0;
    for o in pitr_retention::expired_objects(listed, oldest) {
        match lead.during(s3.delete_pitr_object(&o.chain, &o.file)).await {
            Ok(Ok(())) => removed += 1,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "S3 delta retention");
                break;
            }
            Err(lost) => {
                tracing::info!("S3 delta retention stopped: {lost}");
                break;
            }
        }
    }
    if removed > 0 {
        tracing::info!(objects = removed, before = oldest, "S3 delta objects older than every S3 snapshot removed");
    }
}

pub(super) async fn wait(d: Duration, stop: &CancellationToken) {
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
    fn the_base_is_this_nodes_newest_snapshot_of_the_live_cluster_and_history() {
        let in_history = |mut r: SnapshotRecord, h: &str| {
            if let Some(e) = r.etcd.as_mut() {
                e.history = Some(h.into());
            }
            r
        };
        let records = [
            in_history(snap("node-a", 100, 50, "c1"), "h1"),
            in_history(snap("node-a", 200, 90, "c1"), "h1"),
            // A node whose name ends in this one's, another cluster in the same folder.
            in_history(snap("x-node-a", 300, 120, "c1"), "h1"),
            in_history(snap("node-a", 400, 200, "c2"), "h1"),
            // Another history of the same cluster (before a rollback), and a legacy snapshot.
            in_history(snap("node-a", 500, 300, "c1"), "h0"),
            snap("node-a", 600, 400, "c1"),
        ];
        let base = newest_snapshot(&records, "node-a", "c1", "h1").and_then(local::base_of).unwrap();
        assert_eq!(
            (base.name.as_str(), base.revision, base.history.as_deref()),
            ("etcd-snapshot-node-a-200", 90, Some("h1"))
        );
        assert!(newest_snapshot(&records, "node-b", "c1", "h1").is_none());
        assert!(newest_snapshot(&records, "node-a", "c1", "h2").is_none());
    }
}
