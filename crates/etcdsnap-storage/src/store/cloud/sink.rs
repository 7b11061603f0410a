//! Writing a snapshot to a GCS or Azure primary store while it streams, as S3's sink does:
//! parts are filled on the pipeline's worker thread and uploaded a few at a time by a task on
//! the runtime (S3's [`upload_parts`]), so memory is bounded by the part size times the parts
//! in flight, whatever the snapshot size. The upload is a GCS resumable upload or an Azure
//! block list: nothing is visible until it is completed, after the record and its companions.

use crate::describe_error;
use crate::store::replica::ReplicaStore;
use crate::store::s3::upload_parts;
use crate::store::{Companions, SnapshotSink, StoreError};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use etcdsnap_api::{MetadataDocument, SnapshotName, StorageKind};
use object_store::MultipartUpload;
use object_store::path::Path as ObjectPath;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Size of each uploaded part: a whole number of GCS's 256 KiB resumable chunks, well under
/// Azure's block limit.
pub(super) const PART_SIZE: usize = 8 << 20;
/// Parts uploading at once while the next one fills.
const PARTS_IN_FLIGHT: usize = 2;

type Uploader = JoinHandle<Result<Box<dyn MultipartUpload>, String>>;

pub struct CloudSink {
    store: Arc<ReplicaStore>,
    name: SnapshotName,
    buffer: BytesMut,
    parts: Option<mpsc::Sender<Bytes>>,
    uploader: Option<Uploader>,
    failure: Arc<Mutex<Option<String>>>,
}

impl CloudSink {
    pub(super) fn start(store: Arc<ReplicaStore>, name: SnapshotName, upload: Box<dyn MultipartUpload>) -> CloudSink {
        // One part waiting in the channel, PARTS_IN_FLIGHT uploading, one being filled.
        let (tx, rx) = mpsc::channel::<Bytes>(1);
        let failure = Arc::new(Mutex::new(None));
        let uploader = tokio::spawn(upload_parts(upload, rx, PARTS_IN_FLIGHT, failure.clone()));
        CloudSink {
            store,
            name,
            buffer: BytesMut::with_capacity(PART_SIZE),
            parts: Some(tx),
            uploader: Some(uploader),
            failure,
        }
    }

    fn failure_message(&self) -> String {
        self.failure.lock().ok().and_then(|f| f.clone()).unwrap_or_else(|| "the upload stopped".to_string())
    }

    fn error(&self, message: String) -> StoreError {
        StoreError::Cloud { op: "upload", target: self.location(), message }
    }

    /// Sends whatever is buffered as the last part and waits for every part to be uploaded.
    async fn finish_parts(&mut self) -> Result<Box<dyn MultipartUpload>, StoreError> {
        let tx = self.parts.take().ok_or_else(|| StoreError::Finished(self.location()))?;
        if !self.buffer.is_empty() {
            let last = self.buffer.split().freeze();
            if tx.send(last).await.is_err() {
                drop(tx);
                return Err(self.error(self.failure_message()));
            }
        }
        drop(tx);
        let uploader = self.uploader.take().ok_or_else(|| StoreError::Finished(self.location()))?;
        match uploader.await {
            Ok(Ok(upload)) => Ok(upload),
            Ok(Err(message)) => Err(self.error(message)),
            Err(e) => Err(self.error(format!("upload task failed: {e}"))),
        }
    }

    /// Puts the kit, the signature and the record, in that order. Returns what was written,
    /// also when a later put failed.
    async fn put_documents(
        &self,
        doc: &MetadataDocument,
        companions: &Companions,
    ) -> Result<Vec<ObjectPath>, (Vec<ObjectPath>, StoreError)> {
        let name = self.name.as_str();
        let mut documents = Vec::new();
        if let Some(kit) = &companions.kit {
            documents.push((etcdsnap_api::seal::kit_file_name(name), kit.as_ref().clone()));
        }
        if let Some(signature) = &companions.signature {
            documents.push((etcdsnap_api::seal::signature_file_name(name), signature.clone().into_bytes()));
        }
        documents.push((self.name.record_file_name(), doc.to_json()));
        let mut written = Vec::new();
        for (file, body) in documents {
            let key = self.store.metadata_key(&file);
            match self.store.put_small(&key, body).await {
                Ok(()) => written.push(key),
                Err(e) => return Err((written, super::primary(e))),
            }
        }
        Ok(written)
    }

    async fn delete_all(&self, keys: &[ObjectPath]) {
        for key in keys {
            if let Err(e) = self.store.delete_if_present(key).await {
                tracing::warn!(snapshot = %self.name, error = %e, "cannot remove what a failed save wrote");
            }
        }
    }
}

#[async_trait]
impl SnapshotSink for CloudSink {
    fn write(&mut self, mut buf: &[u8]) -> Result<(), StoreError> {
        while !buf.is_empty() {
            let take = (PART_SIZE - self.buffer.len()).min(buf.len());
            self.buffer.extend_from_slice(&buf[..take]);
            buf = &buf[take..];
            if self.buffer.len() == PART_SIZE {
                let part = self.buffer.split().freeze();
                self.buffer.reserve(PART_SIZE);
                let tx = self.parts.as_ref().ok_or_else(|| StoreError::Finished(self.location()))?;
                if tx.blocking_send(part).is_err() {
                    return Err(self.error(self.failure_message()));
                }
            }
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>, doc: &MetadataDocument, companions: &Companions) -> Result<(), StoreError> {
        let mut upload = self.finish_parts().await?;
        // The record and its companions first: a completed object always has its record.
        let written = match self.put_documents(doc, companions).await {
            Ok(written) => written,
            Err((written, e)) => {
                let _ = upload.abort().await;
                self.delete_all(&written).await;
                return Err(e);
            }
        };
        if let Err(e) = upload.complete().await {
            let _ = upload.abort().await;
            self.delete_all(&written).await;
            return Err(self.error(format!("completing the upload: {}", describe_error(&e))));
        }
        Ok(())
    }

    async fn abort(mut self: Box<Self>) {
        self.parts.take();
        if let Some(uploader) = self.uploader.take()
            && let Ok(Ok(mut upload)) = uploader.await
            && let Err(e) = upload.abort().await
        {
            tracing::warn!(snapshot = %self.name, error = %describe_error(&e), "aborting the upload failed");
        }
    }

    fn location(&self) -> String {
        self.store.location(&self.name)
    }

    fn storage(&self) -> StorageKind {
        StorageKind::S3
    }
}

impl Drop for CloudSink {
    /// Neither committed nor aborted (a cancelled save): abort in the background.
    fn drop(&mut self) {
        self.parts.take();
        if let Some(uploader) = self.uploader.take()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(async move {
                if let Ok(Ok(mut upload)) = uploader.await {
                    let _ = upload.abort().await;
                }
            });
        }
    }
}
