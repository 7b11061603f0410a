//! Point-in-time capture in company: two agents with Kubernetes beside one etcd. Only the
//! leader captures; the newest snapshot's resource says how far it rolls forward; when the
//! leader is killed, the new leader captures from its own newest snapshot, or, with S3,
//! continues the previous leader's chain from the last revision durable there: no gap, no
//! overlap, and a restore from S3 across the change equals the live key space.

use crate::common::agent::{Agent, metric};
use crate::common::cluster::{BUCKET, leader, start_agent, wait_until};
use crate::common::etcd::etcd_with_objects;
use crate::common::keyspace::assert_same_key_space;
use crate::common::restore::{restore_args, revision};
use crate::common::{TestResult, run, s};
use etcdsnap_api::ETCDSnapshotFile;
use etcdsnap_api::consts::{ANNOTATION_ROLLS_FORWARD_TO, ANNOTATION_ROLLS_FORWARD_UNTIL};
use etcdsnap_storage::pitr::SegmentRecord;
use kube::api::{Api, ListParams};
use std::time::Duration;
use testenv::{Etcd, KubeApiServer, S3Server};

async fn gauge(agent: &Agent, series: &str) -> Option<f64> {
    let (_, body) = agent.get("/metrics").await.ok()?;
    metric(&body, series)
}

async fn put_many(client: &mut etcd_client::Client, tag: &str, n: usize) -> i64 {
    let mut rev = 0;
    for i in 0..n {
        let resp =
            client.put(format!("/registry/configmaps/default/{tag}-{}", i % 20), format!("{i}"), None).await.unwrap();
        rev = resp.header().unwrap().revision();
    }
    rev
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_captures_and_the_next_leader_takes_over_from_its_own_snapshot() -> TestResult {
    let etcd = etcd_with_objects(50).await?;
    let mut client = etcd.client().await?;
    let api = KubeApiServer::start(&etcd).await?;
    let kube = api.client().await?;
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let extra = ["--deltas", "--delta-interval", "1s", "--drill-schedule", ""];
    let endpoint = &etcd.endpoints()[0];
    let nodes = ["node-a", "node-b"];
    let mut agents = Vec::new();
    for (node, dir) in nodes.iter().zip(&dirs) {
        agents.push(start_agent(node, endpoint, dir.path(), &api, None, &extra, &[]).await?);
    }
    let mut first = String::new();
    wait_until("a leader", Duration::from_secs(30), async || {
        first = leader(&kube).await.unwrap_or_default();
        !first.is_empty()
    })
    .await?;
    let (lead, follow) = if nodes[0] == first { (0, 1) } else { (1, 0) };
    let rev = put_many(&mut client, "a", 200).await;
    wait_until("the leader's durable revision", Duration::from_secs(30), async || {
        gauge(&agents[lead], "etcdsnap_delta_durable_revision").await.unwrap_or(0.0) >= rev as f64
    })
    .await?;
    assert_eq!(gauge(&agents[lead], "etcdsnap_delta_capturing").await, Some(1.0));
    assert_eq!(gauge(&agents[follow], "etcdsnap_delta_capturing").await, Some(0.0), "a follower captures");
    assert!(!dirs[follow].path().join(".etcdsnap-deltas").exists(), "a follower wrote delta segments");

    // The leader's newest snapshot's resource says how far it rolls forward.
    let crs: Api<ETCDSnapshotFile> = Api::all(kube.clone());
    let leader_node = nodes[lead];
    wait_until("the roll-forward annotation", Duration::from_secs(30), async || {
        let Ok(list) = crs.list(&ListParams::default()).await else { return false };
        list.items.iter().filter(|cr| cr.spec.node_name == leader_node).any(|cr| {
            let a = cr.metadata.annotations.clone().unwrap_or_default();
            a.get(ANNOTATION_ROLLS_FORWARD_UNTIL).is_some_and(|t| t.parse::<jiff::Timestamp>().is_ok())
                && a.get(ANNOTATION_ROLLS_FORWARD_TO).and_then(|r| r.parse::<i64>().ok()).is_some_and(|r| r >= rev)
        })
    })
    .await?;

    // The leader dies; the follower takes over the capture from its own snapshots.
    agents[lead].signal("-KILL")?;
    let rev = put_many(&mut client, "b", 200).await;
    wait_until("the new leader's durable revision", Duration::from_secs(60), async || {
        gauge(&agents[follow], "etcdsnap_delta_durable_revision").await.unwrap_or(0.0) >= rev as f64
    })
    .await?;
    let chains = std::fs::read_dir(dirs[follow].path().join(".etcdsnap-deltas"))?.count();
    assert!(chains >= 1, "the new leader wrote no chain");
    agents.swap_remove(follow).stop().await?;
    Ok(())
}

/// The segment records in S3, oldest first.
async fn s3_records(s3: &S3Server) -> Vec<SegmentRecord> {
    let mut records = Vec::new();
    for key in s3.list_keys(BUCKET, ".etcdsnap-deltas/").await.unwrap().iter().filter(|k| k.ends_with(".json")) {
        let (bytes, _) = s3.get_object(BUCKET, key).await.unwrap();
        records.push(SegmentRecord::parse(key, &bytes).unwrap());
    }
    records.sort_by_key(|r| r.first_revision);
    records
}

/// With S3, the new leader continues the killed leader's chain right after the last revision
/// durable in S3: one chain, one history, its records following each other exactly (nothing
/// captured twice, nothing missing), and a restore from S3 to a revision written after the
/// change equals the live key space.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_continues_the_chain_from_s3_without_a_gap_or_an_overlap() -> TestResult {
    let etcd = etcd_with_objects(50).await?;
    let mut client = etcd.client().await?;
    let api = KubeApiServer::start(&etcd).await?;
    let kube = api.client().await?;
    let s3 = S3Server::with_bucket(BUCKET).await?;
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    // One snapshot (the first leader's, to start the chain from); no scheduled ones.
    let extra = ["--deltas", "--delta-interval", "1s", "--drill-schedule", "", "--schedule", "0 0 1 1 *"];
    let endpoint = &etcd.endpoints()[0];
    let nodes = ["node-a", "node-b"];
    let mut agents = Vec::new();
    for (node, dir) in nodes.iter().zip(&dirs) {
        agents.push(start_agent(node, endpoint, dir.path(), &api, Some(&s3), &extra, &[]).await?);
    }
    let mut first = String::new();
    wait_until("a leader", Duration::from_secs(30), async || {
        first = leader(&kube).await.unwrap_or_default();
        !first.is_empty()
    })
    .await?;
    let (lead, follow) = if nodes[0] == first { (0, 1) } else { (1, 0) };
    let rev = put_many(&mut client, "a", 200).await;
    wait_until("the leader's uploads", Duration::from_secs(30), async || {
        gauge(&agents[lead], "etcdsnap_delta_uploaded_revision").await.unwrap_or(0.0) >= rev as f64
    })
    .await?;

    agents[lead].signal("-KILL")?;
    let before = s3_records(&s3).await;
    let handed_over = before.iter().map(|r| r.last_revision).max().unwrap();
    let rev = put_many(&mut client, "b", 200).await;
    wait_until("the new leader's uploads", Duration::from_secs(60), async || {
        gauge(&agents[follow], "etcdsnap_delta_uploaded_revision").await.unwrap_or(0.0) >= rev as f64
    })
    .await?;

    let records = s3_records(&s3).await;
    let chains: std::collections::BTreeSet<(&str, Option<&str>)> =
        records.iter().map(|r| (r.chain.as_str(), r.history.as_deref())).collect();
    assert_eq!(chains.len(), 1, "one chain in one history across the change: {chains:?}");
    let mut next = records[0].base_revision + 1;
    for r in &records {
        assert_eq!(r.first_revision, next, "records follow each other exactly: {records:?}");
        next = r.last_revision + 1;
    }
    assert!(next > rev, "the chain reaches {rev}: {records:?}");
    let theirs: Vec<&SegmentRecord> = records.iter().filter(|r| r.first_revision > handed_over).collect();
    assert_eq!(theirs.first().map(|r| r.first_revision), Some(handed_over + 1), "{records:?}");
    let local = dirs[follow].path().join(".etcdsnap-deltas").join(&records[0].chain);
    assert!(local.is_dir(), "the new leader wrote into the same chain");

    // Both nodes' disks aside: S3 alone restores across the change.
    for agent in agents {
        let _ = agent.stop().await;
    }
    let out = tempfile::tempdir()?;
    let target = out.path().join("member-data");
    let peer = testenv::free_port()?;
    let mut args = restore_args(&["--to-revision", &rev.to_string()], &target, peer, &etcd.testbin("etcdutl")?);
    args.extend(["--etcd".into(), s(&etcd.testbin("etcd")?)]);
    args.extend(s3.etcdsnap_flags(BUCKET).into_iter().map(String::from));
    run(&args, &s3.credentials_env()).await.expect_ok();
    let restored = Etcd::start_on_data_dir(&target, "m0", peer).await?;
    let mut rc = restored.client().await?;
    assert_eq!(revision(&mut rc).await, rev);
    assert_same_key_space(&client, &rc, rev).await;
    Ok(())
}
