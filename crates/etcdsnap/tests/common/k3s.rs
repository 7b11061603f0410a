//! A K3s reader, written from K3s's listing rules (docs: k3s-compat.md sections 1.6, 5.1 and
//! 5.2), not from K3s's code: it sees the snapshot directory and the S3 folder the way a K3s
//! server's reconcile would, and names the resources K3s would create for what it finds. RKE2
//! reads the same way under its own names ([`list_s3_as`]).
//!
//! - Local: every regular file under the snapshot directory, recursively, is a snapshot; its
//!   metadata is `<dir>/../.metadata/<basename>`, decoded as a string map.
//! - S3: every non-empty object under the folder *prefix* (no trailing slash, recursive) whose
//!   parent directory is not `.metadata` is a snapshot; a `.metadata/<basename>` object is the
//!   metadata of the snapshot with that basename; the uploader is the `k3s-node-name` metadata
//!   (`rke2-node-name` for RKE2: a server reads its own program's key only).

use etcdsnap_api::{CrNameInput, Program, StorageKind, cr_name};
use std::collections::BTreeMap;
use std::path::Path;

/// One snapshot as K3s sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct K3sSnapshot {
    /// The name of the resource K3s would create for it.
    pub cr_name: String,
    pub snapshot_name: String,
    pub size: u64,
    /// `spec.metadata` K3s would record: its metadata file decoded as a string map.
    pub metadata: Option<BTreeMap<String, String>>,
}

/// K3s decodes a metadata file as `map[string]string`; anything else is an error for K3s.
fn decode(bytes: &[u8], what: &str) -> Result<BTreeMap<String, String>, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("K3s cannot decode the metadata {what}: {e}"))
}

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        let meta = entry.path().symlink_metadata().map_err(|e| e.to_string())?;
        if meta.is_dir() {
            walk(&entry.path(), out)?;
        } else if meta.is_file() {
            out.push(entry.path());
        }
    }
    Ok(())
}

/// What K3s's reconcile on `node` finds in the snapshot directory `dir`.
pub fn list_local(dir: &Path, node: &str) -> Result<Vec<K3sSnapshot>, String> {
    let mut files = Vec::new();
    if dir.exists() {
        walk(dir, &mut files)?;
    }
    let metadata_dir = dir.parent().ok_or("no parent")?.join(".metadata");
    let mut found = Vec::new();
    for path in files {
        let name = path.file_name().and_then(|n| n.to_str()).ok_or("not UTF-8")?.to_string();
        let location = format!("file://{}", path.display());
        let metadata = match std::fs::read(metadata_dir.join(&name)) {
            Ok(bytes) => Some(decode(&bytes, &format!("file of {name}"))?),
            Err(_) => None,
        };
        let input = CrNameInput {
            name: &name,
            storage: StorageKind::Local,
            node_name: node,
            location: &location,
            created_unix: etcdsnap_api::timestamp_from_name(&name).unwrap_or(0),
        };
        let size = std::fs::metadata(&path).map_err(|e| e.to_string())?.len();
        found.push(K3sSnapshot { cr_name: cr_name(input), snapshot_name: name, size, metadata });
    }
    found.sort();
    Ok(found)
}

/// What K3s's reconcile finds in `folder` of `bucket`.
pub async fn list_s3(s3: &testenv::S3Server, bucket: &str, folder: &str) -> Result<Vec<K3sSnapshot>, String> {
    list_s3_as(s3, bucket, folder, Program::K3s).await
}

/// What the reconcile of a `program` server finds in `folder` of `bucket`.
pub async fn list_s3_as(
    s3: &testenv::S3Server,
    bucket: &str,
    folder: &str,
    program: Program,
) -> Result<Vec<K3sSnapshot>, String> {
    let keys = s3.list_keys(bucket, folder).await.map_err(|e| e.to_string())?;
    let parent_is_metadata =
        |key: &str| key.rsplit_once('/').and_then(|(dir, _)| dir.rsplit('/').next()) == Some(".metadata");
    let basename = |key: &str| key.rsplit('/').next().unwrap_or(key).to_string();
    let mut metadata_keys: BTreeMap<String, String> = BTreeMap::new();
    let mut snapshots = Vec::new();
    for key in &keys {
        if parent_is_metadata(key) {
            metadata_keys.insert(basename(key), key.clone());
        } else {
            snapshots.push(key.clone());
        }
    }
    let mut found = Vec::new();
    for key in snapshots {
        let headers = s3.head_object(bucket, &key).await.map_err(|e| e.to_string())?;
        let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let size: u64 = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        if size == 0 {
            continue;
        }
        let name = basename(&key);
        let node = header(&format!("x-amz-meta-{}-node-name", program.name())).unwrap_or_default();
        let location = format!("s3://{bucket}/{key}");
        let metadata = match metadata_keys.get(&name) {
            Some(meta_key) => {
                let (bytes, _) = s3.get_object(bucket, meta_key).await.map_err(|e| e.to_string())?;
                Some(decode(&bytes, &format!("object {meta_key}"))?)
            }
            None => None,
        };
        let input = CrNameInput {
            name: &name,
            storage: StorageKind::S3,
            node_name: &node,
            location: &location,
            created_unix: etcdsnap_api::timestamp_from_name(&name).unwrap_or(0),
        };
        found.push(K3sSnapshot { cr_name: cr_name(input), snapshot_name: name, size, metadata });
    }
    found.sort();
    Ok(found)
}
