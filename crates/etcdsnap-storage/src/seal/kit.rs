//! The restore kit: what a fresh host needs besides the snapshot, sealed beside it. The commonest
//! reason a restore fails on new hosts is not the snapshot but a lost server token, lost
//! certificates or a lost EncryptionConfiguration; the kit keeps them with every snapshot.
//!
//! A kit is a tar archive, sealed with age to the snapshot's recipients, so `age -d kit | tar
//! -tv` shows it without etcdsnap. It holds `token` (the server token, mode 0600) and
//! `files/<absolute path>` for each file named at save time (a directory adds every regular file
//! under it), each with its mode. The record references it by the sha256 of its stored bytes.
//! `etcdsnap kit` writes the files back; a restore reads the token from it.

use super::{Identity, Recipients};
use etcdsnap_api::KitRef;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// The entry of the server token.
pub const TOKEN_ENTRY: &str = "token";
/// Where the files are, in the archive and in the directory `etcdsnap kit` writes.
pub const FILES_DIR: &str = "files";
/// Largest kit, before and after sealing: keys and certificates, not data.
pub const MAX_KIT_BYTES: u64 = 16 * 1024 * 1024;

/// Why a kit could not be made, read or written. Messages name paths, never contents.
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    #[error("kit file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kit file {}: not a regular file or directory", .0.display())]
    NotAFile(PathBuf),
    #[error("kit file {}: the path must be absolute", .0.display())]
    Relative(PathBuf),
    #[error("the restore kit would be larger than {MAX_KIT_BYTES} bytes: --kit-file is for keys and certificates")]
    TooLarge,
    #[error("sealing the restore kit: {0}")]
    Seal(String),
    #[error("the restore kit cannot be opened: {0}")]
    Open(String),
    #[error("the restore kit does not match its record: its bytes hash to {found}, the record says {recorded}")]
    Digest { recorded: String, found: String },
    #[error("the restore kit holds an entry etcdsnap does not write ({0:?}): refused")]
    BadEntry(String),
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a save puts in the kit.
#[derive(Clone, Default)]
pub struct KitSpec {
    /// The server token's text.
    pub token: Option<String>,
    /// Files and directories, by absolute path.
    pub files: Vec<PathBuf>,
}

impl std::fmt::Debug for KitSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KitSpec")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("files", &self.files)
            .finish()
    }
}

/// One file of a kit.
#[derive(Clone)]
pub struct KitEntry {
    /// `token`, or `files/<absolute path without its leading />`.
    pub path: String,
    pub mode: u32,
    pub data: Vec<u8>,
}

impl std::fmt::Debug for KitEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KitEntry({} {:04o}, {} bytes)", self.path, self.mode, self.data.len())
    }
}

/// A kit's files, in the clear (in memory only).
#[derive(Debug, Clone, Default)]
pub struct KitContents {
    pub entries: Vec<KitEntry>,
}

impl KitSpec {
    /// Whether there is anything to put in a kit.
    pub fn is_empty(&self) -> bool {
        self.token.is_none() && self.files.is_empty()
    }

    /// Reads the token and the files now (a directory: every regular file under it, in name
    /// order; symbolic links inside it are left out). A file named that cannot be read fails
    /// the kit: a snapshot must not go without what was asked to be kept with it.
    pub fn gather(&self) -> Result<KitContents, KitError> {
        let mut contents = KitContents::default();
        let mut total = 0u64;
        if let Some(token) = &self.token {
            contents.push(TOKEN_ENTRY.into(), 0o600, token.trim().as_bytes().to_vec(), &mut total)?;
        }
        for path in &self.files {
            if !path.is_absolute() {
                return Err(KitError::Relative(path.clone()));
            }
            let meta = std::fs::metadata(path).map_err(|source| KitError::Read { path: path.clone(), source })?;
            if meta.is_dir() {
                contents.add_dir(path, &mut total)?;
            } else if meta.is_file() {
                contents.add_file(path, &mut total)?;
            } else {
                return Err(KitError::NotAFile(path.clone()));
            }
        }
        Ok(contents)
    }
}

impl KitContents {
    fn push(&mut self, path: String, mode: u32, data: Vec<u8>, total: &mut u64) -> Result<(), KitError> {
        *total += data.len() as u64 + 512;
        if *total > MAX_KIT_BYTES {
            return Err(KitError::TooLarge);
        }
        if !self.entries.iter().any(|e| e.path == path) {
            self.entries.push(KitEntry { path, mode: mode & 0o777, data });
        }
        Ok(())
    }

    fn add_file(&mut self, path: &Path, total: &mut u64) -> Result<(), KitError> {
        let read = |source| KitError::Read { path: path.into(), source };
        let file = std::fs::File::open(path).map_err(read)?;
        let mode = file.metadata().map_err(read)?.permissions().mode();
        let mut data = Vec::new();
        file.take(MAX_KIT_BYTES + 1).read_to_end(&mut data).map_err(read)?;
        let relative = path.strip_prefix("/").unwrap_or(path).to_string_lossy().into_owned();
        self.push(format!("{FILES_DIR}/{relative}"), mode, data, total)
    }

    fn add_dir(&mut self, dir: &Path, total: &mut u64) -> Result<(), KitError> {
        let read = |source| KitError::Read { path: dir.into(), source };
        let mut entries: Vec<_> = std::fs::read_dir(dir).map_err(read)?.collect::<Result<_, _>>().map_err(read)?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let kind = entry.file_type().map_err(|source| KitError::Read { path: path.clone(), source })?;
            if kind.is_dir() {
                self.add_dir(&path, total)?;
            } else if kind.is_file() {
                self.add_file(&path, total)?;
            } else {
                tracing::warn!(path = %path.display(), "not a regular file: left out of the restore kit");
            }
        }
        Ok(())
    }

    /// The server token, when the kit holds one.
    pub fn token(&self) -> Option<String> {
        let entry = self.entries.iter().find(|e| e.path == TOKEN_ENTRY)?;
        String::from_utf8(entry.data.clone()).ok()
    }

    /// What the kit holds, by path (for the record and reports; never contents).
    pub fn names(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.path.clone()).collect()
    }

    /// The kit as a tar archive.
    pub fn to_tar(&self) -> Result<Vec<u8>, KitError> {
        let mut builder = tar::Builder::new(Vec::new());
        for e in &self.entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(e.data.len() as u64);
            header.set_mode(e.mode);
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mtime(crate::clock::now().as_second().max(0) as u64);
            builder.append_data(&mut header, &e.path, e.data.as_slice()).map_err(|e| KitError::Seal(e.to_string()))?;
        }
        builder.into_inner().map_err(|e| KitError::Seal(e.to_string()))
    }

    /// Reads a kit's archive: regular files under the names etcdsnap writes, nothing else.
    pub fn from_tar(bytes: &[u8]) -> Result<KitContents, KitError> {
        let mut archive = tar::Archive::new(bytes);
        let mut contents = KitContents::default();
        let mut total = 0;
        let bad = |e: std::io::Error| KitError::Open(e.to_string());
        for entry in archive.entries().map_err(bad)? {
            let mut entry = entry.map_err(bad)?;
            let path = entry.path().map_err(bad)?.to_string_lossy().into_owned();
            if entry.header().entry_type() != tar::EntryType::Regular || !safe_entry(&path) {
                return Err(KitError::BadEntry(path));
            }
            let mode = entry.header().mode().map_err(bad)?;
            let mut data = Vec::new();
            entry.read_to_end(&mut data).map_err(bad)?;
            contents.push(path, mode, data, &mut total)?;
        }
        Ok(contents)
    }

    /// Seals the kit to `recipients`: the stored bytes, and the record's reference to them.
    pub fn seal(&self, recipients: &Recipients) -> Result<(Vec<u8>, KitRef), KitError> {
        let sealed = recipients.seal(&self.to_tar()?).map_err(|e| KitError::Seal(e.to_string()))?;
        let kit =
            KitRef { sha256: hex::encode(Sha256::digest(&sealed)), size: sealed.len() as u64, entries: self.names() };
        Ok((sealed, kit))
    }

    /// Opens a sealed kit, checking it against its record's digest first.
    pub fn open(sealed: &[u8], identity: &Identity, recorded: Option<&KitRef>) -> Result<KitContents, KitError> {
        if let Some(r) = recorded {
            let found = hex::encode(Sha256::digest(sealed));
            if found != r.sha256 {
                return Err(KitError::Digest { recorded: r.sha256.clone(), found });
            }
        }
        let plain = identity.open(sealed, MAX_KIT_BYTES).map_err(KitError::Open)?;
        KitContents::from_tar(&plain)
    }

    /// Writes the kit into `dir` (created 0700 if missing): `token` and `files/...`, each with
    /// its mode. An existing file is never replaced. Returns the paths written.
    pub fn write_to(&self, dir: &Path) -> Result<Vec<PathBuf>, KitError> {
        let mut written = Vec::new();
        for e in &self.entries {
            let path = dir.join(&e.path);
            let write = |source| KitError::Write { path: path.clone(), source };
            if let Some(parent) = path.parent() {
                std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent).map_err(write)?;
            }
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(write)?;
            std::io::Write::write_all(&mut file, &e.data).map_err(write)?;
            file.set_permissions(std::fs::Permissions::from_mode(e.mode)).map_err(write)?;
            file.sync_all().map_err(write)?;
            written.push(path);
        }
        Ok(written)
    }
}

/// `token`, or `files/` followed by plain path components only.
fn safe_entry(path: &str) -> bool {
    if path == TOKEN_ENTRY {
        return true;
    }
    let Some(rest) = path.strip_prefix(FILES_DIR).and_then(|r| r.strip_prefix('/')) else { return false };
    !rest.is_empty() && Path::new(rest).components().all(|c| matches!(c, Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::keys::tests::keypair;

    #[test]
    fn a_kit_gives_back_its_files_byte_for_byte_with_their_modes() {
        let src = tempfile::tempdir().unwrap();
        let pki = src.path().join("pki");
        std::fs::create_dir_all(pki.join("etcd")).unwrap();
        std::fs::write(pki.join("etcd/ca.key"), b"private").unwrap();
        std::fs::set_permissions(pki.join("etcd/ca.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(pki.join("etcd/ca.crt"), b"public").unwrap();
        std::fs::set_permissions(pki.join("etcd/ca.crt"), std::fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", pki.join("link")).unwrap();
        let config = src.path().join("encryption.yaml");
        std::fs::write(&config, b"kind: EncryptionConfiguration\n").unwrap();
        let spec = KitSpec { token: Some("K10abc::server:secret\n".into()), files: vec![pki.clone(), config.clone()] };
        assert!(!format!("{spec:?}").contains("secret"));
        let contents = spec.gather().unwrap();
        let (secret, public) = keypair();
        let recipients = Recipients::parse([public.as_str()]).unwrap();
        let (sealed, kit) = contents.seal(&recipients).unwrap();
        assert_eq!(kit.entries.len(), 4, "{:?}", kit.entries);
        assert!(kit.entries.iter().all(|e| !e.contains("link")));

        let identity = Identity::parse(&secret).unwrap();
        let opened = KitContents::open(&sealed, &identity, Some(&kit)).unwrap();
        assert_eq!(opened.token().as_deref(), Some("K10abc::server:secret"));
        let out = tempfile::tempdir().unwrap();
        let written = opened.write_to(out.path()).unwrap();
        assert_eq!(written.len(), 4);
        let back = |p: &Path| out.path().join(FILES_DIR).join(p.strip_prefix("/").unwrap());
        assert_eq!(std::fs::read(back(&pki.join("etcd/ca.key"))).unwrap(), b"private");
        let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(back(&pki.join("etcd/ca.key"))), 0o600);
        assert_eq!(mode(back(&pki.join("etcd/ca.crt"))), 0o644);
        assert_eq!(std::fs::read(back(&config)).unwrap(), std::fs::read(&config).unwrap());
        assert_eq!(mode(out.path().join(TOKEN_ENTRY)), 0o600);
        // Nothing is replaced.
        assert!(opened.write_to(out.path()).is_err());

        // Another kit in its place does not match the record.
        let (other, _) = KitContents::default().seal(&recipients).unwrap();
        assert!(matches!(KitContents::open(&other, &identity, Some(&kit)), Err(KitError::Digest { .. })));
    }

    #[test]
    fn entries_outside_the_kit_s_layout_are_refused() {
        for bad in ["../etc/passwd", "/etc/passwd", "files/../../x", "files/", "other"] {
            assert!(!safe_entry(bad), "{bad}");
        }
        assert!(safe_entry("files/etc/kubernetes/pki/ca.crt"));
        assert!(matches!(KitSpec { token: None, files: vec!["relative".into()] }.gather(), Err(KitError::Relative(_))));
    }
}
