//! One listing of the folder, from listed objects to records: what each snapshot's metadata
//! document says (etcdsnap's record or K3s's extra metadata), else what its object's user
//! metadata says, each fetched once per ETag thanks to [`DetailsCache`].

use super::S3Store;
use super::cache::{DetailsCache, Learned};
use super::list::{ListedObject, list_prefix};
use crate::describe_error;
use crate::record::{MetadataSource, SnapshotRecord};
use crate::store::{Listing, StoreError};
use etcdsnap_api::metadata::MAX_METADATA_BYTES;
use etcdsnap_api::{Program, SnapshotName, StorageKind, StoredMetadata, TokenHash, parse_stored_metadata};
use futures::StreamExt;
use object_store::{Attribute, Attributes, GetOptions, ObjectStore, ObjectStoreExt};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Concurrent GET/HEAD requests while a listing fills its cache.
const DETAIL_FETCHES: usize = 8;

impl S3Store {
    /// HEAD: the object's `x-amz-meta-*`.
    async fn head_metadata(&self, key: &str) -> Result<BTreeMap<String, String>, String> {
        self.count(1);
        let options = GetOptions { head: true, ..Default::default() };
        let result = self.store.get_opts(&self.path(key), options).await.map_err(|e| describe_error(&e))?;
        Ok(user_metadata(&result.attributes))
    }

    /// GET of a metadata document (already known to be small enough), parsed.
    async fn fetch_document(&self, key: &str, name: &SnapshotName) -> Learned {
        self.count(1);
        let bytes = match self.store.get(&self.path(key)).await {
            Ok(r) => r.bytes().await,
            Err(e) => Err(e),
        };
        match bytes {
            Err(e) => Learned::Rejected { reason: describe_error(&e) },
            Ok(bytes) => match parse_stored_metadata(&bytes, name.as_str()) {
                Ok(StoredMetadata::Document(document)) => Learned::Document { document },
                Ok(StoredMetadata::ExtraMetadata(metadata)) => Learned::ExtraMetadata { metadata },
                Err(e) => Learned::Rejected { reason: e.to_string() },
            },
        }
    }

    fn record_of(&self, object: &ListedObject, name: SnapshotName) -> SnapshotRecord {
        let created_at = SnapshotRecord::creation_time(&name, object.last_modified);
        let location = self.config.location(name.as_str());
        SnapshotRecord {
            s3: Some(self.spec()),
            ..SnapshotRecord::stored(name, StorageKind::S3, String::new(), location, created_at, object.size)
        }
    }

    /// One listing: two paginated LISTs (the folder and its `.metadata/`), then GETs of
    /// documents and HEADs of document-less objects that the cache does not know at their ETag.
    pub(super) async fn list_inner(&self) -> Result<Listing, StoreError> {
        let credential = self.credential().await?;
        let folder = self.folder_prefix();
        let meta_prefix = format!("{folder}{}/", etcdsnap_api::consts::METADATA_DIR);
        let (objects, n1) = list_prefix(&self.http, &self.config, &credential, &folder).await?;
        let (documents, n2) = list_prefix(&self.http, &self.config, &credential, &meta_prefix).await?;
        self.count((n1 + n2) as u64);
        let documents: HashMap<String, ListedObject> = documents
            .into_iter()
            .filter_map(|o| o.key.strip_prefix(&meta_prefix).map(str::to_string).map(|n| (n, o)))
            .collect();

        let mut listing = Listing::default();
        let candidates = self.snapshot_objects(&objects, &mut listing.warnings);
        self.learn_documents(&candidates, &documents).await?;
        let (mut records, missing) = self.assemble(&candidates, &documents, &mut listing.warnings)?;
        self.learn_user_metadata(&mut records, missing, &mut listing.warnings).await?;

        let mut live: HashSet<String> = candidates.iter().map(|(o, _)| o.key.clone()).collect();
        live.extend(documents.values().map(|d| d.key.clone()));
        let mut cache = self.cache()?;
        cache.retain(&live);
        cache.save();
        drop(cache);
        records.sort_by(|a, b| (a.created_at, &a.name).cmp(&(b.created_at, &b.name)));
        listing.records = records;
        Ok(listing)
    }

    /// Objects that are snapshots; every other key costs a warning naming it.
    fn snapshot_objects<'a>(
        &self,
        objects: &'a [ListedObject],
        warnings: &mut Vec<String>,
    ) -> Vec<(&'a ListedObject, SnapshotName)> {
        let mut out = Vec::new();
        for object in objects {
            if object.size == 0 {
                continue; // K3s skips empty objects too (folder markers)
            }
            match self.name_of(&object.key) {
                Ok(name) => out.push((object, name)),
                Err(reason) => warnings.push(format!("skipping s3://{}/{}: {reason}", self.config.bucket, object.key)),
            }
        }
        out
    }

    /// Fetches (in parallel) the metadata documents the cache does not know at their ETag.
    /// Documents larger than the limit are never fetched.
    async fn learn_documents(
        &self,
        candidates: &[(&ListedObject, SnapshotName)],
        documents: &HashMap<String, ListedObject>,
    ) -> Result<(), StoreError> {
        let fetches: Vec<(String, String, SnapshotName)> = {
            let cache = self.cache()?;
            candidates
                .iter()
                .filter_map(|(_, name)| {
                    let doc = document_of(documents, name)?;
                    let small = doc.size as usize <= MAX_METADATA_BYTES;
                    (small && cache.get(&doc.key, &doc.etag).is_none())
                        .then(|| (doc.key.clone(), doc.etag.clone(), name.clone()))
                })
                .collect()
        };
        let fetched: Vec<(String, String, Learned)> = futures::stream::iter(fetches)
            .map(|(key, etag, name)| async move {
                let learned = self.fetch_document(&key, &name).await;
                (key, etag, learned)
            })
            .buffer_unordered(DETAIL_FETCHES)
            .collect()
            .await;
        let mut cache = self.cache()?;
        for (key, etag, learned) in fetched {
            cache.put(&key, &etag, learned);
        }
        Ok(())
    }

    /// Records from objects and what the cache knows; also returns which records still need
    /// their object's user metadata (no usable document, not cached).
    fn assemble(
        &self,
        candidates: &[(&ListedObject, SnapshotName)],
        documents: &HashMap<String, ListedObject>,
        warnings: &mut Vec<String>,
    ) -> Result<(Vec<SnapshotRecord>, Vec<MissingHead>), StoreError> {
        let cache = self.cache()?;
        let mut records = Vec::with_capacity(candidates.len());
        let mut missing = Vec::new();
        for (object, name) in candidates {
            let mut record = self.record_of(object, name.clone());
            let has_document = match document_of(documents, name) {
                Some(doc) => self.apply_cached_document(&mut record, doc, &cache, warnings),
                None => false,
            };
            if has_document {
                // The object's own location and size are authoritative, not the document's.
                record.location = self.config.location(record.name.as_str());
                record.size = object.size;
                record.s3 = Some(self.spec());
            } else {
                match cache.get(&object.key, &object.etag) {
                    Some(Learned::UserMetadata { metadata }) => {
                        apply_user_metadata(&mut record, metadata, self.config.program)
                    }
                    _ => missing.push(MissingHead {
                        index: records.len(),
                        key: object.key.clone(),
                        etag: object.etag.clone(),
                    }),
                }
            }
            records.push(record);
        }
        Ok((records, missing))
    }

    /// Applies what is known about a record's metadata document; true if it was an etcdsnap
    /// document (which makes a HEAD of the object unnecessary).
    fn apply_cached_document(
        &self,
        record: &mut SnapshotRecord,
        doc: &ListedObject,
        cache: &DetailsCache,
        warnings: &mut Vec<String>,
    ) -> bool {
        if doc.size as usize > MAX_METADATA_BYTES {
            warnings.push(format!(
                "ignoring metadata s3://{}/{}: {} bytes, more than the {MAX_METADATA_BYTES} accepted",
                self.config.bucket, doc.key, doc.size
            ));
            record.metadata_source = MetadataSource::Rejected;
            return false;
        }
        match cache.get(&doc.key, &doc.etag) {
            Some(Learned::Document { document }) => {
                record.apply_document((**document).clone());
                // Records of earlier releases say nothing: those uploaded under K3s's names.
                record.uploader_unnamed = record.program.unwrap_or(Program::K3s) != self.config.program;
                true
            }
            Some(Learned::ExtraMetadata { metadata }) => {
                record.extra_metadata = Some(metadata.clone());
                record.metadata_source = MetadataSource::K3sMap;
                false
            }
            Some(Learned::Rejected { reason }) => {
                warnings.push(format!("ignoring metadata s3://{}/{}: {reason}", self.config.bucket, doc.key));
                record.metadata_source = MetadataSource::Rejected;
                false
            }
            Some(Learned::UserMetadata { .. }) | None => false,
        }
    }

    /// HEADs (in parallel) the objects whose user metadata is needed and not cached.
    async fn learn_user_metadata(
        &self,
        records: &mut [SnapshotRecord],
        missing: Vec<MissingHead>,
        warnings: &mut Vec<String>,
    ) -> Result<(), StoreError> {
        let answers: Vec<(MissingHead, UserMetadataAnswer)> = futures::stream::iter(missing)
            .map(|m| async move {
                let result = self.head_metadata(&m.key).await;
                (m, result)
            })
            .buffer_unordered(DETAIL_FETCHES)
            .collect()
            .await;
        let mut cache = self.cache()?;
        for (m, result) in answers {
            match result {
                Ok(metadata) => {
                    apply_user_metadata(&mut records[m.index], &metadata, self.config.program);
                    cache.put(&m.key, &m.etag, Learned::UserMetadata { metadata });
                }
                Err(e) => warnings.push(format!("no object metadata for s3://{}/{}: {e}", self.config.bucket, m.key)),
            }
        }
        Ok(())
    }
}

/// What describes a snapshot in the metadata folder: etcdsnap's record when there is one (it
/// holds everything, the extra metadata included), else `.metadata/<name>` (K3s's extra
/// metadata, or the record of a snapshot saved by an earlier etcdsnap release).
fn document_of<'a>(documents: &'a HashMap<String, ListedObject>, name: &SnapshotName) -> Option<&'a ListedObject> {
    documents.get(&name.record_file_name()).or_else(|| documents.get(name.as_str()))
}

/// A HEAD's answer: the object's user metadata, or why it could not be read.
type UserMetadataAnswer = Result<BTreeMap<String, String>, String>;

/// A record whose object's user metadata must be fetched.
struct MissingHead {
    index: usize,
    key: String,
    etag: String,
}

/// `x-amz-meta-*` attributes as a plain map with lowercase names.
fn user_metadata(attributes: &Attributes) -> BTreeMap<String, String> {
    attributes
        .iter()
        .filter_map(|(k, v)| match k {
            Attribute::Metadata(name) => Some((name.to_lowercase(), v.as_ref().to_string())),
            _ => None,
        })
        .collect()
}

/// What K3s's user metadata says about an object without an etcdsnap document, read as the
/// server of `program` reads it: under its own names only (an RKE2 server never reads
/// `k3s-node-name`, and names the resource of such an object after `s3`).
fn apply_user_metadata(record: &mut SnapshotRecord, metadata: &BTreeMap<String, String>, program: Program) {
    let get = |k: &str| metadata.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    if let Some(node) = get(program.s3_meta_node_name()) {
        record.node_name = node.to_string();
        record.program = Some(program);
    }
    record.token_hash = get(program.s3_meta_token_hash()).and_then(TokenHash::parse_recorded);
    record.cluster_id = get(program.s3_meta_cluster_id()).map(str::to_string);
    if let Some(sha) = get(etcdsnap_api::consts::S3_META_SHA256) {
        record.sha256 = Some(sha.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bare() -> SnapshotRecord {
        let name = SnapshotName::parse("etcd-snapshot-n1-1700000000").unwrap();
        SnapshotRecord::stored(
            name,
            StorageKind::S3,
            "",
            "s3://b/etcd-snapshot-n1-1700000000",
            jiff::Timestamp::UNIX_EPOCH,
            5,
        )
    }

    #[test]
    fn user_metadata_is_read_under_the_program_s_names_only() {
        let metadata = BTreeMap::from([
            ("k3s-node-name".to_string(), "n1".to_string()),
            ("k3s-token-hash".to_string(), "652c7dc687d9".to_string()),
        ]);
        let mut k3s = bare();
        apply_user_metadata(&mut k3s, &metadata, Program::K3s);
        assert_eq!((k3s.node_name.as_str(), k3s.program), ("n1", Some(Program::K3s)));
        assert!(k3s.token_hash.is_some());
        // An RKE2 server reads rke2-node-name only: this object's resource is named after s3.
        let mut rke2 = bare();
        apply_user_metadata(&mut rke2, &metadata, Program::Rke2);
        assert_eq!((rke2.node_name.as_str(), rke2.program), ("", None));
        assert!(rke2.token_hash.is_none());
        assert_eq!(rke2.cr_name(), bare().cr_name());
    }
}
