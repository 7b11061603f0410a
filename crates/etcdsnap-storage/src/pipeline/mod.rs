//! One pass over an etcd snapshot stream: etcd's integrity trailer is checked, the revision the
//! snapshot holds is read from its pages ([`revision`]), the bytes are compressed if asked,
//! hashed as stored, and written to every sink at once. Memory is bounded
//! by a small channel and fixed buffers, whatever the size of the database.
//!
//! The network side (receiving gRPC messages) runs on the async runtime; hashing, compression
//! and file writes run on one blocking worker thread fed through a bounded channel.

pub mod encode;
pub mod fanout;
pub mod revision;
pub mod seal;
pub mod trailer;
pub mod verify;
pub mod zipread;

use crate::etcd::{EtcdError, SnapshotStream};
#[cfg(feature = "failpoints")]
use crate::failpoint;
use crate::store::{SnapshotSink, StoreError};
use bytes::Bytes;
use encode::{EncodeSpec, Encoder};
use etcdsnap_api::Compression;
use fanout::{FanOut, SinkSlot, StoredHash};
use revision::{RevisionError, RevisionScanner, SnapshotRevision};
use seal::Sealer;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio_util::sync::CancellationToken;
use trailer::{TrailerCheck, TrailerOutcome};

/// Batches in flight between the receiver and the worker. With one, etcd waited for the
/// worker's stalls (page-cache writeback, a busy CPU) and saves took ~10% longer; more only
/// adds memory.
const CHANNEL_DEPTH: usize = 2;
/// etcd sends 32 KiB messages; the receiver hands them over in batches of up to this many
/// bytes, so the worker thread is woken a few thousand times per GB instead of 30,000. When
/// the worker lags, up to CHANNEL_DEPTH + 2 batches are alive at once (the one filling, those
/// queued, the one being written), so this size is bought (CHANNEL_DEPTH + 2) times over:
/// 512 KiB cost 1 MiB more peak RSS than 256 KiB, for no measurable speed.
const BATCH_BYTES: usize = 256 * 1024;

/// Bytes processed so far and, when known, the total: what a progress display shows.
#[derive(Debug, Default)]
pub struct ProgressCounter {
    pub done: AtomicU64,
    pub total: AtomicU64,
}

impl ProgressCounter {
    pub fn advance(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set_total(&self, n: u64) {
        self.total.store(n, Ordering::Relaxed);
    }

    /// Back to zero, for a snapshot taken again from another member.
    pub fn restart(&self) {
        self.done.store(0, Ordering::Relaxed);
    }
}

pub type Progress = Arc<ProgressCounter>;

/// Something that yields a snapshot's bytes in order.
pub trait ChunkSource: Send {
    fn next_chunk(&mut self) -> impl Future<Output = Result<Option<Bytes>, EtcdError>> + Send;
}

impl ChunkSource for SnapshotStream {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, EtcdError> {
        SnapshotStream::next_chunk(self).await
    }
}

/// Why a pass failed. Every sink has been aborted when this is returned: nothing is published.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error("snapshot refused: {0}")]
    Integrity(String),
    #[error("snapshot refused: cannot read the revision it holds from its pages: {0}")]
    Revision(#[from] RevisionError),
    #[error("every destination failed: {0}")]
    AllSinksFailed(String),
    #[error("compressing the snapshot failed: {0}")]
    Encode(String),
    #[error("snapshot worker failed: {0}")]
    Worker(String),
    #[error("snapshot cancelled (shutting down)")]
    Cancelled,
}

/// A sink after the pass, with its error if it failed midway (it still has to be aborted).
pub struct SinkOutcome {
    pub sink: Box<dyn SnapshotSink>,
    pub error: Option<StoreError>,
}

/// What a successful pass produced.
pub struct PipelineOutput {
    /// Bytes received from etcd (the database file plus its 32-byte trailer).
    pub raw_size: u64,
    /// Bytes stored (after compression).
    pub stored_size: u64,
    /// sha256 of the stored bytes.
    pub stored_sha256: String,
    /// The revision the snapshot holds, read from its own pages.
    pub revision: SnapshotRevision,
    pub sinks: Vec<SinkOutcome>,
}

struct WorkerOutput {
    slots: Vec<SinkSlot>,
    stored: StoredHash,
    result: Result<(TrailerOutcome, Result<SnapshotRevision, RevisionError>), WorkerError>,
}

/// Why the worker stopped before the end of the stream.
#[derive(Debug)]
enum WorkerError {
    /// The receiver gave up (the stream broke or the save was cancelled); it knows why.
    Aborted,
    /// Every sink failed; each slot holds its own error.
    AllSinksFailed,
    /// The encoder failed (or, for the plain encoder, a write it passed on).
    Encode(std::io::Error),
}

impl WorkerError {
    /// Sorts an error from the encoder chain: the fan-out at its end reports "every sink
    /// failed" as an error of its own type, whatever encoder wrapped it.
    fn from_io(e: std::io::Error, slots: &[SinkSlot]) -> WorkerError {
        if e.get_ref().is_some_and(|inner| inner.is::<fanout::AllSinksFailed>()) || fanout::all_failed(slots) {
            WorkerError::AllSinksFailed
        } else {
            WorkerError::Encode(e)
        }
    }
}

/// Runs the pass: `source` to `sinks`, encoded per `spec`. `revision_floor` is a revision the
/// snapshot is known to hold (the member's, asked before the stream began): the revision read
/// from the pages must be at least that.
pub async fn run<S: ChunkSource>(
    mut source: S,
    sinks: Vec<Box<dyn SnapshotSink>>,
    spec: EncodeSpec,
    revision_floor: i64,
    progress: Option<Progress>,
    cancel: CancellationToken,
) -> Result<PipelineOutput, PipelineError> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<Bytes>>(CHANNEL_DEPTH);
    let aborted = Arc::new(AtomicBool::new(false));
    let slots: Vec<SinkSlot> = sinks.into_iter().map(|sink| SinkSlot { sink, error: None }).collect();
    let worker_aborted = aborted.clone();
    let compression = spec.compression;
    let worker = tokio::task::spawn_blocking(move || work(rx, slots, spec, revision_floor, worker_aborted));

    let mut receive_error = None;
    let mut cancelled = false;
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    loop {
        let next = tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                cancelled = true;
                aborted.store(true, Ordering::SeqCst);
                break;
            }
            next = source.next_chunk() => next,
        };
        match next {
            Ok(Some(chunk)) => {
                if let Some(p) = &progress {
                    p.advance(chunk.len() as u64);
                }
                batch_bytes += chunk.len();
                batch.push(chunk);
                if batch_bytes >= BATCH_BYTES {
                    batch_bytes = 0;
                    if tx.send(std::mem::take(&mut batch)).await.is_err() {
                        break; // the worker stopped: its result says why
                    }
                }
            }
            Ok(None) => {
                if !batch.is_empty() {
                    let _ = tx.send(std::mem::take(&mut batch)).await;
                }
                break;
            }
            Err(e) => {
                receive_error = Some(e);
                aborted.store(true, Ordering::SeqCst);
                break;
            }
        }
    }
    drop(tx);
    let out = worker.await.map_err(|e| PipelineError::Worker(e.to_string()))?;

    let failure = match (&receive_error, &out.result) {
        (Some(_), _) | (None, Err(WorkerError::Aborted)) => None,
        (None, Err(WorkerError::AllSinksFailed)) => Some(PipelineError::AllSinksFailed(describe_failures(&out.slots))),
        (None, Err(WorkerError::Encode(e))) => Some(PipelineError::Encode(format!("{compression}: {e}"))),
        (None, Ok((trailer, revision))) => match (trailer.problem(), revision) {
            (Some(problem), _) => Some(PipelineError::Integrity(problem)),
            (None, Err(e)) => Some(PipelineError::Revision(e.clone())),
            (None, Ok(_)) => None,
        },
    };
    if cancelled {
        abort_all(out.slots).await;
        return Err(PipelineError::Cancelled);
    }
    if let Some(e) = receive_error {
        abort_all(out.slots).await;
        return Err(PipelineError::Etcd(e));
    }
    if let Some(e) = failure {
        abort_all(out.slots).await;
        return Err(e);
    }
    let Ok((trailer, Ok(revision))) = out.result else {
        abort_all(out.slots).await;
        return Err(PipelineError::Worker("the pass ended without a result".into()));
    };
    let stored_size = out.stored.size;
    Ok(PipelineOutput {
        raw_size: trailer.total,
        stored_size,
        stored_sha256: out.stored.hex().unwrap_or(trailer.whole),
        revision,
        sinks: out.slots.into_iter().map(|s| SinkOutcome { sink: s.sink, error: s.error }).collect(),
    })
}

fn describe_failures(slots: &[SinkSlot]) -> String {
    slots
        .iter()
        .map(|s| match &s.error {
            Some(e) => format!("{}: {e}", s.sink.location()),
            None => format!("{}: ok", s.sink.location()),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

async fn abort_all(slots: Vec<SinkSlot>) {
    for slot in slots {
        slot.sink.abort().await;
    }
}

/// The worker thread: trailer check over the raw bytes, encoding, hashing and fan-out of the
/// stored bytes.
fn work(
    mut rx: tokio::sync::mpsc::Receiver<Vec<Bytes>>,
    mut slots: Vec<SinkSlot>,
    spec: EncodeSpec,
    revision_floor: i64,
    aborted: Arc<AtomicBool>,
) -> WorkerOutput {
    let mut stored = StoredHash::new(spec.compression != Compression::None || spec.recipients.is_some());
    let result = encode_all(&mut rx, &mut slots, &mut stored, &spec, revision_floor, &aborted);
    let result = result.map_err(|e| match e {
        EncodeFailure::Aborted => WorkerError::Aborted,
        EncodeFailure::Io(e) => WorkerError::from_io(e, &slots),
    });
    WorkerOutput { slots, stored, result }
}

enum EncodeFailure {
    Aborted,
    Io(std::io::Error),
}

impl From<std::io::Error> for EncodeFailure {
    fn from(e: std::io::Error) -> Self {
        EncodeFailure::Io(e)
    }
}

fn encode_all(
    rx: &mut tokio::sync::mpsc::Receiver<Vec<Bytes>>,
    slots: &mut [SinkSlot],
    stored: &mut StoredHash,
    spec: &EncodeSpec,
    revision_floor: i64,
    aborted: &AtomicBool,
) -> Result<(TrailerOutcome, Result<SnapshotRevision, RevisionError>), EncodeFailure> {
    let fan = FanOut { slots, stored };
    let sealer = Sealer::new(spec.recipients.as_deref(), fan)?;
    let mut encoder = Encoder::new(spec, sealer)?;
    let mut trailer = TrailerCheck::new();
    let mut revision = RevisionScanner::new(revision_floor);
    while let Some(batch) = rx.blocking_recv() {
        let before = trailer.total();
        encoder.write_batch(&batch, |chunk| {
            trailer.update(chunk);
            revision.feed(chunk);
        })?;
        failpoint_mid_stream(before, trailer.total());
    }
    if aborted.load(Ordering::SeqCst) {
        return Err(EncodeFailure::Aborted);
    }
    let mut out = encoder.finish()?.finish()?;
    out.flush()?;
    Ok((trailer.finish(), revision.finish()))
}

/// The reliability suite's mid-stream point, once the stream passes [`failpoint::MID_STREAM_BYTES`].
#[cfg(feature = "failpoints")]
fn failpoint_mid_stream(before: u64, after: u64) {
    if before < failpoint::MID_STREAM_BYTES && after >= failpoint::MID_STREAM_BYTES {
        failpoint::reached_blocking(failpoint::MID_STREAM);
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
fn failpoint_mid_stream(_before: u64, _after: u64) {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SnapshotSink;
    use async_trait::async_trait;
    use etcdsnap_api::{MetadataDocument, StorageKind};
    use sha2::Digest;
    use std::sync::Mutex;

    struct VecSource(Vec<Bytes>, Option<EtcdError>);

    impl ChunkSource for VecSource {
        async fn next_chunk(&mut self) -> Result<Option<Bytes>, EtcdError> {
            if self.0.is_empty() {
                return match self.1.take() {
                    Some(e) => Err(e),
                    None => Ok(None),
                };
            }
            Ok(Some(self.0.remove(0)))
        }
    }

    #[derive(Clone, Default)]
    struct Shared {
        bytes: Arc<Mutex<Vec<u8>>>,
        aborted: Arc<AtomicBool>,
    }

    struct MemSink {
        shared: Shared,
        fail_after: Option<usize>,
    }

    #[async_trait]
    impl SnapshotSink for MemSink {
        fn write(&mut self, buf: &[u8]) -> Result<(), StoreError> {
            let mut b = self.shared.bytes.lock().unwrap_or_else(|e| e.into_inner());
            if self.fail_after.is_some_and(|n| b.len() + buf.len() > n) {
                return Err(StoreError::io("write", "mem://")(std::io::Error::other("disk full")));
            }
            b.extend_from_slice(buf);
            Ok(())
        }
        async fn commit(
            self: Box<Self>,
            _doc: &MetadataDocument,
            _companions: &crate::store::Companions,
        ) -> Result<(), StoreError> {
            Ok(())
        }
        async fn abort(self: Box<Self>) {
            self.shared.aborted.store(true, Ordering::SeqCst);
        }
        fn location(&self) -> String {
            "mem://".into()
        }
        fn storage(&self) -> StorageKind {
            StorageKind::Local
        }
    }

    fn spec(compression: Compression) -> EncodeSpec {
        EncodeSpec {
            compression,
            zstd_level: 3,
            zip_entry: "snap-n-1".into(),
            created_at: jiff::Timestamp::from_second(1_700_000_000).unwrap_or_default(),
            expected_size: 0,
            recipients: None,
        }
    }

    /// An etcd database of 80 pages holding revision [`REVISION`], with its trailer.
    fn snapshot_bytes() -> Vec<u8> {
        trailer::with_trailer(&revision::fixture::database(REVISION, 80))
    }

    const REVISION: i64 = 42;

    fn chunks(b: &[u8]) -> Vec<Bytes> {
        b.chunks(32 * 1024).map(Bytes::copy_from_slice).collect()
    }

    async fn run_into(
        compression: Compression,
        input: Vec<Bytes>,
        tail_error: Option<EtcdError>,
        sinks: Vec<(Shared, Option<usize>)>,
    ) -> Result<PipelineOutput, PipelineError> {
        let boxed: Vec<Box<dyn SnapshotSink>> = sinks
            .into_iter()
            .map(|(shared, fail_after)| Box::new(MemSink { shared, fail_after }) as Box<dyn SnapshotSink>)
            .collect();
        run(VecSource(input, tail_error), boxed, spec(compression), 0, None, CancellationToken::new()).await
    }

    #[tokio::test]
    async fn every_compression_round_trips_to_every_sink() {
        let snap = snapshot_bytes();
        for compression in [Compression::None, Compression::Zstd, Compression::Zip] {
            let (a, b) = (Shared::default(), Shared::default());
            let out = run_into(compression, chunks(&snap), None, vec![(a.clone(), None), (b.clone(), None)])
                .await
                .unwrap_or_else(|e| panic!("{compression}: {e}"));
            let stored = a.bytes.lock().map(|v| v.clone()).unwrap_or_default();
            assert_eq!(stored, b.bytes.lock().map(|v| v.clone()).unwrap_or_default());
            assert_eq!(out.stored_size, stored.len() as u64);
            assert_eq!(out.raw_size, snap.len() as u64);
            assert_eq!(out.revision.revision, REVISION, "{compression}");
            let check = verify::verify_reader(
                std::io::Cursor::new(&stored),
                compression,
                verify::Unseal::No,
                verify::ReadRevision::No,
            )
            .unwrap_or_else(|e| panic!("{compression}: {e}"));
            assert_eq!(check.stored_sha256, out.stored_sha256);
            assert!(check.trailer.is_valid());
            assert_eq!(check.raw_size, snap.len() as u64);
        }
    }

    #[tokio::test]
    async fn sealed_passes_store_what_age_opens_and_hash_what_is_stored() {
        let snap = snapshot_bytes();
        let (secret, public) = crate::seal::keys::tests::keypair();
        let recipients = Arc::new(crate::seal::Recipients::parse([public.as_str()]).unwrap());
        let identity = crate::seal::Identity::parse(&secret).unwrap();
        for compression in [Compression::None, Compression::Zstd, Compression::Zip] {
            let a = Shared::default();
            let boxed: Vec<Box<dyn SnapshotSink>> = vec![Box::new(MemSink { shared: a.clone(), fail_after: None })];
            let spec = EncodeSpec { recipients: Some(recipients.clone()), ..spec(compression) };
            let out = run(VecSource(chunks(&snap), None), boxed, spec, 0, None, CancellationToken::new())
                .await
                .unwrap_or_else(|e| panic!("{compression}: {e}"));
            let stored = a.bytes.lock().map(|v| v.clone()).unwrap_or_default();
            assert!(stored.starts_with(crate::seal::keys::AGE_MAGIC), "{compression}");
            assert!(
                !stored.windows(64).any(|w| snap.windows(64).next() == Some(w)),
                "{compression}: clear bytes stored"
            );
            assert_eq!(out.stored_sha256, hex::encode(sha2::Sha256::digest(&stored)), "{compression}");
            assert_eq!(out.revision.revision, REVISION);
            // Opened: the trailer is checked after decryption and decompression.
            let opened = verify::verify_reader(
                &stored[..],
                compression,
                verify::Unseal::With(&identity),
                verify::ReadRevision::No,
            )
            .unwrap_or_else(|e| panic!("{compression}: {e}"));
            assert!(opened.trailer_checked && opened.trailer.is_valid(), "{compression}");
            assert_eq!(
                (opened.stored_sha256.as_str(), opened.raw_size),
                (out.stored_sha256.as_str(), snap.len() as u64)
            );
            // Without the identity only the stored bytes are hashed: the same sha256.
            let hashed =
                verify::verify_reader(&stored[..], compression, verify::Unseal::HashOnly, verify::ReadRevision::No)
                    .unwrap();
            assert!(!hashed.trailer_checked);
            assert_eq!((hashed.stored_sha256, hashed.stored_size), (out.stored_sha256.clone(), stored.len() as u64));
            // A changed byte anywhere fails to open.
            let mut damaged = stored.clone();
            let last = damaged.len() - 5;
            damaged[last] ^= 1;
            assert!(
                verify::verify_reader(
                    &damaged[..],
                    compression,
                    verify::Unseal::With(&identity),
                    verify::ReadRevision::No
                )
                .is_err(),
                "{compression}"
            );
        }
    }

    #[tokio::test]
    async fn corrupt_streams_publish_nothing() {
        let mut snap = snapshot_bytes();
        snap[1000] ^= 1;
        let a = Shared::default();
        let err = run_into(Compression::None, chunks(&snap), None, vec![(a.clone(), None)]).await.err();
        assert!(matches!(err, Some(PipelineError::Integrity(_))), "{err:?}");
        assert!(a.aborted.load(Ordering::SeqCst));

        let snap = snapshot_bytes();
        let a = Shared::default();
        let truncated = chunks(&snap[..snap.len() - 100]);
        let err = run_into(Compression::Zstd, truncated, None, vec![(a.clone(), None)]).await.err();
        assert!(matches!(err, Some(PipelineError::Integrity(_))), "{err:?}");
        assert!(a.aborted.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_stream_whose_revision_cannot_be_read_publishes_nothing() {
        // Not a database, but with a valid trailer.
        let junk = trailer::with_trailer(&vec![7u8; 300_000]);
        let a = Shared::default();
        let err = run_into(Compression::Zstd, chunks(&junk), None, vec![(a.clone(), None)]).await.err();
        assert!(matches!(err, Some(PipelineError::Revision(_))), "{err:?}");
        assert!(a.aborted.load(Ordering::SeqCst));
        // A database whose pages hold less than the member had before the stream began.
        let snap = snapshot_bytes();
        let a = Shared::default();
        let boxed: Vec<Box<dyn SnapshotSink>> = vec![Box::new(MemSink { shared: a.clone(), fail_after: None })];
        let source = VecSource(chunks(&snap), None);
        let err = run(source, boxed, spec(Compression::None), REVISION + 1, None, CancellationToken::new()).await.err();
        assert!(matches!(err, Some(PipelineError::Revision(RevisionError::BeforeFloor { .. }))), "{err:?}");
        assert!(a.aborted.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_broken_stream_aborts_every_sink() {
        let snap = snapshot_bytes();
        let a = Shared::default();
        let broken = EtcdError::Stream { endpoint: "x".into(), message: "reset".into() };
        let err =
            run_into(Compression::None, chunks(&snap[..50_000]), Some(broken), vec![(a.clone(), None)]).await.err();
        assert!(matches!(err, Some(PipelineError::Etcd(_))), "{err:?}");
        assert!(a.aborted.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn one_failing_sink_does_not_stop_the_others() {
        let snap = snapshot_bytes();
        let (good, bad) = (Shared::default(), Shared::default());
        let out =
            run_into(Compression::None, chunks(&snap), None, vec![(good.clone(), None), (bad.clone(), Some(10_000))])
                .await
                .unwrap();
        assert_eq!(good.bytes.lock().map(|v| v.len()).unwrap_or_default(), snap.len());
        assert!(out.sinks[0].error.is_none());
        assert!(out.sinks[1].error.is_some());
    }

    #[tokio::test]
    async fn all_sinks_failing_is_an_error() {
        let snap = snapshot_bytes();
        let a = Shared::default();
        let err = run_into(Compression::None, chunks(&snap), None, vec![(a.clone(), Some(1000))]).await.err();
        assert!(matches!(err, Some(PipelineError::AllSinksFailed(_))), "{err:?}");
        assert!(a.aborted.load(Ordering::SeqCst));
    }
}
