//! Two writers of one chain in S3, as at a leader change: the deposed leader stores its copy of
//! a segment under the same name between the new uploader's listing and its upload, and writes
//! its record last. The uploader never replaces another writer's object, so every record in S3
//! still describes the segment beside it, and a restore from S3 alone across that segment equals
//! the live key space.

use crate::common::etcd::etcd_with_objects;
use crate::common::keyspace::assert_same_key_space;
use crate::common::restore::{restore_args, revision};
use crate::common::{TestResult, run, s};
use crate::pitr_agent::{NODE, agent_with, churn};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use testenv::{Etcd, S3Server};

const BUCKET: &str = "race";
const FOLDER: &str = "db";

/// The first delta record captured under `deltas`: its chain and path.
async fn first_local_record(deltas: &Path) -> (String, PathBuf) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        for chain in std::fs::read_dir(deltas).into_iter().flatten().flatten() {
            let mut records: Vec<PathBuf> = std::fs::read_dir(chain.path())
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect();
            records.sort();
            if let Some(first) = records.into_iter().next() {
                return (chain.file_name().to_string_lossy().into_owned(), first);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no delta record appeared in {}", deltas.display());
}

fn key(chain: &str, file: &str) -> String {
    format!("{FOLDER}/.etcdsnap-deltas/{chain}/.metadata/{file}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_writers_segment_is_never_replaced_and_every_record_describes_its_segment() -> TestResult {
    let etcd = etcd_with_objects(20).await?;
    let mut client = etcd.client().await?;
    let s3 = S3Server::with_bucket(BUCKET).await?;
    let data = tempfile::tempdir()?;
    let s3_flags: Vec<&str> = s3.etcdsnap_flags(BUCKET).into_iter().chain(["--s3-folder", FOLDER]).collect();
    let env = s3.credentials_env();
    let (endpoints, dd) = (etcd.endpoints().join(","), s(data.path()));
    let save = [&["save", "--endpoints", &endpoints, "--node-name", NODE, "--data-dir", &dd][..], &s3_flags].concat();
    run(&save, &env).await.expect_ok();

    // Every segment upload waits 3 s: the window in which the other writer stores its copy.
    let agent_env = [env[0], env[1], ("ETCDSNAP_FAILPOINT", "pitr-segment-upload=3000")];
    let agent = agent_with(&etcd, data.path(), &s3_flags, &agent_env).await;
    churn(&mut client, "race", 60).await;
    let (chain, record_path) = first_local_record(&data.path().join(".etcdsnap-deltas")).await;
    let segment_path =
        record_path.with_file_name(record_path.file_name().unwrap().to_string_lossy().replace(".json", ".seg.zst"));
    // The other writer's copy: the same revisions, compressed at another level.
    let ours = std::fs::read(&segment_path)?;
    let plain = zstd::decode_all(&ours[..])?;
    let theirs =
        [1, 19].iter().map(|level| zstd::encode_all(&plain[..], *level).unwrap()).find(|b| *b != ours).unwrap();
    let segment_file = segment_path.file_name().unwrap().to_string_lossy().into_owned();
    s3.put_object(BUCKET, &key(&chain, &segment_file), theirs.clone(), &[]).await?;

    // The uploader meets it and leaves it; the other writer's record comes last.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !agent.log_text().contains("another writer stored a different segment") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut record: serde_json::Value = serde_json::from_slice(&std::fs::read(&record_path)?)?;
    record["sha256"] = hex::encode(Sha256::digest(&theirs)).into();
    record["storedBytes"] = theirs.len().into();
    let record_file = record_path.file_name().unwrap().to_string_lossy().into_owned();
    s3.put_object(BUCKET, &key(&chain, &record_file), serde_json::to_vec(&record)?, &[]).await?;

    churn(&mut client, "after", 60).await;
    let rev = revision(&mut client).await;
    agent.wait_for_metric("etcdsnap_delta_uploaded_revision", rev as f64, Duration::from_secs(60)).await?;
    let log = agent.stop().await?;

    // Every record in S3 describes the segment beside it.
    let keys = s3.list_keys(BUCKET, &format!("{FOLDER}/.etcdsnap-deltas/")).await?;
    let records: Vec<&String> = keys.iter().filter(|k| k.ends_with(".json")).collect();
    assert!(records.len() >= 2, "{keys:?}");
    for record_key in records {
        let (bytes, _) = s3.get_object(BUCKET, record_key).await?;
        let record: serde_json::Value = serde_json::from_slice(&bytes)?;
        let (segment, _) = s3.get_object(BUCKET, &record_key.replace(".json", ".seg.zst")).await?;
        assert_eq!(
            record["sha256"].as_str(),
            Some(hex::encode(Sha256::digest(&segment)).as_str()),
            "{record_key} does not describe the segment beside it"
        );
    }
    assert!(log.contains("another writer stored a different segment"), "{log}");

    // The node's disk is gone: a restore from S3 alone reads the other writer's segment.
    std::fs::remove_dir_all(data.path().join("snapshots"))?;
    std::fs::remove_dir_all(data.path().join(".etcdsnap-deltas"))?;
    let out = tempfile::tempdir()?;
    let target = out.path().join("member-data");
    let peer = testenv::free_port()?;
    let mut args = restore_args(&["--to-revision", &rev.to_string()], &target, peer, &etcd.testbin("etcdutl")?);
    args.extend(["--etcd".into(), s(&etcd.testbin("etcd")?)]);
    args.extend(s3_flags.iter().map(|f| f.to_string()));
    run(&args, &env).await.expect_ok();
    let restored = Etcd::start_on_data_dir(&target, "m0", peer).await?;
    let mut rc = restored.client().await?;
    assert_eq!(revision(&mut rc).await, rev);
    assert_same_key_space(&client, &rc, rev).await;
    Ok(())
}
