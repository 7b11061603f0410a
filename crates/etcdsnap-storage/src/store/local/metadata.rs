//! Reading what is recorded about one local snapshot: etcdsnap's record (in the snapshot
//! directory's private directory, or where an earlier release left it) and K3s's extra
//! metadata (`<dir>/../.metadata/<name>`), with their limits.

use super::layout::Layout;
use super::legacy::is_this_directorys;
use crate::files::read_bounded;
use crate::record::{MetadataSource, SnapshotRecord};
use etcdsnap_api::{MetadataDocument, SnapshotName, StoredMetadata, parse_stored_metadata};
use std::collections::BTreeMap;
use std::path::Path;

/// What is recorded about one snapshot.
#[derive(Debug, Default)]
pub struct FoundMetadata {
    /// etcdsnap's record.
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

/// One metadata file read: absent, what it holds, or why it was refused.
fn read_file(path: &Path, name: &SnapshotName) -> Result<Option<StoredMetadata>, String> {
    match read_bounded(path).map(|b| b.map(|b| parse_stored_metadata(&b, name.as_str()))) {
        Ok(None) => Ok(None),
        Ok(Some(Ok(found))) => Ok(Some(found)),
        Ok(Some(Err(e))) => Err(format!("ignoring metadata {}: {e}", path.display())),
        Err(e) => Err(format!("ignoring metadata {}: {e}", path.display())),
    }
}

/// Reads the record and K3s's metadata of snapshot `name` of the snapshot directory `layout`
/// describes. The record is read from the directory's private directory; failing that, from
/// where earlier releases kept it, `.metadata/<name>.etcdsnap.json` or `.metadata/<name>`
/// itself, when it is this directory's ([`is_this_directorys`]: that directory is shared by
/// every snapshot directory of the parent).
pub fn read_metadata(layout: &Layout, name: &SnapshotName) -> FoundMetadata {
    let mut found = FoundMetadata::default();
    for (path, legacy) in [(layout.record_path(name), false), (layout.legacy_record_path(name), true)] {
        match read_file(&path, name) {
            Ok(None) => continue,
            Ok(Some(StoredMetadata::Document(doc))) if legacy && !is_this_directorys(layout, name, &doc) => continue,
            Ok(Some(StoredMetadata::Document(doc))) => found.record = Some(*doc),
            Ok(Some(StoredMetadata::ExtraMetadata(_))) => {
                found.problems.push(format!("ignoring {}: not an etcdsnap record", path.display()))
            }
            Err(problem) => found.problems.push(problem),
        }
        break;
    }
    let k3s_path = layout.k3s_metadata_path(name);
    match read_file(&k3s_path, name) {
        Ok(None) => {}
        Ok(Some(StoredMetadata::ExtraMetadata(map))) => found.extra = Some(map),
        Ok(Some(StoredMetadata::Document(doc))) => {
            if found.record.is_none() && is_this_directorys(layout, name, &doc) {
                found.record = Some(*doc);
            }
        }
        Err(problem) => found.problems.push(problem),
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::local::LocalStore;
    use crate::store::local::tests::doc;
    use std::fs;

    #[test]
    fn records_here_of_earlier_releases_and_k3s_maps_are_read() {
        let root = tempfile::tempdir().unwrap();
        let store = LocalStore::open(&root.path().join("snapshots"), true, "n").unwrap();
        fs::create_dir_all(store.metadata_dir()).unwrap();
        fs::create_dir_all(store.layout().records()).unwrap();
        for n in ["new-n-0", "old-n-1", "k3s-n-2", "mid-n-3"] {
            fs::write(store.dir().join(n), b"abc").unwrap();
        }
        fs::write(store.layout().records().join("new-n-0.etcdsnap.json"), doc("new-n-0", None).to_json()).unwrap();
        fs::write(store.metadata_dir().join("old-n-1"), doc("old-n-1", None).to_json()).unwrap();
        fs::write(store.metadata_dir().join("k3s-n-2"), br#"{"a":"b"}"#).unwrap();
        fs::write(store.metadata_dir().join("mid-n-3.etcdsnap.json"), doc("mid-n-3", None).to_json()).unwrap();
        let listing = store.list_blocking().unwrap();
        for n in ["new-n-0", "old-n-1", "mid-n-3"] {
            let r = listing.records.iter().find(|r| r.name.as_str() == n).unwrap();
            assert_eq!(r.metadata_source, MetadataSource::Document, "{n}");
            assert_eq!(r.sha256.as_deref(), Some("ab".repeat(32).as_str()), "{n}");
        }
        let k3s = listing.records.iter().find(|r| r.name.as_str() == "k3s-n-2").unwrap();
        assert_eq!(k3s.metadata_source, MetadataSource::K3sMap);
        assert_eq!(k3s.extra_metadata, Some(BTreeMap::from([("a".to_string(), "b".to_string())])));
        assert!(listing.warnings.is_empty(), "{:?}", listing.warnings);
    }
}
