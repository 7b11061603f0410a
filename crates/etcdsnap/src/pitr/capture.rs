//! Capture: etcd's changes after a full snapshot, as delta segments in `out_dir/<chain>/`.
//!
//! One watch over all keys starts at the base's revision + 1, with progress notifications.
//! Watch responses are not fragmented, so each holds whole revisions (etcd batches by
//! revision); the events of a revision are kept in etcd's order. A segment is flushed when
//! `flush_interval` has passed since its first revision was observed, when its encoding reaches
//! `max_bytes`, and when capture is stopped. Each segment is written crash-safely, then its
//! record: a segment counts only once its record is written (a listing reads records alone).
//!
//! Gaps are never silent: a watch cancelled by compaction, a failed or ended watch, or a
//! revision that does not follow the last one ends the chain. What was pending is written with
//! `chain_broken` set (or, with nothing pending, the last record is rewritten with it) and the
//! capture returns [`CaptureError::Broken`] naming the revision the chain stops at: the caller
//! takes a new full snapshot, which starts a new chain.
//!
//! Lease TTLs are not captured (see the module documentation of [`crate::pitr`]).

use etcd_client::{Client, EventType, WatchOptions, WatchResponse};
use etcdsnap_storage::files::{create_private_dir, write_atomic};
use etcdsnap_storage::pitr::local;
use etcdsnap_storage::pitr::record::RECORD_FORMAT;
use etcdsnap_storage::pitr::{Base, EventKind, PitrEvent, RevisionChanges, Segment, SegmentRecord};
use etcdsnap_storage::store::StoreError;
use sha2::{Digest, Sha256};
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
    capture_observed(client, base, out_dir, settings, stop, &mut |_| {}).await
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

/// [`capture`], telling `observe` of each durable segment and each confirmation that nothing is
/// pending. With nothing pending, etcd is asked every [`PROGRESS_EVERY`] (at most the flush
/// interval) for its progress, so that an idle cluster is seen to be caught up.
pub async fn capture_observed(
    client: &mut Client,
    base: &Base,
    out_dir: &Path,
    settings: CaptureSettings,
    stop: CancellationToken,
    observe: &mut (dyn FnMut(CaptureEvent<'_>) + Send),
) -> Result<CaptureReport, CaptureError> {
    if !etcdsnap_storage::pitr::valid_chain_name(&base.name) {
        return Err(CaptureError::ChainName(base.name.clone()));
    }
    let mut writer = ChainWriter::new(base, out_dir.join(&base.name), settings.clone())?;
    let start = writer.taken + 1;
    let opts = WatchOptions::new().with_all_keys().with_start_revision(start).with_progress_notify();
    let (mut requests, mut stream) = client
        .watch("", Some(opts))
        .await
        .map_err(|e| CaptureError::Start { revision: start, message: e.to_string() })?
        .split();
    tracing::info!(chain = %base.name, from = start, "delta capture started");
    let mut progress = tokio::time::interval(PROGRESS_EVERY.min(settings.flush_interval));
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let reason = loop {
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
                    break format!("the watch failed: {e}");
                }
            }
            message = stream.message() => match message {
                Ok(Some(resp)) => match writer.take(&resp) {
                    Ok(()) => {
                        writer.flush_if_full(observe)?;
                        writer.caught_up(&resp, observe);
                    }
                    Err(reason) => break reason,
                },
                Ok(None) => break "the watch stream ended".to_string(),
                Err(e) => break format!("the watch failed: {e}"),
            },
        }
    };
    writer.flush(Some(reason.clone()), observe)?;
    let last_revision = writer.report.last_revision;
    tracing::warn!(chain = %base.name, last_revision, %reason, "delta chain broken");
    Err(CaptureError::Broken { chain: base.name.clone(), last_revision, reason })
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
    cluster_id: Option<String>,
    report: CaptureReport,
}

impl ChainWriter {
    /// A writer that continues the chain where its durable records end (a restarted capture
    /// neither rewrites nor overlaps them), refusing a chain already broken or with a gap.
    fn new(base: &Base, dir: PathBuf, settings: CaptureSettings) -> Result<ChainWriter, CaptureError> {
        create_private_dir(&dir)?;
        let segments = local::read_chain(&dir).map_err(|e| CaptureError::Broken {
            chain: base.name.clone(),
            last_revision: base.revision,
            reason: e.to_string(),
        })?;
        let last_revision = continue_from(base, &segments)?;
        Ok(ChainWriter {
            base: base.clone(),
            dir,
            settings,
            pending: Segment::default(),
            opened: None,
            retry_at: None,
            taken: last_revision,
            cluster_id: None,
            report: CaptureReport { segments, last_revision },
        })
    }

    fn flush_deadline(&self) -> Option<Instant> {
        let due = self.opened.map(|at| at + self.settings.flush_interval);
        due.max(self.retry_at)
    }

    /// Takes one watch response's events; Err with the reason the chain cannot continue.
    fn take(&mut self, resp: &WatchResponse) -> Result<(), String> {
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
        for event in resp.events() {
            let Some(kv) = event.kv() else { return Err("a watch event without a key".into()) };
            let kind = match event.event_type() {
                EventType::Put => EventKind::Put,
                EventType::Delete => EventKind::Delete,
            };
            let delta = PitrEvent {
                kind,
                key: kv.key().to_vec(),
                value: if kind == EventKind::Put { kv.value().to_vec() } else { Vec::new() },
                create_revision: kv.create_revision(),
                mod_revision: kv.mod_revision(),
                version: kv.version(),
                lease: kv.lease(),
            };
            self.push(delta, observed_ms)?;
        }
        Ok(())
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
    fn caught_up(&self, resp: &WatchResponse, observe: &mut (dyn FnMut(CaptureEvent<'_>) + Send)) {
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        if resp.events().is_empty() && !resp.created() && self.pending.revisions.is_empty() && revision == self.taken {
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
        };
        // The directory may have been removed under a running capture (by hand, or emptied by
        // retention): it is made again rather than losing what is pending.
        create_private_dir(&self.dir)?;
        self.write(&record.segment_name(), &stored)?;
        self.write(&record.record_name(), &record.to_json())?;
        tracing::debug!(chain = %record.chain, first = record.first_revision, last = record.last_revision,
            bytes = record.stored_bytes, "delta segment written");
        (self.pending, self.opened, self.retry_at) = (Segment::default(), None, None);
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

/// The newest revision the chain holds without a gap, or why it cannot be continued.
fn continue_from(base: &Base, records: &[SegmentRecord]) -> Result<i64, CaptureError> {
    let Some(chain) = etcdsnap_storage::pitr::summarize(records).into_iter().next() else {
        return Ok(base.revision);
    };
    let broken =
        |reason: String| CaptureError::Broken { chain: base.name.clone(), last_revision: chain.reachable, reason };
    if chain.base_revision != base.revision {
        return Err(broken(format!("its records start from revision {}, not {}", chain.base_revision, base.revision)));
    }
    if let Some(reason) = chain.broken {
        return Err(broken(format!("it was already broken ({reason})")));
    }
    if let Some(gap) = chain.gaps.first() {
        return Err(broken(format!("revisions {}..{} are missing", gap.after + 1, gap.resumes_at - 1)));
    }
    Ok(chain.reachable)
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
        }
    }

    fn writer(dir: &Path) -> ChainWriter {
        let base = Base { name: "etcd-snapshot-node-a-1700000000".into(), revision: 10, taken_ms: 0 };
        ChainWriter::new(&base, dir.join(&base.name), CaptureSettings::default()).unwrap()
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
        let err = ChainWriter::new(&again.base, again.dir.clone(), CaptureSettings::default()).err().unwrap();
        assert!(err.to_string().contains("already broken"), "{err}");
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
