//! Point-in-time recovery through the binary, against real etcd: `agent --deltas` captures,
//! `ls --deltas` lists, `restore --to-revision|--to-time` rolls a snapshot forward and installs
//! it, and a real etcd started on the result holds the live cluster's key space at that revision,
//! key by key, and its HashKV. A writer puts every 2 ms through the save and after it.
//!
//! In company: a second etcd cluster's snapshot, newer and under the same node name, sits in the
//! same snapshot directory (the capture and the restore must not base on it), and K3s's reading
//! of the snapshot directory sees the snapshots only. Faults: a compacted start breaks the chain
//! and a new snapshot starts the next one, a restore across that gap is refused naming it, an
//! agent killed mid-segment continues after restart without a gap or an overlap.

use crate::common::agent::{Agent, metric};
use crate::common::etcd::{etcd_with_objects, load_kube_like_data};
use crate::common::k3s;
use crate::common::keyspace::assert_same_key_space;
use crate::common::restore::{hash_kv, restore_args, revision};
use crate::common::{Run, TestResult, run, s};
use crate::pitr::Writer;
use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use etcdsnap_api::KvHash;
use std::path::Path;
use std::time::Duration;
use testenv::{Etcd, S3Server};

pub(crate) const NODE: &str = "n1";

type Error = Box<dyn std::error::Error>;

/// `n` revisions of puts, overwrites, deletes, multi-key transactions and a leased key.
pub(crate) async fn churn(client: &mut Client, tag: &str, n: usize) {
    let lease = client.lease_grant(600, None).await.unwrap().id();
    for i in 0..n {
        let key = format!("/registry/pods/ns-{}/{tag}-{}", i % 5, i % 40);
        match i % 6 {
            0..=2 => {
                client.put(key, format!("{{\"i\":{i},\"tag\":\"{tag}\"}}"), None).await.unwrap();
            }
            3 => {
                client.delete(key, None).await.unwrap();
            }
            4 => {
                let txn = Txn::new()
                    .when([Compare::version(key.clone(), CompareOp::Greater, -1)])
                    .and_then([TxnOp::put(key.clone(), "a", None), TxnOp::put(format!("{key}-b"), "b", None)]);
                client.txn(txn).await.unwrap();
            }
            _ => {
                let opts = PutOptions::new().with_lease(lease);
                client.put(format!("/registry/leases/{tag}-{i}"), "held", Some(opts)).await.unwrap();
            }
        }
    }
}

/// The agent for `etcd` on data directory `data`, capturing with a one-second interval.
pub(crate) async fn agent(etcd: &Etcd, data: &Path) -> Agent {
    agent_with(etcd, data, &[], &[]).await
}

pub(crate) async fn agent_with(etcd: &Etcd, data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Agent {
    let endpoints = etcd.endpoints().join(",");
    let dd = s(data);
    let args = [
        "--endpoints",
        endpoints.as_str(),
        "--node-name",
        NODE,
        "--data-dir",
        dd.as_str(),
        "--schedule",
        "0 0 1 1 *",
        "--drill-schedule",
        "",
        "--deltas",
        "--delta-interval",
        "1s",
    ];
    let all: Vec<&str> = args.iter().chain(extra).copied().collect();
    Agent::start(&all, env, data).await.unwrap()
}

pub(crate) async fn save(etcd: &Etcd, data: &Path) {
    let endpoints = etcd.endpoints().join(",");
    run(&["save", "--endpoints", &endpoints, "--node-name", NODE, "--data-dir", &s(data)], &[]).await.expect_ok();
}

/// `restore <to>` (`--to-revision N` or `--to-time T`) of `data`'s snapshot directory into
/// `target` as member `m0` on `peer_port`, replayed with `etcd`'s own etcdutl and etcd.
pub(crate) fn roll_forward_args(
    etcd: &Etcd,
    data: &Path,
    to: &[&str],
    target: &Path,
    peer_port: u16,
) -> Result<Vec<String>, Error> {
    let mut args = restore_args(to, target, peer_port, &etcd.testbin("etcdutl")?);
    args.extend(["--dir".into(), s(&data.join("snapshots")), "--etcd".into(), s(&etcd.testbin("etcd")?)]);
    Ok(args)
}

/// Restores `to` into a new directory, starts a real etcd on it, checks that it holds exactly
/// the live key space at its revision, and returns that revision and its HashKV.
pub(crate) async fn restore_to(etcd: &Etcd, data: &Path, to: [&str; 2]) -> Result<(i64, KvHash), Error> {
    let out = tempfile::tempdir()?;
    let target = out.path().join("member-data");
    let peer = testenv::free_port()?;
    let mut args = roll_forward_args(etcd, data, &to, &target, peer)?;
    args.extend(["-o".into(), "json".into()]);
    let printed = run(&args, &[]).await.expect_ok().json();
    let restored = Etcd::start_on_data_dir(&target, "m0", peer).await?;
    let mut client = restored.client().await?;
    let rev = revision(&mut client).await;
    assert_eq!(printed["replayed"]["revision"], rev, "{printed}");
    assert_eq!(printed["replayed"]["eventsProven"], printed["replayed"]["events"], "{printed}");
    assert_same_key_space(&etcd.client().await?, &client, rev).await;
    Ok((rev, hash_kv(&mut client, rev).await))
}

/// `restore --to-revision rev` from `data`'s snapshot directory into `target`, which must fail.
pub(crate) async fn refused_restore(etcd: &Etcd, data: &Path, rev: i64, target: &Path) -> Result<Run, Error> {
    let args = roll_forward_args(etcd, data, &["--to-revision", &rev.to_string()], target, testenv::free_port()?)?;
    Ok(run(&args, &[]).await.expect_fail())
}

pub(crate) async fn wait_durable(agent: &Agent, rev: i64) -> String {
    let series = "etcdsnap_delta_durable_revision";
    agent.wait_for_metric(series, rev as f64, Duration::from_secs(30)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_captures_and_a_restore_lands_on_the_revision_and_the_time_asked_for() -> TestResult {
    let (etcd, other) = (Etcd::single().await?, Etcd::single().await?);
    let mut client = etcd.client().await?;
    load_kube_like_data(&mut client, 100).await?;
    load_kube_like_data(&mut other.client().await?, 100).await?;
    let data = tempfile::tempdir()?;
    let writer = Writer::start(&etcd, None).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before_save = revision(&mut client).await;
    save(&etcd, data.path()).await;
    let after_save = revision(&mut client).await;
    // Another cluster, same node name, a newer snapshot in the same directory.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    save(&other, data.path()).await;

    let agent = agent(&etcd, data.path()).await;
    churn(&mut client, "a", 300).await;
    let r1 = revision(&mut client).await;
    wait_durable(&agent, r1).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // The revision a time target lands on is the last one the capture had seen by then, some
    // milliseconds after it was written: known only within these bounds while the writer runs.
    let before_between = revision(&mut client).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let between = etcdsnap_storage::clock::now();
    let after_between = revision(&mut client).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    churn(&mut client, "b", 300).await;
    let r2 = revision(&mut client).await;
    let h2 = hash_kv(&mut client, r2).await;
    // A few seconds later, the writer still going.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let metrics = wait_durable(&agent, r2).await;
    assert!(metric(&metrics, "etcdsnap_delta_capturing") == Some(1.0), "{metrics}");
    assert!(metric(&metrics, "etcdsnap_delta_events_total").unwrap() >= (r2 - after_save) as f64, "{metrics}");
    assert!(metric(&metrics, "etcdsnap_delta_bytes_total").unwrap() > 0.0, "{metrics}");
    let lag = metric(&metrics, "etcdsnap_delta_lag_seconds").unwrap();
    assert!((0.0..30.0).contains(&lag), "lag {lag}: {metrics}");

    // K3s sees two snapshots and nothing else; the chain is based on this cluster's.
    let seen = k3s::list_local(&data.path().join("snapshots"), NODE)?;
    assert_eq!(seen.len(), 2, "{seen:?}");
    let ls = run(&["ls", "--deltas", "--data-dir", &s(data.path()), "--node-name", NODE, "-o", "json"], &[]).await;
    let chains = ls.expect_ok().json();
    assert_eq!(chains.as_array().map(Vec::len), Some(1), "{chains}");
    let base_rev = chains[0]["baseRevision"].as_i64().unwrap();
    assert!((before_save..=after_save).contains(&base_rev), "{before_save}..={after_save}: {chains}");
    assert!(chains[0]["reachableRevision"].as_i64().unwrap() >= r2, "{chains}");
    assert_eq!(chains[0]["gaps"], serde_json::json!([]), "{chains}");

    let (rev, hash) = restore_to(&etcd, data.path(), ["--to-revision", &r2.to_string()]).await?;
    assert_eq!((rev, hash.hash), (r2, h2.hash), "restore to {r2}");
    let (rev, _) = restore_to(&etcd, data.path(), ["--to-time", &between.to_string()]).await?;
    assert!(
        (before_between..=after_between).contains(&rev),
        "restore to {between}: revision {rev}, not the last observed by then ({before_between}..={after_between})"
    );
    assert!(writer.stop().await > 1000, "the writer wrote through the save and the captures");

    // Past what was captured: refused, by revision, and nothing is created.
    let target = data.path().join("never");
    let beyond = revision(&mut client).await + 100_000;
    let refused = refused_restore(&etcd, data.path(), beyond, &target).await?;
    assert!(refused.stderr.contains("not captured yet"), "{}", refused.stderr);
    assert!(!target.exists());

    // Hostile content: a record for revisions nobody captured, over a segment of junk. The
    // restore reads it, refuses it by its checksum, and touches nothing.
    agent.stop().await?;
    let chain = chains[0]["chain"].as_str().unwrap();
    let chain_dir = data.path().join(".etcdsnap-deltas").join(chain);
    let ls = run(&["ls", "--deltas", "--data-dir", &s(data.path()), "--node-name", NODE, "-o", "json"], &[]).await;
    let tip = ls.expect_ok().json()[0]["reachableRevision"].as_i64().unwrap();
    let (first, last) = (tip + 1, tip + 100);
    // It names the chain's history and cluster, as a record of that chain would.
    let genuine = std::fs::read_dir(&chain_dir)?
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().ends_with(".json"));
    let genuine: serde_json::Value = serde_json::from_slice(&std::fs::read(genuine.unwrap().path())?)?;
    let planted = serde_json::json!({
        "format": 1, "chain": chain, "baseRevision": base_rev, "firstRevision": first, "lastRevision": last,
        "firstObservedMs": 1, "lastObservedMs": 2, "revisions": 100, "events": 100,
        "sha256": "00".repeat(32), "storedBytes": 4,
        "clusterId": genuine["clusterId"], "history": genuine["history"],
    });
    std::fs::write(chain_dir.join(format!("{first:020}-{last:020}.json")), planted.to_string())?;
    std::fs::write(chain_dir.join(format!("{first:020}-{last:020}.seg.zst")), b"junk")?;
    let hostile = refused_restore(&etcd, data.path(), tip + 50, &target).await?;
    assert!(hostile.stderr.contains("damaged"), "{}", hostile.stderr);
    assert!(!target.exists(), "a refused restore left {}", target.display());
    // No etcd to replay in: said before any work.
    let into = (tip + 50).to_string();
    let mut args = roll_forward_args(&etcd, data.path(), &["--to-revision", &into], &target, testenv::free_port()?)?;
    args.extend(["--etcd".into(), "/nonexistent/etcd".into()]); // the later flag wins
    let no_etcd = run(&args, &[]).await;
    assert!(no_etcd.expect_fail().stderr.contains("--etcd /nonexistent/etcd"));
    assert!(!target.exists());
    let leftovers: Vec<String> = std::fs::read_dir(data.path())?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".never"))
        .collect();
    assert!(leftovers.is_empty(), "working directories left behind: {leftovers:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_chain_starts_anew_from_a_snapshot_and_a_killed_agent_leaves_no_gap() -> TestResult {
    let etcd = etcd_with_objects(50).await?;
    let mut client = etcd.client().await?;
    let data = tempfile::tempdir()?;
    save(&etcd, data.path()).await;
    let old_base = revision(&mut client).await;
    churn(&mut client, "lost", 60).await;
    let compacted = revision(&mut client).await;
    client.compact(compacted, None).await?;

    // The revisions after the only snapshot are gone: the agent must say so and start over.
    let first = agent(&etcd, data.path()).await;
    let metrics = first.wait_for_metric("etcdsnap_delta_chain_breaks_total", 1.0, Duration::from_secs(30)).await?;
    assert!(metric(&metrics, "etcdsnap_delta_chain_breaks_total").unwrap() >= 1.0);
    first.wait_for_metric("etcdsnap_saves_total{status=\"success\"}", 1.0, Duration::from_secs(30)).await?;
    churn(&mut client, "kept", 200).await;
    let mid = revision(&mut client).await;
    wait_durable(&first, mid).await;

    // Killed (no chance to flush), during writes; restarted, it continues after what is durable.
    let writer = {
        let mut c = etcd.client().await?;
        tokio::spawn(async move { churn(&mut c, "during", 400).await })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    first.kill().await?;
    writer.await?;
    let end = revision(&mut client).await;
    let second = agent(&etcd, data.path()).await;
    wait_durable(&second, end).await;

    let ls = run(&["ls", "--deltas", "--data-dir", &s(data.path()), "--node-name", NODE, "-o", "json"], &[]).await;
    let chains = ls.expect_ok().json();
    let chain = chains.as_array().unwrap().iter().find(|c| c["baseRevision"].as_i64() > Some(old_base)).unwrap();
    assert_eq!(chain["gaps"], serde_json::json!([]), "{chains}");
    assert!(chain["reachableRevision"].as_i64().unwrap() >= end, "{chains}");
    assert!(chain["broken"].is_null(), "{chains}");
    // The durable segments follow each other exactly: nothing lost, nothing twice.
    let chain_dir = data.path().join(".etcdsnap-deltas").join(chain["chain"].as_str().unwrap());
    let mut ranges: Vec<(i64, i64)> = std::fs::read_dir(&chain_dir)?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .map(|e| {
            let r: serde_json::Value = serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
            (r["firstRevision"].as_i64().unwrap(), r["lastRevision"].as_i64().unwrap())
        })
        .collect();
    ranges.sort();
    let mut next = chain["baseRevision"].as_i64().unwrap() + 1;
    for (first, last) in &ranges {
        assert_eq!(*first, next, "segments {ranges:?}");
        next = last + 1;
    }
    // And what they hold, replayed, is the live key space at the end.
    let (rev, _) = restore_to(&etcd, data.path(), ["--to-revision", &end.to_string()]).await?;
    assert_eq!(rev, end);

    // Between the old snapshot and the new chain nothing was captured: refused, gap named.
    let target = data.path().join("never");
    let refused = refused_restore(&etcd, data.path(), old_base + 10, &target).await?;
    assert!(refused.stderr.contains("gap"), "{}", refused.stderr);
    assert!(refused.stderr.contains(&format!("revisions {}..", old_base + 1)), "{}", refused.stderr);
    assert!(!target.exists());
    second.stop().await?;
    Ok(())
}

/// The delta objects of `folder` in the bucket: (chain, file) pairs.
async fn s3_deltas(s3: &S3Server, bucket: &str, folder: &str) -> Vec<(String, String)> {
    let prefix =
        if folder.is_empty() { ".etcdsnap-deltas/".to_string() } else { format!("{folder}/.etcdsnap-deltas/") };
    let keys = s3.list_keys(bucket, &prefix).await.unwrap();
    keys.iter()
        .map(|k| {
            let parts: Vec<&str> = k.split('/').collect();
            assert_eq!(parts[parts.len() - 2], ".metadata", "{k}: K3s would take it for a snapshot");
            (parts[parts.len() - 3].to_string(), parts[parts.len() - 1].to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_reach_s3_after_a_minute_long_outage_and_k3s_never_takes_them_for_snapshots() -> TestResult {
    const BUCKET: &str = "pitr";
    const FOLDER: &str = "db";
    let etcd = etcd_with_objects(50).await?;
    let mut client = etcd.client().await?;
    let mut s3 = S3Server::with_bucket(BUCKET).await?;
    let data = tempfile::tempdir()?;
    // Owned: the server is stopped and restarted while they are in use.
    let s3_flags: Vec<String> =
        s3.etcdsnap_flags(BUCKET).into_iter().chain(["--s3-folder", FOLDER]).map(String::from).collect();
    let s3_flags: Vec<&str> = s3_flags.iter().map(String::as_str).collect();
    let (key, secret) = (s3.access_key().to_string(), s3.secret_key().to_string());
    let env = [("AWS_ACCESS_KEY_ID", key.as_str()), ("AWS_SECRET_ACCESS_KEY", secret.as_str())];
    let endpoints = etcd.endpoints().join(",");
    let mut save_args = vec!["save", "--endpoints", &endpoints, "--node-name", NODE];
    let dd = s(data.path());
    save_args.extend(["--data-dir", dd.as_str()]);
    save_args.extend(&s3_flags);
    run(&save_args, &env).await.expect_ok();

    let agent = agent_with(&etcd, data.path(), &s3_flags, &env).await;
    churn(&mut client, "before", 100).await;
    let r1 = revision(&mut client).await;
    agent.wait_for_metric("etcdsnap_delta_uploaded_revision", r1 as f64, Duration::from_secs(30)).await?;

    // S3 goes away for a minute; capture goes on locally, uploads wait.
    s3.stop();
    let down = std::time::Instant::now();
    churn(&mut client, "during", 200).await;
    let r2 = revision(&mut client).await;
    let h2 = hash_kv(&mut client, r2).await;
    wait_durable(&agent, r2).await;
    agent.wait_for_metric("etcdsnap_delta_upload_failures_total", 1.0, Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_secs(60).saturating_sub(down.elapsed())).await;
    s3.restart().await?;
    agent.wait_for_metric("etcdsnap_delta_uploaded_revision", r2 as f64, Duration::from_secs(60)).await?;

    // Every durable local file is in S3, byte for byte, under .metadata/ parents only.
    let in_s3 = s3_deltas(&s3, BUCKET, FOLDER).await;
    let deltas = data.path().join(".etcdsnap-deltas");
    let mut local_files = Vec::new();
    for chain in std::fs::read_dir(&deltas)? {
        let chain = chain?.path();
        for f in std::fs::read_dir(&chain)? {
            let f = f?.path();
            let (c, name) = (
                chain.file_name().unwrap().to_string_lossy().into_owned(),
                f.file_name().unwrap().to_string_lossy().into_owned(),
            );
            let key = format!("{FOLDER}/.etcdsnap-deltas/{c}/.metadata/{name}");
            if name.ends_with(".seg.zst") {
                let (bytes, _) = s3.get_object(BUCKET, &key).await?;
                assert_eq!(bytes, std::fs::read(&f)?, "{key}");
            }
            local_files.push((c, name));
        }
    }
    local_files.sort();
    let mut sorted = in_s3.clone();
    sorted.sort();
    assert_eq!(sorted, local_files, "S3 holds exactly the durable local files, each once");
    // K3s's reading of the folder: the one snapshot, nothing else.
    let seen = k3s::list_s3(&s3, BUCKET, FOLDER).await?;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].snapshot_name.starts_with("on-demand-n1-"), "{seen:?}");

    // The node's disk is gone: the snapshot and the segments in S3 are enough.
    agent.stop().await?;
    std::fs::remove_dir_all(data.path().join("snapshots"))?;
    std::fs::remove_dir_all(&deltas)?;
    let out = tempfile::tempdir()?;
    let target = out.path().join("member-data");
    let peer = testenv::free_port()?;
    let mut args = restore_args(&["--to-revision", &r2.to_string()], &target, peer, &etcd.testbin("etcdutl")?);
    args.extend(["--etcd".into(), s(&etcd.testbin("etcd")?), "-o".into(), "json".into()]);
    args.extend(s3_flags.iter().map(|f| f.to_string()));
    let printed = run(&args, &env).await.expect_ok().json();
    assert_eq!(printed["targetRevision"], r2, "{printed}");
    let restored = Etcd::start_on_data_dir(&target, "m0", peer).await?;
    let mut rc = restored.client().await?;
    assert_eq!(revision(&mut rc).await, r2);
    assert_eq!(printed["replayed"]["eventsProven"], printed["replayed"]["events"], "{printed}");
    assert_same_key_space(&client, &rc, r2).await;
    assert_eq!(hash_kv(&mut rc, r2).await.hash, h2.hash, "the replay from S3 differs from the live cluster");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_exactly_the_segments_a_kept_snapshot_can_use() -> TestResult {
    let etcd = etcd_with_objects(20).await?;
    let mut client = etcd.client().await?;
    let data = tempfile::tempdir()?;
    let agent = agent_with(&etcd, data.path(), &["--schedule", "*/3 * * * * *", "--retention", "2"], &[]).await;
    // Writes across several scheduled snapshots, so that the oldest are pruned.
    for round in 0..5 {
        churn(&mut client, &format!("r{round}"), 60).await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    churn(&mut client, "last", 60).await;
    let end = revision(&mut client).await;
    wait_durable(&agent, end).await;
    let log = agent.stop().await?;
    assert!(log.contains("delta segments older than every snapshot removed"), "{log}");
    // Retention emptying the running chain's directory never costs the capture its changes.
    assert!(!log.contains("delta capture failed") && !log.contains("not written"), "{log}");

    let ls = run(&["ls", "--data-dir", &s(data.path()), "--node-name", NODE, "-o", "json"], &[]).await.expect_ok();
    let snapshots = ls.json();
    let kept: Vec<i64> = snapshots["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["metadata"]["annotations"]["etcdsnap.io/etcd-revision"].as_str()?.parse().ok())
        .collect();
    assert_eq!(kept.len(), 2, "{snapshots}");
    let oldest = *kept.iter().min().unwrap();
    let chains = run(&["ls", "--deltas", "--data-dir", &s(data.path()), "--node-name", NODE, "-o", "json"], &[]).await;
    let chains = chains.expect_ok().json();
    let mut ranges = Vec::new();
    for chain in std::fs::read_dir(data.path().join(".etcdsnap-deltas"))? {
        for f in std::fs::read_dir(chain?.path())? {
            let name = f?.file_name().to_string_lossy().into_owned();
            if let Some(range) = name.strip_suffix(".json") {
                let (first, last) = range.split_once('-').unwrap();
                ranges.push((first.parse::<i64>()?, last.parse::<i64>()?));
            }
        }
    }
    ranges.sort();
    assert!(
        ranges.iter().all(|(_, last)| *last > oldest),
        "a segment no kept snapshot can use: {ranges:?} (oldest {oldest})"
    );
    // What is left still rolls the oldest kept snapshot forward to the end, without a gap.
    let covering = ranges.iter().find(|(first, last)| *first <= oldest + 1 && *last > oldest);
    assert!(covering.is_some(), "the oldest kept snapshot at {oldest} cannot be rolled forward: {ranges:?}\n{chains}");
    assert!(oldest < end, "{oldest} {end}");
    let (rev, _) = restore_to(&etcd, data.path(), ["--to-revision", &end.to_string()]).await?;
    assert_eq!(rev, end);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_compacting_past_a_stalled_watch_breaks_the_chain_and_a_new_one_starts() -> TestResult {
    let etcd = etcd_with_objects(20).await?;
    let mut client = etcd.client().await?;
    let data = tempfile::tempdir()?;
    let agent = agent(&etcd, data.path()).await;
    churn(&mut client, "before", 50).await;
    let before = revision(&mut client).await;
    wait_durable(&agent, before).await;

    // The agent stops reading (paused); etcd's buffers for its watch fill, then the revisions the
    // watch still has to deliver are compacted away.
    agent.signal("-STOP")?;
    let big = "x".repeat(4096);
    for i in 0..3000 {
        client.put(format!("/registry/events/default/e-{}", i % 500), big.clone(), None).await?;
    }
    let compacted = revision(&mut client).await;
    client.compact(compacted, None).await?;
    agent.signal("-CONT")?;

    let metrics = agent.wait_for_metric("etcdsnap_delta_chain_breaks_total", 1.0, Duration::from_secs(60)).await?;
    assert!(metric(&metrics, "etcdsnap_delta_chain_breaks_total").unwrap() >= 1.0, "{metrics}");
    churn(&mut client, "after", 50).await;
    let after = revision(&mut client).await;
    wait_durable(&agent, after).await;
    let ls = run(&["ls", "--deltas", "--data-dir", &s(data.path()), "--node-name", NODE, "-o", "json"], &[]).await;
    let chains = ls.expect_ok().json();
    let chains = chains.as_array().unwrap();
    let broken = chains.iter().find_map(|c| c["broken"].as_str()).unwrap_or_default();
    assert!(broken.contains("compaction"), "the break is marked with its cause: {chains:?}");
    assert!(
        chains
            .iter()
            .any(|c| c["baseRevision"].as_i64() >= Some(compacted) && c["reachableRevision"].as_i64() >= Some(after)),
        "a new chain from a new snapshot reaches {after}: {chains:?}"
    );
    agent.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_retention_removes_the_delta_objects_no_s3_snapshot_can_use() -> TestResult {
    const BUCKET: &str = "pitr-retention";
    let etcd = etcd_with_objects(20).await?;
    let mut client = etcd.client().await?;
    let s3 = S3Server::with_bucket(BUCKET).await?;
    let data = tempfile::tempdir()?;
    // S3 retention needs to know which snapshots are this cluster's.
    let mut extra = vec!["--schedule", "*/3 * * * * *", "--retention", "2", "--cluster-id", "c1"];
    extra.extend(s3.etcdsnap_flags(BUCKET));
    let agent = agent_with(&etcd, data.path(), &extra, &s3.credentials_env()).await;
    for round in 0..5 {
        churn(&mut client, &format!("r{round}"), 60).await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    churn(&mut client, "last", 60).await;
    let end = revision(&mut client).await;
    agent.wait_for_metric("etcdsnap_delta_uploaded_revision", end as f64, Duration::from_secs(30)).await?;
    let log = agent.stop().await?;
    assert!(log.contains("S3 delta objects older than every S3 snapshot removed"), "{log}");

    // The S3 snapshots left, and their revisions (from etcdsnap's records beside them).
    let keys = s3.list_keys(BUCKET, "").await?;
    let mut revisions = Vec::new();
    for key in keys.iter().filter(|k| k.starts_with(".metadata/") && k.ends_with(".etcdsnap.json")) {
        let (bytes, _) = s3.get_object(BUCKET, key).await?;
        let record: serde_json::Value = serde_json::from_slice(&bytes)?;
        let rev = record["etcd"]["revision"].as_i64().or(record["etcdRevision"].as_i64());
        revisions.push(rev.ok_or_else(|| format!("no revision in {key}: {record}"))?);
    }
    assert_eq!(revisions.len(), 2, "{keys:?}");
    let oldest = *revisions.iter().min().unwrap();
    let deltas = s3_deltas(&s3, BUCKET, "").await;
    assert!(!deltas.is_empty());
    for (chain, file) in &deltas {
        let last: i64 = file.split_once('-').unwrap().1.split('.').next().unwrap().parse()?;
        assert!(last > oldest, "{chain}/{file} serves no S3 snapshot (oldest at {oldest})");
    }
    // Every record left has its segment.
    for (chain, file) in deltas.iter().filter(|(_, f)| f.ends_with(".json")) {
        let segment = file.replace(".json", ".seg.zst");
        assert!(deltas.contains(&(chain.clone(), segment)), "{chain}/{file} without its segment");
    }
    Ok(())
}
