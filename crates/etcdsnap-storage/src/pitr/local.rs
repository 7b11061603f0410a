//! Delta chains on local disk: `<chain>/` directories in `.etcdsnap-deltas/` beside the
//! snapshot directory (never inside it: K3s takes every file there for a snapshot).
//!
//! A chain directory holds `<first>-<last>.seg.zst` segments, each with its
//! `<first>-<last>.json` record. A segment without a record (a crash between the two writes)
//! does not count and is never read.

use super::chain::Base;
use super::record::{DELTAS_DIR, SegmentRecord};
use crate::SnapshotRecord;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LocalPitrError {
    #[error("cannot read delta directory {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("delta record {}: {problem}", path.display())]
    Record { path: PathBuf, problem: String },
    #[error("cannot remove delta file {}: {source}", path.display())]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The directory of delta chains that belongs to `snapshot_dir`.
pub fn dir_beside(snapshot_dir: &Path) -> PathBuf {
    match snapshot_dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.join(DELTAS_DIR),
        _ => PathBuf::from(DELTAS_DIR),
    }
}

/// The base a snapshot offers: a ready snapshot with a recorded etcd revision.
pub fn base_of(record: &SnapshotRecord) -> Option<Base> {
    let etcd = record.etcd.as_ref().filter(|_| record.is_ready())?;
    Some(Base {
        name: record.name.to_string(),
        revision: etcd.revision,
        taken_ms: record.created_at.as_millisecond(),
        history: etcd.history.clone(),
    })
}

/// The records of one chain, oldest first. Any unreadable or contradictory record is an error:
/// a capture does not continue a chain over a record nobody can check.
pub fn read_chain(chain_dir: &Path) -> Result<Vec<SegmentRecord>, LocalPitrError> {
    let mut records = Vec::new();
    for path in record_paths(chain_dir)? {
        records.push(read_record(&path)?);
    }
    records.sort_by_key(|r| r.first_revision);
    Ok(records)
}

/// Every chain's records under `deltas_dir` (none when it does not exist). A record that cannot
/// be used becomes a warning naming it: its revisions then show as a gap, and a restore across
/// it is refused, never silently bridged.
pub fn read_all(deltas_dir: &Path) -> (Vec<SegmentRecord>, Vec<String>) {
    let (mut records, mut warnings) = (Vec::new(), Vec::new());
    let chains = match std::fs::read_dir(deltas_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (records, warnings),
        Err(source) => {
            warnings.push(LocalPitrError::Read { path: deltas_dir.into(), source }.to_string());
            return (records, warnings);
        }
    };
    for chain in chains.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_dir()) {
        let paths = match record_paths(&chain) {
            Ok(paths) => paths,
            Err(e) => {
                warnings.push(e.to_string());
                continue;
            }
        };
        for path in paths {
            match read_record(&path) {
                Ok(r) if chain.file_name().is_some_and(|n| n == r.chain.as_str()) => records.push(r),
                Ok(r) => warnings.push(format!("delta record {} names chain {}: skipped", path.display(), r.chain)),
                Err(e) => warnings.push(e.to_string()),
            }
        }
    }
    records.sort_by(|a, b| (&a.chain, a.first_revision).cmp(&(&b.chain, b.first_revision)));
    (records, warnings)
}

fn record_paths(chain_dir: &Path) -> Result<Vec<PathBuf>, LocalPitrError> {
    let read_error = |source| LocalPitrError::Read { path: chain_dir.into(), source };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(chain_dir).map_err(read_error)? {
        let path = entry.map_err(read_error)?.path();
        if path.extension().is_some_and(|e| e == "json") {
            paths.push(path);
        }
    }
    Ok(paths)
}

fn read_record(path: &Path) -> Result<SegmentRecord, LocalPitrError> {
    let problem = |problem: String| LocalPitrError::Record { path: path.into(), problem };
    let bytes = crate::files::read_bounded(path).map_err(problem)?.ok_or_else(|| problem("gone".into()))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let record = SegmentRecord::parse(&name, &bytes).map_err(|e| problem(e.to_string()))?;
    if name != record.record_name() {
        return Err(problem(format!(
            "its name does not match revisions {}..={}",
            record.first_revision, record.last_revision
        )));
    }
    Ok(record)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::pitr::record::tests::record;

    pub(crate) const CHAIN: &str = "etcd-snapshot-node-a-1700000000";

    /// Stores a segment (its bytes do not matter here) and its record `r` under `dir`.
    pub(crate) fn store(dir: &Path, r: &SegmentRecord) {
        let chain = dir.join(&r.chain);
        std::fs::create_dir_all(&chain).unwrap();
        std::fs::write(chain.join(r.segment_name()), b"seg").unwrap();
        std::fs::write(chain.join(r.record_name()), r.to_json()).unwrap();
    }

    #[test]
    fn the_deltas_sit_beside_the_snapshot_directory_never_inside_it() {
        assert_eq!(
            dir_beside(Path::new("/var/lib/rancher/k3s/server/db/snapshots")),
            Path::new("/var/lib/rancher/k3s/server/db/.etcdsnap-deltas")
        );
        assert_eq!(dir_beside(Path::new("snapshots")), Path::new(".etcdsnap-deltas"));
    }

    #[test]
    fn bad_records_are_warnings_and_good_ones_are_listed_in_order() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), &record(CHAIN, 10, 21, 30, 2, 3));
        store(dir.path(), &record(CHAIN, 10, 11, 20, 0, 1));
        let chain = dir.path().join(CHAIN);
        std::fs::write(chain.join("00000000000000000031-00000000000000000040.json"), b"{not json").unwrap();
        // A record copied under another segment's name is refused.
        let moved = record(CHAIN, 10, 41, 50, 4, 5);
        std::fs::write(chain.join("00000000000000000051-00000000000000000060.json"), moved.to_json()).unwrap();
        // A record in the wrong chain's directory is refused.
        store(dir.path(), &SegmentRecord { chain: "etcd-snapshot-node-b-1700000000".into(), ..moved.clone() });
        std::fs::rename(dir.path().join("etcd-snapshot-node-b-1700000000"), dir.path().join("etcd-snapshot-node-c-1"))
            .unwrap();
        let (records, warnings) = read_all(dir.path());
        let ranges: Vec<_> = records.iter().map(|r| (r.first_revision, r.last_revision)).collect();
        assert_eq!(ranges, [(11, 20), (21, 30)]);
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(read_chain(&chain).is_err(), "a capture must not continue over a bad record");
        assert_eq!(read_all(&dir.path().join("missing")).0, []);
    }
}
