//! Writing a snapshot to S3 while it streams: parts of a multipart upload are filled on the
//! pipeline's worker thread and uploaded a few at a time by a task on the runtime, so memory
//! is bounded by the part size times the parts in flight, whatever the snapshot size. Nothing
//! is visible in the bucket until the upload is completed, after its metadata document.

use super::S3Store;
use super::hints::{S3Problem, explain};
use crate::describe_error;
use crate::failpoint;
use crate::store::{Companions, SnapshotSink, StoreError};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use etcdsnap_api::consts::{S3_META_SHA256, S3_META_SIZE};
use etcdsnap_api::{MetadataDocument, S3Lock, SnapshotName, StorageKind};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use object_store::path::Path as ObjectPath;
use object_store::{Attribute, Attributes, MultipartUpload, ObjectStore, ObjectStoreExt, PutOptions, PutPayload};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// What an object put beside the snapshot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Document {
    /// etcdsnap's record.
    Record,
    /// K3s's extra metadata.
    K3s,
    /// The record's signature or the restore kit, with its content type.
    Companion(&'static str),
}

type Uploader = JoinHandle<Result<Box<dyn MultipartUpload>, String>>;

pub struct S3Sink {
    store: Arc<S3Store>,
    name: SnapshotName,
    attributes: Attributes,
    buffer: BytesMut,
    part_size: usize,
    parts: Option<mpsc::Sender<Bytes>>,
    uploader: Option<Uploader>,
    failure: Arc<Mutex<Option<String>>>,
    /// The lock the commit puts on every object it wrote, fixed when first asked.
    lock: OnceLock<Option<S3Lock>>,
}

impl S3Sink {
    pub(super) fn start(
        store: Arc<S3Store>,
        name: SnapshotName,
        attributes: Attributes,
        upload: Box<dyn MultipartUpload>,
    ) -> S3Sink {
        let config = store.config();
        let (part_size, concurrency) = (config.part_size, config.concurrency);
        // One part waiting in the channel, `concurrency` in flight, one being filled.
        let (tx, rx) = mpsc::channel::<Bytes>(1);
        let failure = Arc::new(Mutex::new(None));
        let uploader = tokio::spawn(upload_parts(upload, rx, concurrency, failure.clone()));
        S3Sink {
            store,
            name,
            attributes,
            buffer: BytesMut::with_capacity(part_size),
            part_size,
            parts: Some(tx),
            uploader: Some(uploader),
            failure,
            lock: OnceLock::new(),
        }
    }

    fn failure_message(&self) -> String {
        self.failure.lock().ok().and_then(|f| f.clone()).unwrap_or_else(|| "the upload stopped".to_string())
    }

    fn error(&self, message: String) -> StoreError {
        StoreError::S3 {
            op: "upload",
            target: self.store.config().location(self.name.as_str()),
            problem: None,
            message,
        }
    }

    /// Sends whatever is buffered as the last part and waits for every part to be uploaded.
    async fn finish_parts(&mut self) -> Result<Box<dyn MultipartUpload>, StoreError> {
        let tx = self.parts.take().ok_or_else(|| self.error("upload already finished".into()))?;
        if !self.buffer.is_empty() {
            let last = self.buffer.split().freeze();
            if tx.send(last).await.is_err() {
                drop(tx);
                return Err(self.error(self.failure_message()));
            }
        }
        drop(tx);
        let uploader = self.uploader.take().ok_or_else(|| self.error("upload already finished".into()))?;
        match uploader.await {
            Ok(Ok(upload)) => Ok(upload),
            Ok(Err(message)) => Err(self.error(message)),
            Err(e) => Err(self.error(format!("upload task failed: {e}"))),
        }
    }
}

/// Uploads parts as they arrive, at most `concurrency` at a time. Parts in flight keep going
/// while the next one is being filled (a slow etcd, a pause in the stream): they are polled
/// whichever of the two is ready first, never only when the next part arrives. On a failure the
/// multipart upload is aborted (so no parts are left billed and invisible) and the error kept
/// for the writer.
pub(crate) async fn upload_parts(
    mut upload: Box<dyn MultipartUpload>,
    mut parts: mpsc::Receiver<Bytes>,
    concurrency: usize,
    failure: Arc<Mutex<Option<String>>>,
) -> Result<Box<dyn MultipartUpload>, String> {
    let mut inflight = FuturesUnordered::new();
    let mut result = Ok(());
    let mut more = true;
    while result.is_ok() && (more || !inflight.is_empty()) {
        tokio::select! {
            part = parts.recv(), if more && inflight.len() < concurrency => match part {
                Some(part) => inflight.push(upload.put_part(PutPayload::from_bytes(part))),
                None => more = false,
            },
            Some(done) = inflight.next(), if !inflight.is_empty() => {
                if let Err(e) = done {
                    result = Err(e);
                }
            }
        }
    }
    drop(inflight);
    match result {
        Ok(()) => Ok(upload),
        Err(e) => {
            let message = describe_error(&e);
            if let Ok(mut f) = failure.lock() {
                *f = Some(message.clone());
            }
            drop(parts);
            if let Err(abort) = upload.abort().await {
                tracing::warn!(error = %describe_error(&abort), "aborting the failed multipart upload failed");
            }
            Err(message)
        }
    }
}

impl S3Sink {
    /// Puts the record's companions (kit, signature), etcdsnap's record and, when there is extra
    /// metadata, K3s's metadata object (the compact string map K3s writes, with the same user
    /// metadata as the snapshot, as K3s does). Returns what was written, also when a later put
    /// failed.
    async fn put_documents(
        &self,
        doc: &MetadataDocument,
        companions: &Companions,
    ) -> Result<Vec<ObjectPath>, (Vec<ObjectPath>, StoreError)> {
        let config = self.store.config();
        let name = self.name.as_str();
        // The record says whose names the object's user metadata carries and the lock about to
        // be put (the signer signed it so: see `SnapshotSink::program` and `SnapshotSink::lock`).
        let doc = &MetadataDocument { program: Some(config.program), s3_lock: self.lock(), ..doc.clone() };
        let mut documents = Vec::new();
        if let Some(kit) = &companions.kit {
            let key = config.metadata_key(&etcdsnap_api::seal::kit_file_name(name));
            documents.push((key, kit.as_ref().clone(), Document::Companion("application/octet-stream")));
        }
        if let Some(signature) = &companions.signature {
            let key = config.metadata_key(&etcdsnap_api::seal::signature_file_name(name));
            documents.push((key, signature.clone().into_bytes(), Document::Companion("text/plain")));
        }
        documents.push((config.record_key(name), doc.to_json(), Document::Record));
        if let Some(extra) = doc.extra_metadata.as_ref().filter(|m| !m.is_empty()) {
            let k3s = etcdsnap_api::go::marshal_string_map(extra);
            documents.push((config.metadata_key(name), k3s, Document::K3s));
        }
        let mut written = Vec::new();
        for (key, body, kind) in documents {
            let mut attributes = Attributes::new();
            for (name, value) in self.attributes.iter() {
                // K3s's object carries K3s's user metadata only; etcdsnap's goes on its record.
                let k3s = matches!(name, Attribute::Metadata(m) if m.starts_with(config.program.s3_meta_prefix()));
                if kind == Document::Record || (kind == Document::K3s && k3s) {
                    attributes.insert(name.clone(), value.clone());
                }
            }
            let content_type = match kind {
                Document::Companion(t) => t,
                Document::Record | Document::K3s => "application/json",
            };
            attributes.insert(Attribute::ContentType, content_type.into());
            if kind == Document::Record {
                attributes.insert(Attribute::Metadata(S3_META_SHA256.into()), doc.sha256.clone().into());
                attributes.insert(Attribute::Metadata(S3_META_SIZE.into()), doc.size.to_string().into());
            }
            let path = self.store.path(&key);
            let options = PutOptions { attributes, ..Default::default() };
            match self.store.object_store().put_opts(&path, PutPayload::from(body), options).await {
                Ok(_) => written.push(path),
                Err(e) => {
                    let error = StoreError::S3 {
                        op: "put metadata",
                        target: path.to_string(),
                        problem: S3Problem::of_object_store(&e),
                        message: explain(&e, &config.bucket),
                    };
                    return Err((written, error));
                }
            }
        }
        Ok(written)
    }

    async fn delete_all(&self, paths: &[ObjectPath]) {
        for path in paths {
            let _ = self.store.object_store().delete(path).await;
        }
    }
}

#[async_trait]
impl SnapshotSink for S3Sink {
    fn write(&mut self, mut buf: &[u8]) -> Result<(), StoreError> {
        while !buf.is_empty() {
            let room = self.part_size - self.buffer.len();
            let take = room.min(buf.len());
            self.buffer.extend_from_slice(&buf[..take]);
            buf = &buf[take..];
            if self.buffer.len() == self.part_size {
                let part = self.buffer.split().freeze();
                self.buffer.reserve(self.part_size);
                let tx = self.parts.as_ref().ok_or_else(|| self.error("upload already finished".into()))?;
                if tx.blocking_send(part).is_err() {
                    return Err(self.error(self.failure_message()));
                }
            }
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>, doc: &MetadataDocument, companions: &Companions) -> Result<(), StoreError> {
        let mut upload = self.finish_parts().await?;
        // The record (and its companions, and K3s's metadata) first: a completed object always
        // has its record.
        let written = self.put_documents(doc, companions).await;
        let written = match written {
            Ok(written) => written,
            Err((written, e)) => {
                let _ = upload.abort().await;
                self.delete_all(&written).await;
                return Err(e);
            }
        };
        failpoint::reached(failpoint::S3_AFTER_METADATA).await;
        if let Err(e) = upload.complete().await {
            let _ = upload.abort().await;
            self.delete_all(&written).await;
            return Err(self.error(format!("completing the upload: {}", describe_error(&e))));
        }
        failpoint::reached(failpoint::S3_AFTER_COMPLETE).await;
        if let Some(lock) = self.lock() {
            // The snapshot is complete and stays whatever happens here: a lock that cannot be
            // put is said loudly, and the save stands (its record still names the lock asked
            // for; prune reads the object's own retention, never the record's).
            let mut keys: Vec<String> = written.iter().map(ToString::to_string).collect();
            keys.push(self.store.config().key(self.name.as_str()));
            if let Err(e) = self.store.lock_objects(&keys, &lock).await {
                tracing::error!(snapshot = %self.name, error = %e, "the snapshot was saved but is not locked");
            }
        }
        Ok(())
    }

    async fn abort(mut self: Box<Self>) {
        self.parts.take();
        if let Some(uploader) = self.uploader.take()
            && let Ok(Ok(mut upload)) = uploader.await
            && let Err(e) = upload.abort().await
        {
            tracing::warn!(snapshot = %self.name, error = %describe_error(&e), "aborting the multipart upload failed");
        }
    }

    fn location(&self) -> String {
        self.store.config().location(self.name.as_str())
    }

    fn storage(&self) -> StorageKind {
        StorageKind::S3
    }

    fn program(&self) -> Option<etcdsnap_api::Program> {
        Some(self.store.config().program)
    }

    /// Until the end of the upload plus `--s3-lock-retention` (or the bucket's default
    /// retention), counted when first asked (once the stream has ended, before the record is
    /// made).
    fn lock(&self) -> Option<S3Lock> {
        *self.lock.get_or_init(|| match self.store.lock_from_now() {
            Ok(lock) => lock,
            Err(e) => {
                tracing::error!(snapshot = %self.name, error = %e, "the snapshot will not be locked");
                None
            }
        })
    }
}

impl Drop for S3Sink {
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
