//! Where the snapshot to restore comes from: a file given by path, a name in the local snapshot
//! directory, or a record in any [`SnapshotStore`] (S3). Resolution only looks: it reads the file's
//! metadata and its metadata document, never the snapshot's bytes.
//!
//! Files are read in place (etcdutl can read a plain snapshot directly, with no copy); snapshots
//! in a store are streamed through [`SnapshotStore::open`], so S3 needs nothing but a store.

use etcdsnap_api::{Compression, NameError, SnapshotName, StorageKind};
use etcdsnap_storage::record::SnapshotRecord;
use etcdsnap_storage::store::local::{Layout, LocalStore, read_metadata};
use etcdsnap_storage::store::{SnapshotStore, StoreError};
use serde::Serialize;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a snapshot could not be found or opened. Nothing has been touched when this is returned.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("snapshot file {} does not exist", .0.display())]
    NotFound(PathBuf),
    #[error("{} is a directory, not a snapshot file", .0.display())]
    IsDirectory(PathBuf),
    #[error("{} is not a regular file", .0.display())]
    NotAFile(PathBuf),
    #[error("cannot read snapshot file {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    BadName {
        path: PathBuf,
        #[source]
        source: NameError,
    },
    #[error("snapshot {name} not found in {store} (to restore a file, give its path, e.g. ./{name})")]
    NotInStore { name: String, store: String },
    #[error("snapshot {name} in {store} is a failed save and has no data")]
    Failed { name: String, store: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Kind of source, as the report shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A file given by path.
    File,
    /// A name in the local snapshot directory.
    Local,
    /// An object in S3.
    S3,
}

/// How the bytes are reached.
#[derive(Clone)]
pub enum Origin {
    /// Read in place.
    Path(PathBuf),
    /// Streamed from a store.
    Store(Arc<dyn SnapshotStore>),
}

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Path(p) => write!(f, "Path({})", p.display()),
            Origin::Store(s) => write!(f, "Store({})", s.describe()),
        }
    }
}

/// A resolved snapshot: its record (with whatever metadata was found) and how to read it.
#[derive(Debug, Clone)]
pub struct SnapshotSource {
    pub kind: SourceKind,
    pub origin: Origin,
    pub record: SnapshotRecord,
    /// How the bytes are compressed (from the content when it disagrees with the name).
    pub compression: Compression,
    /// Whether the bytes are sealed with age (from the name, or the content).
    pub sealed: bool,
    /// Size recorded in the metadata document, to compare with what is there now.
    pub recorded_size: Option<u64>,
    /// Things worth saying that do not stop the restore (unreadable metadata, odd names).
    pub notes: Vec<String>,
}

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// How every age file begins (`age-encryption.org/v1`), as far as the sniffed header goes.
const AGE_MAGIC: [u8; 4] = *b"age-";
const ZIP_MAGIC: [u8; 4] = *b"PK\x03\x04";

/// Compression recognised from the first bytes; None for anything else (an etcd database).
pub fn sniff(header: &[u8]) -> Option<Compression> {
    if header.starts_with(&ZSTD_MAGIC) {
        Some(Compression::Zstd)
    } else if header.starts_with(&ZIP_MAGIC) {
        Some(Compression::Zip)
    } else {
        None
    }
}

impl SnapshotSource {
    /// A snapshot file given by path. Its record and K3s's metadata are looked for where
    /// etcdsnap and K3s keep them beside its directory ([`Layout`]: etcdsnap's records of that
    /// directory, K3s's `<dir>/../.metadata/<name>`); without a record the restore still works,
    /// with fewer checks.
    pub fn from_path(path: &Path) -> Result<SnapshotSource, SourceError> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SourceError::NotFound(path.to_path_buf()));
            }
            Err(source) => {
                return Err(SourceError::Unreadable { path: path.to_path_buf(), source });
            }
        };
        if meta.is_dir() {
            return Err(SourceError::IsDirectory(path.to_path_buf()));
        }
        if !meta.is_file() {
            return Err(SourceError::NotAFile(path.to_path_buf()));
        }
        let path =
            std::path::absolute(path).map_err(|source| SourceError::Unreadable { path: path.to_path_buf(), source })?;
        let mut header = [0u8; 4];
        let read = File::open(&path)
            .and_then(|mut f| read_up_to(&mut f, &mut header))
            .map_err(|source| SourceError::Unreadable { path: path.clone(), source })?;
        let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let name =
            SnapshotName::parse(&file_name).map_err(|source| SourceError::BadName { path: path.clone(), source })?;
        let layout = path.parent().map(Layout::of);
        let mut source = SnapshotSource {
            kind: SourceKind::File,
            origin: Origin::Path(path.clone()),
            compression: name.compression(),
            sealed: name.is_sealed() || header[..read].starts_with(&AGE_MAGIC),
            record: file_record(name, &path, &meta),
            recorded_size: None,
            notes: Vec::new(),
        };
        if let Some(layout) = layout {
            source.apply_metadata(&layout);
        }
        if let Some(found) = sniff(&header[..read]).filter(|_| !source.sealed)
            && found != source.compression
        {
            source.notes.push(format!(
                "the content is {found}-compressed although the name says {}; reading it as {found}",
                source.compression
            ));
            source.compression = found;
        }
        Ok(source)
    }

    /// A name in the local snapshot directory (read in place, like a path).
    pub fn from_local_store(store: &LocalStore, name: &SnapshotName) -> Result<SnapshotSource, SourceError> {
        let path = store.snapshot_path(name);
        let mut source = match SnapshotSource::from_path(&path) {
            Err(SourceError::NotFound(_)) => {
                return Err(SourceError::NotInStore { name: name.to_string(), store: store.describe() });
            }
            other => other?,
        };
        source.kind = SourceKind::Local;
        Ok(source)
    }

    /// A snapshot in any store, found by name in its listing, streamed when read. This is how
    /// S3 snapshots are restored; the record carries the token hash from S3 metadata or from
    /// the metadata document.
    pub async fn from_store(store: Arc<dyn SnapshotStore>, name: &SnapshotName) -> Result<SnapshotSource, SourceError> {
        let listing = store.list().await?;
        let mut notes = listing.warnings;
        notes.retain(|w| w.contains(name.as_str()));
        let record = listing
            .records
            .into_iter()
            .find(|r| &r.name == name)
            .ok_or_else(|| SourceError::NotInStore { name: name.to_string(), store: store.describe() })?;
        Self::from_listed(store, record, notes)
    }

    /// A snapshot already found in `store`'s listing: callers that list once and pick several
    /// snapshots (drills) do not list the store again for each one.
    pub fn from_listed(
        store: Arc<dyn SnapshotStore>,
        record: SnapshotRecord,
        notes: Vec<String>,
    ) -> Result<SnapshotSource, SourceError> {
        if !record.is_ready() {
            return Err(SourceError::Failed { name: record.name.to_string(), store: store.describe() });
        }
        let kind = match store.kind() {
            StorageKind::Local => SourceKind::Local,
            StorageKind::S3 => SourceKind::S3,
        };
        Ok(SnapshotSource {
            kind,
            compression: record.name.compression(),
            sealed: record.name.is_sealed(),
            recorded_size: None,
            record,
            origin: Origin::Store(store),
            notes,
        })
    }

    /// The store the snapshot is in, when it came from one.
    pub fn store(&self) -> Option<&Arc<dyn SnapshotStore>> {
        match &self.origin {
            Origin::Store(store) => Some(store),
            Origin::Path(_) => None,
        }
    }

    /// Where the snapshot's record, signature and kit are kept: its store, or for a file given
    /// by path the records etcdsnap keeps beside its directory.
    pub fn companions(&self) -> Result<Arc<dyn SnapshotStore>, SourceError> {
        match &self.origin {
            Origin::Store(store) => Ok(store.clone()),
            Origin::Path(path) => {
                let dir = path.parent().unwrap_or(Path::new("/"));
                Ok(Arc::new(LocalStore::open(dir, false, &self.record.node_name)?))
            }
        }
    }

    /// The file, when the snapshot is read in place.
    pub fn path(&self) -> Option<&Path> {
        match &self.origin {
            Origin::Path(p) => Some(p),
            Origin::Store(_) => None,
        }
    }

    /// Opens the stored bytes for a blocking reader (call from a blocking thread; a store's
    /// async stream is bridged). Returns the reader and the size the source reports.
    pub(crate) async fn open(&self) -> Result<(Box<dyn Read + Send>, u64), SourceError> {
        match &self.origin {
            Origin::Path(path) => {
                let file = File::open(path).map_err(|source| SourceError::Unreadable { path: path.clone(), source })?;
                let size = file.metadata().map(|m| m.len()).unwrap_or(self.record.size);
                Ok((Box::new(file), size))
            }
            Origin::Store(store) => {
                let reader = store.open(&self.record.name).await?;
                let bridge = tokio_util::io::SyncIoBridge::new(reader.reader);
                Ok((Box::new(bridge), reader.size))
            }
        }
    }

    /// The record and K3s's metadata found where etcdsnap and K3s keep them.
    fn apply_metadata(&mut self, layout: &Layout) {
        let found = read_metadata(layout, &self.record.name);
        self.recorded_size = found.record.as_ref().map(|d| d.size);
        found.apply_to(&mut self.record, &mut self.notes);
        // What the file system says stays authoritative for the record itself.
        self.record.compression = self.record.name.compression();
    }
}

/// A record for a file, from its name and stat alone.
fn file_record(name: SnapshotName, path: &Path, meta: &std::fs::Metadata) -> SnapshotRecord {
    let modified = meta.modified().ok().and_then(|t| jiff::Timestamp::try_from(t).ok());
    let created_at = SnapshotRecord::creation_time(&name, modified.unwrap_or(jiff::Timestamp::UNIX_EPOCH));
    let location = format!("file://{}", path.display());
    SnapshotRecord::stored(name, StorageKind::Local, String::new(), location, created_at, meta.len())
}

/// Reads as much of `buf` as the file has.
fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdsnap_api::{EtcdInfo, TokenHash};
    use etcdsnap_storage::record::MetadataSource;

    fn write(path: &Path, bytes: &[u8]) {
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).unwrap();
        }
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn paths_are_checked_and_documents_read() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        assert!(matches!(SnapshotSource::from_path(&missing), Err(SourceError::NotFound(_))));
        assert!(matches!(SnapshotSource::from_path(dir.path()), Err(SourceError::IsDirectory(_))));
        let part = dir.path().join("x.part");
        write(&part, b"x");
        assert!(matches!(SnapshotSource::from_path(&part), Err(SourceError::BadName { .. })));

        let snap = dir.path().join("snapshots/on-demand-n1-1700000000");
        write(&snap, b"etcd bytes");
        let bare = SnapshotSource::from_path(&snap).unwrap();
        assert_eq!(bare.kind, SourceKind::File);
        assert_eq!(bare.record.metadata_source, MetadataSource::None);
        assert_eq!(bare.record.created_at.as_second(), 1_700_000_000);
        assert_eq!(bare.record.token_hash, None);

        let mut record = bare.record.clone();
        record.node_name = "n1".into();
        record.size = 99;
        record.token_hash = TokenHash::parse_recorded("652c7dc687d9");
        record.etcd = Some(EtcdInfo { revision: 7, version: "3.6.16".into(), ..Default::default() });
        // An earlier release's record at `.metadata/<name>`, then one beside K3s's metadata, then
        // today's in the snapshot directory's own records: each is found.
        write(&dir.path().join(".metadata/on-demand-n1-1700000000"), &record.to_document().to_json());
        let old = SnapshotSource::from_path(&snap).unwrap();
        assert_eq!(old.record.metadata_source, MetadataSource::Document);
        assert_eq!(old.recorded_size, Some(99));
        write(&dir.path().join(".metadata/on-demand-n1-1700000000"), br#"{"rancher":"x"}"#);
        let legacy = dir.path().join(".metadata/on-demand-n1-1700000000.etcdsnap.json");
        write(&legacy, &record.to_document().to_json());
        assert_eq!(SnapshotSource::from_path(&snap).unwrap().recorded_size, Some(99));
        std::fs::remove_file(&legacy).unwrap();
        let records = dir.path().join(".etcdsnap/dirs/snapshots/records");
        write(&records.join("on-demand-n1-1700000000.etcdsnap.json"), &record.to_document().to_json());
        let full = SnapshotSource::from_path(&snap).unwrap();
        assert_eq!(full.record.metadata_source, MetadataSource::Document);
        assert_eq!(full.record.node_name, "n1");
        assert_eq!(full.record.token_hash, record.token_hash);
        assert_eq!(full.recorded_size, Some(99));
        assert_eq!(full.record.size, 10);
        assert_eq!(full.record.etcd.map(|e| e.revision), Some(7));
        assert_eq!(full.record.extra_metadata.and_then(|m| m.get("rancher").cloned()).as_deref(), Some("x"));
    }

    #[test]
    fn content_wins_over_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let snap = dir.path().join("backup.db");
        write(&snap, &zstd::encode_all(&b"hello"[..], 3).unwrap_or_default());
        let s = SnapshotSource::from_path(&snap).unwrap();
        assert_eq!(s.compression, Compression::Zstd);
        assert_eq!(s.notes.len(), 1, "{:?}", s.notes);
    }
}
