//! Verify: re-reading stored bytes and checking them against their record (sha256, size) and
//! etcd's trailer after decompression. Drills start with the same checks ([`check_problems`]).

use etcdsnap_storage::pipeline::Progress;
use etcdsnap_storage::pipeline::verify::{ReadRevision, StoredCheck, verify_reader};
use etcdsnap_storage::record::{MetadataSource, SnapshotRecord};
use etcdsnap_storage::store::SnapshotStore;

/// The result of verifying one stored snapshot.
#[derive(Debug, Clone)]
pub struct VerifyResult {
    pub record: SnapshotRecord,
    pub check: Option<StoredCheck>,
    /// Empty when everything matched.
    pub problems: Vec<String>,
}

impl VerifyResult {
    /// Nothing found wrong.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// Whether the stored bytes were compared with a recorded sha256. Without one (a K3s
    /// snapshot, a record lost), only etcd's integrity trailer was checked.
    pub fn against_record(&self) -> bool {
        self.record.sha256.is_some() && self.check.is_some()
    }

    /// Checked against its record and nothing wrong: the only result worth an `OK`.
    pub fn verified(&self) -> bool {
        self.ok() && self.against_record()
    }
}

/// Re-reads stored bytes: sha256 against the record, etcd's trailer after decompression.
pub async fn verify_record(
    store: &dyn SnapshotStore,
    record: &SnapshotRecord,
    progress: Option<Progress>,
) -> VerifyResult {
    let mut result = VerifyResult { record: record.clone(), check: None, problems: Vec::new() };
    let reader = match store.open(&record.name).await {
        Ok(r) => r,
        Err(e) => {
            result.problems.push(e.to_string());
            return result;
        }
    };
    if let Some(p) = &progress {
        p.set_total(reader.size);
    }
    let compression = record.name.compression();
    let counted = CountingReader { inner: reader.reader, progress };
    let check = tokio::task::spawn_blocking(move || {
        let bridge = tokio_util::io::SyncIoBridge::new(counted);
        verify_reader(bridge, compression, ReadRevision::No)
    })
    .await;
    let check = match check {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            result.problems.push(e.to_string());
            return result;
        }
        Err(e) => {
            result.problems.push(format!("verification worker failed: {e}"));
            return result;
        }
    };
    result.problems.extend(check_problems(record, &check));
    result.check = Some(check);
    result
}

/// What a pass over stored bytes found wrong against their record: the sha256, the size (when
/// a metadata document recorded it), etcd's trailer.
pub fn check_problems(record: &SnapshotRecord, check: &StoredCheck) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(expected) = &record.sha256
        && expected != &check.stored_sha256
    {
        problems.push(format!("sha256 mismatch: recorded {expected}, stored bytes hash to {}", check.stored_sha256));
    }
    if record.metadata_source == MetadataSource::Document && record.size != check.stored_size {
        problems.push(format!("size mismatch: recorded {} bytes, read {}", record.size, check.stored_size));
    }
    problems.extend(check.trailer.problem());
    problems
}

/// Adds bytes read to a progress counter.
struct CountingReader {
    inner: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    progress: Option<Progress>,
}

impl tokio::io::AsyncRead for CountingReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Some(p) = &self.progress {
            p.advance((buf.filled().len() - before) as u64);
        }
        poll
    }
}
