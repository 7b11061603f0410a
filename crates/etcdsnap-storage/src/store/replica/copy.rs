//! One snapshot copied into a replica: its bytes streamed from the source store (read once,
//! hashed on the way), then read back from the replica and hashed again, then its signature and
//! kit, then its record last (as in every store: a snapshot with a record is complete).
//!
//! A snapshot smaller than one part is one PUT; a larger one a multipart upload. Memory: one
//! read buffer and at most [`PARTS_IN_FLIGHT`] parts of [`PART_SIZE`] in flight plus the one
//! being filled, about 3 × 8 MiB, whatever the snapshot's size.

use super::ReplicaStore;
use crate::record::SnapshotRecord;
use crate::store::{SnapshotStore, StoreError};
use futures::TryStreamExt;
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
        let name = &record.name;
        let key = self.key(name.as_str());
        let mut reader = source.open(name).await?;
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        let read_error = |e: std::io::Error| StoreError::Replica {
            op: "read",
            target: record.location.clone(),
            message: e.to_string(),
        };
        // The first part's worth decides: a snapshot that fits is one PUT, a larger one a
        // multipart upload fed as it is read.
        let mut head = Vec::with_capacity(PART_SIZE);
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
            check_hash(record, &sha256)?;
            self.store.put(&key, PutPayload::from(head)).await.map_err(|e| self.error("upload", &key, &e))?;
            return self.finish_copy(source, record, &key, bytes, sha256).await;
        }
        let upload = self.store.put_multipart(&key).await.map_err(|e| self.error("start upload", &key, &e))?;
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
                writer.wait_for_capacity(PARTS_IN_FLIGHT).await.map_err(|e| self.error("upload", &key, &e))?;
                writer.write(&buf[..n]);
            }
        }
        .await;
        let sha256 = hex::encode(hasher.finalize());
        if let Err(e) = streamed.and_then(|()| check_hash(record, &sha256)) {
            if let Err(abort) = writer.abort().await {
                tracing::warn!(replica = %self.url(), snapshot = %name, error = %abort, "cannot abort a failed copy");
            }
            return Err(e);
        }
        writer.finish().await.map_err(|e| self.error("finish upload", &key, &e))?;
        self.finish_copy(source, record, &key, bytes, sha256).await
    }

    /// Checks what arrived, then writes the signature, the kit and the record.
    async fn finish_copy(
        &self,
        source: &dyn SnapshotStore,
        record: &SnapshotRecord,
        key: &object_store::path::Path,
        bytes: u64,
        sha256: String,
    ) -> Result<Copied, StoreError> {
        let name = &record.name;
        let (arrived_bytes, arrived) = self.hash_object(key).await?;
        if (arrived_bytes, &arrived) != (bytes, &sha256) {
            self.delete_if_present(key).await?;
            return Err(StoreError::Replica {
                op: "verify",
                target: self.location(name),
                message: format!(
                    "arrived as {arrived_bytes} bytes with sha256 {arrived}, sent {bytes} bytes with sha256 {sha256}; the copy was deleted"
                ),
            });
        }
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
            document.sha256.clone_from(&sha256);
            document.to_json()
        });
        self.put_small(&self.record_key(name), record_bytes).await?;
        Ok(Copied { bytes, sha256 })
    }
}

/// The bytes read must be those the record describes.
fn check_hash(record: &SnapshotRecord, sha256: &str) -> Result<(), StoreError> {
    match &record.sha256 {
        Some(expected) if expected != sha256 => Err(StoreError::Changed(record.location.clone().into())),
        _ => Ok(()),
    }
}

impl ReplicaStore {
    /// Size and sha256 of an object as the replica serves it.
    async fn hash_object(&self, key: &object_store::path::Path) -> Result<(u64, String), StoreError> {
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
