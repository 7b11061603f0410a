//! The metadata directory of a local store (`<dir>/../.metadata/`): etcdsnap's record of each
//! snapshot (`<name>.etcdsnap.json`) and K3s's extra metadata (`<name>`), read with their
//! limits, and the move of an earlier release's record out of K3s's file.

use super::LocalStore;
use crate::files::{read_bounded, write_atomic};
use crate::record::{MetadataSource, SnapshotRecord};
use crate::store::StoreError;
use etcdsnap_api::{MetadataDocument, SnapshotName, StoredMetadata, parse_stored_metadata};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// What the metadata directory says about one snapshot.
#[derive(Debug, Default)]
pub struct FoundMetadata {
    /// etcdsnap's record (from `<name>.etcdsnap.json`, or an older etcdsnap's `<name>`).
    pub record: Option<MetadataDocument>,
    /// K3s's extra metadata (`<name>` as a string map).
    pub extra: Option<BTreeMap<String, String>>,
    /// Files that were refused, with why.
    pub problems: Vec<String>,
}

impl FoundMetadata {
    /// Fills `record` from what was found.
    pub fn apply_to(self, record: &mut SnapshotRecord, warnings: &mut Vec<String>) {
        if !self.problems.is_empty() {
            record.metadata_source = MetadataSource::Rejected;
        }
        warnings.extend(self.problems);
        if let Some(doc) = self.record {
            record.apply_document(doc);
        }
        if let Some(extra) = self.extra
            && record.extra_metadata.as_ref().is_none_or(BTreeMap::is_empty)
        {
            record.extra_metadata = Some(extra);
            if record.metadata_source != MetadataSource::Document {
                record.metadata_source = MetadataSource::K3sMap;
            }
        }
    }
}

/// Reads the record and K3s's metadata of `name` from `metadata_dir`. Snapshots saved by
/// earlier etcdsnap releases have their record at `<name>` itself; it is read there too.
pub fn read_metadata(metadata_dir: &Path, name: &SnapshotName) -> FoundMetadata {
    let mut found = FoundMetadata::default();
    let record_path = metadata_dir.join(name.record_file_name());
    match read_bounded(&record_path).map(|b| b.map(|b| parse_stored_metadata(&b, name.as_str()))) {
        Ok(None) => {}
        Ok(Some(Ok(StoredMetadata::Document(doc)))) => found.record = Some(*doc),
        Ok(Some(Ok(StoredMetadata::ExtraMetadata(_)))) => {
            found.problems.push(format!("ignoring {}: not an etcdsnap record", record_path.display()))
        }
        Ok(Some(Err(e))) => found.problems.push(format!("ignoring metadata {}: {e}", record_path.display())),
        Err(e) => found.problems.push(format!("ignoring metadata {}: {e}", record_path.display())),
    }
    let k3s_path = metadata_dir.join(name.as_str());
    match read_bounded(&k3s_path).map(|b| b.map(|b| parse_stored_metadata(&b, name.as_str()))) {
        Ok(None) => {}
        Ok(Some(Ok(StoredMetadata::ExtraMetadata(map)))) => found.extra = Some(map),
        Ok(Some(Ok(StoredMetadata::Document(doc)))) => {
            if found.record.is_none() {
                found.record = Some(*doc);
            }
        }
        Ok(Some(Err(e))) => found.problems.push(format!("ignoring metadata {}: {e}", k3s_path.display())),
        Err(e) => found.problems.push(format!("ignoring metadata {}: {e}", k3s_path.display())),
    }
    found
}

impl LocalStore {
    /// Earlier releases kept etcdsnap's record in `.metadata/<name>`, K3s's file: the record
    /// moves to `<name>.etcdsnap.json`, and `<name>` becomes what K3s writes there (the extra
    /// metadata, or nothing). Only a save holding the lock calls this; the record is written
    /// before K3s's file is changed, so a crash in between loses nothing.
    pub(super) fn migrate_records(&self) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(&self.metadata_dir) else { return Vec::new() };
        let mut moved = Vec::new();
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().and_then(|n| SnapshotName::parse(n).ok()) else { continue };
            let record_path = self.record_path(&name);
            if record_path.symlink_metadata().is_ok() {
                continue;
            }
            let Ok(Some(bytes)) = read_bounded(&entry.path()) else { continue };
            let Ok(StoredMetadata::Document(doc)) = parse_stored_metadata(&bytes, name.as_str()) else { continue };
            let k3s = doc.extra_metadata.as_ref().filter(|m| !m.is_empty()).map(etcdsnap_api::go::marshal_string_map);
            let migrated = write_atomic(&record_path, &bytes).and_then(|()| match &k3s {
                Some(map) => write_atomic(&entry.path(), map),
                None => fs::remove_file(entry.path()).map_err(StoreError::io("remove", entry.path())),
            });
            match migrated {
                Ok(()) => moved.push(entry.path()),
                Err(e) => {
                    tracing::warn!(error = %e, "moving an earlier release's record failed; it is still read where it is")
                }
            }
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::local::tests::doc;

    #[test]
    fn records_of_earlier_releases_and_k3s_maps_are_read() {
        let root = tempfile::tempdir().unwrap();
        let store = LocalStore::open(&root.path().join("snapshots"), true, "n").unwrap();
        fs::create_dir_all(store.metadata_dir()).unwrap();
        for n in ["old-n-1", "k3s-n-2"] {
            fs::write(store.dir().join(n), b"abc").unwrap();
        }
        fs::write(store.metadata_dir().join("old-n-1"), doc("old-n-1", None).to_json()).unwrap();
        fs::write(store.metadata_dir().join("k3s-n-2"), br#"{"a":"b"}"#).unwrap();
        let listing = store.list_blocking().unwrap();
        let old = listing.records.iter().find(|r| r.name.as_str() == "old-n-1").unwrap();
        assert_eq!(old.metadata_source, MetadataSource::Document);
        assert_eq!(old.sha256.as_deref(), Some("ab".repeat(32).as_str()));
        let k3s = listing.records.iter().find(|r| r.name.as_str() == "k3s-n-2").unwrap();
        assert_eq!(k3s.metadata_source, MetadataSource::K3sMap);
        assert_eq!(k3s.extra_metadata, Some(BTreeMap::from([("a".to_string(), "b".to_string())])));
        assert!(listing.warnings.is_empty(), "{:?}", listing.warnings);
    }

    #[test]
    fn records_of_earlier_releases_move_out_of_k3s_s_file_when_a_save_takes_the_lock() {
        let root = tempfile::tempdir().unwrap();
        let store = LocalStore::open(&root.path().join("snapshots"), true, "n").unwrap();
        fs::create_dir_all(store.metadata_dir()).unwrap();
        let extra = BTreeMap::from([("rancher".to_string(), "x".to_string())]);
        for (n, e) in [("old-n-1", None), ("old-n-2", Some(extra.clone()))] {
            fs::write(store.dir().join(n), b"abc").unwrap();
            fs::write(store.metadata_dir().join(n), doc(n, e).to_json()).unwrap();
        }
        let before = store.list_blocking().unwrap();
        drop(store.lock().unwrap());
        assert!(!store.metadata_dir().join("old-n-1").exists(), "no extra metadata: no K3s file");
        assert_eq!(fs::read(store.metadata_dir().join("old-n-2")).unwrap(), br#"{"rancher":"x"}"#);
        assert!(store.metadata_dir().join("old-n-1.etcdsnap.json").is_file());
        let after = store.list_blocking().unwrap();
        assert_eq!(before.records, after.records, "the same records, read from their new place");
    }
}
