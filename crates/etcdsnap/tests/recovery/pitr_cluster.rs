//! Point-in-time capture in company: two agents with Kubernetes beside one etcd. Only the
//! leader captures; the newest snapshot's resource says how far it rolls forward; when the
//! leader is killed, the new leader captures from its own newest snapshot.

use crate::common::TestResult;
use crate::common::agent::{Agent, metric};
use crate::common::cluster::{leader, start_agent, wait_until};
use crate::common::etcd::etcd_with_objects;
use etcdsnap_api::ETCDSnapshotFile;
use etcdsnap_api::consts::{ANNOTATION_ROLLS_FORWARD_TO, ANNOTATION_ROLLS_FORWARD_UNTIL};
use kube::api::{Api, ListParams};
use std::time::Duration;
use testenv::KubeApiServer;

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
