//! Snapshot files seen from outside etcdsnap: one taken the way K3s takes it, and the permission
//! bits etcdsnap gives its own.

use std::path::Path;

/// A snapshot taken the way K3s takes them (etcd's client snapshot helper, as in etcdctl).
pub async fn etcdctl_snapshot(etcd: &testenv::Etcd, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let out = tokio::process::Command::new(testenv::testbin("etcdctl")?)
        .args(["--endpoints", &etcd.endpoints()[0], "snapshot", "save"])
        .arg(path)
        .output()
        .await?;
    if !out.status.success() {
        return Err(format!("etcdctl snapshot save: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}

/// Unix permission bits of a path.
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).map(|m| m.permissions().mode() & 0o777).unwrap_or(0)
}
