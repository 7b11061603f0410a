//! Sealing: what keeps a stored snapshot unreadable and unforgeable for whoever holds the bucket
//! or the disk, in the formats of the standard tools, so an operator can open and check every
//! byte without etcdsnap.
//!
//! - [`keys`]: recipients (public keys a save encrypts to) and identities (the private keys a
//!   restore decrypts with), in the formats of the `age` tool. The encryption itself runs in the
//!   save's one pass (`pipeline::seal`) and the decryption in the pass that re-reads stored bytes
//!   (`pipeline::verify`).
//! - [`sign`]: minisign signatures of records, detached, as the `minisign` tool makes and checks
//!   them.
//! - [`kit`]: the restore kit, a tar of the server token and the files a fresh host needs,
//!   sealed to the snapshot's recipients.
//!
//! Private keys are read from files that no one but their owner may read ([`read_private_file`])
//! and never reach a log, a record, a resource or an error message: every type holding one
//! prints as `<redacted>`.

pub mod keys;
pub mod kit;
pub mod sign;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub use keys::{Identity, Recipients};
pub use kit::{KitContents, KitEntry, KitError, KitSpec};
pub use sign::{SignatureError, SigningKey, VerifyKey};

/// Largest key, identity or recipients file read.
const MAX_KEY_FILE: u64 = 1024 * 1024;

/// Why a key, an identity or a recipient could not be used. Messages name the file or flag,
/// never the key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{what} {} can be read by others (mode {mode:04o}): a private key must be 0600 (chmod 600 {})",
        path.display(),
        path.display()
    )]
    Exposed { what: &'static str, path: PathBuf, mode: u32 },
    #[error("{what} {} is larger than {MAX_KEY_FILE} bytes", path.display())]
    TooLarge { what: &'static str, path: PathBuf },
    #[error("{what} {}: {message}", path.display())]
    Invalid { what: &'static str, path: PathBuf, message: String },
    #[error("{0}")]
    Recipient(String),
}

/// Reads a file holding a private key (an age identity, a minisign secret key): refused unless
/// only its owner may read it (0600 or stricter; followed through a symlink, as Kubernetes
/// mounts Secrets).
pub fn read_private_file(path: &Path, what: &'static str) -> Result<String, KeyError> {
    let meta = std::fs::metadata(path).map_err(|source| KeyError::Read { what, path: path.into(), source })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Exposed { what, path: path.into(), mode });
    }
    read_key_file(path, what)
}

/// Reads a small text file of keys (public or private; callers check private ones first).
pub fn read_key_file(path: &Path, what: &'static str) -> Result<String, KeyError> {
    let file = std::fs::File::open(path).map_err(|source| KeyError::Read { what, path: path.into(), source })?;
    let mut text = String::new();
    file.take(MAX_KEY_FILE + 1).read_to_string(&mut text).map_err(|source| KeyError::Read {
        what,
        path: path.into(),
        source,
    })?;
    if text.len() as u64 > MAX_KEY_FILE {
        return Err(KeyError::TooLarge { what, path: path.into() });
    }
    Ok(text)
}

/// The keys that open and check sealed snapshots, for the operations that read them (restore,
/// drill, verify, point-in-time restore, `kit`). Either may be absent.
#[derive(Clone, Default)]
pub struct OpenKeys {
    /// Decrypts sealed snapshots and kits.
    pub identity: Option<std::sync::Arc<Identity>>,
    /// With it, only snapshots whose record carries a good signature are accepted.
    pub verify_key: Option<std::sync::Arc<VerifyKey>>,
}

impl std::fmt::Debug for OpenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenKeys")
            .field("identity", &self.identity.as_ref().map(|_| "<redacted>"))
            .field("verify_key", &self.verify_key)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_readable_by_others_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "secret").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_private_file(&path, "identity file").unwrap_err().to_string();
        assert!(err.contains("mode 0644") && err.contains("chmod 600"), "{err}");
        assert!(!err.contains("secret"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(read_private_file(&path, "identity file").unwrap(), "secret");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_private_file(&path, "identity file").unwrap(), "secret");
    }
}
