//! Delta replication: point-in-time recovery's segments and their records copied to every
//! replica once they are durable in the primary, so that a replica alone serves a restore to a
//! revision or a time. The source is the S3 primary when there is one (the agent's uploader put
//! them there: only what S3 holds is copied), else the local `.etcdsnap-deltas` directory
//! (capture without S3: the local files are the primary). Each segment is streamed from the
//! source and checked against its record's sha256 on the way and on arrival, then its record is
//! written ([`ReplicaStore::copy_delta`]), at the keys it has in S3.
//!
//! A replica that cannot be reached is skipped and stays behind until a later pass. What each
//! replica holds is listed once and then remembered, so a pass whose replicas hold everything
//! lists only the source; a failed request forgets it (the next pass lists again).

use etcdsnap_storage::pitr::SegmentRecord;
use etcdsnap_storage::pitr::objects::DeltaObjects;
use etcdsnap_storage::store::replica::ReplicaStore;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// The largest record object read from the source.
const RECORD_LIMIT: u64 = 64 * 1024;

/// One replica after a delta pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaStatus {
    pub url: String,
    /// Segments copied in this pass.
    pub copied: usize,
    /// Segments the source holds and the replica does not.
    pub behind: usize,
    /// Unix seconds since when the longest-missing of them has been missing (None: none).
    pub behind_since: Option<i64>,
    /// What went wrong, each naming the replica and the object.
    pub errors: Vec<String>,
}

/// A (chain, record file) pair.
type Key = (String, String);

/// What each replica is known to hold, and since when each missing segment is missing.
#[derive(Debug, Default)]
pub struct DeltaReplicator {
    held: HashMap<String, HashSet<Key>>,
    missing_since: HashMap<String, HashMap<Key, i64>>,
}

impl DeltaReplicator {
    /// Copies to each replica the segments (and records) `source` holds and it lacks.
    pub async fn pass(&mut self, source: &dyn DeltaObjects, replicas: &[Arc<ReplicaStore>]) -> Vec<DeltaStatus> {
        if replicas.is_empty() {
            return Vec::new();
        }
        let listed = match source.list_deltas().await {
            Ok(listed) => listed,
            Err(e) => {
                // Nothing is known of what is missing now: each replica stays as behind as it was.
                let error = format!("delta replication: cannot list {}: {e}", source.deltas_location());
                return replicas
                    .iter()
                    .map(|r| {
                        let missing: HashSet<Key> =
                            self.missing_since.get(r.url()).map(|m| m.keys().cloned().collect()).unwrap_or_default();
                        self.status(r.url(), 0, &missing, vec![error.clone()])
                    })
                    .collect();
            }
        };
        // Records only: a segment counts once its record is in the source, as everywhere.
        let records: HashSet<Key> = listed.into_iter().filter(|o| o.is_record()).map(|o| (o.chain, o.file)).collect();
        let mut statuses = Vec::with_capacity(replicas.len());
        for replica in replicas {
            statuses.push(self.pass_one(source, replica, &records).await);
        }
        statuses
    }

    async fn pass_one(
        &mut self,
        source: &dyn DeltaObjects,
        replica: &ReplicaStore,
        records: &HashSet<Key>,
    ) -> DeltaStatus {
        let url = replica.url().to_string();
        let mut errors = Vec::new();
        if !self.held.contains_key(&url) {
            match replica.list_deltas().await {
                Ok(listed) => {
                    let held = listed.into_iter().filter(|o| o.is_record()).map(|o| (o.chain, o.file)).collect();
                    self.held.insert(url.clone(), held);
                }
                Err(e) => {
                    errors.push(format!("replica {url}: cannot list its delta segments: {e}"));
                    let missing: HashSet<Key> = records.clone();
                    return self.status(&url, 0, &missing, errors);
                }
            }
        }
        let held = self.held.entry(url.clone()).or_default();
        // Forget what the source no longer holds (retention removed it), so the set stays small.
        held.retain(|k| records.contains(k));
        let mut wanted: Vec<&Key> = records.iter().filter(|k| !held.contains(*k)).collect();
        // Oldest first: file names sort by revision within a chain.
        wanted.sort();
        let mut copied = 0;
        let mut missing = HashSet::new();
        for key in wanted {
            match copy_one(source, replica, key).await {
                Ok(()) => {
                    held.insert(key.clone());
                    copied += 1;
                }
                Err(e) => {
                    errors.push(format!("replica {url}: copying delta segment {}/{}: {e}", key.0, key.1));
                    missing.insert(key.clone());
                }
            }
        }
        if !errors.is_empty() {
            // A failed request may mean the replica changed under us: list it again next time.
            self.held.remove(&url);
        }
        self.status(&url, copied, &missing, errors)
    }

    /// The status of `url`, remembering since when each of `missing` has been missing.
    fn status(&mut self, url: &str, copied: usize, missing: &HashSet<Key>, errors: Vec<String>) -> DeltaStatus {
        let now = etcdsnap_storage::clock::now().as_second();
        let since = self.missing_since.entry(url.to_string()).or_default();
        since.retain(|k, _| missing.contains(k));
        for k in missing {
            since.entry(k.clone()).or_insert(now);
        }
        DeltaStatus {
            url: url.to_string(),
            copied,
            behind: missing.len(),
            behind_since: since.values().min().copied(),
            errors,
        }
    }
}

/// One segment and its record, from `source` into `replica`.
async fn copy_one(source: &dyn DeltaObjects, replica: &ReplicaStore, (chain, file): &Key) -> Result<(), String> {
    let record_bytes = source.get_delta(chain, file, RECORD_LIMIT).await.map_err(|e| e.to_string())?;
    let record = SegmentRecord::parse(file, &record_bytes).map_err(|e| e.to_string())?;
    if record.chain != *chain || record.record_name() != *file {
        return Err("the record does not match its key: not copied".into());
    }
    let segment = source.open_delta(chain, &record.segment_name()).await.map_err(|e| e.to_string())?;
    let from = format!("{}/{chain}/{}", source.deltas_location(), record.segment_name());
    let copied = replica.copy_delta(&record, record_bytes, segment, &from).await.map_err(|e| e.to_string())?;
    tracing::info!(replica = %replica.url(), chain = %chain, segment = %record.segment_name(), bytes = copied.bytes, "delta segment copied to replica");
    Ok(())
}
