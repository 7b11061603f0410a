//! Catching up on uploads that failed: a snapshot that exists locally but whose upload failed
//! (S3 down, a timeout) is uploaded by a later run instead of being forgotten.
//!
//! What to upload is decided the way S3 retention decides what to keep: for each base name of
//! this node, the newest `keep` snapshots of local and S3 together. So a snapshot that retention
//! would delete from S3 right away is never uploaded, and a node keeping more snapshots locally
//! than in S3 does not upload-and-prune in a loop.

use super::Context;
use etcdsnap_api::MetadataDocument;
use etcdsnap_api::{SnapshotName, StorageKind};
use etcdsnap_storage::files::open_no_follow;
use etcdsnap_storage::record::SnapshotRecord;
use etcdsnap_storage::store::local::LocalStore;
use etcdsnap_storage::store::{
    Companions, NewSnapshot, SnapshotSink, SnapshotStore, StoreError, retention::matches_base,
};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::io::Read;

/// Local snapshots of `node` to upload: ready, recorded with a sha256 (so the bytes can be
/// checked on the way), missing from S3, and among the newest `keep` of their base name. Only
/// this cluster's S3 snapshots count (`cluster`, when known): another cluster's node of the same
/// name shares the folder but not the retention.
pub fn plan(
    local: &[SnapshotRecord],
    remote: &[SnapshotRecord],
    node: &str,
    cluster: Option<&str>,
    base: &str,
    keep: usize,
) -> Vec<SnapshotRecord> {
    if keep == 0 {
        return Vec::new();
    }
    let in_remote: HashSet<&SnapshotName> = remote.iter().filter(|r| r.is_ready()).map(|r| &r.name).collect();
    let ours = |r: &&SnapshotRecord| cluster.is_none_or(|c| r.cluster_id.as_deref() == Some(c));
    let mut group: Vec<(i64, &SnapshotName)> = local
        .iter()
        .chain(remote.iter().filter(ours))
        .filter(|r| r.is_ready() && r.node_name == node && matches_base(&r.name, base, node))
        .map(|r| (r.name.timestamp().unwrap_or_else(|| r.created_at.as_second()), &r.name))
        .collect();
    group.sort_by(|a, b| b.cmp(a));
    group.dedup_by(|a, b| a.1 == b.1);
    let wanted: HashSet<&SnapshotName> = group.into_iter().take(keep).map(|(_, n)| n).collect();
    local
        .iter()
        .filter(|r| r.is_ready() && r.sha256.is_some() && wanted.contains(&r.name) && !in_remote.contains(&r.name))
        .cloned()
        .collect()
}

/// Why a catch-up did not upload something.
#[derive(Debug, thiserror::Error)]
pub enum CatchUpError {
    /// A store could not be listed: nothing was uploaded.
    #[error("catch-up uploads skipped: {0}")]
    Listing(#[source] StoreError),
    #[error("uploading {name} again: {source}")]
    Upload {
        name: SnapshotName,
        #[source]
        source: StoreError,
    },
}

/// Uploads what [`plan`] selects; returns the new S3 records and the problems met.
pub async fn upload_missing(ctx: &Context, base: &str, keep: usize) -> (Vec<SnapshotRecord>, Vec<CatchUpError>) {
    let (Some(local), Some(remote)) = (&ctx.local, &ctx.remote) else { return (Vec::new(), Vec::new()) };
    let mut problems = Vec::new();
    let (local_list, remote_list) = match (local.list().await, remote.list().await) {
        (Ok(l), Ok(r)) => (l.records, r.records),
        (Err(e), _) | (_, Err(e)) => return (Vec::new(), vec![CatchUpError::Listing(e)]),
    };
    let mut uploaded = Vec::new();
    for record in plan(&local_list, &remote_list, &ctx.node_name, ctx.cluster_id.as_deref(), base, keep) {
        match upload_one(ctx, local, remote.as_ref(), &record).await {
            Ok(r) => {
                tracing::info!(snapshot = %r.name, location = %r.location, "uploaded a snapshot whose earlier upload had failed");
                uploaded.push(r);
            }
            Err(source) => problems.push(CatchUpError::Upload { name: record.name.clone(), source }),
        }
    }
    (uploaded, problems)
}

async fn upload_one(
    ctx: &Context,
    local: &LocalStore,
    remote: &dyn SnapshotStore,
    record: &SnapshotRecord,
) -> Result<SnapshotRecord, StoreError> {
    let new = NewSnapshot {
        name: record.name.clone(),
        node_name: record.node_name.clone(),
        cluster_id: record.cluster_id.clone().or_else(|| ctx.cluster_id.clone()),
        token_hash: record.token_hash.clone(),
        etcd: record.etcd.clone().unwrap_or_default(),
    };
    let mut sink = remote.create(&new).await?;
    let path = local.snapshot_path(&record.name);
    let expected = record.sha256.clone().unwrap_or_default();
    // Copy on a blocking thread, hashing on the way: a local copy that no longer matches its
    // recorded sha256 is not uploaded (the upload is aborted).
    let copied = tokio::task::spawn_blocking(move || -> Result<_, (Box<dyn SnapshotSink>, StoreError)> {
        let mut file = match open_no_follow(&path) {
            Ok(f) => f,
            Err(e) => return Err((sink, StoreError::io("open", &path)(e))),
        };
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1024 * 1024];
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => return Err((sink, StoreError::io("read", &path)(e))),
            };
            hasher.update(&buf[..n]);
            if let Err(e) = sink.write(&buf[..n]) {
                return Err((sink, e));
            }
        }
        let actual = hex::encode(hasher.finalize());
        if actual != expected {
            return Err((sink, StoreError::Changed(path)));
        }
        Ok(sink)
    })
    .await
    .map_err(|e| StoreError::worker(format!("uploading {}", record.name), e))?;
    let sink = match copied {
        Ok(sink) => sink,
        Err((sink, e)) => {
            sink.abort().await;
            return Err(e);
        }
    };
    let mut uploaded = record.clone();
    uploaded.storage = StorageKind::S3;
    uploaded.location = sink.location();
    uploaded.s3 = ctx.remote_spec.clone();
    uploaded.cluster_id = new.cluster_id;
    uploaded.program = sink.program();
    uploaded.s3_lock = sink.lock();
    let doc = uploaded.to_document();
    match companions(ctx, local, &doc).await {
        Ok(companions) => sink.commit(&doc, &companions).await?,
        Err(e) => {
            sink.abort().await;
            return Err(e);
        }
    }
    Ok(uploaded)
}

/// The kit the local copy has, and the S3 record's own signature (it names another location,
/// so the local one's signature cannot serve; without a signing key the copy goes unsigned).
async fn companions(ctx: &Context, local: &LocalStore, doc: &MetadataDocument) -> Result<Companions, StoreError> {
    let name = SnapshotName::parse(&doc.name).map_err(|e| StoreError::Unsupported(e.to_string()))?;
    let kit = match doc.sealed.as_ref().and_then(|s| s.kit.as_ref()) {
        Some(_) => local.kit(&name).await?.map(std::sync::Arc::new),
        None => None,
    };
    let signature = match &ctx.sealing.signing_key {
        Some(key) => Some(key.sign(&doc.name, &doc.to_json()).map_err(|e| StoreError::Unsupported(e.to_string()))?),
        None => None,
    };
    Ok(Companions { signature, kit })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, storage: StorageKind) -> SnapshotRecord {
        let name = SnapshotName::parse(name).unwrap();
        let created = SnapshotRecord::creation_time(&name, jiff::Timestamp::UNIX_EPOCH);
        SnapshotRecord { sha256: Some("x".into()), ..SnapshotRecord::stored(name, storage, "n", "", created, 100) }
    }

    fn names(v: Vec<SnapshotRecord>) -> Vec<String> {
        v.into_iter().map(|r| r.name.to_string()).collect()
    }

    #[test]
    fn uploads_only_what_s3_retention_would_keep() {
        let local =
            vec![rec("s-n-1", StorageKind::Local), rec("s-n-2", StorageKind::Local), rec("s-n-3", StorageKind::Local)];
        // S3 has only the newest; with keep 2 the middle one is missing and wanted.
        let remote = vec![rec("s-n-3", StorageKind::S3)];
        assert_eq!(names(plan(&local, &remote, "n", None, "s", 2)), ["s-n-2"]);
        // keep 1: S3 already has the newest; nothing to do (no upload-then-prune loop).
        assert!(plan(&local, &remote, "n", None, "s", 1).is_empty());
        assert!(plan(&local, &remote, "n", None, "s", 0).is_empty());
        // Everything failed to upload: the newest `keep` are uploaded.
        assert_eq!(names(plan(&local, &[], "n", None, "s", 2)), ["s-n-2", "s-n-3"]);
    }

    #[test]
    fn another_cluster_s_node_of_the_same_name_does_not_count() {
        let local = vec![rec("s-n-1", StorageKind::Local), rec("s-n-2", StorageKind::Local)];
        let mut theirs = rec("s-n-9", StorageKind::S3);
        theirs.cluster_id = Some("other".into());
        // Their newer snapshot does not push ours out of the newest 2.
        assert_eq!(names(plan(&local, &[theirs.clone()], "n", Some("mine"), "s", 2)), ["s-n-1", "s-n-2"]);
        assert_eq!(names(plan(&local, &[theirs], "n", None, "s", 2)), ["s-n-2"]);
    }

    #[test]
    fn other_nodes_bases_and_unverifiable_snapshots_are_left_alone() {
        let mut no_sha = rec("s-n-5", StorageKind::Local);
        no_sha.sha256 = None;
        let mut other = rec("s-m-6", StorageKind::Local);
        other.node_name = "m".into();
        let local = vec![no_sha, other, rec("t-n-7", StorageKind::Local)];
        assert!(plan(&local, &[], "n", None, "s", 5).is_empty());
    }
}
