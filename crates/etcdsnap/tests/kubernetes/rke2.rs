//! RKE2's names and a server's own configuration: on a fake RKE2 (or K3s) server root, `save`
//! with no node, directory or S3 flag writes the program's label, annotation, ConfigMaps, Node
//! annotations and S3 user metadata; the server's own cleanup selector, run by the real API
//! server, matches none of them; K3s's reading rules under the program's names see exactly
//! etcdsnap's snapshots. Then the server's config.yaml.d merged as the server merges it, and a
//! change of program carried through. Real etcd, kube-apiserver and S3 servers throughout.

use crate::common::agent::Agent;
use crate::common::etcd::etcd_with_objects;
use crate::common::k3s;
use crate::common::{self, Run, TestResult, files_in, s};
use etcdsnap_api::consts::SYSTEM_NAMESPACE;
use etcdsnap_api::{ETCDSnapshotFile, Program, TokenHash};
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::api::{Api, ListParams, PostParams};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use testenv::{Etcd, KubeApiServer, S3Server};

const BUCKET: &str = "snapshots";
const TOKEN: &str = "the-server-token";

/// A K3s or RKE2 server's files under a root of its own: the data directory with `server/db/etcd`
/// and the token, and `/etc/rancher/<program>/`.
struct ServerRoot {
    program: Program,
    root: tempfile::TempDir,
}

impl ServerRoot {
    fn new(program: Program) -> Result<ServerRoot, Box<dyn std::error::Error>> {
        let root = tempfile::tempdir()?;
        let data = root.path().join(program.data_dir());
        std::fs::create_dir_all(data.join("server/db/etcd"))?;
        std::fs::write(data.join("server/token"), format!("K10{}::server:{TOKEN}\n", "ab".repeat(32)))?;
        std::fs::create_dir_all(root.path().join(program.config_file()).with_extension("yaml.d"))?;
        Ok(ServerRoot { program, root })
    }

    fn snapshot_dir(&self) -> PathBuf {
        self.root.path().join(self.program.data_dir()).join("server/db/snapshots")
    }

    fn config_file(&self) -> PathBuf {
        self.root.path().join(self.program.config_file())
    }

    /// Writes `config.yaml` (`name` None) or the drop-in `config.yaml.d/<name>`.
    fn write_config(&self, name: Option<&str>, text: &str) -> TestResult {
        let path = match name {
            Some(n) => self.config_file().with_extension("yaml.d").join(n),
            None => self.config_file(),
        };
        std::fs::write(path, text)?;
        Ok(())
    }

    fn root(&self) -> String {
        s(self.root.path())
    }
}

/// etcd, a kube-apiserver and an S3 server.
struct Cluster {
    etcd: Etcd,
    api: KubeApiServer,
    s3: S3Server,
}

impl Cluster {
    async fn start() -> Result<Cluster, Box<dyn std::error::Error>> {
        let etcd = etcd_with_objects(50).await?;
        let api = KubeApiServer::start(&etcd).await?;
        let s3 = S3Server::with_bucket(BUCKET).await?;
        Ok(Cluster { etcd, api, s3 })
    }

    /// `etcdsnap <args>` on the server at `root`: no node, directory or S3 flag.
    async fn run(&self, root: &ServerRoot, args: &[&str]) -> Run {
        let endpoints = self.etcd.endpoints().join(",");
        let env = [
            ("ETCDSNAP_PRESET_ROOT", root.root()),
            ("ETCDSNAP_ENDPOINTS", endpoints),
            ("KUBECONFIG", s(self.api.kubeconfig_path())),
            ("HOME", "/nonexistent".to_string()),
        ];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        common::run(args, &env).await
    }

    async fn resources(&self) -> Result<Vec<ETCDSnapshotFile>, Box<dyn std::error::Error>> {
        let api: Api<ETCDSnapshotFile> = Api::all(self.api.client().await?);
        Ok(api.list(&ListParams::default()).await?.items)
    }

    /// What the real API server returns for `selector`: the names of the resources it matches.
    async fn matching(&self, selector: &str) -> Result<Vec<String>, Box<dyn std::error::Error>> {
        let api: Api<ETCDSnapshotFile> = Api::all(self.api.client().await?);
        let items = api.list(&ListParams::default().labels(selector)).await?.items;
        Ok(items.into_iter().filter_map(|c| c.metadata.name).collect())
    }

    async fn configmap(&self, name: &str) -> Result<Option<ConfigMap>, Box<dyn std::error::Error>> {
        let cms: Api<ConfigMap> = Api::namespaced(self.api.client().await?, SYSTEM_NAMESPACE);
        Ok(cms.get_opt(name).await?)
    }

    async fn create_configmap(&self, name: &str, data: &BTreeMap<String, String>) -> TestResult {
        let cms: Api<ConfigMap> = Api::namespaced(self.api.client().await?, SYSTEM_NAMESPACE);
        let cm: ConfigMap = serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "data": data}))?;
        cms.create(&PostParams::default(), &cm).await?;
        Ok(())
    }

    /// A resource as K3s (or RKE2) itself writes one: no `etcdsnap.io/managed-by`, only the
    /// storage-node label `label`.
    async fn create_foreign_resource(&self, name: &str, label: &str, node: &str) -> TestResult {
        let api: Api<ETCDSnapshotFile> = Api::all(self.api.client().await?);
        let cr: ETCDSnapshotFile = serde_json::from_value(serde_json::json!({
            "apiVersion": "k3s.cattle.io/v1", "kind": "ETCDSnapshotFile",
            "metadata": {"name": name, "labels": {label: node}},
            "spec": {"snapshotName": name, "nodeName": node, "location": format!("file:///elsewhere/{name}")},
        }))?;
        api.create(&PostParams::default(), &cr).await?;
        Ok(())
    }
}

/// The server's configuration: S3 in its `config.yaml` (with keys etcdsnap does not know), the
/// node name only in Rancher's drop-in.
fn configure(root: &ServerRoot, s3: &S3Server, node: &str) -> TestResult {
    let folder = root.program.name();
    root.write_config(
        None,
        &format!(
            "write-kubeconfig-mode: \"0644\"\ntls-san:\n  - cp.example.com\ncni: canal\netcd-s3: true\netcd-s3-endpoint: {}\netcd-s3-insecure: true\netcd-s3-bucket: {BUCKET}\netcd-s3-folder: {folder}\netcd-s3-access-key: {}\netcd-s3-secret-key: {}\n",
            s3.endpoint(),
            s3.access_key(),
            s3.secret_key()
        ),
    )?;
    root.write_config(Some("50-rancher.yaml"), &format!("node-name: {node}\n"))
}

/// A save with no node, directory or S3 flag on a `program` server writes `program`'s names
/// only, and that server's own cleanup and listing see exactly etcdsnap's snapshots.
async fn names_follow_the_server_s_program(program: Program) -> TestResult {
    let c = Cluster::start().await?;
    let root = ServerRoot::new(program)?;
    let node = format!("{program}-cp-1");
    configure(&root, &c.s3, &node)?;
    let extra: BTreeMap<String, String> = [
        ("provisioning-cluster-spec".to_string(), format!("{{\"kubernetesVersion\":\"v1.31.4+{program}r1\"}}")),
        ("provisioning-cluster-name".to_string(), "c-m-abc".to_string()),
    ]
    .into();
    c.create_configmap(program.extra_metadata_configmap(), &extra).await?;
    let other = program.other();
    c.create_configmap(other.extra_metadata_configmap(), &[("wrong".to_string(), "program".to_string())].into())
        .await?;
    let nodes: Api<Node> = Api::all(c.api.client().await?);
    nodes
        .create(&PostParams::default(), &serde_json::from_value(serde_json::json!({"metadata": {"name": node}}))?)
        .await?;

    for _ in 0..2 {
        let out = c.run(&root, &["save"]).await.expect_ok();
        assert!(out.stderr.contains("50-rancher.yaml"), "the node name's file is logged: {}", out.stderr);
        assert!(out.stderr.contains("etcd-s3-bucket from the server's configuration"), "{}", out.stderr);
        assert!(!out.stderr.contains(c.s3.secret_key()), "a credential was logged: {}", out.stderr);
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let files = files_in(&root.snapshot_dir());
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files.iter().all(|f| f.starts_with(&format!("on-demand-{node}-"))), "{files:?}");
    c.run(&root, &["reconcile", "--annotate-node"]).await.expect_ok();

    // Every resource carries the program's label and token hash, and the program's extra metadata.
    let hash = TokenHash::of_token(TOKEN)?;
    let resources = c.resources().await?;
    assert_eq!(resources.len(), 4, "two snapshots, local and S3");
    for cr in &resources {
        let labels = cr.metadata.labels.clone().unwrap_or_default();
        let storage: Vec<(&String, &String)> = labels.iter().filter(|(k, _)| k.starts_with("etcd.")).collect();
        let expected = if cr.spec.s3.is_some() { "s3" } else { node.as_str() };
        assert_eq!(storage, [(&program.label_storage_node().to_string(), &expected.to_string())], "{labels:?}");
        let annotations = cr.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(annotations.get(program.annotation_token_hash()).map(String::as_str), Some(hash.as_str()));
        assert!(!annotations.contains_key(other.annotation_token_hash()), "{annotations:?}");
        assert_eq!(cr.spec.metadata.as_ref(), Some(&extra), "{}", cr.spec.snapshot_name);
    }
    // S3 objects carry the program's user metadata, and none of the other program's.
    for name in &files {
        let (_, meta) = c.s3.get_object(BUCKET, &format!("{}/{name}", program.name())).await?;
        let meta: BTreeMap<String, String> = meta.into_iter().collect();
        assert_eq!(meta.get(program.s3_meta_node_name()), Some(&node), "{meta:?}");
        assert_eq!(meta.get(program.s3_meta_token_hash()).map(String::as_str), Some(hash.as_str()));
        assert!(meta.get(program.s3_meta_cluster_id()).is_some_and(|id| !id.is_empty()), "{meta:?}");
        assert!(!meta.keys().any(|k| k.starts_with(other.s3_meta_prefix())), "{meta:?}");
    }
    // The program's legacy ConfigMap and Node annotation, not the other's.
    let legacy = c.configmap(program.legacy_configmap()).await?.ok_or("no legacy ConfigMap")?;
    assert_eq!(legacy.data.unwrap_or_default().len(), 4);
    assert!(c.configmap(other.legacy_configmap()).await?.is_none());
    let annotations = nodes.get(&node).await?.metadata.annotations.unwrap_or_default();
    assert!(annotations.contains_key(program.annotation_local_reconciled()), "{annotations:?}");
    assert!(!annotations.contains_key(other.annotation_local_reconciled()), "{annotations:?}");

    // The server's own reading rules under its names see exactly etcdsnap's snapshots, with
    // the extra metadata its own extra-metadata ConfigMap held.
    let mut seen = k3s::list_local(&root.snapshot_dir(), &node)?;
    seen.extend(k3s::list_s3_as(&c.s3, BUCKET, program.name(), program).await?);
    seen.sort();
    assert_eq!(seen, crate::as_k3s_would_see(&resources));

    // The server's cleanup deletes what its selector matches: none of etcdsnap's resources.
    // A resource without the program's label (one written under the other's) it would delete.
    let cleanup = format!("{} notin (s3,{node})", program.label_storage_node());
    assert_eq!(c.matching(&cleanup).await?, Vec::<String>::new());
    c.create_foreign_resource("local-unlabelled-1700000000-abcdef", other.label_storage_node(), &node).await?;
    assert_eq!(c.matching(&cleanup).await?, ["local-unlabelled-1700000000-abcdef"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_an_rke2_server_every_name_is_rke2_s_and_rke2_s_cleanup_keeps_etcdsnap_s_resources() -> TestResult {
    names_follow_the_server_s_program(Program::Rke2).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_k3s_server_every_name_stays_k3s_s() -> TestResult {
    names_follow_the_server_s_program(Program::K3s).await
}

/// `etcdsnap <args> --no-kube` on the server at `root`, with extra environment.
async fn run_no_kube(etcd: &Etcd, root: &ServerRoot, args: &[&str], env: &[(&str, &str)]) -> Run {
    let endpoints = etcd.endpoints().join(",");
    let mut all = vec![("ETCDSNAP_PRESET_ROOT", root.root()), ("ETCDSNAP_ENDPOINTS", endpoints)];
    all.extend(env.iter().map(|(k, v)| (*k, v.to_string())));
    let all: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
    common::run(&[args, &["--no-kube"]].concat(), &all).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_s_config_yaml_d_is_merged_as_the_server_merges_it() -> TestResult {
    let etcd = etcd_with_objects(20).await?;
    let root = ServerRoot::new(Program::Rke2)?;
    root.write_config(None, "node-name: from-main\netcd-snapshot-retention: 1\ncni: canal\nprofile: cis\n")?;
    root.write_config(Some("50-rancher.yaml"), "node-name: from-rancher\n")?;
    root.write_config(Some("60-notes.txt"), "node-name: not-yaml\n")?;
    for _ in 0..2 {
        let out = run_no_kube(&etcd, &root, &["save"], &[]).await.expect_ok();
        assert!(out.stderr.contains("50-rancher.yaml"), "{}", out.stderr);
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let files = files_in(&root.snapshot_dir());
    assert_eq!(files.len(), 2);
    assert!(files.iter().all(|f| f.starts_with("on-demand-from-rancher-")), "the drop-in wins: {files:?}");
    // etcd-snapshot-retention from config.yaml (unknown keys skipped): prune keeps one.
    let out = run_no_kube(&etcd, &root, &["prune"], &[]).await.expect_ok();
    assert!(out.stderr.contains("etcd-snapshot-retention from the server's configuration"), "{}", out.stderr);
    assert_eq!(files_in(&root.snapshot_dir()), files[1..]);
    // A flag wins over the server's value; K3s's --log writes the log to a file instead.
    let log = root.root.path().join("etcdsnap.log");
    let out = run_no_kube(&etcd, &root, &["save", "--node-name", "by-flag", "-l", &s(&log)], &[]).await.expect_ok();
    assert!(out.stdout.contains("on-demand-by-flag-"), "{}", out.stdout);
    let logged = std::fs::read_to_string(&log)?;
    assert!(logged.contains("etcd-snapshot-retention from the server's configuration"), "{logged}");
    assert!(!out.stderr.contains("server's configuration"), "{}", out.stderr);

    // $RKE2_CONFIG_FILE names another file, with its own drop-ins.
    let elsewhere = tempfile::tempdir()?;
    let other = elsewhere.path().join("rke2.yaml");
    std::fs::create_dir_all(elsewhere.path().join("rke2.yaml.d"))?;
    std::fs::write(elsewhere.path().join("rke2.yaml.d/10.yml"), "node-name: elsewhere\n")?;
    let other = s(&other);
    let out = run_no_kube(&etcd, &root, &["save"], &[("RKE2_CONFIG_FILE", &other)]).await.expect_ok();
    assert!(out.stdout.contains("on-demand-elsewhere-"), "{}", out.stdout);

    // The agent on this server says the server's own scheduled snapshots are on and count its
    // own (the same name prefix), and exposes K3s's histograms under RKE2's names.
    let logs = tempfile::tempdir()?;
    let (preset_root, endpoints) = (root.root(), etcd.endpoints().join(","));
    let env = [("ETCDSNAP_PRESET_ROOT", preset_root.as_str()), ("ETCDSNAP_ENDPOINTS", endpoints.as_str())];
    let args = ["--no-kube", "--schedule", "*/2 * * * * *", "--drill-schedule", ""];
    let agent = Agent::start(&args, &env, logs.path()).await?;
    let series = "etcdsnap_saves_total{status=\"success\"}";
    let metrics = agent.wait_for_metric(series, 1.0, Duration::from_secs(30)).await?;
    assert!(metrics.contains("rke2_etcd_snapshot_save_duration_seconds_count{status=\"success\"}"), "{metrics}");
    let log = agent.stop().await?;
    assert!(log.contains("the RKE2 server's own scheduled snapshots are on"), "{log}");
    assert!(log.contains(&s(&root.config_file())) && log.contains("--snapshot-name etcd-snapshot) match"), "{log}");

    // A bad value is refused naming its file and key, and nothing is removed.
    let before = files_in(&root.snapshot_dir());
    root.write_config(Some("90-bad.yaml"), "etcd-snapshot-retention: lots\n")?;
    let out = run_no_kube(&etcd, &root, &["prune"], &[]).await.expect_fail();
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("90-bad.yaml") && out.stderr.contains("etcd-snapshot-retention"), "{}", out.stderr);
    root.write_config(Some("90-bad.yaml"), "etcd-s3-insecure: sometimes\n")?;
    let out = run_no_kube(&etcd, &root, &["save"], &[]).await.expect_fail();
    assert!(out.stderr.contains("90-bad.yaml") && out.stderr.contains("etcd-s3-insecure"), "{}", out.stderr);
    root.write_config(Some("90-bad.yaml"), "node-name: [unclosed\n")?;
    let out = run_no_kube(&etcd, &root, &["ls"], &[]).await.expect_fail();
    assert!(out.stderr.contains("90-bad.yaml"), "{}", out.stderr);
    assert_eq!(files_in(&root.snapshot_dir()), before);

    // Names for K3s on an RKE2 server are refused: RKE2's cleanup would delete them.
    std::fs::remove_file(root.config_file().with_extension("yaml.d").join("90-bad.yaml"))?;
    let out = run_no_kube(&etcd, &root, &["save", "--program", "k3s"], &[]).await.expect_fail();
    assert!(out.stderr.contains("--program k3s, but the server here is RKE2's"), "{}", out.stderr);
    assert_eq!(files_in(&root.snapshot_dir()), before);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_of_program_moves_etcdsnap_s_resources_and_names_old_uploads_as_the_server_does() -> TestResult {
    let c = Cluster::start().await?;
    let data = tempfile::tempdir()?;
    let dd = s(data.path());
    let endpoints = c.etcd.endpoints().join(",");
    let kubeconfig = s(c.api.kubeconfig_path());
    let run = |program: &'static str, args: &'static [&'static str]| {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend(
            ["--program", program, "--data-dir", &dd, "--node-name", "n1", "--endpoints", &endpoints].map(String::from),
        );
        all.extend(c.s3.etcdsnap_flags(BUCKET).into_iter().map(String::from));
        all.extend(["--s3-folder".to_string(), "f".to_string(), "--token".to_string(), TOKEN.to_string()]);
        let mut env = vec![("KUBECONFIG", kubeconfig.clone()), ("HOME", "/nonexistent".to_string())];
        env.extend(c.s3.credentials_env().map(|(k, v)| (k, v.to_string())));
        async move {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            common::run(&all, &env).await
        }
    };
    // What etcdsnap wrote before it knew the cluster was RKE2's: K3s's names.
    run("k3s", &["save"]).await.expect_ok();
    c.create_foreign_resource("local-k3s-own-1700000000-abcdef", Program::K3s.label_storage_node(), "n1").await?;
    let before: BTreeMap<String, Option<String>> = c
        .resources()
        .await?
        .into_iter()
        .map(|cr| (cr.metadata.name.clone().unwrap_or_default(), cr.metadata.uid))
        .collect();
    assert_eq!(before.len(), 3);
    // Past the minute a new S3 resource is protected for, the leader reconciles as RKE2.
    tokio::time::sleep(Duration::from_secs(62)).await;
    let out = run("rke2", &["reconcile"]).await.expect_ok();
    assert!(out.stdout.contains("Leader duties done"), "{}", out.stdout);
    let after = c.resources().await?;
    let (k3s_label, rke2_label) = (Program::K3s.label_storage_node(), Program::Rke2.label_storage_node());
    let hash = TokenHash::of_token(TOKEN)?;
    for cr in &after {
        let name = cr.metadata.name.clone().unwrap_or_default();
        let labels = cr.metadata.labels.clone().unwrap_or_default();
        let annotations = cr.metadata.annotations.clone().unwrap_or_default();
        if name.starts_with("local-k3s-own") {
            // K3s's own resource is not etcdsnap's to move.
            assert!(labels.contains_key(k3s_label) && !labels.contains_key(rke2_label), "{labels:?}");
            continue;
        }
        assert!(labels.contains_key(rke2_label) && !labels.contains_key(k3s_label), "{name}: {labels:?}");
        assert_eq!(annotations.get(Program::Rke2.annotation_token_hash()).map(String::as_str), Some(hash.as_str()));
        assert!(!annotations.contains_key(Program::K3s.annotation_token_hash()), "{annotations:?}");
        if cr.spec.s3.is_none() {
            assert_eq!(before.get(&name), Some(&cr.metadata.uid), "{name} was moved in place, not recreated");
        }
    }
    // The object uploaded under K3s's names has no rke2-node-name: RKE2 names its resource
    // after s3, and so does etcdsnap now, so the two agree; RKE2's cleanup matches nothing of
    // etcdsnap's; a second pass changes nothing.
    let mut seen = k3s::list_local(&data.path().join("snapshots"), "n1")?;
    seen.extend(k3s::list_s3_as(&c.s3, BUCKET, "f", Program::Rke2).await?);
    seen.sort();
    let ours: Vec<ETCDSnapshotFile> = after
        .iter()
        .filter(|c| !c.metadata.name.as_deref().unwrap_or_default().starts_with("local-k3s-own"))
        .cloned()
        .collect();
    assert_eq!(seen, crate::as_k3s_would_see(&ours));
    assert!(ours.iter().any(|cr| cr.spec.s3.is_some() && cr.spec.node_name == "s3"), "{ours:?}");
    let cleanup = format!("{rke2_label} notin (s3,n1)");
    assert_eq!(c.matching(&cleanup).await?, ["local-k3s-own-1700000000-abcdef"]);
    let out = run("rke2", &["reconcile"]).await.expect_ok();
    let again: Vec<(Option<String>, Option<String>)> =
        c.resources().await?.into_iter().map(|cr| (cr.metadata.name, cr.metadata.resource_version)).collect();
    let after: Vec<(Option<String>, Option<String>)> =
        after.into_iter().map(|cr| (cr.metadata.name, cr.metadata.resource_version)).collect();
    assert_eq!(again, after, "{}", out.stderr);
    Ok(())
}
