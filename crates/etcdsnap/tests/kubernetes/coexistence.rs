//! Living with K3s and with other nodes and clusters: what K3s's own listing finds after every
//! kind of etcdsnap run, node names K3s accepts, S3 settings from K3s's Secret, a bucket shared by
//! folders, nodes whose names are suffixes of each other and two clusters, and K3s's flags and
//! environment. Real etcd, kube-apiserver and S3 servers throughout.

use crate::common::agent::Agent;
use crate::common::etcd::{etcd_with_objects, load_kube_like_data};
use crate::common::k3s;
use crate::common::slow_etcd::{SlowEtcd, wait_for_save_in_progress};
use crate::common::{self, Run, TestResult, files_in, s};
use etcdsnap_api::ETCDSnapshotFile;
use etcdsnap_api::consts::SYSTEM_NAMESPACE;

/// K3s's storage-node label.
const LABEL_STORAGE_NODE: &str = "etcd.k3s.cattle.io/snapshot-storage-node";
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ListParams, PostParams};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use testenv::{Etcd, KubeApiServer, S3Server};

const BUCKET: &str = "shared";
const FOLDER: &str = "k3s";

/// etcd, a kube-apiserver and an S3 server, and a data directory per node.
struct World {
    etcd: Etcd,
    api: KubeApiServer,
    s3: S3Server,
    data: tempfile::TempDir,
}

impl World {
    async fn start(objects: usize) -> Result<World, Box<dyn std::error::Error>> {
        let etcd = etcd_with_objects(objects).await?;
        let api = KubeApiServer::start(&etcd).await?;
        let s3 = S3Server::with_bucket(BUCKET).await?;
        Ok(World { etcd, api, s3, data: tempfile::tempdir()? })
    }

    fn data_dir(&self, node: &str) -> PathBuf {
        self.data.path().join(node)
    }

    fn snapshot_dir(&self, node: &str) -> PathBuf {
        self.data_dir(node).join("snapshots")
    }

    /// Environment of a node of this world: etcd, Kubernetes, S3 credentials (the location is
    /// given by the caller, as flags or a Secret).
    fn env(&self, node: &str) -> Vec<(String, String)> {
        vec![
            ("ETCDSNAP_ENDPOINTS".into(), self.etcd.endpoints().join(",")),
            ("ETCDSNAP_NODE_NAME".into(), node.into()),
            ("ETCDSNAP_DATA_DIR".into(), s(&self.data_dir(node))),
            ("KUBECONFIG".into(), s(self.api.kubeconfig_path())),
            ("HOME".into(), "/nonexistent".into()),
            ("AWS_ACCESS_KEY_ID".into(), self.s3.access_key().into()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.s3.secret_key().into()),
        ]
    }

    /// The S3 flags of `folder` in the shared bucket.
    fn s3_flags<'a>(&'a self, folder: &'a str) -> Vec<&'a str> {
        let mut flags = self.s3.etcdsnap_flags(BUCKET);
        flags.extend(["--s3-folder", folder]);
        flags
    }

    async fn run(&self, node: &str, args: &[&str], extra: &[(&str, &str)]) -> Run {
        let env = self.env(node);
        let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        all.extend_from_slice(extra);
        common::run(args, &all).await
    }

    /// `etcdsnap <args>` on `node` with S3 in `folder` of the shared bucket.
    async fn run_s3(&self, node: &str, folder: &str, args: &[&str]) -> Run {
        self.run(node, &[args, &self.s3_flags(folder)].concat(), &[]).await
    }

    async fn resources(&self) -> Result<Vec<ETCDSnapshotFile>, Box<dyn std::error::Error>> {
        let api: Api<ETCDSnapshotFile> = Api::all(self.api.client().await?);
        Ok(api.list(&ListParams::default()).await?.items)
    }

    async fn create_configmap(&self, name: &str, data: &[(&str, &str)]) -> TestResult {
        let cms: Api<ConfigMap> = Api::namespaced(self.api.client().await?, SYSTEM_NAMESPACE);
        let data: BTreeMap<&str, &str> = data.iter().copied().collect();
        let cm: ConfigMap = serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "data": data}))?;
        cms.create(&PostParams::default(), &cm).await?;
        Ok(())
    }

    async fn create_secret(&self, name: &str, data: serde_json::Value) -> TestResult {
        let secrets: Api<Secret> = Api::namespaced(self.api.client().await?, SYSTEM_NAMESPACE);
        let s: Secret = serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "stringData": data}))?;
        secrets.create(&PostParams::default(), &s).await?;
        Ok(())
    }

    /// What a K3s server named `node` would see, locally and in `folder`, against the resources
    /// etcdsnap wrote: the same snapshots, resource names, sizes and extra metadata.
    async fn assert_k3s_sees_what_etcdsnap_recorded(&self, node: &str, folder: &str, after: &str) -> TestResult {
        let mut k3s_view = k3s::list_local(&self.snapshot_dir(node), node)?;
        k3s_view.extend(k3s::list_s3(&self.s3, BUCKET, folder).await?);
        k3s_view.sort();
        let ours = crate::as_k3s_would_see(&self.resources().await?);
        assert_eq!(k3s_view, ours, "after {after}: K3s's listing differs from etcdsnap's resources");
        Ok(())
    }
}

fn published(dir: &Path) -> Vec<String> {
    files_in(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k3s_finds_exactly_etcdsnap_s_snapshots_and_their_extra_metadata_after_every_kind_of_run() -> TestResult {
    let w = World::start(300).await?;
    let extra = [("rancher.cluster", "c-abc"), ("provisioning", "<rke2 & \"quotes\">")];
    w.create_configmap("k3s-etcd-snapshot-extra-metadata", &extra).await?;
    let extra: BTreeMap<String, String> = extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let node = "server-1";

    for compress in ["none", "zstd", "zip"] {
        w.run_s3(node, FOLDER, &["save", "--compress", compress]).await.expect_ok();
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    w.assert_k3s_sees_what_etcdsnap_recorded(node, FOLDER, "saves").await?;
    // K3s's metadata file is byte for byte what K3s writes: the compact map, HTML-escaped.
    let first = published(&w.snapshot_dir(node)).into_iter().next().ok_or("no snapshot")?;
    let k3s_file = std::fs::read(w.data_dir(node).join(".metadata").join(&first))?;
    assert_eq!(
        String::from_utf8(k3s_file)?,
        r#"{"provisioning":"\u003crke2 \u0026 \"quotes\"\u003e","rancher.cluster":"c-abc"}"#
    );
    for cr in w.resources().await? {
        assert_eq!(cr.spec.metadata.as_ref(), Some(&extra), "{}", cr.spec.snapshot_name);
    }
    // K3s's metadata object in S3: K3s's map, K3s's user metadata, nothing of etcdsnap's.
    let (object, headers) = w.s3.get_object(BUCKET, &format!("{FOLDER}/.metadata/{first}")).await?;
    assert_eq!(serde_json::from_slice::<BTreeMap<String, String>>(&object)?, extra);
    let ours: Vec<&(String, String)> = headers.iter().filter(|(k, _)| k.contains("etcdsnap")).collect();
    assert!(ours.is_empty(), "{ours:?}");
    assert!(headers.iter().any(|(k, v)| k == "k3s-node-name" && v == node), "{headers:?}");

    w.run_s3(node, FOLDER, &["prune", "--retention", "2"]).await.expect_ok();
    w.assert_k3s_sees_what_etcdsnap_recorded(node, FOLDER, "prune").await?;
    w.run_s3(node, FOLDER, &["verify"]).await.expect_ok();
    w.run_s3(node, FOLDER, &["ls"]).await.expect_ok();
    w.run_s3(node, FOLDER, &["reconcile"]).await.expect_ok();
    w.assert_k3s_sees_what_etcdsnap_recorded(node, FOLDER, "verify, ls and reconcile").await?;
    // A restore drill of the newest local and S3 snapshot rewrites etcdsnap's records and
    // annotates the resources: K3s's files, objects and fields stay as they were.
    let etcdutl = testenv::testbin_version("etcdutl", "3.7")?.display().to_string();
    w.run_s3(node, FOLDER, &["drill", "--etcdutl", &etcdutl]).await.expect_ok();
    w.assert_k3s_sees_what_etcdsnap_recorded(node, FOLDER, "a drill").await?;
    for cr in w.resources().await? {
        assert_eq!(cr.spec.metadata.as_ref(), Some(&extra), "after a drill: {}", cr.spec.snapshot_name);
    }

    // A save killed mid-stream leaves nothing K3s would take for a snapshot.
    let slow = SlowEtcd::start(1500, 300_000).await?;
    let mut cmd = common::command(&[&["save", "--endpoints", &slow.endpoint], &w.s3_flags(FOLDER)[..]].concat());
    for (k, v) in w.env(node) {
        if k != "ETCDSNAP_ENDPOINTS" {
            cmd.env(k, v);
        }
    }
    let mut child = cmd.spawn()?;
    let pid = child.id().ok_or("no pid")?;
    wait_for_save_in_progress(pid, &w.snapshot_dir(node), 100_000, Duration::from_secs(30)).await?;
    child.start_kill()?;
    child.wait().await?;
    w.assert_k3s_sees_what_etcdsnap_recorded(node, FOLDER, "a killed save").await?;

    // The agent's scheduled runs.
    let mut agent_args = vec!["--schedule", "*/2 * * * * *", "--retention", "3"];
    agent_args.extend(w.s3_flags(FOLDER));
    let env = w.env(node);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let agent = Agent::start(&agent_args, &env, w.data.path()).await?;
    agent.wait_for_metric("etcdsnap_saves_total{status=\"success\"}", 3.0, Duration::from_secs(30)).await?;
    agent.stop().await?;
    w.run_s3(node, FOLDER, &["reconcile"]).await.expect_ok();
    w.assert_k3s_sees_what_etcdsnap_recorded(node, FOLDER, "agent runs").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_names_k3s_accepts_get_k3s_s_names_and_only_what_kubernetes_refuses_is_refused() -> TestResult {
    let w = World::start(50).await?;
    for node in ["Node-B", "node-b"] {
        let out = w.run(node, &["save"], &[]).await.expect_ok();
        assert!(out.stdout.contains(&format!("on-demand-{node}-")), "{}", out.stdout);
    }
    let crs = w.resources().await?;
    assert_eq!(crs.len(), 2);
    for cr in &crs {
        let node = cr.spec.node_name.as_str();
        let name = cr.metadata.name.as_deref().unwrap_or_default();
        assert!(name.starts_with("local-on-demand-node-b-"), "{name}: lower case where Kubernetes needs it");
        assert_eq!(cr.metadata.labels.as_ref().and_then(|l| l.get(LABEL_STORAGE_NODE)).map(String::as_str), Some(node));
        assert!(cr.spec.snapshot_name.contains(node), "the file keeps the node's case");
    }
    // Two nodes, two heartbeats.
    let leases: Api<Lease> = Api::namespaced(w.api.client().await?, "etcdsnap");
    let holders: BTreeSet<String> = leases
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|l| l.spec.and_then(|s| s.holder_identity))
        .collect();
    assert_eq!(holders, BTreeSet::from(["Node-B".to_string(), "node-b".to_string()]));
    // K3s's own variable names the node when etcdsnap's is unset.
    let dir = s(&w.data_dir("from-k3s"));
    let endpoints = w.etcd.endpoints().join(",");
    let env = [
        ("ETCDSNAP_ENDPOINTS", endpoints.as_str()),
        ("K3S_NODE_NAME", "K3s-Node"),
        ("ETCDSNAP_DATA_DIR", dir.as_str()),
    ];
    let out = common::run(&["save", "--no-kube"], &env).await.expect_ok();
    assert!(out.stdout.contains("on-demand-K3s-Node-"), "{}", out.stdout);
    // What Kubernetes would refuse is refused, with the reason.
    for (bad, why) in [("node_b", "letters, digits"), ("-node", "begin and end"), (&*"n".repeat(64), "63")] {
        let out = w.run(bad, &["save"], &[]).await.expect_fail();
        assert!(out.stderr.contains("--node-name") && out.stderr.contains(why), "{bad}: {}", out.stderr);
        assert!(!w.data_dir(bad).join("snapshots").exists() || published(&w.snapshot_dir(bad)).is_empty());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_from_the_config_secret_with_just_the_s3_flag_for_every_command_and_the_agent() -> TestResult {
    let w = World::start(50).await?;
    let secret = serde_json::json!({
        "etcd-s3-endpoint": w.s3.endpoint(), "etcd-s3-bucket": BUCKET, "etcd-s3-folder": "from-secret",
        "etcd-s3-insecure": "true", "etcd-s3-retention": "1",
        "etcd-s3-access-key": w.s3.access_key(), "etcd-s3-secret-key": w.s3.secret_key(),
    });
    w.create_secret("s3-config", secret).await?;
    let node = "node-1";
    let with_secret = |args: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        v.extend(["--s3", "--s3-config-secret", "s3-config"].map(String::from));
        v
    };
    let world = &w;
    let run = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        world.run(node, &args, &[("AWS_ACCESS_KEY_ID", ""), ("AWS_SECRET_ACCESS_KEY", "")]).await
    };
    for _ in 0..3 {
        let out = run(with_secret(&["save"])).await.expect_ok();
        assert!(out.stdout.contains("s3://shared/from-secret/"), "{}\n{}", out.stdout, out.stderr);
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let ls = run(with_secret(&["ls", "-o", "json"])).await.expect_ok().json();
    let s3_items = ls["items"].as_array().ok_or("no items")?.iter().filter(|i| i["spec"]["s3"].is_object()).count();
    assert_eq!(s3_items, 3);
    run(with_secret(&["verify"])).await.expect_ok();
    // The Secret's etcd-s3-retention (1) applies in S3; --retention (2) locally.
    run(with_secret(&["prune", "--retention", "2"])).await.expect_ok();
    let in_s3 = |keys: Vec<String>| keys.into_iter().filter(|k| !k.contains("/.metadata/")).count();
    assert_eq!(in_s3(w.s3.list_keys(BUCKET, "from-secret/").await?), 1);
    assert_eq!(published(&w.snapshot_dir(node)).len(), 2);
    let newest = published(&w.snapshot_dir(node)).into_iter().last().ok_or("no snapshot")?;
    run(with_secret(&["delete", &newest])).await.expect_ok();
    assert_eq!(in_s3(w.s3.list_keys(BUCKET, "from-secret/").await?), 0);

    // The agent: S3 from the Secret, and the Secret's retention.
    let env = w.env(node);
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.extend([("AWS_ACCESS_KEY_ID", ""), ("AWS_SECRET_ACCESS_KEY", "")]);
    let args = ["--schedule", "*/2 * * * * *", "--retention", "3", "--s3", "--s3-config-secret", "s3-config"];
    let agent = Agent::start(&args, &env, w.data.path()).await?;
    agent.wait_for_metric("etcdsnap_saves_total{status=\"success\"}", 3.0, Duration::from_secs(30)).await?;
    let log = agent.stop().await?;
    assert_eq!(in_s3(w.s3.list_keys(BUCKET, "from-secret/").await?), 1, "the agent keeps etcd-s3-retention: {log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_deletes_only_resources_of_the_s3_folder_it_listed() -> TestResult {
    let w = World::start(50).await?;
    w.run_s3("node-1", "two", &["save"]).await.expect_ok();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    w.run_s3("node-1", "one", &["save"]).await.expect_ok();
    let s3_names = |crs: Vec<ETCDSnapshotFile>| -> BTreeSet<String> {
        crs.into_iter().filter(|c| c.spec.s3.is_some()).filter_map(|c| c.spec.location.into()).collect()
    };
    // (The second save also uploads the first snapshot to folder one: it was missing there.)
    let before = s3_names(w.resources().await?);
    assert!(before.iter().any(|l| l.starts_with("s3://shared/two/")), "{before:?}");
    // Past the minute a new S3 resource is protected for, a leader configured for folder one
    // reconciles: folder two's resource stays, since two was never listed.
    tokio::time::sleep(Duration::from_secs(62)).await;
    let out = w.run_s3("node-1", "one", &["reconcile"]).await.expect_ok();
    assert!(out.stdout.contains("Leader duties done"), "{}", out.stdout);
    assert_eq!(s3_names(w.resources().await?), before, "{}", out.stderr);
    // Deleting a snapshot of folder one never takes the resource of the same name in two.
    let one = w.s3.list_keys(BUCKET, "one/").await?.into_iter().find(|k| !k.contains(".metadata")).ok_or("none")?;
    let name = one.trim_start_matches("one/").to_string();
    w.s3.put_object(BUCKET, &format!("two/{name}"), b"not really".to_vec(), &[("k3s-node-name", "node-1")]).await?;
    w.run_s3("node-1", "two", &["reconcile"]).await.expect_ok();
    assert!(s3_names(w.resources().await?).contains(&format!("s3://shared/two/{name}")));
    w.run_s3("node-1", "one", &["delete", &name]).await.expect_ok();
    let after = s3_names(w.resources().await?);
    assert!(!after.contains(&format!("s3://shared/one/{name}")), "{after:?}");
    assert!(after.contains(&format!("s3://shared/two/{name}")), "{after:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_whose_legacy_key_is_invalid_costs_only_its_own_entry() -> TestResult {
    let w = World::start(50).await?;
    let node = "node-1";
    w.run(node, &["save"], &[]).await.expect_ok();
    // A K3s-written snapshot with a 250-character name: its ConfigMap key would be 256 long.
    let long = format!("{}-{node}-1700000000", "k".repeat(250 - node.len() - 12));
    assert_eq!(long.len(), 250);
    let first = published(&w.snapshot_dir(node)).into_iter().next().ok_or("no snapshot")?;
    std::fs::copy(w.snapshot_dir(node).join(&first), w.snapshot_dir(node).join(&long))?;
    let out = w.run(node, &["reconcile"], &[]).await.expect_ok();
    assert!(out.stderr.contains(&format!("local-{long}")), "the skipped entry is named:\n{}", out.stderr);
    let cms: Api<ConfigMap> = Api::namespaced(w.api.client().await?, SYSTEM_NAMESPACE);
    let data = cms.get("k3s-etcd-snapshots").await?.data.unwrap_or_default();
    assert!(data.contains_key(&format!("local-{first}")), "the rest is written: {:?}", data.keys());
    assert_eq!(data.len(), 1);
    // Its resource exists all the same (K3s's fallback name).
    assert!(w.resources().await?.iter().any(|c| c.spec.snapshot_name == long));
    Ok(())
}

/// Which snapshots named `<base>-<node>-...` are in `folder`.
async fn objects_of(
    s3: &S3Server,
    folder: &str,
    base: &str,
    node: &str,
) -> Result<BTreeSet<String>, Box<dyn std::error::Error>> {
    let keys = s3.list_keys(BUCKET, &format!("{folder}/")).await?;
    Ok(keys
        .into_iter()
        .filter_map(|k| k.strip_prefix(&format!("{folder}/")).map(str::to_string))
        .filter(|k| !k.starts_with(".metadata/") && k.starts_with(&format!("{base}-{node}-")))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_whose_names_are_suffixes_of_each_other_save_at_once_into_one_folder() -> TestResult {
    // Slow enough that every upload is in flight, partless, for longer than the idle time after
    // which a node aborts its own leftover uploads: ownership alone keeps the others' safe.
    let slow = SlowEtcd::start(2500, 1_500_000).await?;
    let s3 = S3Server::with_bucket(BUCKET).await?;
    let data = tempfile::tempdir()?;
    // Two clusters: a (server-1, k3s-server-1) and b (a-k3s-server-1).
    let nodes = [("server-1", "a"), ("k3s-server-1", "a"), ("a-k3s-server-1", "b")];
    let mut agents = Vec::new();
    for (node, cluster) in nodes {
        let dir = data.path().join(node);
        let dd = s(&dir);
        let mut args = vec!["--no-kube", "--node-name", node, "--cluster-id", cluster, "--endpoints", &slow.endpoint];
        args.extend(["--data-dir", &dd, "--schedule", "*/3 * * * * *", "--schedule-jitter", "1s", "--retention", "2"]);
        args.extend(s3.etcdsnap_flags(BUCKET));
        args.extend(["--s3-folder", FOLDER, "--s3-timeout", "2s", "--s3-stale-upload-after", "1s"]);
        std::fs::create_dir_all(&dir)?;
        agents.push(Agent::start(&args, &s3.credentials_env(), &dir).await?);
    }
    for agent in &agents {
        agent.wait_for_metric("etcdsnap_saves_total{status=\"success\"}", 4.0, Duration::from_secs(120)).await?;
    }
    let mut logs = Vec::new();
    for agent in agents {
        let log = agent.stop().await?;
        logs.push(log);
    }
    for (log, (node, _)) in logs.iter().zip(nodes) {
        assert!(!log.contains("NoSuchUpload") && !log.contains("snapshot failed"), "{node}:\n{log}");
        assert!(!log.contains("aborted a multipart upload"), "{node} aborted a live upload:\n{log}");
    }
    // Retention per node: each keeps its own 2 (3 for the moment between a save and its prune).
    for (node, _) in nodes {
        let n = objects_of(&s3, FOLDER, "etcd-snapshot", node).await?.len();
        assert!((2..=3).contains(&n), "{node}: {n} objects");
    }
    // Every object has its record; no upload was left open.
    let keys: BTreeSet<String> = s3.list_keys(BUCKET, "").await?.into_iter().collect();
    for key in keys.iter().filter(|k| !k.contains("/.metadata/")) {
        let name = key.trim_start_matches(&format!("{FOLDER}/"));
        assert!(keys.contains(&format!("{FOLDER}/.metadata/{name}.etcdsnap.json")), "{key} has no record");
    }
    assert!(s3.list_multipart_uploads(BUCKET).await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_with_a_node_of_the_same_name_in_one_folder_keep_their_own() -> TestResult {
    let (etcd_a, etcd_b) = (Etcd::single().await?, Etcd::single().await?);
    load_kube_like_data(&mut etcd_a.client().await?, 50).await?;
    load_kube_like_data(&mut etcd_b.client().await?, 60).await?;
    let s3 = S3Server::with_bucket(BUCKET).await?;
    let data = tempfile::tempdir()?;
    let run = |cluster: &'static str, etcd: &Etcd, args: &[&str]| {
        let dd = s(&data.path().join(cluster));
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        for flag in ["--no-kube", "--node-name", "server-1", "--cluster-id", cluster, "--data-dir", &dd, "--endpoints"]
        {
            all.push(flag.into());
        }
        all.push(etcd.endpoints()[0].clone());
        all.extend(s3.etcdsnap_flags(BUCKET).into_iter().chain(["--s3-folder", FOLDER]).map(String::from));
        let s3 = &s3;
        async move { common::run(&all, &s3.credentials_env()).await }
    };
    // Each cluster saves 3 (a second apart, the two clusters' names never the same second).
    for _ in 0..3 {
        run("a", &etcd_a, &["save"]).await.expect_ok();
        run("b", &etcd_b, &["save"]).await.expect_ok();
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let all_before = objects_of(&s3, FOLDER, "on-demand", "server-1").await?;
    assert_eq!(all_before.len(), 6, "{all_before:?}");
    // Cluster a keeps 1 of its own: b's three stay.
    run("a", &etcd_a, &["prune", "--retention", "1"]).await.expect_ok();
    assert_eq!(objects_of(&s3, FOLDER, "on-demand", "server-1").await?.len(), 4);
    run("b", &etcd_b, &["prune", "--retention", "2"]).await.expect_ok();
    let left = objects_of(&s3, FOLDER, "on-demand", "server-1").await?;
    assert_eq!(left.len(), 3, "{left:?}");
    // What is left verifies from either cluster.
    run("a", &etcd_a, &["verify", "--no-local"]).await.expect_ok();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k3s_scripts_flags_and_environment_work_unchanged() -> TestResult {
    let w = World::start(50).await?;
    let node = "server-1";
    let s3 = w.s3_flags(FOLDER);
    let k3s_style = |cmd: &str| -> Vec<String> {
        // What `k3s etcd-snapshot <cmd>` scripts pass to every subcommand.
        let mut v: Vec<String> = [
            cmd,
            "--etcd-server",
            "https://127.0.0.1:6443",
            "--name",
            "on-demand",
            "--snapshot-retention",
            "2",
            "--etcd-snapshot-compress",
            "--endpoints",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.push(w.etcd.endpoints()[0].clone());
        v.extend(s3.iter().map(|f| f.replace("--s3", "--etcd-s3")));
        v
    };
    let world = &w;
    let run = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        world.run(node, &args, &[("K3S_TOKEN", "k3s-token-password")]).await
    };
    for cmd in ["save", "save", "save"] {
        run(k3s_style(cmd)).await.expect_ok();
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let ls = run(k3s_style("ls")).await.expect_ok();
    assert!(ls.stdout.contains(".zip"), "--etcd-snapshot-compress is K3s's zip: {}", ls.stdout);
    run(k3s_style("prune")).await.expect_ok();
    assert_eq!(published(&w.snapshot_dir(node)).len(), 2);
    let first = published(&w.snapshot_dir(node)).into_iter().next().ok_or("none")?;
    let mut delete = k3s_style("delete");
    delete.insert(1, first);
    run(delete).await.expect_ok();
    // $K3S_TOKEN was the token: its hash is recorded.
    let hash = etcdsnap_api::TokenHash::of_token("k3s-token-password")?;
    for cr in w.resources().await? {
        let recorded = cr.metadata.annotations.as_ref().and_then(|a| a.get("etcd.k3s.cattle.io/snapshot-token-hash"));
        assert_eq!(recorded.map(String::as_str), Some(hash.as_str()), "{}", cr.spec.snapshot_name);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_k3s_server_save_needs_no_flags() -> TestResult {
    let etcd = Etcd::cluster_tls(1).await?;
    load_kube_like_data(&mut etcd.client().await?, 50).await?;
    let tls = etcd.client_tls().ok_or("no tls")?.clone();
    // A K3s server's layout under a root of our own: data dir, token, etcd's client certificate,
    // and the node name in K3s's config file.
    let root = tempfile::tempdir()?;
    let k3s = root.path().join("var/lib/rancher/k3s");
    std::fs::create_dir_all(k3s.join("server/db/etcd"))?;
    std::fs::create_dir_all(k3s.join("server/tls/etcd"))?;
    std::fs::create_dir_all(root.path().join("etc/rancher/k3s"))?;
    let token = format!("K10{}::server:the-k3s-token", "ab".repeat(32));
    std::fs::write(k3s.join("server/token"), format!("{token}\n"))?;
    std::fs::copy(&tls.ca, k3s.join("server/tls/etcd/server-ca.crt"))?;
    std::fs::copy(&tls.cert, k3s.join("server/tls/etcd/client.crt"))?;
    std::fs::copy(&tls.key, k3s.join("server/tls/etcd/client.key"))?;
    std::fs::write(root.path().join("etc/rancher/k3s/config.yaml"), "node-name: K3s-Server-1\n")?;
    let endpoint = etcd.endpoints()[0].clone();
    let env = [
        ("ETCDSNAP_PRESET_ROOT", root.path().to_str().ok_or("path")?),
        ("ETCDSNAP_ENDPOINTS", endpoint.as_str()),
        ("ETCDSNAP_NO_KUBE", "true"),
    ];
    let out = common::run(&["save", "-o", "json"], &env).await.expect_ok();
    assert!(out.stderr.contains("K3s server"), "said in the log: {}", out.stderr);
    let snapshots = files_in(&k3s.join("server/db/snapshots"));
    assert_eq!(snapshots.len(), 1);
    assert!(snapshots[0].starts_with("on-demand-K3s-Server-1-"), "{snapshots:?}");
    let records = common::layout::records_dir(&k3s.join("server/db/snapshots"));
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(records.join(format!("{}.etcdsnap.json", snapshots[0])))?)?;
    let hash = etcdsnap_api::TokenHash::of_token(&token)?;
    assert_eq!(record["tokenHash"], hash.as_str());
    // ls and verify find it the same way; the snapshot directory holds nothing else.
    let ls = common::run(&["ls", "-o", "json"], &env).await.expect_ok();
    assert_eq!(ls.json()["items"].as_array().map(Vec::len), Some(1));
    common::run(&["verify"], &env).await.expect_ok();
    assert_eq!(files_in(&k3s.join("server/db/snapshots")), snapshots);
    // A K3s script's --data-dir means the same place.
    let dd = s(&k3s);
    let env2 = [("ETCDSNAP_ENDPOINTS", endpoint.as_str()), ("ETCDSNAP_NO_KUBE", "true")];
    let ca = s(&tls.ca);
    let (cert, key) = (s(&tls.cert), s(&tls.key));
    let out = common::run(
        &["ls", "--data-dir", &dd, "--node-name", "K3s-Server-1", "--cacert", &ca, "--cert", &cert, "--key", &key],
        &env2,
    )
    .await
    .expect_ok();
    assert!(out.stdout.contains(&snapshots[0]), "{}", out.stdout);
    let _ = Instant::now();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_an_earlier_release_kept_in_k3s_s_metadata_are_read_then_moved_by_the_next_save() -> TestResult {
    let w = World::start(50).await?;
    w.create_configmap("k3s-etcd-snapshot-extra-metadata", &[("team", "platform")]).await?;
    let node = "node-1";
    w.run_s3(node, FOLDER, &["save"]).await.expect_ok();
    let name = published(&w.snapshot_dir(node)).into_iter().next().ok_or("no snapshot")?;
    // A snapshot laid out as an earlier etcdsnap did, locally and in S3: its record in K3s's
    // `.metadata/<name>`, no `.etcdsnap.json`.
    let old = "on-demand-node-1-1700000000";
    let meta = w.data_dir(node).join(".metadata");
    let records = common::layout::records_dir(&w.snapshot_dir(node));
    let mut record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(records.join(format!("{name}.etcdsnap.json")))?)?;
    record["name"] = old.into();
    std::fs::copy(w.snapshot_dir(node).join(&name), w.snapshot_dir(node).join(old))?;
    std::fs::write(meta.join(old), serde_json::to_vec(&record)?)?;
    let (object, _) = w.s3.get_object(BUCKET, &format!("{FOLDER}/{name}")).await?;
    w.s3.put_object(BUCKET, &format!("{FOLDER}/{old}"), object, &[("k3s-node-name", node)]).await?;
    w.s3.put_object(BUCKET, &format!("{FOLDER}/.metadata/{old}"), serde_json::to_vec(&record)?, &[]).await?;
    // Read in full where it is.
    let ls = w.run_s3(node, FOLDER, &["ls", "-o", "json"]).await.expect_ok().json();
    let olds: Vec<&serde_json::Value> =
        ls["items"].as_array().ok_or("no items")?.iter().filter(|i| i["spec"]["snapshotName"] == old).collect();
    assert_eq!(olds.len(), 2, "local and S3");
    for item in olds {
        assert_eq!(item["spec"]["metadata"]["team"], "platform", "{item}");
        assert!(item["metadata"]["annotations"]["etcdsnap.io/sha256"].is_string(), "{item}");
    }
    // The next save moves the record out of K3s's file; K3s then reads its extra metadata.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    w.run_s3(node, FOLDER, &["save"]).await.expect_ok();
    let k3s_file: BTreeMap<String, String> = serde_json::from_slice(&std::fs::read(meta.join(old))?)?;
    assert_eq!(k3s_file.get("team").map(String::as_str), Some("platform"));
    assert!(records.join(format!("{old}.etcdsnap.json")).is_file());
    let (k3s_object, _) = w.s3.get_object(BUCKET, &format!("{FOLDER}/.metadata/{old}")).await?;
    let k3s_object: BTreeMap<String, String> = serde_json::from_slice(&k3s_object)?;
    assert_eq!(k3s_object.get("team").map(String::as_str), Some("platform"));
    assert!(w.s3.head_object(BUCKET, &format!("{FOLDER}/.metadata/{old}.etcdsnap.json")).await.is_ok());
    w.run_s3(node, FOLDER, &["reconcile"]).await.expect_ok();
    w.assert_k3s_sees_what_etcdsnap_recorded(node, FOLDER, "the move").await?;
    Ok(())
}
