//! Restoring a member and reading it back: the arguments every `etcdsnap restore` of the tests
//! starts with, and what a member reports (its revision, its HashKV).

use etcd_client::Client;
use etcdsnap_api::KvHash;
use std::path::Path;

use super::s;

/// `etcdsnap restore <source> --data-dir <data_dir> --name m0 --initial-advertise-peer-urls
/// http://127.0.0.1:<peer_port> --etcdutl <etcdutl>`: the restore of a member `m0` that the test
/// then starts on `peer_port`. `source` is a snapshot's name or path, or `--to-revision N` and
/// the like; the caller adds where the snapshots are (`--dir`, S3 flags) and anything else. A
/// point-in-time restore replays with the direct engine (`--replay-engine direct`: it fails
/// rather than fall back when `etcdsnap-replay` is missing).
pub fn restore_args(source: &[&str], data_dir: &Path, peer_port: u16, etcdutl: &Path) -> Vec<String> {
    let mut args = vec!["restore".to_string()];
    args.extend(source.iter().map(|a| a.to_string()));
    if source.iter().any(|a| *a == "--to-revision" || *a == "--to-time") {
        args.extend(["--replay-engine".into(), "direct".into()]);
    }
    args.extend(["--data-dir".into(), s(data_dir), "--member-name".into(), "m0".into()]);
    args.extend(["--initial-advertise-peer-urls".into(), format!("http://127.0.0.1:{peer_port}")]);
    args.extend(["--etcdutl".into(), s(etcdutl)]);
    args
}

/// The member's current revision.
pub async fn revision(client: &mut Client) -> i64 {
    let status = client.status().await.expect("etcd answers a status request");
    status.header().expect("a status answer has a header").revision()
}

/// The member's HashKV at `rev`: every key's value, create and mod revision, version and lease.
pub async fn hash_kv(client: &mut Client, rev: i64) -> KvHash {
    let resp = client.hash_kv(rev).await.expect("etcd answers HashKV");
    KvHash { hash: resp.hash(), compact_revision: resp.compact_version() }
}

/// A real etcd of `version` (a minor such as `"3.7"`) serving the snapshot file `db`, restored
/// with that minor's etcdutl as member `m0`; the directory holding its data goes with it.
pub async fn serve_snapshot(db: &Path, version: &str) -> (tempfile::TempDir, testenv::Etcd) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let data = dir.path().join("data");
    let peer = testenv::free_port().expect("a free port");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let etcdutl = testenv::testbin_version("etcdutl", version).expect("etcdutl of that minor");
    let out = tokio::process::Command::new(etcdutl)
        .args(["snapshot", "restore"])
        .arg(db)
        .arg("--data-dir")
        .arg(&data)
        .args(["--name", "m0", "--initial-cluster", &format!("m0={peer_url}")])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .output()
        .await
        .expect("etcdutl runs");
    assert!(out.status.success(), "etcdutl snapshot restore: {}", String::from_utf8_lossy(&out.stderr));
    let etcd = testenv::Etcd::start_on_data_dir_version(&data, "m0", peer, Some(version))
        .await
        .expect("etcd serves the restored snapshot");
    (dir, etcd)
}
