//! Point-in-time recovery from a replica alone: `agent --deltas` with S3 and two replicas (a
//! second versitygw bucket and a fake-gcs-server bucket) copies every segment durable in S3 to
//! both, at the keys it has in S3, byte for byte; a replica down while segments are written is
//! counted behind and catches up once it is back; then, with the primary's objects deleted and
//! the node's directory removed, `restore --to-revision --from-replica` from each replica lands
//! on the live key space at that revision exactly. Without S3, the local segments are the
//! primary copy and go to the replica the same way; the replica's retention then removes the
//! segments no snapshot left there can use, and no other.

use crate::common::etcd::etcd_with_objects;
use crate::common::keyspace::assert_same_key_space;
use crate::common::restore::{hash_kv, restore_args, revision};
use crate::common::{TestResult, run, s};
use crate::pitr_agent::{NODE, agent_with, churn};
use std::time::{Duration, Instant};
use testenv::{Etcd, GcsServer, S3Server};

const PRIMARY: &str = "pitr";
const REPLICA: &str = "replica";
const FOLDER: &str = "db";

type Error = Box<dyn std::error::Error>;

/// The newest revision a delta record in `names` (object keys) reaches; 0 without one.
fn newest_record(names: &[String]) -> i64 {
    names
        .iter()
        .filter_map(|n| n.strip_suffix(".json"))
        .filter_map(|n| n.rsplit('/').next()?.split_once('-')?.1.parse().ok())
        .max()
        .unwrap_or(0)
}

/// The delta objects of the folder in the S3 replica and in the GCS replica.
async fn replica_deltas(s3: &S3Server, gcs: &GcsServer) -> Result<(Vec<String>, Vec<String>), Error> {
    let prefix = format!("{FOLDER}/.etcdsnap-deltas/");
    Ok((s3.list_keys(REPLICA, &prefix).await?, gcs.list_names(REPLICA, &prefix).await?))
}

/// A replica's server.
#[derive(Clone, Copy)]
enum Replica<'a> {
    S3(&'a S3Server),
    Gcs(&'a GcsServer),
}

/// Waits until `replica` holds a record reaching `rev`.
async fn wait_replicated(replica: Replica<'_>, rev: i64) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(90);
    let prefix = format!("{FOLDER}/.etcdsnap-deltas/");
    loop {
        let listed = match replica {
            Replica::S3(s3) => s3.list_keys(REPLICA, &prefix).await,
            Replica::Gcs(gcs) => gcs.list_names(REPLICA, &prefix).await,
        };
        let reached = listed.as_ref().map(|names| newest_record(names)).unwrap_or(0);
        if reached >= rev {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("the replica reaches revision {reached}, not {rev}: {listed:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_reach_every_replica_and_a_replica_alone_restores_a_revision() -> TestResult {
    let etcd = etcd_with_objects(50).await?;
    let mut client = etcd.client().await?;
    let s3 = S3Server::with_bucket(PRIMARY).await?;
    s3.create_bucket(REPLICA).await?;
    let mut gcs = GcsServer::with_bucket(REPLICA).await?;
    let data = tempfile::tempdir()?;
    let (s3_url, gs_url) = (format!("s3://{REPLICA}/{FOLDER}"), format!("gs://{REPLICA}/{FOLDER}"));
    let s3_options =
        [format!("aws_endpoint={}", s3.url()), "aws_allow_http=true".into(), "aws_region=us-east-1".into()];
    let gcs_options = gcs.replica_options();
    let option_flags = |options: &[String]| {
        options.iter().flat_map(|o| ["--replica-option".to_string(), o.clone()]).collect::<Vec<_>>()
    };
    let mut flags: Vec<String> = s3.etcdsnap_flags(PRIMARY).into_iter().map(String::from).collect();
    flags.extend(["--s3-folder".into(), FOLDER.into()]);
    for (url, options) in [(&s3_url, &s3_options[..]), (&gs_url, &gcs_options[..])] {
        flags.extend(["--replica".to_string(), url.clone()]);
        flags.extend(option_flags(options));
    }
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let env = s3.credentials_env();
    let (endpoints, dd) = (etcd.endpoints().join(","), s(data.path()));
    let mut save_args = vec!["save", "--endpoints", &endpoints, "--node-name", NODE, "--data-dir", &dd];
    save_args.extend(&flags);
    run(&save_args, &env).await.expect_ok();

    let agent = agent_with(&etcd, data.path(), &flags, &env).await;
    churn(&mut client, "before", 100).await;
    let r1 = revision(&mut client).await;
    wait_replicated(Replica::S3(&s3), r1).await?;
    wait_replicated(Replica::Gcs(&gcs), r1).await?;

    // The GCS replica goes away while segments are written: it is counted behind, the S3
    // replica is not held back, and the GCS one catches up once it is back.
    gcs.stop();
    churn(&mut client, "during", 150).await;
    let r2 = revision(&mut client).await;
    let h2 = hash_kv(&mut client, r2).await;
    wait_replicated(Replica::S3(&s3), r2).await?;
    let behind = format!("etcdsnap_replica_behind_segments{{replica=\"{gs_url}\"}}");
    agent.wait_for_metric(&behind, 1.0, Duration::from_secs(30)).await?;
    gcs.restart().await?;
    wait_replicated(Replica::Gcs(&gcs), r2).await?;
    agent
        .wait_for("/metrics", |b, _| crate::common::agent::metric(b, &behind) == Some(0.0), Duration::from_secs(30))
        .await?;

    // Each replica holds what S3 holds, at the same keys, byte for byte.
    let prefix = format!("{FOLDER}/.etcdsnap-deltas/");
    let mut primary = s3.list_keys(PRIMARY, &prefix).await?;
    let (mut in_s3, mut in_gcs) = replica_deltas(&s3, &gcs).await?;
    for list in [&mut primary, &mut in_s3, &mut in_gcs] {
        list.sort();
    }
    assert!(primary.iter().any(|k| k.ends_with(".seg.zst")), "{primary:?}");
    assert_eq!(in_s3, primary, "the S3 replica holds the primary's delta objects");
    assert_eq!(in_gcs, primary, "the GCS replica holds the primary's delta objects");
    for key in &primary {
        let (bytes, _) = s3.get_object(PRIMARY, key).await?;
        assert_eq!(s3.get_object(REPLICA, key).await?.0, bytes, "{key} in the S3 replica");
        assert_eq!(gcs.get_object(REPLICA, key).await?, bytes, "{key} in the GCS replica");
    }

    // The primary's objects and the node's directory are gone: each replica alone is enough.
    agent.stop().await?;
    std::fs::remove_dir_all(s3.root().join(PRIMARY).join(FOLDER))?;
    assert_eq!(s3.list_keys(PRIMARY, "").await?, Vec::<String>::new());
    std::fs::remove_dir_all(data.path())?;
    for (url, options) in [(&s3_url, &s3_options[..]), (&gs_url, &gcs_options[..])] {
        let out = tempfile::tempdir()?;
        let target = out.path().join("member-data");
        let peer = testenv::free_port()?;
        let to = ["--to-revision".to_string(), r2.to_string(), "--from-replica".into(), url.clone()];
        let to: Vec<&str> = to.iter().map(String::as_str).collect();
        let mut args = restore_args(&to, &target, peer, &etcd.testbin("etcdutl")?);
        args.extend(option_flags(options));
        args.extend(["--etcd".into(), s(&etcd.testbin("etcd")?), "-o".into(), "json".into()]);
        let printed = run(&args, &env).await.expect_ok().json();
        assert_eq!(printed["targetRevision"], r2, "{url}: {printed}");
        assert_eq!(printed["replayed"]["eventsProven"], printed["replayed"]["events"], "{url}: {printed}");
        let restored = Etcd::start_on_data_dir(&target, "m0", peer).await?;
        let mut rc = restored.client().await?;
        assert_eq!(revision(&mut rc).await, r2, "{url}");
        assert_same_key_space(&client, &rc, r2).await;
        assert_eq!(hash_kv(&mut rc, r2).await.hash, h2.hash, "{url}: the replay differs from the live cluster");
    }
    Ok(())
}

/// The record files of the S3 replica's folder, and the last revision each reaches.
async fn replica_records(s3: &S3Server) -> Result<Vec<(String, i64)>, Error> {
    let keys = s3.list_keys(REPLICA, &format!("{FOLDER}/.etcdsnap-deltas/")).await?;
    Ok(keys.into_iter().filter(|k| k.ends_with(".json")).map(|k| (k.clone(), newest_record(&[k]))).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_captured_without_s3_reach_a_replica_whose_retention_keeps_what_its_snapshots_need() -> TestResult {
    let etcd = etcd_with_objects(50).await?;
    let mut client = etcd.client().await?;
    let s3 = S3Server::with_bucket(REPLICA).await?;
    let data = tempfile::tempdir()?;
    let url = format!("s3://{REPLICA}/{FOLDER}");
    let mut replica: Vec<String> = vec!["--replica".into(), url.clone()];
    for o in [format!("aws_endpoint={}", s3.url()), "aws_allow_http=true".into(), "aws_region=us-east-1".into()] {
        replica.extend(["--replica-option".into(), o]);
    }
    let mut env: Vec<(&str, &str)> = s3.credentials_env().to_vec();
    env.push(("ETCDSNAP_CLUSTER_ID", "c1"));
    let (endpoints, dd) = (etcd.endpoints().join(","), s(data.path()));
    let save_args: Vec<&str> = ["save", "--endpoints", &endpoints, "--node-name", NODE, "--data-dir", &dd]
        .into_iter()
        .chain(replica.iter().map(String::as_str))
        .collect();
    run(&save_args, &env).await.expect_ok();

    // No S3 primary: the local segments are the primary copy, and they go to the replica.
    let flags: Vec<&str> = replica.iter().map(String::as_str).collect();
    let agent = agent_with(&etcd, data.path(), &flags, &env).await;
    churn(&mut client, "first", 120).await;
    let r1 = revision(&mut client).await;
    wait_replicated(Replica::S3(&s3), r1).await?;
    // A second snapshot, then more changes on top of it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = revision(&mut client).await;
    run(&save_args, &env).await.expect_ok();
    churn(&mut client, "second", 120).await;
    let r2 = revision(&mut client).await;
    let h2 = hash_kv(&mut client, r2).await;
    wait_replicated(Replica::S3(&s3), r2).await?;
    agent.stop().await?;
    let before = replica_records(&s3).await?;
    assert!(before.iter().any(|(_, last)| *last <= second), "segments before the second snapshot: {before:?}");

    // The replica keeps one snapshot: the segments no snapshot left there can use go with the
    // first one, those after the second stay.
    let prune: Vec<&str> = ["prune", "--node-name", NODE, "--data-dir", &dd, "--replica-retention", "1"]
        .into_iter()
        .chain(flags.iter().copied())
        .collect();
    run(&prune, &env).await.expect_ok();
    let after = replica_records(&s3).await?;
    assert!(!after.is_empty(), "every segment was removed");
    for (key, last) in &after {
        assert!(*last > second, "{key} ends at {last}, at or before the kept snapshot's revision {second}");
    }
    let kept: Vec<&(String, i64)> = before.iter().filter(|(_, last)| *last > second).collect();
    assert_eq!(after.iter().collect::<Vec<_>>(), kept, "the segments after the kept snapshot all stay");

    // The node's directory is gone: the replica alone lands on the live key space at r2.
    std::fs::remove_dir_all(data.path())?;
    let out = tempfile::tempdir()?;
    let target = out.path().join("member-data");
    let peer = testenv::free_port()?;
    let to = ["--to-revision".to_string(), r2.to_string(), "--from-replica".into(), url.clone()];
    let to: Vec<&str> = to.iter().map(String::as_str).collect();
    let mut args = restore_args(&to, &target, peer, &etcd.testbin("etcdutl")?);
    args.extend(replica.iter().skip(2).cloned());
    args.extend(["--etcd".into(), s(&etcd.testbin("etcd")?), "-o".into(), "json".into()]);
    let printed = run(&args, &env).await.expect_ok().json();
    assert_eq!(printed["targetRevision"], r2, "{printed}");
    let restored = Etcd::start_on_data_dir(&target, "m0", peer).await?;
    let mut rc = restored.client().await?;
    assert_eq!(revision(&mut rc).await, r2);
    assert_same_key_space(&client, &rc, r2).await;
    assert_eq!(hash_kv(&mut rc, r2).await.hash, h2.hash, "the replay from the replica differs from the live cluster");
    Ok(())
}
