//! Capture: etcd's changes after a full snapshot, as delta segments in `out_dir/<chain>/`.
//!
//! One watch over all keys starts at the base's revision + 1, with progress notifications, the
//! keys' previous states (`prev_kv`) and fragmenting: etcd splits a response larger than its
//! `--max-request-bytes` into fragments, which are put back together here before anything is
//! taken, so every response taken holds whole revisions (etcd batches by revision); the events
//! of a revision are kept in etcd's order. The watch's messages may be far larger than tonic's
//! default 4 MiB limit (one event of a large value and its previous state, or a response etcd
//! could not fragment), so its limit is [`WATCH_MESSAGE_LIMIT`]. A segment is flushed when
//! `flush_interval` has passed since its first revision was observed, when its encoding reaches
//! `max_bytes`, and when capture is stopped. Each segment is written crash-safely, then its
//! record: a segment counts only once its record is written (a listing reads records alone).
//!
//! Gaps are never silent: a watch cancelled by compaction, or a revision that does not follow
//! the last one, ends the chain. What was pending is written with `chain_broken` set (or, with
//! nothing pending, the last record is rewritten with it) and the capture returns
//! [`CaptureError::Broken`] naming the revision the chain stops at: the caller takes a new full
//! snapshot, which starts a new chain. A watch that fails or ends (etcd restarted, a leader
//! change, the network) only interrupts the capture: what was pending is written and
//! [`CaptureError::Interrupted`] says where the chain stands; a later capture continues it from
//! there as long as etcd still holds the revisions after it.
//!
//! Each event keeps a digest of its key's previous state (absent for a put that created the
//! key), which the replay compares with its own (see [`crate::pitr::replay`]). The first time a
//! segment holds a put attached to a lease, etcd is asked for that lease's granted and
//! remaining TTL (LeaseTimeToLive), kept in the segment as a [`LeaseObservation`].

use etcd_client::{Client, EventType, WatchOptions, WatchResponse};
use etcdsnap_storage::files::{create_private_dir, write_atomic};
use etcdsnap_storage::pitr::record::RECORD_FORMAT;
use etcdsnap_storage::pitr::{
    Base, EventKind, LeaseObservation, PitrEvent, PrevDigest, PrevState, RevisionChanges, Segment, SegmentRecord,
};
use etcdsnap_storage::pitr::{history, local};
use etcdsnap_storage::store::StoreError;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// zstd level of stored segments.
const ZSTD_LEVEL: i32 = 3;
/// How long a capture waits before it writes again after a failed write.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How many segments' worth of changes a capture keeps in memory while writes fail.
const PENDING_LIMIT: usize = 4;
/// How often an idle capture asks etcd whether anything is left to deliver.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// The largest watch message accepted. With fragmenting, etcd keeps each message under its
/// `--max-request-bytes` (1.5 MiB by default) unless one event alone is larger: a value and its
/// previous state, each as large as etcd accepts. 256 MiB covers any request size etcd is
/// configured with in practice; only what etcd sends is allocated.
pub const WATCH_MESSAGE_LIMIT: usize = 256 * 1024 * 1024;
/// How long etcd may take to say how long a lease has left.
const LEASE_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// When segments are flushed.
#[derive(Debug, Clone)]
pub struct CaptureSettings {
    pub flush_interval: Duration,
    pub max_bytes: usize,
    /// Seal every segment to these age recipients (the snapshots').
    pub recipients: Option<std::sync::Arc<etcdsnap_storage::seal::Recipients>>,
}

impl Default for CaptureSettings {
    fn default() -> Self {
        CaptureSettings { flush_interval: Duration::from_secs(10), max_bytes: 8 * 1024 * 1024, recipients: None }
    }
}

/// What a capture wrote.
#[derive(Debug, Clone, Default)]
pub struct CaptureReport {
    /// Records of the segments written, oldest first.
    pub segments: Vec<SegmentRecord>,
    /// The newest durable revision (the base's when nothing was written).
    pub last_revision: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("delta chain name {0:?} is not a snapshot name")]
    ChainName(String),
    #[error("cannot watch etcd from revision {revision}: {message}")]
    Start { revision: i64, message: String },
    #[error(
        "delta chain {chain} is broken after revision {last_revision}: {reason}; a new full snapshot must start a new chain"
    )]
    Broken { chain: String, last_revision: i64, reason: String },
    #[error("delta capture of chain {chain} was interrupted after revision {last_revision}: {reason}")]
    Interrupted { chain: String, last_revision: i64, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write delta file {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Captures changes after `base` into `out_dir/<base.name>/` until `stop` is cancelled.
pub async fn capture(
    client: &mut Client,
    base: &Base,
    out_dir: &Path,
    settings: CaptureSettings,
    stop: CancellationToken,
) -> Result<CaptureReport, CaptureError> {
    capture_observed(client, base, base.revision, out_dir, settings, stop, &mut |_| {}).await
}

/// What a running capture reports as it goes (the agent's metrics).
#[derive(Debug, Clone, Copy)]
pub enum CaptureEvent<'a> {
    /// A segment became durable.
    Segment(&'a SegmentRecord),
    /// etcd confirmed that nothing after `revision` exists: every change up to `at_ms` (Unix
    /// milliseconds) is durable.
    CaughtUp { revision: i64, at_ms: i64 },
}

/// [`capture`], continuing the chain after `durable` (its last revision durable anywhere: this
/// node's records, or another node's in S3), telling `observe` of each durable segment and each
/// confirmation that nothing is pending. With nothing pending, etcd is asked every
/// [`PROGRESS_EVERY`] (at most the flush interval) for its progress, so that an idle cluster is
/// seen to be caught up.
pub async fn capture_observed(
    client: &mut Client,
    base: &Base,
    durable: i64,
    out_dir: &Path,
    settings: CaptureSettings,
    stop: CancellationToken,
    observe: &mut (dyn FnMut(CaptureEvent<'_>) + Send),
) -> Result<CaptureReport, CaptureError> {
    if !etcdsnap_storage::pitr::valid_chain_name(&base.name) {
        return Err(CaptureError::ChainName(base.name.clone()));
    }
    let mut writer = ChainWriter::new(base, out_dir.join(&base.name), settings.clone(), durable)?;
    let start = writer.taken + 1;
    let opts = WatchOptions::new()
        .with_all_keys()
        .with_start_revision(start)
        .with_progress_notify()
        .with_prev_key()
        .with_fragment();
    let (mut requests, mut stream) = client
        .watch_client()
        .max_decoding_message_size(WATCH_MESSAGE_LIMIT)
        .watch("", Some(opts))
        .await
        .map_err(|e| CaptureError::Start { revision: start, message: e.to_string() })?
        .split();
    tracing::info!(chain = %base.name, from = start, "delta capture started");
    let mut progress = tokio::time::interval(PROGRESS_EVERY.min(settings.flush_interval));
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The fragments of the response being received, until its last one.
    let mut fragments: Vec<WatchResponse> = Vec::new();
    // Err: the chain is broken there; Ok: the watch was interrupted there.
    let reason: Result<String, String> = loop {
        let deadline = writer.flush_deadline();
        tokio::select! {
            () = stop.cancelled() => {
                writer.flush(None, observe)?;
                tracing::info!(chain = %base.name, last = writer.report.last_revision, "delta capture stopped");
                return Ok(writer.report);
            }
            () = sleep_until(deadline) => writer.flush_or_retry(observe)?,
            _ = progress.tick(), if writer.pending.revisions.is_empty() => {
                if let Err(e) = requests.request_progress().await {
                    break Ok(format!("the watch failed: {e}"));
                }
            }
            message = stream.message() => match message {
                Ok(Some(resp)) if resp.0.fragment => fragments.push(resp),
                Ok(Some(resp)) => {
                    fragments.push(resp);
                    let parts = std::mem::take(&mut fragments);
                    match writer.take(&parts) {
                        Ok(leases) => {
                            writer.observe_leases(client, leases).await;
                            writer.flush_if_full(observe)?;
                            writer.caught_up(&parts, observe);
                        }
                        Err(reason) => break Err(reason),
                    }
                }
                Ok(None) => break Ok("the watch stream ended".to_string()),
                Err(e) => break Ok(format!("the watch failed: {e}")),
            },
        }
    };
    let chain = base.name.clone();
    match reason {
        Ok(reason) => {
            writer.flush(None, observe)?;
            let last_revision = writer.report.last_revision;
            tracing::warn!(%chain, last_revision, %reason, "delta capture interrupted");
            Err(CaptureError::Interrupted { chain, last_revision, reason })
        }
        Err(reason) => {
            writer.flush(Some(reason.clone()), observe)?;
            let last_revision = writer.report.last_revision;
            tracing::warn!(%chain, last_revision, %reason, "delta chain broken");
            Err(CaptureError::Broken { chain, last_revision, reason })
        }
    }
}

/// Marks the chain in `out_dir/<chain>/` broken on its last durable record, with `reason`: the
/// revisions after it can no longer be captured (etcd compacted them while nobody watched).
/// Without a local record (a chain continued from S3 with nothing written here yet) nothing is
/// written; the restore still finds the gap.
pub fn mark_broken(out_dir: &Path, chain: &str, reason: &str) -> Result<(), CaptureError> {
    let dir = out_dir.join(chain);
    let records = match local::read_chain(&dir) {
        Ok(records) => records,
        Err(_) if !dir.exists() => return Ok(()),
        Err(e) => return Err(CaptureError::Broken { chain: chain.into(), last_revision: 0, reason: e.to_string() }),
    };
    let Some(mut last) = records.into_iter().max_by_key(|r| r.last_revision) else { return Ok(()) };
    if last.chain_broken.is_none() {
        last.chain_broken = Some(reason.to_string());
        write_atomic(&dir.join(last.record_name()), &last.to_json())?;
    }
    Ok(())
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The pending segment of one chain and the segments written.
struct ChainWriter {
    base: Base,
    dir: PathBuf,
    settings: CaptureSettings,
    pending: Segment,
    /// When the pending segment's first revision arrived.
    opened: Option<Instant>,
    /// After a failed write: not before then.
    retry_at: Option<Instant>,
    /// The newest revision taken (pending or written).
    taken: i64,
    /// The leases the pending segment has an observation of (or asked for in vain).
    leases_seen: HashSet<i64>,
    cluster_id: Option<String>,
    report: CaptureReport,
}

impl ChainWriter {
    /// A writer that continues the chain where its durable records end, or after `durable` when
    /// that is later (a restarted capture neither rewrites nor overlaps them), refusing a chain
    /// already broken or with a gap.
    fn new(base: &Base, dir: PathBuf, settings: CaptureSettings, durable: i64) -> Result<ChainWriter, CaptureError> {
        create_private_dir(&dir)?;
        let segments = local::read_chain(&dir).map_err(|e| CaptureError::Broken {
            chain: base.name.clone(),
            last_revision: base.revision,
            reason: e.to_string(),
        })?;
        let last_revision = continue_from(base, &segments, durable)?;
        Ok(ChainWriter {
            base: base.clone(),
            dir,
            settings,
            pending: Segment::default(),
            opened: None,
            retry_at: None,
            taken: last_revision,
            leases_seen: HashSet::new(),
            cluster_id: None,
            report: CaptureReport { segments, last_revision },
        })
    }

    fn flush_deadline(&self) -> Option<Instant> {
        let due = self.opened.map(|at| at + self.settings.flush_interval);
        due.max(self.retry_at)
    }

    /// Takes one watch response's events (`parts`: its fragments, in order); Err with the
    /// reason the chain cannot continue. Returns the leases the pending segment has not
    /// observed yet, each with the revision of the first put attached to it.
    fn take(&mut self, parts: &[WatchResponse]) -> Result<Vec<(i64, i64)>, String> {
        let Some(resp) = parts.last() else { return Ok(Vec::new()) };
        if self.cluster_id.is_none() {
            self.cluster_id = resp.header().map(|h| format!("{:x}", h.cluster_id()));
        }
        if resp.compact_revision() > 0 {
            return Err(format!(
                "the watch from revision {} was cancelled by compaction (compact revision {})",
                self.taken + 1,
                resp.compact_revision()
            ));
        }
        if resp.canceled() {
            return Err(format!("etcd cancelled the watch: {}", resp.cancel_reason()));
        }
        let observed_ms = etcdsnap_storage::clock::now().as_millisecond();
        let mut new_leases = Vec::new();
        for event in parts.iter().flat_map(|p| p.events()) {
            let Some(kv) = event.kv() else { return Err("a watch event without a key".into()) };
            let kind = match event.event_type() {
                EventType::Put => EventKind::Put,
                EventType::Delete => EventKind::Delete,
            };
            let prev = match event.prev_kv() {
                Some(p) => PrevState::Present(PrevDigest::of(
                    p.value(),
                    p.create_revision(),
                    p.mod_revision(),
                    p.version(),
                    p.lease(),
                )),
                // etcd sends no previous state for a put that creates its key: there was none.
                None if kind == EventKind::Put && kv.create_revision() == kv.mod_revision() => PrevState::Absent,
                // Otherwise the key existed, and etcd could not read it back (its revision was
                // compacted in between): the event is kept, unchecked.
                None => PrevState::NotCaptured,
            };
            let delta = PitrEvent {
                kind,
                key: kv.key().to_vec(),
                value: if kind == EventKind::Put { kv.value().to_vec() } else { Vec::new() },
                create_revision: kv.create_revision(),
                mod_revision: kv.mod_revision(),
                version: kv.version(),
                lease: kv.lease(),
                prev,
            };
            if delta.lease != 0 && self.leases_seen.insert(delta.lease) {
                new_leases.push((delta.lease, delta.mod_revision));
            }
            self.push(delta, observed_ms)?;
        }
        Ok(new_leases)
    }

    /// Asks etcd how long each of `leases` has left, keeping the answers in the pending
    /// segment. A lease already gone is kept with -1 left; a failed question leaves the lease
    /// unobserved (the replay then says so), and never stops the capture.
    async fn observe_leases(&mut self, client: &mut Client, leases: Vec<(i64, i64)>) {
        for (id, revision) in leases {
            let asked = tokio::time::timeout(LEASE_QUERY_TIMEOUT, client.lease_time_to_live(id, None)).await;
            match asked {
                Ok(Ok(resp)) => self.pending.leases.push(LeaseObservation {
                    id,
                    revision,
                    observed_ms: etcdsnap_storage::clock::now().as_millisecond(),
                    granted_ttl: resp.granted_ttl(),
                    remaining_ttl: if resp.ttl() < 0 { -1 } else { resp.ttl() },
                }),
                Ok(Err(e)) => {
                    tracing::warn!(lease = %format!("{id:x}"), error = %e, "cannot ask etcd for a lease's TTL")
                }
                Err(_) => tracing::warn!(lease = %format!("{id:x}"), "etcd did not say a lease's TTL in time"),
            }
        }
    }

    fn push(&mut self, event: PitrEvent, observed_ms: i64) -> Result<(), String> {
        let revision = event.mod_revision;
        if let Some(last) = self.pending.revisions.last_mut()
            && last.revision == revision
        {
            last.events.push(event);
            return Ok(());
        }
        if revision != self.taken + 1 {
            return Err(format!("the watch delivered revision {revision} after {}", self.taken));
        }
        self.pending.revisions.push(RevisionChanges { revision, observed_ms, events: vec![event] });
        self.taken = revision;
        self.opened.get_or_insert_with(Instant::now);
        Ok(())
    }

    fn flush_if_full(&mut self, observe: &mut (dyn FnMut(CaptureEvent<'_>) + Send)) -> Result<(), CaptureError> {
        let retrying = self.retry_at.is_some_and(|at| Instant::now() < at);
        if self.pending.encoded_len() >= self.settings.max_bytes && !retrying {
            self.flush_or_retry(observe)
        } else {
            Ok(())
        }
    }

    /// A response without events (a progress notification) at the revision last taken, with
    /// nothing pending, says every change is durable now.
    fn caught_up(&self, parts: &[WatchResponse], observe: &mut (dyn FnMut(CaptureEvent<'_>) + Send)) {
        let ([resp], true) = (parts, self.pending.revisions.is_empty()) else { return };
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        if resp.events().is_empty() && !resp.created() && revision == self.taken {
            observe(CaptureEvent::CaughtUp { revision, at_ms: etcdsnap_storage::clock::now().as_millisecond() });
        }
    }

    /// Writes the pending segment and its record; with `broken`, marks the chain broken there
    /// (on the last written record when nothing is pending). On failure the pending changes are
    /// kept, so a later flush can still write them.
    fn flush(
        &mut self,
        broken: Option<String>,
        observe: &mut (dyn FnMut(CaptureEvent<'_>) + Send),
    ) -> Result<(), CaptureError> {
        let (Some(first), Some(last)) = (self.pending.revisions.first(), self.pending.revisions.last()) else {
            self.opened = None;
            return self.mark_last_broken(broken);
        };
        let stored = self
            .pending
            .to_stored(ZSTD_LEVEL, self.settings.recipients.as_deref())
            .map_err(|source| self.write_error("segment", source))?;
        let record = SegmentRecord {
            format: RECORD_FORMAT,
            chain: self.base.name.clone(),
            base_revision: self.base.revision,
            first_revision: first.revision,
            last_revision: last.revision,
            first_observed_ms: first.observed_ms,
            last_observed_ms: last.observed_ms.max(first.observed_ms),
            revisions: self.pending.revisions.len() as u64,
            events: self.pending.event_count() as u64,
            sha256: hex::encode(Sha256::digest(&stored)),
            stored_bytes: stored.len() as u64,
            cluster_id: self.cluster_id.clone(),
            chain_broken: broken,
            history: self.base.history.clone(),
            fingerprint: Some(history::fingerprint_of_revision(last)),
        };
        // The directory may have been removed under a running capture (by hand, or emptied by
        // retention): it is made again rather than losing what is pending.
        create_private_dir(&self.dir)?;
        self.write(&record.segment_name(), &stored)?;
        self.write(&record.record_name(), &record.to_json())?;
        tracing::debug!(chain = %record.chain, first = record.first_revision, last = record.last_revision,
            bytes = record.stored_bytes, "delta segment written");
        (self.pending, self.opened, self.retry_at) = (Segment::default(), None, None);
        self.leases_seen.clear();
        self.report.last_revision = record.last_revision;
        observe(CaptureEvent::Segment(&record));
        self.report.segments.push(record);
        Ok(())
    }

    /// A flush on the timer or the size limit: a failure to write is retried after
    /// [`RETRY_AFTER`] with the changes kept, while they stay within [`PENDING_LIMIT`] times the
    /// segment size; past that the capture fails (memory is not an unbounded buffer).
    fn flush_or_retry(&mut self, observe: &mut (dyn FnMut(CaptureEvent<'_>) + Send)) -> Result<(), CaptureError> {
        match self.flush(None, observe) {
            Err(e) if self.pending.encoded_len() <= PENDING_LIMIT * self.settings.max_bytes => {
                tracing::warn!(chain = %self.base.name, error = %e, "delta segment not written; retrying with the changes kept");
                self.retry_at = Some(Instant::now() + RETRY_AFTER);
                Ok(())
            }
            other => other,
        }
    }

    fn mark_last_broken(&mut self, broken: Option<String>) -> Result<(), CaptureError> {
        let Some(reason) = broken else { return Ok(()) };
        let Some(mut record) = self.report.segments.last().cloned() else { return Ok(()) };
        record.chain_broken = Some(reason);
        self.write(&record.record_name(), &record.to_json())?;
        if let Some(last) = self.report.segments.last_mut() {
            *last = record;
        }
        Ok(())
    }

    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), CaptureError> {
        Ok(write_atomic(&self.dir.join(name), bytes)?)
    }

    fn write_error(&self, name: &str, source: std::io::Error) -> CaptureError {
        CaptureError::Write { path: self.dir.join(name), source }
    }
}

/// The newest revision the chain holds without a gap after `durable` (the base's revision, or
/// a later one known durable elsewhere), or why it cannot be continued.
fn continue_from(base: &Base, records: &[SegmentRecord], durable: i64) -> Result<i64, CaptureError> {
    let mut reached = durable.max(base.revision);
    let broken =
        |last_revision: i64, reason: String| CaptureError::Broken { chain: base.name.clone(), last_revision, reason };
    if let Some(r) = records.iter().find(|r| r.base_revision != base.revision) {
        let reason = format!("its records start from revision {}, not {}", r.base_revision, base.revision);
        return Err(broken(reached, reason));
    }
    if let Some(r) = records.iter().find(|r| r.history != base.history) {
        let reason = format!(
            "its records belong to history {}, the capture to history {}",
            history::label(r.history.as_deref()),
            history::label(base.history.as_deref())
        );
        return Err(broken(reached, reason));
    }
    if let Some(reason) = records.iter().find_map(|r| r.chain_broken.clone()) {
        return Err(broken(reached, format!("it was already broken ({reason})")));
    }
    let mut later: Vec<&SegmentRecord> = records.iter().filter(|r| r.last_revision > reached).collect();
    later.sort_by_key(|r| r.first_revision);
    for r in later {
        if r.first_revision > reached + 1 {
            return Err(broken(reached, format!("revisions {}..{} are missing", reached + 1, r.first_revision - 1)));
        }
        reached = reached.max(r.last_revision);
    }
    Ok(reached)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(revision: i64) -> PitrEvent {
        PitrEvent {
            kind: EventKind::Put,
            key: format!("/k/{revision}").into_bytes(),
            value: b"v".to_vec(),
            create_revision: revision,
            mod_revision: revision,
            version: 1,
            lease: 0,
            prev: PrevState::Absent,
        }
    }

    fn writer(dir: &Path) -> ChainWriter {
        let base = Base { name: "etcd-snapshot-node-a-1700000000".into(), revision: 10, taken_ms: 0, history: None };
        ChainWriter::new(&base, dir.join(&base.name), CaptureSettings::default(), base.revision).unwrap()
    }

    fn stored_record(w: &ChainWriter, r: &SegmentRecord) -> SegmentRecord {
        let bytes = std::fs::read(w.dir.join(r.record_name())).unwrap();
        SegmentRecord::parse("r", &bytes).unwrap()
    }

    #[test]
    fn a_restarted_capture_continues_after_the_durable_records_and_refuses_a_broken_chain() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        for rev in 11..=14 {
            w.push(put(rev), 1_000).unwrap();
        }
        w.flush(None, &mut |_| {}).unwrap();
        // A crash between a segment and its record leaves a segment nobody counts.
        std::fs::write(w.dir.join("00000000000000000015-00000000000000000015.json.part"), b"{").unwrap();
        let mut again = writer(dir.path());
        assert_eq!((again.taken, again.report.segments.len()), (14, 1));
        assert!(again.push(put(14), 2_000).is_err(), "a revision already durable was taken twice");
        again.push(put(15), 2_000).unwrap();
        again.flush(Some("the watch failed".into()), &mut |_| {}).unwrap();
        let err = ChainWriter::new(&again.base, again.dir.clone(), CaptureSettings::default(), 10).err().unwrap();
        assert!(err.to_string().contains("already broken"), "{err}");
    }

    #[test]
    fn a_chain_continues_after_the_last_revision_durable_anywhere() {
        let base = Base { name: "etcd-snapshot-node-a-1700000000".into(), revision: 10, taken_ms: 0, history: None };
        let rec = |first, last| crate::pitr::restore::tests::segment(&base.name, 10, first, last, "c1");
        // Nothing here, revisions up to 50 durable in S3 (another leader's): from 50.
        assert_eq!(continue_from(&base, &[], 50).unwrap(), 50);
        // This node's own older records do not hold it back; its newer ones carry it on.
        assert_eq!(continue_from(&base, &[rec(11, 40)], 50).unwrap(), 50);
        assert_eq!(continue_from(&base, &[rec(11, 40), rec(51, 60)], 50).unwrap(), 60);
        assert_eq!(continue_from(&base, &[rec(11, 40), rec(41, 45)], 10).unwrap(), 45);
        let err = continue_from(&base, &[rec(55, 60)], 50).unwrap_err();
        assert!(err.to_string().contains("revisions 51..54 are missing"), "{err}");
        let other = crate::pitr::restore::tests::segment(&base.name, 9, 11, 20, "c1");
        assert!(continue_from(&base, &[other], 10).is_err(), "a record of another base");
        // A chain of the same name and base revision, written in another history (revisions
        // reused after a rollback), is never continued.
        let new = Base { history: Some("h2".into()), ..base.clone() };
        let old = SegmentRecord { history: Some("h1".into()), ..rec(11, 40) };
        let err = continue_from(&new, std::slice::from_ref(&old), 10).unwrap_err();
        assert!(err.to_string().contains("history h1, the capture to history h2"), "{err}");
        assert!(continue_from(&base, &[old], 10).is_err(), "a legacy capture over a chain with a history");
        let same = SegmentRecord { history: Some("h2".into()), ..rec(11, 40) };
        assert_eq!(continue_from(&new, &[same], 10).unwrap(), 40);
    }

    #[test]
    fn a_failed_write_keeps_the_changes_and_a_removed_directory_is_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        w.push(put(11), 1_000).unwrap();
        // Retention emptied and removed the chain's directory under the running capture.
        std::fs::remove_dir(&w.dir).unwrap();
        w.flush(None, &mut |_| {}).unwrap();
        assert_eq!(w.report.last_revision, 11);
        // A write that fails (here: a file where the directory should be) loses nothing.
        std::fs::remove_dir_all(&w.dir).unwrap();
        std::fs::write(&w.dir, b"in the way").unwrap();
        w.push(put(12), 2_000).unwrap();
        w.flush_or_retry(&mut |_| {}).unwrap();
        assert!(w.retry_at.is_some(), "the failed write is retried later");
        w.push(put(13), 3_000).unwrap();
        std::fs::remove_file(&w.dir).unwrap();
        w.flush_or_retry(&mut |_| {}).unwrap();
        let last = w.report.segments.last().unwrap();
        assert_eq!((last.first_revision, last.last_revision), (12, 13), "the kept changes were written");
        assert!(w.pending.revisions.is_empty() && w.retry_at.is_none());
    }

    #[test]
    fn a_gap_breaks_the_chain_on_the_pending_segment_or_the_last_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        for rev in [11, 11, 12] {
            w.push(put(rev), 1_000).unwrap();
        }
        w.flush(None, &mut |_| {}).unwrap();
        let first = w.report.segments[0].clone();
        assert_eq!((first.first_revision, first.last_revision, first.events), (11, 12, 3));
        // The record's fingerprint is that of the puts at its last revision.
        let put12 = put(12);
        let expected = history::fingerprint(
            12,
            [history::Put {
                key: &put12.key,
                value: &put12.value,
                create_revision: 12,
                mod_revision: 12,
                version: 1,
                lease: 0,
            }],
        );
        assert_eq!(first.fingerprint.as_deref(), Some(expected.as_str()));
        assert_eq!(stored_record(&w, &first), first);
        let stored = std::fs::read(w.dir.join(first.segment_name())).unwrap();
        assert_eq!(hex::encode(Sha256::digest(&stored)), first.sha256);

        w.push(put(13), 2_000).unwrap();
        let reason = w.push(put(15), 2_000).unwrap_err();
        assert!(reason.contains("revision 15 after 13"), "{reason}");
        w.flush(Some(reason), &mut |_| {}).unwrap();
        let second = w.report.segments[1].clone();
        assert_eq!((second.first_revision, second.last_revision), (13, 13));
        assert!(stored_record(&w, &second).chain_broken.is_some());

        // Nothing pending: the last record written carries the break.
        let mut w = writer(dir.path().join("other").as_path());
        w.push(put(11), 1_000).unwrap();
        w.flush(None, &mut |_| {}).unwrap();
        w.flush(Some("the watch failed".into()), &mut |_| {}).unwrap();
        let only = &w.report.segments[0];
        assert_eq!(stored_record(&w, only).chain_broken.as_deref(), Some("the watch failed"));
        let leftovers = std::fs::read_dir(&w.dir).unwrap().filter_map(Result::ok);
        assert!(leftovers.map(|e| e.file_name()).all(|n| !n.to_string_lossy().ends_with(".part")));
    }
}
