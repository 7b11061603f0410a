//! Which history a live etcd is (the rule is `etcdsnap_storage::pitr::history`'s): its tips
//! are gathered from the records within reach ([`gather`]), then checked against the live etcd
//! newest first ([`live_history`]). A save records the history found, or a new one; a capture
//! continues only a chain of the history found, from a base of that history.
//!
//! Within reach means: this node's snapshots and delta records, and the newest delta record
//! in S3 (every leader's segments meet there); a save also counts every snapshot in S3. A
//! history only another node's disk knows is not found; the save then starts a new one, which
//! costs a full snapshot where capture resumes, never a mix.

use etcd_client::{Client, GetOptions};
use etcdsnap_storage::SnapshotRecord;
use etcdsnap_storage::pitr::history::{self, Tip};
use etcdsnap_storage::pitr::{SegmentRecord, local};
use etcdsnap_storage::store::SnapshotStore;
use etcdsnap_storage::store::local::LocalStore;
use etcdsnap_storage::store::s3::S3Store;
use std::collections::BTreeMap;

/// The most tips a live etcd is checked against (one Range each).
const MAX_CHECKS: usize = 8;
/// The largest record object read from S3.
const RECORD_LIMIT: u64 = 64 * 1024;

/// What a live etcd says of one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AtRevision {
    /// It holds the revision; the fingerprint of the puts made at it.
    Fingerprint(String),
    /// It compacted the revision away: nothing can be said.
    Compacted,
    /// It has not reached the revision: it is another history.
    Future,
}

/// The fingerprint of the puts the live etcd made at `revision`: a Range over every key at
/// that revision, of the keys whose mod revision is that revision.
pub async fn fingerprint_at(client: &mut Client, revision: i64) -> Result<AtRevision, etcd_client::Error> {
    let opts = GetOptions::new()
        .with_from_key()
        .with_revision(revision)
        .with_min_mod_revision(revision)
        .with_max_mod_revision(revision);
    let resp = match client.get(vec![0u8], Some(opts)).await {
        Ok(resp) => resp,
        Err(e) if e.to_string().contains("required revision has been compacted") => return Ok(AtRevision::Compacted),
        Err(e) if e.to_string().contains("required revision is a future revision") => return Ok(AtRevision::Future),
        Err(e) => return Err(e),
    };
    let puts = resp.kvs().iter().map(|kv| history::Put {
        key: kv.key(),
        value: kv.value(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: kv.lease(),
    });
    Ok(AtRevision::Fingerprint(history::fingerprint(revision, puts)))
}

/// The history of `tips` (newest first, [`history::candidates`]) that the live etcd is: of
/// those whose tip it matches (at most [`MAX_CHECKS`] are asked about), the one
/// [`history::preferred`] takes. None: none matches, a new history begins.
pub async fn live_history(client: &mut Client, tips: &[Tip]) -> Result<Option<String>, etcd_client::Error> {
    let mut matched = Vec::new();
    for tip in tips.iter().filter(|t| t.fingerprint.is_some()).take(MAX_CHECKS) {
        match fingerprint_at(client, tip.revision).await? {
            AtRevision::Fingerprint(found) if Some(&found) == tip.fingerprint.as_ref() => matched.push(tip),
            verdict => {
                tracing::debug!(history = %tip.history, revision = tip.revision, ?verdict, "the live etcd is not this history")
            }
        }
        if matched.iter().any(|t| t.captured) {
            break;
        }
    }
    Ok(history::preferred(&matched).map(|t| t.history.clone()))
}

/// The records within reach: this node's snapshots (when it has a local store) and delta
/// records, and the newest delta record of cluster `cluster` in S3. What cannot be read is
/// logged and left out (a history not found only costs a new one).
pub async fn gather(
    local: Option<&LocalStore>,
    s3: Option<&S3Store>,
    cluster: &str,
) -> (Vec<SnapshotRecord>, Vec<SegmentRecord>) {
    let (mut snapshots, mut segments) = (Vec::new(), Vec::new());
    if let Some(local) = local {
        match local.list().await {
            Ok(listing) => snapshots = listing.records,
            Err(e) => tracing::warn!(error = %e, "cannot list the local snapshots to find the live history"),
        }
        segments = local::read_all(&local::dir_beside(local.dir())).0;
    }
    if let Some(s3) = s3
        && let Some(r) = newest_in_s3(s3, cluster, i64::MIN, &|_| true).await
    {
        segments.push(r);
    }
    (snapshots, segments)
}

/// The history a save at the live etcd records: the live history among the records within
/// reach, else a new one. A failed check starts a new history too (said in the log).
///
/// Besides [`gather`]'s records, a save counts every snapshot in the S3 folder: the servers of
/// one cluster save into one folder, and a node that saves before any leader's chain is there
/// then takes the history of the other nodes' snapshots instead of naming one of its own (which
/// would make a restore to its revision ask which of two IDs, both right, to take).
pub async fn for_save(client: &mut Client, local: Option<&LocalStore>, s3: Option<&S3Store>, cluster: &str) -> String {
    let (mut snapshots, segments) = gather(local, s3, cluster).await;
    if let Some(s3) = s3 {
        match SnapshotStore::list(s3).await {
            Ok(listing) => snapshots.extend(listing.records),
            Err(e) => tracing::warn!(error = %e, "cannot list the S3 snapshots to find the live history"),
        }
    }
    let tips = history::candidates(&snapshots, &segments, cluster);
    match live_history(client, &tips).await {
        Ok(Some(h)) => h,
        Ok(None) => {
            let h = history::new_id();
            tracing::info!(history = %h, checked = tips.len(), "the live etcd matches no recorded history: a new one begins");
            h
        }
        Err(e) => {
            let h = history::new_id();
            tracing::warn!(history = %h, error = %e, "cannot check which history the live etcd is: a new one begins");
            h
        }
    }
}

/// The newest record of each chain in S3 whose newest revision is past `after`, read newest
/// first until one of `cluster` that `wanted` takes is found: a new leader continues the
/// previous leader's chain from there. A failure to read S3 is only logged: the local chains
/// still count.
pub async fn newest_in_s3(
    s3: &S3Store,
    cluster: &str,
    after: i64,
    wanted: &(dyn Fn(&SegmentRecord) -> bool + Sync),
) -> Option<SegmentRecord> {
    let objects = match s3.list_pitr_objects().await {
        Ok(objects) => objects,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the delta chains in S3; only local ones count");
            return None;
        }
    };
    let mut newest: BTreeMap<String, (i64, String)> = BTreeMap::new();
    for o in objects.iter().filter(|o| o.is_record()) {
        let Some(last) = o.last_revision() else { continue };
        let entry = newest.entry(o.chain.clone()).or_insert((last, o.file.clone()));
        if last > entry.0 {
            *entry = (last, o.file.clone());
        }
    }
    let mut candidates: Vec<(i64, String, String)> =
        newest.into_iter().filter(|(_, (last, _))| *last > after).map(|(c, (l, f))| (l, c, f)).collect();
    candidates.sort_by(|a, b| b.cmp(a));
    for (_, chain, file) in candidates {
        let parsed = match s3.get_pitr_object(&chain, &file, RECORD_LIMIT).await {
            Ok(bytes) => SegmentRecord::parse(&file, &bytes).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match parsed {
            Ok(r) if r.chain == chain && r.record_name() == file && r.cluster_id.as_deref() == Some(cluster) => {
                if wanted(&r) {
                    return Some(r);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(%chain, %file, error = %e, "delta record in S3 not usable"),
        }
    }
    None
}
