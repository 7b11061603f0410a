//! Point-in-time recovery across what a running cluster does to a chain's history, through the
//! binary and against real etcd: a snapshot whose time comes before its revision (a time target
//! must map to a revision first), an agent restarted after a scheduled snapshot and the API
//! server's compaction (the chain continues).
//! Every restore is compared with the live key space at its revision, key by key.

use crate::common::agent::metric;
use crate::common::etcd::{etcd_with_objects, load_kube_like_data};
use crate::common::restore::revision;
use crate::common::{TestResult, run, s};
use crate::pitr::{Writer, snapshot_revision};
use crate::pitr_agent::{NODE, agent, agent_with, churn, restore_to, save, wait_durable};
use etcdsnap_storage::pitr::{Segment, SegmentRecord};
use std::path::Path;
use std::time::Duration;
use testenv::Etcd;

/// The local snapshots of `data`, oldest first: (name, the revision its file holds).
fn snapshots(data: &Path) -> Vec<(String, i64)> {
    let dir = data.join("snapshots");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names.into_iter().map(|n| (n.clone(), snapshot_revision(&dir.join(&n)))).collect()
}

/// The last revision that any segment under `data` records as observed at or before `ms`,
/// read from the segments' own times.
fn last_observed_by(data: &Path, ms: i64) -> Option<i64> {
    let deltas = data.join(".etcdsnap-deltas");
    let mut newest = None;
    for chain in std::fs::read_dir(&deltas).unwrap().filter_map(Result::ok) {
        for file in std::fs::read_dir(chain.path()).unwrap().filter_map(Result::ok) {
            let name = file.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".json") else { continue };
            let record = SegmentRecord::parse(&name, &std::fs::read(file.path()).unwrap()).unwrap();
            let stored = std::fs::read(chain.path().join(format!("{stem}.seg.zst"))).unwrap();
            let segment = Segment::from_stored(&name, &stored, 256 << 20, None).unwrap();
            assert_eq!(segment.last_revision(), Some(record.last_revision));
            newest = newest.max(segment.last_revision_observed_by(ms));
        }
    }
    newest
}

/// A snapshot is stamped with its time before its revision is known: with a writer putting
/// every 2 ms, the snapshot taken at T holds revisions written after T. `restore --to-time T`
/// must land on the last revision observed at or before T, rolled forward from the earlier
/// snapshot, never on the later snapshot's revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_target_maps_to_a_revision_before_the_base_is_chosen() -> TestResult {
    let etcd = Etcd::single().await?;
    let mut client = etcd.client().await?;
    load_kube_like_data(&mut client, 100).await?;
    let data = tempfile::tempdir()?;
    save(&etcd, data.path()).await;
    let agent = agent(&etcd, data.path()).await;
    let writer = Writer::start(&etcd, None).await;
    churn(&mut client, "before", 200).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The save names its snapshot after the nearest second (K3s's rule): started 100 ms into a
    // second, it is stamped with that second, before the writes of those 100 ms and the ones
    // until its stream, which the snapshot holds.
    let into_second = crate::pitr::now_ms().rem_euclid(1000) as u64;
    tokio::time::sleep(Duration::from_millis((1100 - into_second) % 1000)).await;
    save(&etcd, data.path()).await;
    churn(&mut client, "after", 200).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(writer.stop().await > 200, "the writer wrote through the save");
    let end = revision(&mut client).await;
    wait_durable(&agent, end).await;
    agent.stop().await?;

    let taken = snapshots(data.path());
    assert_eq!(taken.len(), 2, "{taken:?}");
    let ((_, first_rev), (second, second_rev)) = (taken[0].clone(), taken[1].clone());
    // The second snapshot's time: the second its name gives.
    let unix: i64 = second.rsplit('-').next().unwrap().parse()?;
    let at = unix * 1000;
    let expected = last_observed_by(data.path(), at).expect("revisions observed by then");
    assert!(
        first_rev < expected && expected < second_rev,
        "the writer wrote between {at} and the second snapshot's revision: {first_rev} < {expected} < {second_rev}"
    );
    let when = jiff::Timestamp::from_millisecond(at)?.to_string();
    let (rev, _) = restore_to(&etcd, data.path(), ["--to-time", &when]).await?;
    assert_eq!(rev, expected, "restore to {when}: the last revision observed by then, exactly");
    Ok(())
}

/// The API server compacts etcd to its current revision every five minutes, so soon after a
/// scheduled snapshot etcd no longer holds the revisions after it. An agent killed and
/// restarted then must continue its chain from the last durable revision (which etcd still
/// holds), not from the newest snapshot: no gap, and a restore to a revision written while it
/// was down equals the live key space.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_continues_its_chain_after_a_scheduled_snapshot_and_compaction() -> TestResult {
    let etcd = etcd_with_objects(50).await?;
    let mut client = etcd.client().await?;
    let data = tempfile::tempdir()?;
    save(&etcd, data.path()).await;
    let base = revision(&mut client).await;
    let schedule = ["--schedule", "*/3 * * * * *"];
    let first = agent_with(&etcd, data.path(), &schedule, &[]).await;
    churn(&mut client, "before", 100).await;
    first.wait_for_metric("etcdsnap_saves_total{status=\"success\"}", 1.0, Duration::from_secs(30)).await?;
    // Shortly after the scheduled snapshot, compaction to the current revision.
    churn(&mut client, "snapshotted", 50).await;
    let compacted = revision(&mut client).await;
    client.compact(compacted, None).await?;
    churn(&mut client, "after-compaction", 50).await;
    wait_durable(&first, revision(&mut client).await).await;
    first.kill().await?;
    let scheduled = snapshots(data.path());
    assert!(
        scheduled.iter().any(|(_, rev)| *rev > base && *rev < compacted),
        "a scheduled snapshot before the compaction: {scheduled:?}"
    );

    churn(&mut client, "down", 150).await;
    let written_down = revision(&mut client).await;
    churn(&mut client, "still-down", 50).await;
    let second = agent_with(&etcd, data.path(), &schedule, &[]).await;
    churn(&mut client, "back", 50).await;
    let end = revision(&mut client).await;
    let metrics = wait_durable(&second, end).await;
    assert_eq!(metric(&metrics, "etcdsnap_delta_chain_breaks_total").unwrap_or(0.0), 0.0, "{metrics}");
    let log = second.stop().await?;
    assert!(!log.contains("broken"), "{log}");

    let ls = run(&["ls", "--deltas", "--data-dir", &s(data.path()), "--node-name", NODE, "-o", "json"], &[]).await;
    let chains = ls.expect_ok().json();
    let all = chains.as_array().unwrap();
    assert_eq!(all.len(), 1, "one chain, continued across the restart: {chains}");
    assert_eq!(all[0]["baseRevision"], base, "{chains}");
    assert_eq!(all[0]["gaps"], serde_json::json!([]), "{chains}");
    assert!(all[0]["broken"].is_null(), "{chains}");
    assert!(all[0]["reachableRevision"].as_i64().unwrap() >= end, "{chains}");
    let (rev, _) = restore_to(&etcd, data.path(), ["--to-revision", &written_down.to_string()]).await?;
    assert_eq!(rev, written_down);
    Ok(())
}
