//! What listings learned about S3 objects (their metadata documents, or K3s's user metadata
//! from a HEAD), keyed by object key and ETag. An object whose ETag has not changed is never
//! fetched again, so a repeated listing of unchanged objects costs only LIST requests. Kept in
//! memory and, when a data directory is available, in a file so that separate runs share it.

use crate::files::{create_private_dir, write_atomic};
use crate::store::StoreError;
use etcdsnap_api::MetadataDocument;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// What is known about one object at one ETag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Learned {
    /// `x-amz-meta-*` of a snapshot object (names lowercased, without the prefix).
    UserMetadata { metadata: BTreeMap<String, String> },
    /// An etcdsnap metadata document.
    Document { document: Box<MetadataDocument> },
    /// K3s's flat extra-metadata map.
    ExtraMetadata { metadata: BTreeMap<String, String> },
    /// A metadata document that was refused (the reason is repeated as a warning each listing).
    Rejected { reason: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    etag: String,
    learned: Learned,
}

/// Version of the file format; other versions are ignored (rebuilt).
const FORMAT: u32 = 1;

#[derive(Debug, Default, Serialize, Deserialize)]
struct CacheFile {
    format: u32,
    entries: BTreeMap<String, Entry>,
}

/// The cache for one bucket folder.
#[derive(Debug, Default)]
pub struct DetailsCache {
    entries: BTreeMap<String, Entry>,
    path: Option<PathBuf>,
    dirty: bool,
}

impl DetailsCache {
    /// Loads the cache file if there is a usable one; a missing or unreadable file just means
    /// starting empty.
    pub fn load(path: Option<PathBuf>) -> DetailsCache {
        let entries = path
            .as_deref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|bytes| serde_json::from_slice::<CacheFile>(&bytes).ok())
            .filter(|f| f.format == FORMAT)
            .map(|f| f.entries)
            .unwrap_or_default();
        DetailsCache { entries, path, dirty: false }
    }

    pub fn get(&self, key: &str, etag: &str) -> Option<&Learned> {
        self.entries.get(key).filter(|e| e.etag == etag && !etag.is_empty()).map(|e| &e.learned)
    }

    pub fn put(&mut self, key: &str, etag: &str, learned: Learned) {
        self.entries.insert(key.to_string(), Entry { etag: etag.to_string(), learned });
        self.dirty = true;
    }

    /// Forgets objects that are gone.
    pub fn retain(&mut self, live: &HashSet<String>) {
        let before = self.entries.len();
        self.entries.retain(|k, _| live.contains(k));
        self.dirty |= self.entries.len() != before;
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the file if something changed (atomically, mode 0600). Failures only cost a
    /// warm start next time.
    pub fn save(&mut self) {
        let Some(path) = self.path.clone() else { return };
        if !self.dirty {
            return;
        }
        match write_file(&path, &CacheFile { format: FORMAT, entries: self.entries.clone() }) {
            Ok(()) => self.dirty = false,
            Err(e) => tracing::debug!(file = %path.display(), error = %e, "S3 listing cache not saved"),
        }
    }
}

fn write_file(path: &Path, file: &CacheFile) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(file).map_err(|e| StoreError::io("serialize", path)(std::io::Error::other(e)))?;
    if let Some(dir) = path.parent() {
        create_private_dir(dir)?;
    }
    write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_valid_only_for_their_etag_and_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c/cache.json");
        let mut c = DetailsCache::load(Some(path.clone()));
        assert!(c.is_empty());
        c.put("k", "e1", Learned::Rejected { reason: "not JSON".into() });
        assert!(c.get("k", "e1").is_some());
        assert!(c.get("k", "e2").is_none());
        assert!(c.get("k", "").is_none());
        c.save();
        let mut again = DetailsCache::load(Some(path.clone()));
        assert_eq!(again.get("k", "e1"), Some(&Learned::Rejected { reason: "not JSON".into() }));
        again.retain(&HashSet::new());
        assert!(again.is_empty());
        std::fs::write(&path, "garbage").unwrap();
        assert!(DetailsCache::load(Some(path)).is_empty());
    }

    #[test]
    fn the_cache_file_is_private_and_replaced_whole() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache/s3.json");
        let mut c = DetailsCache::load(Some(path.clone()));
        c.put("k", "e1", Learned::Rejected { reason: "x".into() });
        c.save();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&path), mode(path.parent().unwrap())), (0o600, 0o700));
        let names: Vec<_> =
            std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["s3.json"], "no partial file is left beside it");
    }
}
