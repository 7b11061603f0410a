//! Point-in-time recovery across what a running cluster does to a chain's history, through the
//! binary and against real etcd: a snapshot whose time comes before its revision (a time target
//! must map to a revision first), an agent restarted after a scheduled snapshot and the API
//! server's compaction (the chain continues), a member rolled back in place (a new history,
//! whose revisions etcd numbers again: a target both hold is refused until one is chosen).
//! Every restore is compared with the live key space at its revision, key by key.

use crate::common::agent::metric;
use crate::common::etcd::{etcd_with_objects, load_kube_like_data};
use crate::common::keyspace::{KeyState, assert_same_key_space, key_space};
use crate::common::restore::revision;
use crate::common::{TestResult, run, s};
use crate::pitr::{Writer, snapshot_revision};
use crate::pitr_agent::{NODE, agent, agent_with, churn, restore_to, roll_forward_args, save, wait_durable};
use etcdsnap_storage::pitr::{Segment, SegmentRecord};
use std::collections::{BTreeMap, BTreeSet};
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

/// The histories of the segment records under `data`, each with the revisions its records span.
fn segment_histories(data: &Path) -> BTreeMap<String, (i64, i64)> {
    let mut histories: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for chain in std::fs::read_dir(data.join(".etcdsnap-deltas")).unwrap().filter_map(Result::ok) {
        for file in std::fs::read_dir(chain.path()).unwrap().filter_map(Result::ok) {
            let name = file.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".json") {
                continue;
            }
            let r = SegmentRecord::parse(&name, &std::fs::read(file.path()).unwrap()).unwrap();
            let history = r.history.clone().expect("every new segment names its history");
            let span = histories.entry(history).or_insert((r.first_revision, r.last_revision));
            *span = (span.0.min(r.first_revision), span.1.max(r.last_revision));
        }
    }
    histories
}

/// `restore <to...>` of `data`'s snapshots into a new directory, served by a real etcd: the
/// revision it holds and every key at it.
async fn restored_key_space(
    etcd: &Etcd,
    data: &Path,
    to: &[&str],
) -> Result<(i64, BTreeMap<Vec<u8>, KeyState>, Etcd, tempfile::TempDir), Box<dyn std::error::Error>> {
    let out = tempfile::tempdir()?;
    let target = out.path().join("member-data");
    let peer = testenv::free_port()?;
    let mut args = roll_forward_args(etcd, data, to, &target, peer)?;
    args.extend(["-o".into(), "json".into()]);
    let printed = run(&args, &[]).await.expect_ok().json();
    let restored = Etcd::start_on_data_dir(&target, "m0", peer).await?;
    let mut client = restored.client().await?;
    let rev = revision(&mut client).await;
    assert_eq!(printed["replayed"]["revision"], rev, "{printed}");
    assert_eq!(printed["replayed"]["eventsProven"], printed["replayed"]["events"], "{printed}");
    let keys = key_space(&client, rev).await;
    Ok((rev, keys, restored, out))
}

/// A member rolled back in place (an older snapshot restored with the same name, peer URL and
/// token, so the cluster ID stays) numbers its next changes from the restored revision again,
/// with other contents. The agent sees that the live etcd is not the history its chain
/// recorded, ends that chain and starts a new history from a new full snapshot. A restore to a
/// revision only the new history holds equals the live key space; one both hold is refused
/// without `--history`, naming both, and with it gives exactly that history's key space, never
/// a mix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_rolled_back_in_place_starts_a_new_history_and_targets_never_mix() -> TestResult {
    let mut etcd = etcd_with_objects(50).await?;
    let mut client = etcd.client().await?;
    let cluster_id = client.status().await?.header().map(|h| h.cluster_id());
    let data = tempfile::tempdir()?;
    save(&etcd, data.path()).await;
    let rolled_back_to = revision(&mut client).await;
    let first = agent(&etcd, data.path()).await;
    churn(&mut client, "old", 300).await;
    let old_end = revision(&mut client).await;
    wait_durable(&first, old_end).await;
    first.stop().await?;
    let both = rolled_back_to + 150;
    let old_keys = key_space(&client, both).await;

    // Roll back in place, with etcdsnap's own restore of the first snapshot.
    let (snapshot, _) = snapshots(data.path())[0].clone();
    let (name, peer_url, member_dir) = {
        let m = &etcd.members()[0];
        (m.name.clone(), m.peer_url.clone(), m.data_dir.clone())
    };
    etcd.kill(0);
    let etcdutl = etcd.testbin("etcdutl")?;
    let path = data.path().join("snapshots").join(&snapshot);
    #[rustfmt::skip]
    let args = [
        "restore", &s(&path), "--data-dir", &s(&member_dir), "--member-name", &name,
        "--initial-advertise-peer-urls", &peer_url, "--initial-cluster-token", etcd.token(),
        "--etcdutl", &s(&etcdutl),
    ];
    run(&args, &[]).await.expect_ok();
    etcd.restart(0).await?;
    let mut client = etcd.client().await?;
    assert_eq!(client.status().await?.header().map(|h| h.cluster_id()), cluster_id, "the cluster ID stays");
    assert_eq!(revision(&mut client).await, rolled_back_to);

    let second = agent(&etcd, data.path()).await;
    // The new history's first snapshot, taken by the agent, before anything is written.
    let saved = "etcdsnap_saves_total{status=\"success\"}";
    second.wait_for_metric(saved, 1.0, Duration::from_secs(30)).await?;
    second.wait_for_metric("etcdsnap_delta_capturing", 1.0, Duration::from_secs(30)).await?;
    churn(&mut client, "new", 400).await;
    let new_end = revision(&mut client).await;
    wait_durable(&second, new_end).await;
    second.stop().await?;

    let histories = segment_histories(data.path());
    assert_eq!(histories.len(), 2, "{histories:?}");
    let (old, new): (Vec<_>, Vec<_>) = histories.iter().partition(|(_, span)| span.1 == old_end);
    let (old, new) = (old[0].0.clone(), new[0].0.clone());
    assert_eq!(histories[&new].1, new_end, "{histories:?}");
    assert!(histories[&new].0 > rolled_back_to, "the new history starts at its own snapshot: {histories:?}");
    // `ls` names each snapshot's history: the first save's is the one its chain continued, the
    // agent's snapshot after the rollback the new one.
    let ls = run(&["ls", "--data-dir", &s(data.path()), "--node-name", NODE, "-o", "json"], &[]).await.expect_ok();
    let named: BTreeMap<String, String> = ls.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|cr| {
            let ann = &cr["metadata"]["annotations"];
            (
                cr["spec"]["snapshotName"].as_str().unwrap().to_string(),
                ann["etcdsnap.io/etcd-history"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(named.len(), 2, "{named:?}");
    assert_eq!(named[&snapshot], old, "{named:?}");
    assert!(named.iter().any(|(n, h)| *n != snapshot && *h == new), "{named:?}");
    let wide = run(&["ls", "--data-dir", &s(data.path()), "--node-name", NODE, "-o", "wide"], &[]).await.expect_ok();
    assert!(
        wide.stdout.contains("History") && wide.stdout.contains(old.as_str()) && wide.stdout.contains(new.as_str()),
        "{}",
        wide.stdout
    );

    // Only the new history holds revisions past the old one's end: no choice to make.
    let (rev, _, restored, _dir) =
        restored_key_space(&etcd, data.path(), &["--to-revision", &(old_end + 50).to_string()]).await?;
    assert_eq!(rev, old_end + 50);
    assert_same_key_space(&client, &restored.client().await?, rev).await;
    drop(restored);

    // Both hold `both`: refused, naming both histories, until one is chosen.
    let out = tempfile::tempdir()?;
    let args = roll_forward_args(
        &etcd,
        data.path(),
        &["--to-revision", &both.to_string()],
        &out.path().join("m"),
        testenv::free_port()?,
    )?;
    let refused = run(&args, &[]).await.expect_fail();
    let text = &refused.stderr;
    assert!(text.contains(old.as_str()) && text.contains(new.as_str()) && text.contains("--history"), "{text}");
    assert!(!out.path().join("m").exists(), "nothing installed");

    let (rev, keys, restored, _dir) =
        restored_key_space(&etcd, data.path(), &["--to-revision", &both.to_string(), "--history", &new]).await?;
    assert_eq!(rev, both);
    assert_same_key_space(&client, &restored.client().await?, rev).await;
    assert_ne!(keys, old_keys, "the two histories differ at {both}");
    drop(restored);
    let (rev, keys, _restored, _dir) =
        restored_key_space(&etcd, data.path(), &["--to-revision", &both.to_string(), "--history", &old]).await?;
    assert_eq!(rev, both);
    let differing: BTreeSet<&Vec<u8>> =
        keys.keys().chain(old_keys.keys()).filter(|k| keys.get(*k) != old_keys.get(*k)).collect();
    assert!(differing.is_empty(), "the old history at {both}, exactly: {} keys differ", differing.len());
    Ok(())
}

/// Two servers of one cluster save into one S3 folder, with writes between their saves and no
/// delta chain there yet: the second takes the history of the first's snapshot instead of
/// naming one of its own, so a restore to its revision never has two IDs to choose from.
#[tokio::test]
async fn a_server_saving_into_s3_after_another_takes_its_history() -> TestResult {
    const BUCKET: &str = "histories";
    let etcd = etcd_with_objects(10).await?;
    let mut client = etcd.client().await?;
    let s3 = testenv::S3Server::with_bucket(BUCKET).await?;
    let (flags, env, endpoints) = (s3.etcdsnap_flags(BUCKET), s3.credentials_env(), etcd.endpoints().join(","));
    let data = tempfile::tempdir()?;
    for node in ["server-1", "server-2"] {
        let dir = s(&data.path().join(node));
        let save = [&["save", "--endpoints", &endpoints, "--node-name", node, "--data-dir", &dir][..], &flags].concat();
        run(&save, &env).await.expect_ok();
        for i in 0..5 {
            client.put(format!("/registry/configmaps/default/{node}-{i}"), "v", None).await?;
        }
    }
    let mut histories = BTreeMap::new();
    for key in s3.list_keys(BUCKET, ".metadata/").await? {
        if key.ends_with(".etcdsnap.json") {
            let record: serde_json::Value = serde_json::from_slice(&s3.get_object(BUCKET, &key).await?.0)?;
            histories.insert(key, record["etcd"]["history"].as_str().map(str::to_string));
        }
    }
    assert_eq!(histories.len(), 2, "{histories:?}");
    let ids: BTreeSet<_> = histories.values().collect();
    assert!(ids.len() == 1 && histories.values().all(Option::is_some), "two histories: {histories:?}");
    Ok(())
}
