//! Running etcd's own `etcdutl snapshot restore`. etcdsnap never writes an etcd data directory
//! itself: the bbolt database, WAL and membership are etcd's formats, and etcdutl is the tool
//! etcd supports for turning a snapshot into a data directory.

use serde::Serialize;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// How long `etcdutl version` may take before the binary is considered unusable.
const VERSION_TIMEOUT: Duration = Duration::from_secs(20);
/// Lines of etcdutl's output quoted in an error.
const LOG_TAIL_LINES: usize = 25;

/// The member the restored data directory will belong to, as `etcdutl snapshot restore` takes
/// it (etcdutl writes it into the new WAL; etcd must later be started with the same values).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberSettings {
    pub name: String,
    pub initial_cluster: String,
    pub initial_advertise_peer_urls: String,
    pub initial_cluster_token: String,
    /// Revisions to add on top of the snapshot's, so that clients (Kubernetes informers) that
    /// saw later revisions before the restore do not see revisions go backwards.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bump_revision: Option<u64>,
    /// Marks the bumped revision compacted, forcing watchers to re-list.
    pub mark_compacted: bool,
}

impl MemberSettings {
    /// Problems etcdutl would refuse later, found now.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.name.trim().is_empty() {
            out.push("the member name (--name) is empty".to_string());
        }
        let listed =
            self.initial_cluster.split(',').filter_map(|m| m.split_once('=')).any(|(n, _)| n.trim() == self.name);
        if !listed {
            out.push(format!(
                "--initial-cluster {:?} has no entry for member {:?} (expected {}=<peer URL>)",
                self.initial_cluster, self.name, self.name
            ));
        }
        match (self.bump_revision.unwrap_or(0) > 0, self.mark_compacted) {
            (true, false) => out.push("--bump-revision needs --mark-compacted (etcdutl requires both)".into()),
            (false, true) => out.push("--mark-compacted needs --bump-revision N with N > 0".into()),
            _ => {}
        }
        out
    }
}

/// Failures finding or running etcdutl.
#[derive(Debug, thiserror::Error)]
pub enum EtcdutlError {
    #[error(
        "etcdutl not found in PATH: install etcdutl from etcd's release (the same minor version as the cluster's etcd) or pass --etcdutl PATH"
    )]
    NotFound,
    #[error("--etcdutl {}: {reason}", path.display())]
    Unusable { path: PathBuf, reason: String },
    #[error("cannot run {}: {source}", path.display())]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("etcdutl snapshot restore failed ({status}); etcdutl said:\n{log}")]
    Failed { status: String, log: String },
}

/// `path` if given (it must be an executable file), else `etcdutl` from `$PATH`.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, EtcdutlError> {
    if let Some(path) = explicit {
        return match std::fs::metadata(path) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(path.to_path_buf()),
            Ok(m) if m.is_file() => {
                Err(EtcdutlError::Unusable { path: path.to_path_buf(), reason: "not executable".into() })
            }
            Ok(_) => Err(EtcdutlError::Unusable { path: path.to_path_buf(), reason: "not a file".into() }),
            Err(e) => Err(EtcdutlError::Unusable { path: path.to_path_buf(), reason: e.to_string() }),
        };
    }
    let search = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&search)
        .map(|dir| dir.join("etcdutl"))
        .find(|p| std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false))
        .ok_or(EtcdutlError::NotFound)
}

/// The version etcdutl reports (`etcdutl version`), e.g. `3.6.16`. Also proves it runs.
pub async fn version(bin: &Path) -> Result<String, EtcdutlError> {
    let unusable = |reason: String| EtcdutlError::Unusable { path: bin.to_path_buf(), reason };
    let run = tokio::process::Command::new(bin).arg("version").stdin(Stdio::null()).kill_on_drop(true).output();
    let out = tokio::time::timeout(VERSION_TIMEOUT, run)
        .await
        .map_err(|_| unusable(format!("`etcdutl version` did not answer in {}s", VERSION_TIMEOUT.as_secs())))?
        .map_err(|source| EtcdutlError::Spawn { path: bin.to_path_buf(), source })?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(unusable(format!("`etcdutl version` failed ({})", out.status)));
    }
    parse_version(&text).ok_or_else(|| unusable(format!("unexpected `etcdutl version` output: {}", text.trim())))
}

/// `etcdutl version: 3.6.16` (first line) -> `3.6.16`.
fn parse_version(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("etcdutl version:"))
        .map(|v| v.trim().trim_start_matches('v').to_string())
        .filter(|v| !v.is_empty())
}

/// `(major, minor)` of a version string like `3.6.16`.
pub fn minor_version(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.trim().trim_start_matches('v').split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The arguments of `etcdutl snapshot restore`.
pub fn restore_args(snapshot: &Path, data_dir: &Path, member: &MemberSettings) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["snapshot".into(), "restore".into(), snapshot.into()];
    let mut flag = |name: &str, value: &str| {
        args.push(format!("--{name}").into());
        args.push(value.into());
    };
    flag("name", &member.name);
    flag("initial-cluster", &member.initial_cluster);
    flag("initial-advertise-peer-urls", &member.initial_advertise_peer_urls);
    flag("initial-cluster-token", &member.initial_cluster_token);
    if let Some(n) = member.bump_revision.filter(|n| *n > 0) {
        flag("bump-revision", &n.to_string());
    }
    if member.mark_compacted {
        args.push("--mark-compacted".into());
    }
    args.push("--data-dir".into());
    args.push(data_dir.into());
    args
}

/// A running `etcdutl snapshot restore`, its output going to a log file (read only on failure,
/// so a chatty etcdutl can never block on a full pipe).
pub struct Running {
    child: tokio::process::Child,
    log: PathBuf,
}

/// Starts `etcdutl snapshot restore <snapshot> --data-dir <data_dir> ...`.
pub fn start(
    bin: &Path,
    snapshot: &Path,
    data_dir: &Path,
    member: &MemberSettings,
    log: &Path,
) -> Result<Running, EtcdutlError> {
    let spawn_err = |source| EtcdutlError::Spawn { path: bin.to_path_buf(), source };
    let out = std::fs::File::create(log).map_err(spawn_err)?;
    let err = out.try_clone().map_err(spawn_err)?;
    // Debug only: for a local file it starts while the bytes are still checked, and its result
    // is discarded when a check fails.
    tracing::debug!(etcdutl = %bin.display(), snapshot = %snapshot.display(), data_dir = %data_dir.display(), member = %member.name, "etcdutl snapshot restore started");
    let child = tokio::process::Command::new(bin)
        .args(restore_args(snapshot, data_dir, member))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_err)?;
    Ok(Running { child, log: log.to_path_buf() })
}

impl Running {
    /// Waits for etcdutl; its output is quoted in the error if it fails.
    pub async fn wait(mut self) -> Result<(), EtcdutlError> {
        let status =
            self.child.wait().await.map_err(|source| EtcdutlError::Spawn { path: self.log.clone(), source })?;
        if status.success() {
            return Ok(());
        }
        Err(EtcdutlError::Failed { status: status.to_string(), log: log_tail(&self.log) })
    }

    /// Stops etcdutl and waits until it is gone, so that nothing writes into its output
    /// directory once this returns.
    pub async fn cancel(mut self) {
        let _ = self.child.kill().await;
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
    if tail.trim().is_empty() { "(no output)".into() } else { tail }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member() -> MemberSettings {
        MemberSettings {
            name: "m0".into(),
            initial_cluster: "m0=http://127.0.0.1:2380".into(),
            initial_advertise_peer_urls: "http://127.0.0.1:2380".into(),
            initial_cluster_token: "etcd-cluster".into(),
            bump_revision: None,
            mark_compacted: false,
        }
    }

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("etcdutl version: 3.6.16\nAPI version: 3.6\n").as_deref(), Some("3.6.16"));
        assert_eq!(parse_version("nonsense"), None);
        assert_eq!(minor_version("3.6.16"), Some((3, 6)));
        assert_eq!(minor_version("v3.5"), Some((3, 5)));
        assert_eq!(minor_version(""), None);
    }

    #[test]
    fn member_settings_are_checked_before_etcdutl_sees_them() {
        assert!(member().problems().is_empty());
        let mut m = member();
        m.initial_cluster = "other=http://x:2380".into();
        assert_eq!(m.problems().len(), 1);
        let mut m = member();
        m.bump_revision = Some(1000);
        assert_eq!(m.problems().len(), 1);
        m.mark_compacted = true;
        assert!(m.problems().is_empty());
        let args = restore_args(Path::new("/s"), Path::new("/d"), &m);
        let args: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(
            args.join(" "),
            "snapshot restore /s --name m0 --initial-cluster m0=http://127.0.0.1:2380 \
             --initial-advertise-peer-urls http://127.0.0.1:2380 --initial-cluster-token etcd-cluster \
             --bump-revision 1000 --mark-compacted --data-dir /d"
        );
    }

    #[test]
    fn a_missing_or_unusable_binary_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("etcdutl");
        assert!(matches!(locate(Some(&missing)), Err(EtcdutlError::Unusable { .. })));
        std::fs::write(&missing, b"#!/bin/sh\n").unwrap();
        let err = locate(Some(&missing)).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("not executable"), "{err}");
        assert!(matches!(locate(Some(dir.path())), Err(EtcdutlError::Unusable { .. })));
    }
}
