//! The records a listing found, read: each `.etcdsnap.json` object is fetched (a few at a
//! time) and parsed. A primary store on GCS or Azure keeps what it read in the S3 store's
//! listing cache ([`DetailsCache`]), keyed by the object's ETag, so that a listing of unchanged
//! snapshots costs only its LIST requests; replicas have no cache and read every record.

use super::ReplicaStore;
use crate::describe_error;
use crate::record::SnapshotRecord;
use crate::store::StoreError;
use crate::store::s3::cache::Learned;
use etcdsnap_api::metadata::MAX_METADATA_BYTES;
use etcdsnap_api::{StoredMetadata, parse_stored_metadata};
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use std::collections::HashSet;

/// Concurrent GETs of records while a listing reads them.
const RECORD_FETCHES: usize = 8;

/// One record fetched: its index in the listing, key, ETag and bytes (None: gone since).
type Fetched = (usize, ObjectPath, String, Result<Option<Vec<u8>>, StoreError>);

impl ReplicaStore {
    /// What the records of `wanted` (index in `found`, record key, the key's ETag, empty when the
    /// listing gave none) say, by index. A record gone since the listing is left out; a failed
    /// GET fails the listing (a retention must not count on a snapshot it could not read).
    pub(super) async fn read_records(
        &self,
        found: &[SnapshotRecord],
        wanted: Vec<(usize, ObjectPath, String)>,
    ) -> Result<Vec<(usize, Learned)>, StoreError> {
        let mut known = Vec::new();
        let mut fetch = Vec::new();
        {
            let cache = self.cache.as_ref().and_then(|c| c.lock().ok());
            for (i, key, etag) in wanted {
                match cache.as_ref().and_then(|c| c.get(key.as_ref(), &etag)) {
                    Some(learned) => known.push((i, learned.clone())),
                    None => fetch.push((i, key, etag)),
                }
            }
        }
        let fetched: Vec<Fetched> = futures::stream::iter(fetch)
            .map(|(i, key, etag)| async move {
                let bytes = self.get_small(&key, MAX_METADATA_BYTES as u64).await;
                (i, key, etag, bytes)
            })
            .buffer_unordered(RECORD_FETCHES)
            .collect()
            .await;
        let mut learned_now = Vec::new();
        for (i, key, etag, bytes) in fetched {
            let Some(bytes) = bytes? else { continue };
            let learned = match parse_stored_metadata(&bytes, found[i].name.as_str()) {
                Ok(StoredMetadata::Document(document)) => Learned::Document { document },
                Ok(StoredMetadata::ExtraMetadata(metadata)) => Learned::ExtraMetadata { metadata },
                Err(e) => Learned::Rejected { reason: describe_error(&e) },
            };
            learned_now.push((key, etag, learned.clone()));
            known.push((i, learned));
        }
        if let Some(mut cache) = self.cache.as_ref().and_then(|c| c.lock().ok()) {
            let live: HashSet<String> = found.iter().map(|r| self.record_key(&r.name).to_string()).collect();
            cache.retain(&live);
            for (key, etag, learned) in learned_now {
                cache.put(key.as_ref(), &etag, learned);
            }
            cache.save();
        }
        Ok(known)
    }
}
