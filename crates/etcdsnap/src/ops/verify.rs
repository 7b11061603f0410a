//! Verify: re-reading stored bytes and checking them against their record (sha256, size) and
//! etcd's trailer after decompression. Drills start with the same checks ([`check_problems`]).
//!
//! A sealed snapshot is checked against its record without a key (the sha256 covers the stored
//! bytes), and opened to check its trailer when an identity is given; with a verify key, its
//! record must carry a good signature, and its kit must match the digest the record gives.

use etcdsnap_storage::pipeline::Progress;
use etcdsnap_storage::pipeline::verify::{ReadRevision, StoredCheck, Unseal, verify_reader};
use etcdsnap_storage::record::{MetadataSource, SnapshotRecord};
use etcdsnap_storage::seal::OpenKeys;
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

/// Re-reads stored bytes: the record's signature (with a verify key), sha256 against the
/// record, etcd's trailer after decryption and decompression, the kit's digest.
pub async fn verify_record(
    store: &dyn SnapshotStore,
    record: &SnapshotRecord,
    keys: &OpenKeys,
    progress: Option<Progress>,
) -> VerifyResult {
    let mut result = VerifyResult { record: record.clone(), check: None, problems: Vec::new() };
    match crate::seal::check_signature(keys, store, &record.name).await {
        Ok(Some(signed)) => result.record.apply_document(signed),
        Ok(None) => {}
        Err(e) => result.problems.push(format!("signature: {e}")),
    }
    result.problems.extend(kit_problem(store, &result.record).await);
    let record = &result.record.clone();
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
    let (sealed, identity) = (record.name.is_sealed(), keys.identity.clone());
    let check = tokio::task::spawn_blocking(move || {
        let bridge = tokio_util::io::SyncIoBridge::new(counted);
        verify_reader(bridge, compression, Unseal::for_sealed(sealed, identity.as_deref()), ReadRevision::No)
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
    if check.trailer_checked {
        problems.extend(check.trailer.problem());
    }
    problems
}

/// Whether the kit the record references is there, with the digest the record gives.
async fn kit_problem(store: &dyn SnapshotStore, record: &SnapshotRecord) -> Option<String> {
    use sha2::Digest;
    let kit = record.sealed.as_ref()?.kit.as_ref()?;
    match store.kit(&record.name).await {
        Ok(Some(bytes)) => {
            let found = hex::encode(sha2::Sha256::digest(&bytes));
            (found != kit.sha256)
                .then(|| format!("restore kit: recorded sha256 {}, stored kit hashes to {found}", kit.sha256))
        }
        Ok(None) => Some("restore kit: the record references one, and none is stored beside it".into()),
        Err(e) => Some(format!("restore kit: {e}")),
    }
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
