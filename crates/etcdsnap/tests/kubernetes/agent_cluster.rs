//! Three agents beside a 3-member etcd cluster, with one kube-apiserver and one S3 server: the
//! production shape. Resources, retention and the leader Lease are checked on the real servers.

use crate::agent_user;
use crate::common::cluster::{BUCKET, LEASE, leader, start_agent};
use crate::common::etcd::{etcd_with_objects, load_kube_like_data};
use crate::common::{self, TestResult, files_in, s};
use etcdsnap_api::ETCDSnapshotFile;
/// K3s's storage-node label.
const LABEL_STORAGE_NODE: &str = "etcd.k3s.cattle.io/snapshot-storage-node";
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};
use testenv::{Etcd, KubeApiServer, S3Server};

/// A node's snapshot directory, which holds its snapshots and nothing else.
fn local_names(dir: &Path) -> BTreeSet<String> {
    files_in(&dir.join("snapshots")).into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_one_leader_resources_once_retention_per_node_and_failover() -> TestResult {
    let etcd = Etcd::cluster(3).await?;
    load_kube_like_data(&mut etcd.client().await?, 200).await?;
    let api = KubeApiServer::start(&etcd).await?;
    let s3 = S3Server::with_bucket(BUCKET).await?;
    let client = api.client().await?;
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir()).collect::<Result<_, _>>()?;
    let nodes = ["node-a", "node-b", "node-c"];
    let mut agents = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let extra = ["--reconcile-interval", "4s"];
        agents.push(start_agent(node, &etcd.endpoints()[i], dirs[i].path(), &api, Some(&s3), &extra, &[]).await?);
    }

    // Let several scheduled rounds happen, watching that there is never more than one leader.
    let deadline = Instant::now() + Duration::from_secs(25);
    let mut leaders_seen = BTreeSet::new();
    while Instant::now() < deadline {
        if let Some(l) = leader(&client).await {
            leaders_seen.insert(l);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(leaders_seen.len(), 1, "leadership moved without a failure: {leaders_seen:?}");
    let first_leader = leaders_seen.into_iter().next().ok_or("no leader")?;
    // What the API server saw, which sampling the Lease cannot show: the leader's duties (the
    // leader Lease and the legacy ConfigMap) were written by one node only.
    let leader_writers: BTreeSet<String> = api
        .audit_events()?
        .into_iter()
        .filter(|e| e.is_write() && e.code < 300)
        .filter(|e| (e.resource == "leases" && e.name == "etcdsnap-leader") || e.name == "k3s-etcd-snapshots")
        .map(|e| e.user)
        .collect();
    assert_eq!(leader_writers, BTreeSet::from([agent_user(&first_leader)]), "leader-only writes by several nodes");

    // Settle: stop scheduling new snapshots (SIGTERM the followers; the leader keeps reconciling)
    // and check resources against storage.
    let crs: Api<ETCDSnapshotFile> = Api::all(client.clone());
    let check_consistent = || async {
        let all = crs.list(&ListParams::default()).await.map_err(|e| e.to_string())?.items;
        let mut by_label: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for cr in &all {
            let label =
                cr.metadata.labels.as_ref().and_then(|l| l.get(LABEL_STORAGE_NODE)).cloned().unwrap_or_default();
            by_label.entry(label).or_default().push(cr.spec.snapshot_name.clone());
        }
        Ok::<_, String>(by_label)
    };

    // Retention holds between runs: a run publishes its snapshot a moment before it prunes, so
    // a third file may be seen for that moment.
    for (i, node) in nodes.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let local = local_names(dirs[i].path());
            if local.len() <= 2 {
                break;
            }
            assert!(Instant::now() < deadline, "{node}: retention 2 locally, found {local:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Every agent took snapshots, and S3 keeps the newest 2 per node.
    let s3_keys: Vec<String> =
        s3.list_keys(BUCKET, "").await?.into_iter().filter(|k| !k.starts_with(".metadata/")).collect();
    for node in nodes {
        let n = s3_keys.iter().filter(|k| k.contains(&format!("-{node}-"))).count();
        assert!((1..=3).contains(&n), "{node} has {n} objects in S3: {s3_keys:?}");
    }

    // Kill the leader (no clean shutdown, no Lease release); a survivor takes over within a lease
    // duration plus one check.
    let idx = nodes.iter().position(|n| *n == first_leader).ok_or("leader is not an agent")?;
    agents.remove(idx).kill().await?;
    let survivors: Vec<&str> = nodes.iter().copied().filter(|n| *n != first_leader).collect();
    let killed = Instant::now();
    let new_leader = loop {
        if let Some(l) = leader(&client).await
            && l != first_leader
        {
            break l;
        }
        assert!(killed.elapsed() < LEASE + Duration::from_secs(6), "no takeover after {:?}", killed.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let takeover = killed.elapsed();
    assert!(survivors.contains(&new_leader.as_str()));
    eprintln!("leader {first_leader} killed; {new_leader} took over after {takeover:?}");

    // Stop the survivors cleanly, then one reconcile by the new leader's node makes resources
    // match storage exactly, with no resource created twice along the way.
    for agent in &agents {
        agent.signal("-TERM")?;
    }
    for (node, agent) in survivors.iter().zip(agents) {
        agent.exited().await.map_err(|e| format!("{node}: {e}"))?;
    }
    let s3_flags = s3.etcdsnap_flags(BUCKET);
    for (i, node) in nodes.iter().enumerate() {
        let (dd, kc) = (s(dirs[i].path()), s(api.kubeconfig_path()));
        let reconcile = ["reconcile", "--node-name", node, "--data-dir", &dd, "--kubeconfig", &kc];
        let args = [&reconcile[..], &s3_flags].concat();
        let out = common::run(&args, &s3.credentials_env()).await;
        assert!(out.ok(), "{node}: {}\n{}", out.stdout, out.stderr);
    }
    let by_label = check_consistent().await?;
    for (i, node) in nodes.iter().enumerate() {
        let mut crs: Vec<String> = by_label.get(*node).cloned().unwrap_or_default();
        crs.sort();
        let local: Vec<String> = local_names(dirs[i].path()).into_iter().collect();
        assert_eq!(crs, local, "{node}: resources differ from the files");
    }
    let mut s3_crs = by_label.get("s3").cloned().unwrap_or_default();
    s3_crs.sort();
    let mut keys: Vec<String> =
        s3.list_keys(BUCKET, "").await?.into_iter().filter(|k| !k.starts_with(".metadata/")).collect();
    keys.sort();
    // Every object has its resource. A resource whose object is gone may stay for
    // NEW_S3_GRACE (the leader does not delete S3 resources younger than that, since a node may
    // have just uploaded what its listing missed): here, the object the killed leader pruned
    // a moment before it died.
    let missing: Vec<&String> = keys.iter().filter(|k| !s3_crs.contains(k)).collect();
    assert!(missing.is_empty(), "objects without resources: {missing:?}");
    let extra: Vec<&String> = s3_crs.iter().filter(|c| !keys.contains(c)).collect();
    for name in extra {
        let cr = crs
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .find(|c| &c.spec.snapshot_name == name && c.spec.s3.is_some())
            .ok_or("resource vanished")?;
        let created = cr.metadata.creation_timestamp.ok_or("no creation time")?.0;
        let age = etcdsnap_storage::clock::now().duration_since(created);
        assert!(
            age < jiff::SignedDuration::try_from(etcdsnap_kube::reconcile::NEW_S3_GRACE)?,
            "S3 resource {name} without its object, {age:?} old"
        );
    }

    // No flapping: no resource name was ever created twice.
    let mut creates: BTreeMap<String, usize> = BTreeMap::new();
    for e in api.audit_events()? {
        if e.verb == "create" && e.resource == "etcdsnapshotfiles" && e.code < 300 {
            *creates.entry(e.name.clone()).or_default() += 1;
        }
    }
    let twice: Vec<_> = creates.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "resources created more than once: {twice:?}");
    Ok(())
}

/// The legacy ConfigMap's keys.
async fn legacy_keys(client: &kube::Client) -> BTreeSet<String> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    let cm = cms.get_opt("k3s-etcd-snapshots").await.ok().flatten();
    cm.and_then(|c| c.data).unwrap_or_default().into_keys().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_legacy_configmap_follows_every_node_s_saves_within_seconds() -> TestResult {
    let etcd = etcd_with_objects(100).await?;
    let api = KubeApiServer::start(&etcd).await?;
    let client = api.client().await?;
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir()).collect::<Result<_, _>>()?;
    // The agents' default reconcile interval (10 minutes): only the controller can be this quick.
    // 8 kept: each snapshot lives well beyond the 10 s its entry may take.
    let keep = ["--retention", "8"];
    let nodes = ["node-a", "node-b"];
    let mut agents = vec![start_agent(nodes[0], &etcd.endpoints()[0], dirs[0].path(), &api, None, &keep, &[]).await?];
    let deadline = Instant::now() + Duration::from_secs(20);
    while leader(&client).await.as_deref() != Some("node-a") {
        assert!(Instant::now() < deadline, "node-a never led:\n{}", agents[0].log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    agents.push(start_agent(nodes[1], &etcd.endpoints()[0], dirs[1].path(), &api, None, &keep, &[]).await?);

    // Every new snapshot of either node, the follower's included, gets its entry within 10 s.
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut checked = 0;
    let deadline = Instant::now() + Duration::from_secs(45);
    while checked < 6 {
        assert!(Instant::now() < deadline, "only {checked} snapshots checked:\n{}", agents[1].log_text());
        let new: Vec<String> = dirs.iter().flat_map(|d| local_names(d.path())).filter(|n| !seen.contains(n)).collect();
        for name in new {
            seen.insert(name.clone());
            let key = format!("local-{name}");
            let saved = Instant::now();
            loop {
                let keys = legacy_keys(&client).await;
                if keys.contains(&key) {
                    break;
                }
                assert!(
                    saved.elapsed() < Duration::from_secs(10),
                    "{key} not in the legacy ConfigMap after 10 s: {keys:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            checked += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Between two saves the entries are exactly the resources (pruned ones gone too).
    let crs: Api<ETCDSnapshotFile> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resources: BTreeSet<String> = crs
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .map(|c| format!("local-{}", c.spec.snapshot_name))
            .collect();
        let keys = legacy_keys(&client).await;
        if keys == resources {
            break;
        }
        assert!(Instant::now() < deadline, "the ConfigMap never matched the resources: {keys:?} vs {resources:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (node, agent) in nodes.iter().zip(agents) {
        agent.stop().await.map_err(|e| format!("{node}: {e}"))?;
    }
    Ok(())
}
