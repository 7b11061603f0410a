//! What a save of this node tidies in the folder before it starts: multipart uploads left open
//! by its interrupted saves, and the records earlier releases kept in K3s's metadata objects.

use super::S3Store;
use super::cache::Learned;
use super::list::{self, list_prefix};
use crate::store::retention::matches_base;
use crate::store::{SnapshotStore, StoreError};
use etcdsnap_api::{MetadataDocument, SnapshotName};
use object_store::ObjectStoreExt;
use std::collections::HashSet;
use std::time::Duration;

impl S3Store {
    /// Aborts multipart uploads that a crashed or killed save of `node` (snapshots named
    /// `<base>-<node>-<unix>`, exactly: `server-1` never owns `k3s-server-1`'s uploads) left
    /// open; S3 keeps and bills their parts until aborted. Only uploads idle (neither started nor
    /// written to) for `idle`, and at least the S3 timeout, are touched: a save still running
    /// writes a part far more often than that, so no save in progress loses its upload, not
    /// even one of another cluster's node of the same name. The record and metadata a killed
    /// save wrote before completing its upload go with it.
    pub async fn abort_stale_uploads(&self, node: &str, base: &str, idle: Duration) -> Result<usize, StoreError> {
        let credential = self.credential().await?;
        let uploads = list::list_uploads(&self.http, &self.config, &credential, &self.folder_prefix()).await?;
        self.count(1);
        let idle = jiff::SignedDuration::try_from(idle.max(self.config.timeout)).unwrap_or(jiff::SignedDuration::MAX);
        let before = crate::clock::now().checked_sub(idle).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let mut aborted = 0;
        for upload in uploads {
            let Ok(name) = self.name_of(&upload.key) else { continue };
            if !matches_base(&name, base, node) || upload.initiated >= before {
                continue;
            }
            self.count(1);
            if list::last_part_time(&self.http, &self.config, &credential, &upload).await?.is_some_and(|t| t >= before)
            {
                continue; // still being written
            }
            list::abort_upload(&self.http, &self.config, &credential, &upload).await?;
            self.count(1);
            tracing::info!(key = %upload.key, "aborted a multipart upload left by an interrupted save");
            aborted += 1;
            if let Ok(false) = self.exists(&name).await {
                self.delete_documents(&name).await?;
            }
        }
        Ok(aborted)
    }

    /// Earlier releases kept the record of a snapshot in `.metadata/<name>`, K3s's object: the
    /// record moves to `<name>.etcdsnap.json`, and `<name>` becomes what K3s writes there (the
    /// extra metadata, or nothing). Only `node`'s own snapshots are touched, and only records
    /// a listing has already read (the listing cache knows them), so this costs one LIST and
    /// the writes. The record is written before K3s's object changes: a crash loses nothing.
    pub async fn migrate_legacy_records(&self, node: &str) -> Result<usize, StoreError> {
        let credential = self.credential().await?;
        let meta_prefix = format!("{}{}/", self.folder_prefix(), etcdsnap_api::consts::METADATA_DIR);
        let (documents, requests) = list_prefix(&self.http, &self.config, &credential, &meta_prefix).await?;
        self.count(requests as u64);
        let names: HashSet<String> =
            documents.iter().filter_map(|o| o.key.strip_prefix(&meta_prefix).map(str::to_string)).collect();
        let legacy: Vec<MetadataDocument> = {
            let cache = self.cache()?;
            documents
                .iter()
                .filter_map(|o| {
                    let name = SnapshotName::parse(o.key.strip_prefix(&meta_prefix)?).ok()?;
                    if names.contains(&name.record_file_name()) {
                        return None;
                    }
                    match cache.get(&o.key, &o.etag) {
                        Some(Learned::Document { document }) if document.node_name == node => {
                            Some((**document).clone())
                        }
                        _ => None,
                    }
                })
                .collect()
        };
        let mut moved = 0;
        for doc in legacy {
            let name = SnapshotName::parse(&doc.name).map_err(|e| StoreError::Client(e.to_string()))?;
            self.put_json(&self.config.record_key(name.as_str()), doc.to_json()).await?;
            let k3s_key = self.config.metadata_key(name.as_str());
            match doc.extra_metadata.as_ref().filter(|m| !m.is_empty()) {
                Some(extra) => self.put_json(&k3s_key, etcdsnap_api::go::marshal_string_map(extra)).await?,
                None => {
                    self.count(1);
                    self.store.delete(&self.path(&k3s_key)).await.map_err(|e| self.error("delete", &k3s_key, &e))?;
                }
            }
            tracing::info!(snapshot = %name, "moved an earlier release's record out of K3s's metadata object");
            moved += 1;
        }
        Ok(moved)
    }
}
