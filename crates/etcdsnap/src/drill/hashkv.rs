//! `etcdutl hashkv`: etcd's own hash of a database file's key space at a revision, computed
//! offline. etcdutl 3.6 and later have it; older ones are refused with the reason.

use etcdsnap_api::KvHash;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// etcdutl's answer: the hash, and the revision range it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHash {
    pub hash: KvHash,
    /// The revision hashed up to (the latest in the file when none was asked for).
    pub revision: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("cannot run {}: {source}", bin.display())]
    Spawn {
        bin: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} has no hashkv command (etcdutl 3.6 or later has it): pass --etcdutl with a newer etcdutl; it reads snapshots of every etcd version",
        bin.display()
    )]
    Unsupported { bin: PathBuf },
    #[error(
        "the snapshot's contents end before revision {revision}, the revision recorded when it was saved: it is not the snapshot that was taken"
    )]
    EndsBefore { revision: i64 },
    #[error("etcdutl hashkv of {} failed: {message}", db.display())]
    Failed { db: PathBuf, message: String },
    #[error("etcdutl hashkv printed something that is not its JSON answer: {0:?}")]
    Unreadable(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    hash: u32,
    hash_revision: i64,
    compact_revision: i64,
}

/// Parses `etcdutl hashkv -w json`'s output.
pub fn parse(output: &str) -> Result<FileHash, HashError> {
    let answer: Answer = serde_json::from_str(output.trim()).map_err(|_| HashError::Unreadable(output.to_string()))?;
    Ok(FileHash {
        hash: KvHash { hash: answer.hash, compact_revision: answer.compact_revision },
        revision: answer.hash_revision,
    })
}

/// Hashes `db` (a database file etcdutl may open: a private copy, never the stored snapshot)
/// up to `revision`, or its latest revision.
pub async fn hash_file(etcdutl: &Path, db: &Path, revision: Option<i64>) -> Result<FileHash, HashError> {
    let mut cmd = super::low_priority_command(etcdutl);
    cmd.arg("hashkv").arg(db).args(["-w", "json"]);
    if let Some(rev) = revision {
        cmd.args(["--rev", &rev.to_string()]);
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|source| HashError::Spawn { bin: etcdutl.to_path_buf(), source })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        if stderr.contains("unknown command \"hashkv\"") {
            return Err(HashError::Unsupported { bin: etcdutl.to_path_buf() });
        }
        if let Some(revision) = revision.filter(|_| stderr.contains("required revision is a future revision")) {
            return Err(HashError::EndsBefore { revision });
        }
        return Err(HashError::Failed { db: db.to_path_buf(), message: stderr.trim().to_string() });
    }
    parse(&String::from_utf8_lossy(&out.stdout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcdutl_answers_are_read() {
        let h = parse("{\"hash\":8699225,\"hashRevision\":6,\"compactRevision\":3}\n").unwrap();
        assert_eq!(h, FileHash { hash: KvHash { hash: 8_699_225, compact_revision: 3 }, revision: 6 });
    }

    #[test]
    fn anything_else_is_an_error_that_quotes_it() {
        for bad in ["", "hash: 5", "{\"hash\":-1,\"hashRevision\":6,\"compactRevision\":3}", "{\"hash\":1}"] {
            let e = parse(bad).unwrap_err();
            assert!(matches!(e, HashError::Unreadable(_)), "{bad}: {e}");
        }
    }
}
