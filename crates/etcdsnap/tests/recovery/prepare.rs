//! `restore --prepare-for k3s|rke2`: a zstd snapshot becomes a plain file K3s's or RKE2's own
//! restore reads, checked on the way, and etcd's own tools find in it exactly the key space the
//! member had; a damaged snapshot or an existing file leaves nothing behind.

use crate::common::etcd::etcd_with_objects;
use crate::common::restore::{hash_kv, revision};
use crate::common::{TestResult, files_in, run, s};
use etcdsnap_api::KvHash;
use std::path::Path;

const TOKEN: &str = "mysecret";

/// `etcdutl <args>`: its stdout, or a panic with its stderr.
fn etcdutl(args: &[&str]) -> String {
    let bin = testenv::testbin_version("etcdutl", "3.7").expect("etcdutl 3.7 is built");
    let out = std::process::Command::new(bin).args(args).output().expect("etcdutl runs");
    assert!(out.status.success(), "etcdutl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// etcdutl's HashKV of a database file at `rev` (on a copy: hashkv opens the file read-write).
fn file_hash_kv(file: &Path, rev: i64) -> Result<KvHash, Box<dyn std::error::Error>> {
    let scratch = tempfile::tempdir()?;
    let copy = scratch.path().join("db");
    std::fs::copy(file, &copy)?;
    let answer: serde_json::Value =
        serde_json::from_str(&etcdutl(&["hashkv", &s(&copy), "--rev", &rev.to_string(), "-w", "json"]))?;
    Ok(KvHash {
        hash: answer["hash"].as_u64().ok_or("no hash")? as u32,
        compact_revision: answer["compactRevision"].as_i64().ok_or("no compactRevision")?,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zstd_snapshot_is_prepared_as_a_plain_file_holding_exactly_the_key_space() -> TestResult {
    let etcd = etcd_with_objects(150).await?;
    let mut client = etcd.client().await?;
    let data = tempfile::tempdir()?;
    let (dd, endpoints) = (s(data.path()), etcd.endpoints().join(","));
    let common = ["--data-dir", dd.as_str(), "--node-name", "n1", "--endpoints", endpoints.as_str()];
    run(&[&["save", "--compress", "zstd", "--token", TOKEN][..], &common[..]].concat(), &[]).await.expect_ok();
    // Nothing writes to this etcd: the snapshot holds its current revision.
    let rev = revision(&mut client).await;
    let live = hash_kv(&mut client, rev).await;
    let name = files_in(&data.path().join("snapshots")).into_iter().next().ok_or("no snapshot")?;
    assert!(name.ends_with(".zst"), "{name}");

    let out_dir = tempfile::tempdir()?;
    let od = s(out_dir.path());
    let snapshots = s(&data.path().join("snapshots"));
    let prepare =
        ["restore", name.as_str(), "--dir", snapshots.as_str(), "--prepare-for", "rke2", "--prepare-dir", od.as_str()];
    let out = run(&[&prepare[..], &["--token", TOKEN]].concat(), &[]).await.expect_ok();
    let plain = out_dir.path().join(name.trim_end_matches(".zst"));
    assert!(plain.is_file(), "{}", out.stdout);
    let expected = format!("rke2 server --cluster-reset --cluster-reset-restore-path={}", plain.display());
    assert!(out.stdout.contains(&expected), "{}", out.stdout);
    assert!(out.stdout.contains("systemctl stop rke2-server") && out.stdout.contains("server/db"), "{}", out.stdout);
    assert_eq!(files_in(out_dir.path()), [plain.file_name().and_then(|n| n.to_str()).ok_or("name")?]);
    assert_eq!(std::fs::read_dir(out_dir.path())?.count(), 1, "no working directory is left");

    // etcd's own tools read it, and its key space is the member's, exactly.
    let status: serde_json::Value = serde_json::from_str(&etcdutl(&["snapshot", "status", &s(&plain), "-w", "json"]))?;
    assert_eq!(status["revision"].as_i64(), Some(rev), "{status}");
    assert_eq!(file_hash_kv(&plain, rev)?, live);

    // Never over an existing file; `-o json` says the same for programs.
    let again = run(&[&prepare[..], &["-o", "json"]].concat(), &[]).await.expect_fail();
    assert!(again.stderr.contains("exists already"), "{}", again.stderr);
    std::fs::remove_file(&plain)?;
    let json = run(&[&prepare[..], &["-o", "json"]].concat(), &[]).await.expect_ok().json();
    assert_eq!(json["program"], "rke2");
    assert_eq!(json["sha256Recorded"], true);
    assert_eq!(json["steps"][1]["run"], expected);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_snapshot_is_refused_and_nothing_is_left() -> TestResult {
    let etcd = etcd_with_objects(50).await?;
    let data = tempfile::tempdir()?;
    let (dd, endpoints) = (s(data.path()), etcd.endpoints().join(","));
    let args = ["save", "--compress", "zstd", "--data-dir", &dd, "--node-name", "n1", "--endpoints", &endpoints];
    run(&args, &[]).await.expect_ok();
    let dir = data.path().join("snapshots");
    let name = files_in(&dir).into_iter().next().ok_or("no snapshot")?;
    // One byte changed: the recorded sha256 no longer matches.
    let mut bytes = std::fs::read(dir.join(&name))?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(dir.join(&name), bytes)?;
    let out_dir = tempfile::tempdir()?;
    let od = s(out_dir.path());
    let out = run(&["restore", &name, "--dir", &s(&dir), "--prepare-for", "k3s", "--prepare-dir", &od], &[])
        .await
        .expect_fail();
    assert!(out.stderr.contains("nothing was written") || out.stderr.contains("damaged"), "{}", out.stderr);
    assert_eq!(std::fs::read_dir(out_dir.path())?.count(), 0, "nothing left behind");
    // --prepare-for restores nothing: it takes no --data-dir.
    let both = run(&["restore", &name, "--prepare-for", "k3s", "--data-dir", &od], &[]).await.expect_fail();
    assert_eq!(both.code, Some(2), "{}", both.stderr);
    Ok(())
}
