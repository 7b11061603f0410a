//! S3 Object Lock end to end on a real S3 server (versitygw) with lock-enabled buckets: uploads
//! carry the integrity header such buckets require, every object etcdsnap writes is locked
//! (by the bucket's default retention, or by `--s3-lock-retention`), the record names the date
//! either way, and retention meets locked snapshots without failing: they stay, and the prune
//! says until when.

use crate::common::etcd::etcd_with_objects;
use crate::common::{TestResult, files_in, run, s};
use testenv::S3Server;

const FOLDER: &str = "f";

/// etcdsnap's environment for `bucket` on `s3`.
fn env(etcd: &testenv::Etcd, s3: &S3Server, bucket: &str, data: &std::path::Path) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("ETCDSNAP_ENDPOINTS".into(), etcd.endpoints().join(",")),
        ("ETCDSNAP_NODE_NAME".into(), "n1".into()),
        ("ETCDSNAP_DATA_DIR".into(), s(data)),
        ("ETCDSNAP_CLUSTER_ID".into(), "c1".into()),
        ("ETCDSNAP_S3_FOLDER".into(), FOLDER.into()),
    ];
    env.extend(s3.etcdsnap_env(bucket));
    env
}

async fn etcdsnap(env: &[(String, String)], args: &[&str]) -> crate::common::Run {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    run(args, &pairs).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_with_default_retention_locks_every_object_and_prune_keeps_them_and_says_until_when() -> TestResult {
    let etcd = etcd_with_objects(20).await?;
    let s3 = S3Server::start().await?;
    s3.create_lock_bucket("locked", Some(("GOVERNANCE", 1))).await?;
    let data = tempfile::tempdir()?;
    let env = env(&etcd, &s3, "locked", data.path());
    // A multipart part and K3s's metadata object too: parts of 6 MiB need a larger snapshot,
    // extra metadata is not needed to see every kind of object etcdsnap writes.
    for _ in 0..3 {
        let out = etcdsnap(&env, &["save", "--name", "etcd-snapshot", "--no-kube"]).await.expect_ok();
        assert_eq!(out.stdout.matches(" saved to ").count(), 2, "{}{}", out.stdout, out.stderr);
    }
    let keys = s3.list_keys("locked", &format!("{FOLDER}/")).await?;
    let snapshots: Vec<&String> = keys.iter().filter(|k| !k.contains("/.metadata/")).collect();
    assert_eq!(snapshots.len(), 3, "{keys:?}");
    assert!(keys.len() >= 6, "a record beside each snapshot: {keys:?}");
    for key in &keys {
        let refused = s3.delete_object("locked", key).await;
        assert!(refused.is_err(), "{key} could be deleted: it was not locked");
    }

    let out = etcdsnap(&env, &["prune", "--name", "etcd-snapshot", "--retention", "1", "--no-kube"]).await;
    assert!(out.ok(), "a locked snapshot is no failure:\n{}{}", out.stdout, out.stderr);
    let kept: Vec<&str> = out.stdout.lines().filter(|l| l.contains("locked by S3 Object Lock until ")).collect();
    assert_eq!(kept.len(), 2, "each locked snapshot is named with its date:\n{}", out.stdout);
    // The date is the bucket's default (1 day) counted from the upload, and a few minutes more
    // (etcdsnap extends the default lock to the date its record names).
    #[allow(clippy::disallowed_methods, reason = "compared with the S3 server's clock, not etcdsnap's")]
    let now = jiff::Timestamp::now();
    let latest = jiff::SignedDuration::from_hours(24) + jiff::SignedDuration::from_mins(6);
    for line in &kept {
        let date = line.split("until ").nth(1).and_then(|r| r.split(',').next()).ok_or("no date")?;
        let until: jiff::Timestamp = date.parse()?;
        let ahead = until.duration_since(now);
        assert!(ahead > jiff::SignedDuration::from_hours(23) && ahead <= latest, "{line}");
    }
    // Each record names the lock its snapshot's object has, in the bucket default's mode:
    // `ls -o json` as the annotation, `ls -o wide` as the Locked-Until column.
    let listed = etcdsnap(&env, &["ls", "-o", "json", "--no-kube"]).await.expect_ok().json();
    let wide = etcdsnap(&env, &["ls", "-o", "wide", "--no-kube"]).await.expect_ok();
    let items = listed["items"].as_array().ok_or("no items")?;
    let in_s3: Vec<&serde_json::Value> = items.iter().filter(|i| !i["spec"]["s3"].is_null()).collect();
    assert_eq!(in_s3.len(), 3, "{listed}");
    for item in in_s3 {
        let name = item["spec"]["snapshotName"].as_str().ok_or("no name")?;
        let (mode, until) = s3
            .object_retention("locked", &format!("{FOLDER}/{name}"))
            .await?
            .ok_or(format!("{name} has no retention of its own"))?;
        assert_eq!(mode, "GOVERNANCE", "{name}");
        let annotation = item["metadata"]["annotations"]["etcdsnap.io/s3-locked-until"].as_str();
        let (date, shown_mode) = annotation.and_then(|a| a.split_once(' ')).ok_or(format!("no lock: {item}"))?;
        assert_eq!((date.parse::<jiff::Timestamp>()?, shown_mode), (until, "governance"), "{item}");
        let row: Vec<&str> = wide
            .stdout
            .lines()
            .find(|l| l.starts_with(name) && l.split_whitespace().nth(1) == Some("s3"))
            .ok_or(format!("{name} not in:\n{}", wide.stdout))?
            .split_whitespace()
            .collect();
        let cell = row.get(10).ok_or(format!("no Locked-Until column:\n{}", wide.stdout))?;
        assert_eq!(cell.parse::<jiff::Timestamp>()?, until, "{}", wide.stdout);
    }
    assert!(out.stderr.contains("is locked until"), "the log says so too:\n{}", out.stderr);
    assert_eq!(s3.list_keys("locked", &format!("{FOLDER}/")).await?, keys, "nothing was removed from S3");
    // The local copies are not locked: retention removed them.
    assert_eq!(files_in(&data.path().join("snapshots")).len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_lock_retention_locks_each_object_for_that_long() -> TestResult {
    let etcd = etcd_with_objects(20).await?;
    let s3 = S3Server::start().await?;
    s3.create_lock_bucket("lockable", None).await?;
    let data = tempfile::tempdir()?;
    let env = env(&etcd, &s3, "lockable", data.path());
    #[allow(clippy::disallowed_methods, reason = "compared with the S3 server's clock, not etcdsnap's")]
    let before = jiff::Timestamp::now();
    etcdsnap(&env, &["save", "--no-kube", "--s3-lock-retention", "2h", "--s3-lock-mode", "compliance"])
        .await
        .expect_ok();
    #[allow(clippy::disallowed_methods, reason = "compared with the S3 server's clock, not etcdsnap's")]
    let after = jiff::Timestamp::now();
    let keys = s3.list_keys("lockable", &format!("{FOLDER}/")).await?;
    assert!(keys.len() >= 2, "the snapshot and its record: {keys:?}");
    let two_hours = jiff::SignedDuration::from_hours(2);
    for key in &keys {
        let (mode, until) = s3.object_retention("lockable", key).await?.ok_or(format!("{key} is not locked"))?;
        assert_eq!(mode, "COMPLIANCE", "{key}");
        let (earliest, latest) = (before.checked_add(two_hours)?, after.checked_add(two_hours)?);
        assert!(
            until >= earliest.checked_sub(jiff::SignedDuration::from_secs(1))? && until <= latest,
            "{key}: {until}"
        );
    }
    // The record names that very lock: `ls` shows it, as the resource's annotation in JSON and
    // as the last column of the wide table; the local copy has none.
    let snapshot = keys.iter().find(|k| !k.contains("/.metadata/")).ok_or("no snapshot object")?;
    let (_, until) = s3.object_retention("lockable", snapshot).await?.ok_or("the snapshot is not locked")?;
    let listed = etcdsnap(&env, &["ls", "-o", "json"]).await.expect_ok().json();
    let items = listed["items"].as_array().ok_or("no items")?;
    assert_eq!(items.len(), 2, "{listed}");
    for item in items {
        let annotation = item["metadata"]["annotations"]["etcdsnap.io/s3-locked-until"].as_str();
        if item["spec"]["s3"].is_null() {
            assert_eq!(annotation, None, "a local copy is not locked: {item}");
            continue;
        }
        let (date, mode) = annotation.and_then(|a| a.split_once(' ')).ok_or(format!("no lock: {item}"))?;
        assert_eq!((date.parse::<jiff::Timestamp>()?, mode), (until, "compliance"), "{item}");
    }
    let out = etcdsnap(&env, &["ls", "-o", "wide"]).await.expect_ok();
    let rows: Vec<Vec<&str>> = out.stdout.lines().skip(1).map(|l| l.split_whitespace().collect()).collect();
    let mut places: Vec<&str> = rows.iter().map(|r| r[1]).collect();
    places.sort_unstable();
    assert_eq!(places, ["local", "s3"], "{}", out.stdout);
    for row in &rows {
        let cell = row.get(10).ok_or(format!("no Locked-Until column:\n{}", out.stdout))?;
        match row[1] {
            "s3" => assert_eq!(cell.parse::<jiff::Timestamp>()?, until, "{}", out.stdout),
            _ => assert_eq!(*cell, "-", "{}", out.stdout),
        }
    }

    // Without the flag, objects of this bucket are not locked.
    etcdsnap(&env, &["save", "--no-kube", "--name", "plain"]).await.expect_ok();
    let plain = s3.list_keys("lockable", &format!("{FOLDER}/plain-")).await?;
    assert_eq!(plain.len(), 1, "{plain:?}");
    assert_eq!(s3.object_retention("lockable", &plain[0]).await?, None);
    Ok(())
}
