//! A snapshot made ready for K3s's or RKE2's own restore (`--cluster-reset
//! --cluster-reset-restore-path`), which reads plain snapshots and `.zip` files only: a zstd
//! snapshot (or any other) is written as a plain etcd snapshot file, in the same pass that checks
//! its recorded sha256 and etcd's trailer, then given its name only when both checks passed.
//! Nothing is ever replaced: an existing file of that name is an error.

use super::{PassError, verify_pass};
use crate::restore::SnapshotSource;
use crate::restore::preflight::{CheckStatus, gather_sealing, sealing_checks};
use etcdsnap_storage::pipeline::Progress;
use etcdsnap_storage::seal::OpenKeys;
use std::path::{Path, PathBuf};

/// The prepared file.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub path: PathBuf,
    /// Bytes of the plain file (etcd's database and its trailer).
    pub size: u64,
    /// sha256 of the stored snapshot as read, and whether a recorded one was compared with it.
    pub stored_sha256: String,
    pub sha256_recorded: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("{} exists already: remove it or choose another directory", .0.display())]
    Exists(PathBuf),
    /// The record's signature or the snapshot's sealing refused it (each check with its fix).
    #[error("{0}; nothing was written")]
    Refused(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Pass(#[from] PassError),
    #[error(
        "the snapshot's bytes hash to {actual}, not to the recorded {recorded}: it changed after it was saved; nothing was written"
    )]
    Sha256 { recorded: String, actual: String },
    #[error("etcd's trailer does not match: {0}; nothing was written")]
    Trailer(String),
}

/// Where a snapshot is prepared in `dir`: its name without its sealing and compression
/// extensions.
pub fn prepared_path(source: &SnapshotSource, dir: &Path) -> PathBuf {
    dir.join(source.record.name.without_compression_extension())
}

/// Writes `source` opened (with the identity of `keys`, when sealed) and decompressed to
/// [`prepared_path`] in `dir`, checked on the way. With a verify key, the record's signature is
/// checked first and the signed record is what the bytes are compared with; a sealed snapshot
/// without an identity that opens it is refused. Both before anything is written.
pub async fn prepare_plain(
    source: &mut SnapshotSource,
    dir: &Path,
    keys: &OpenKeys,
    progress: Option<Progress>,
) -> Result<Prepared, PrepareError> {
    let path = prepared_path(source, dir);
    if path.symlink_metadata().is_ok() {
        return Err(PrepareError::Exists(path));
    }
    let facts = gather_sealing(source, keys, true, None).await;
    let refused: Vec<String> = sealing_checks(source, keys, &facts)
        .into_iter()
        .filter(|c| c.status == CheckStatus::Fail)
        .map(|c| match c.fix {
            Some(fix) => format!("{}: {} ({fix})", c.name, c.detail),
            None => format!("{}: {}", c.name, c.detail),
        })
        .collect();
    if !refused.is_empty() {
        return Err(PrepareError::Refused(refused.join("; ")));
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PrepareError::Io { path, source }
    };
    // A private directory beside the result (same file system), removed whatever happens.
    let work = tempfile::Builder::new().prefix(".etcdsnap-prepare-").tempdir_in(dir).map_err(io(dir))?;
    let staged = work.path().join("snapshot.db");
    let check = verify_pass(source, keys.identity.clone(), Some(staged.clone()), progress).await?;
    if let Some(problem) = check.trailer.problem() {
        return Err(PrepareError::Trailer(problem));
    }
    let recorded = source.record.sha256.clone();
    if let Some(recorded) = &recorded
        && *recorded != check.stored_sha256
    {
        return Err(PrepareError::Sha256 { recorded: recorded.clone(), actual: check.stored_sha256 });
    }
    std::fs::File::open(&staged).and_then(|f| f.sync_all()).map_err(io(&staged))?;
    // A hard link gives the file its name and fails rather than replace one.
    std::fs::hard_link(&staged, &path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => PrepareError::Exists(path.clone()),
        _ => PrepareError::Io { path: path.clone(), source: e },
    })?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
    Ok(Prepared { path, size: check.raw_size, stored_sha256: check.stored_sha256, sha256_recorded: recorded.is_some() })
}
