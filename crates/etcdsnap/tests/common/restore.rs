//! Restoring a member and reading it back: the arguments every `etcdsnap restore` of the tests
//! starts with, and what a member reports (its revision, its HashKV).

use etcd_client::Client;
use etcdsnap_api::KvHash;
use std::path::Path;

use super::s;

/// `etcdsnap restore <source> --data-dir <data_dir> --name m0 --initial-advertise-peer-urls
/// http://127.0.0.1:<peer_port> --etcdutl <etcdutl>`: the restore of a member `m0` that the test
/// then starts on `peer_port`. `source` is a snapshot's name or path, or `--to-revision N` and
/// the like; the caller adds where the snapshots are (`--dir`, S3 flags) and anything else.
pub fn restore_args(source: &[&str], data_dir: &Path, peer_port: u16, etcdutl: &Path) -> Vec<String> {
    let mut args = vec!["restore".to_string()];
    args.extend(source.iter().map(|a| a.to_string()));
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
