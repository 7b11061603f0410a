//! One snapshot copied into a replica: its bytes streamed from the source store (read once,
//! hashed on the way), then read back from the replica and hashed again, then its signature and
//! kit, then its record last (as in every store: a snapshot with a record is complete). Delta
//! segments go through the same checked upload ([`ReplicaStore::upload_checked`], see `deltas`).
//!
//! An object smaller than one part is one PUT; a larger one a multipart upload. Memory: one
//! read buffer and at most [`PARTS_IN_FLIGHT`] parts of [`PART_SIZE`] in flight plus the one
//! being filled, about 3 × 8 MiB, whatever the object's size.

use super::ReplicaStore;
use crate::record::SnapshotRecord;
use crate::store::{SnapshotReader, SnapshotStore, StoreError};
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

/// Size of each uploaded part (S3's minimum is 5 MiB).
const PART_SIZE: usize = 8 << 20;
/// Parts uploading at once while the next one fills.
const PARTS_IN_FLIGHT: usize = 2;
const READ_BUFFER: usize = 256 << 10;

/// What a copy wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    pub bytes: u64,
    /// sha256 of the bytes, as read from the source and again from the replica.
    pub sha256: String,
}

impl ReplicaStore {
    /// Copies the snapshot of `record` from `source`, checking what arrived. A copy that fails
    /// leaves no snapshot object behind (the upload is aborted, or the object deleted).
    pub async fn copy_from(&self, source: &dyn SnapshotStore, record: &SnapshotRecord) -> Result<Copied, StoreError> {
        let key = self.key(record.name.as_str());
        let reader = source.open(&record.name).await?;
        let copied = self.upload_checked(&key, reader, &record.location, |sha256| check_hash(record, sha256)).await?;
        self.finish_copy(source, record, copied).await
    }

    /// Streams `reader` (read from `from`) into `key`, hashing on the way. `check` judges the
    /// sha256 of what was read before the upload completes (an Err aborts it); what arrived is
    /// then read back and must hash the same, else it is deleted. On any error no object is
    /// left at `key` by this upload.
    pub(super) async fn upload_checked(
        &self,
        key: &ObjectPath,
        mut reader: SnapshotReader,
        from: &str,
        check: impl Fn(&str) -> Result<(), StoreError>,
    ) -> Result<Copied, StoreError> {
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        let read_error =
            |e: std::io::Error| StoreError::Replica { op: "read", target: from.to_string(), message: e.to_string() };
        // The first part's worth decides: an object that fits is one PUT, a larger one a
        // multipart upload fed as it is read.
        let mut head = Vec::with_capacity(PART_SIZE.min(usize::try_from(reader.size).unwrap_or(PART_SIZE) + 1));
        let mut buf = vec![0u8; READ_BUFFER];
        let mut eof = false;
        while head.len() < PART_SIZE {
            let n = reader.reader.read(&mut buf).await.map_err(read_error)?;
            if n == 0 {
                eof = true;
                break;
            }
            hasher.update(&buf[..n]);
            bytes += n as u64;
            head.extend_from_slice(&buf[..n]);
        }
        if eof {
            let sha256 = hex::encode(hasher.finalize());
            check(&sha256)?;
            self.store.put(key, PutPayload::from(head)).await.map_err(|e| self.error("upload", key, &e))?;
            return self.check_arrived(key, Copied { bytes, sha256 }).await;
        }
        let upload = self.store.put_multipart(key).await.map_err(|e| self.error("start upload", key, &e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        writer.put(head.into());
        let streamed: Result<(), StoreError> = async {
            loop {
                let n = reader.reader.read(&mut buf).await.map_err(read_error)?;
                if n == 0 {
                    return Ok(());
                }
                hasher.update(&buf[..n]);
                bytes += n as u64;
                writer.wait_for_capacity(PARTS_IN_FLIGHT).await.map_err(|e| self.error("upload", key, &e))?;
                writer.write(&buf[..n]);
            }
        }
        .await;
        let sha256 = hex::encode(hasher.finalize());
        if let Err(e) = streamed.and_then(|()| check(&sha256)) {
            if let Err(abort) = writer.abort().await {
                tracing::warn!(replica = %self.url(), object = %key, error = %abort, "cannot abort a failed copy");
            }
            return Err(e);
        }
        writer.finish().await.map_err(|e| self.error("finish upload", key, &e))?;
        self.check_arrived(key, Copied { bytes, sha256 }).await
    }

    /// Reads `key` back: it must be what was sent, else it is deleted.
    async fn check_arrived(&self, key: &ObjectPath, sent: Copied) -> Result<Copied, StoreError> {
        let (arrived_bytes, arrived) = self.hash_object(key).await?;
        if (arrived_bytes, &arrived) != (sent.bytes, &sent.sha256) {
            self.delete_if_present(key).await?;
            return Err(StoreError::Replica {
                op: "verify",
                target: format!("{}: {key}", self.url()),
                message: format!(
                    "arrived as {arrived_bytes} bytes with sha256 {arrived}, sent {} bytes with sha256 {}; the copy was deleted",
                    sent.bytes, sent.sha256
                ),
            });
        }
        Ok(sent)
    }

    /// Writes the signature, the kit and the record of a snapshot whose bytes arrived.
    async fn finish_copy(
        &self,
        source: &dyn SnapshotStore,
        record: &SnapshotRecord,
        copied: Copied,
    ) -> Result<Copied, StoreError> {
        let name = &record.name;
        let signed = source.signed_record(name).await?;
        let kit = source.kit(name).await?;
        let n = name.as_str();
        if let Some(signature) = signed.signature {
            self.put_small(&self.metadata_key(&etcdsnap_api::seal::signature_file_name(n)), signature).await?;
        }
        if let Some(kit) = kit {
            self.put_small(&self.metadata_key(&etcdsnap_api::seal::kit_file_name(n)), kit).await?;
        }
        // The record byte for byte (its signature covers those bytes); one of a snapshot that
        // had none is made from what the source listed, with the hash just checked.
        let record_bytes = signed.record.unwrap_or_else(|| {
            let mut document = record.to_document();
            document.sha256.clone_from(&copied.sha256);
            document.to_json()
        });
        self.put_small(&self.record_key(name), record_bytes).await?;
        Ok(copied)
    }

    /// Size and sha256 of an object as the replica serves it.
    async fn hash_object(&self, key: &ObjectPath) -> Result<(u64, String), StoreError> {
        let result = self.store.get(key).await.map_err(|e| self.error("read back", key, &e))?;
        let mut stream = result.into_stream();
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        while let Some(chunk) = stream.try_next().await.map_err(|e| self.error("read back", key, &e))? {
            hasher.update(&chunk);
            bytes += chunk.len() as u64;
        }
        Ok((bytes, hex::encode(hasher.finalize())))
    }
}

/// The bytes read must be those the record describes.
fn check_hash(record: &SnapshotRecord, sha256: &str) -> Result<(), StoreError> {
    match &record.sha256 {
        Some(expected) if expected != sha256 => Err(StoreError::Changed(record.location.clone().into())),
        _ => Ok(()),
    }
}
