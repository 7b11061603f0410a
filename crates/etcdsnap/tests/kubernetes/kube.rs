//! The Kubernetes integration end to end: the real `etcdsnap` binary and library against a real
//! kube-apiserver and etcd started by testenv. Requests are counted from the API server's own
//! audit log.

use crate::common::{self, Run, TestResult, files_in, run, s};
use etcdsnap_api::consts::{FINALIZER_K3S, SYSTEM_NAMESPACE};
use etcdsnap_api::{CrNameInput, ETCDSnapshotFile, ETCDSnapshotS3, SnapshotName, StorageKind, cr_name};
use etcdsnap_kube::leader::{LeaderElector, LeaderTerm, Role, Timing};
use etcdsnap_kube::lease::{NodeLiveness, renew_heartbeat};
use etcdsnap_kube::reconcile::{LeaderView, StorageState, reconcile_leader, reconcile_node};
use etcdsnap_kube::{Kube, KubeSettings, RecordResource, publish, s3_secret};
use etcdsnap_storage::record::{MetadataSource, Outcome, SnapshotRecord};
use k8s_openapi::api::core::v1::{ConfigMap, Event, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;
use testenv::{AuditEvent, Etcd, KubeApiServer};

/// K3s's names, spelled out: what a K3s server reads.
const LABEL_STORAGE_NODE: &str = "etcd.k3s.cattle.io/snapshot-storage-node";
const ANNOTATION_TOKEN_HASH: &str = "etcd.k3s.cattle.io/snapshot-token-hash";
const LEGACY_CONFIGMAP: &str = "k3s-etcd-snapshots";

/// etcd for snapshots and a kube-apiserver (on the same etcd, its own prefix), plus a data dir.
struct Env {
    etcd: Etcd,
    api: KubeApiServer,
    data: tempfile::TempDir,
}

impl Env {
    async fn start() -> Result<Env, Box<dyn std::error::Error>> {
        let etcd = Etcd::single().await?;
        let api = KubeApiServer::start(&etcd).await?;
        Ok(Env { etcd, api, data: tempfile::tempdir()? })
    }

    fn data_dir(&self, node: &str) -> PathBuf {
        self.data.path().join(node)
    }

    fn snapshot_dir(&self, node: &str) -> PathBuf {
        self.data_dir(node).join("snapshots")
    }

    /// `etcdsnap <args> --data-dir <node dir>` as `node`, with the admin kubeconfig.
    async fn etcdsnap(&self, node: &str, args: &[&str]) -> Run {
        self.etcdsnap_with(node, args, self.api.kubeconfig_path()).await
    }

    async fn etcdsnap_with(&self, node: &str, args: &[&str], kubeconfig: &Path) -> Run {
        let data_dir = s(&self.data_dir(node));
        let endpoints = self.etcd.endpoints().join(",");
        let kubeconfig = s(kubeconfig);
        let mut all: Vec<&str> = args.to_vec();
        if !matches!(args.first(), Some(&"watch") | Some(&"crd")) {
            all.extend(["--data-dir", &data_dir]);
        }
        let env = [
            ("ETCDSNAP_ENDPOINTS", endpoints.as_str()),
            ("ETCDSNAP_NODE_NAME", node),
            ("KUBECONFIG", kubeconfig.as_str()),
            ("HOME", "/nonexistent"),
        ];
        run(&all, &env).await
    }

    async fn kube(&self, node: &str) -> Result<Kube, Box<dyn std::error::Error>> {
        Ok(Kube::new(self.api.client().await?, KubeSettings::new(node)))
    }

    async fn resources(&self) -> Result<Vec<ETCDSnapshotFile>, Box<dyn std::error::Error>> {
        let api: Api<ETCDSnapshotFile> = Api::all(self.api.client().await?);
        Ok(api.list(&ListParams::default()).await?.items)
    }

    /// The audit log so far; one that cannot be read fails the test (an empty list would let
    /// every "no such request" assertion pass).
    fn audit(&self) -> Vec<AuditEvent> {
        let events = self.api.audit_events().expect("the API server's audit log");
        assert!(!events.is_empty(), "the audit log is empty: the API server audits every request");
        events
    }
}

/// Writes requests made by the admin user (the tests and the binary) after `since` audit events.
fn admin_writes(events: &[AuditEvent], since: usize) -> Vec<&AuditEvent> {
    events[since..].iter().filter(|e| e.user == "admin" && e.is_write()).collect()
}

/// Takes the leader Lease as `identity` (it must be free or already this identity's).
async fn lead(
    client: &kube::Client,
    identity: &str,
    duration: Duration,
) -> Result<LeaderTerm, Box<dyn std::error::Error>> {
    match LeaderElector::new(client.clone(), identity, Timing::for_lease(duration)).round().await? {
        Role::Leader(term) => Ok(term),
        Role::Follower { holder } => Err(format!("leader lease held by {holder}").into()),
    }
}

fn names_of(items: &[ETCDSnapshotFile]) -> BTreeSet<String> {
    items.iter().filter_map(|c| c.metadata.name.clone()).collect()
}

fn ts(secs: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(secs).unwrap_or_default()
}

fn record(name: &str, storage: StorageKind, node: &str, location: &str) -> SnapshotRecord {
    let name = SnapshotName::parse(name).unwrap();
    SnapshotRecord {
        created_at: ts(name.timestamp().unwrap_or(1_700_000_000)),
        compression: name.compression(),
        name,
        storage,
        node_name: node.into(),
        location: location.into(),
        size: 2891808,
        outcome: Outcome::Ready,
        sha256: None,
        etcd: None,
        token_hash: None,
        cluster_id: None,
        s3: (storage == StorageKind::S3).then(|| ETCDSnapshotS3 {
            endpoint: Some("s3.example.com".into()),
            bucket: Some("etcd".into()),
            prefix: Some("k3s-test".into()),
            ..Default::default()
        }),
        extra_metadata: None,
        sealed: None,
        encryption_config_sha256: None,
        drill: None,
        metadata_source: MetadataSource::None,
        program: None,
        uploader_unnamed: false,
        s3_lock: None,
    }
}

fn s3_records(n: usize, uploader: &str, base: i64) -> Vec<SnapshotRecord> {
    (0..n)
        .map(|i| {
            let name = format!("etcd-snapshot-{uploader}-{}", base + i as i64);
            record(&name, StorageKind::S3, uploader, &format!("s3://etcd/k3s-test/{name}"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_crd_is_the_generated_one() -> TestResult {
    let out = run(&["crd"], &[]).await.expect_ok();
    let committed = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/crd.yaml"))?;
    assert_eq!(out.stdout, committed, "deploy/crd.yaml is stale: run `etcdsnap crd > deploy/crd.yaml`");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saves_publish_k3s_compatible_resources_and_kubectl_shows_them() -> TestResult {
    let env = Env::start().await?;
    let client = env.api.client().await?;
    // Extra metadata to copy into the snapshot's records.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let extra: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "k3s-etcd-snapshot-extra-metadata"},
        "data": {"cluster-name": "c-12345", "k8s-version": "v1.36.3"}
    }))?;
    cms.create(&PostParams::default(), &extra).await?;

    let out = env.etcdsnap("node-1", &["save", "--token", "mysecret"]).await.expect_ok();
    assert!(out.stdout.contains("saved to file://"), "{}", out.stdout);
    let dir = env.snapshot_dir("node-1").canonicalize()?;
    let name = files_in(&dir).pop().ok_or("no snapshot file")?;
    let location = format!("file://{}/{name}", dir.display());
    let expected = cr_name(CrNameInput {
        name: &name,
        storage: StorageKind::Local,
        node_name: "node-1",
        location: &location,
        created_unix: 0,
    });
    let items = env.resources().await?;
    assert_eq!(names_of(&items), BTreeSet::from([expected.clone()]));
    let cr = &items[0];
    let labels = cr.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get(LABEL_STORAGE_NODE).map(String::as_str), Some("node-1"));
    let ann = cr.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(ann.get(ANNOTATION_TOKEN_HASH).map(String::as_str), Some("652c7dc687d9"));
    assert_eq!(ann.get("etcdsnap.io/sha256").map(String::len), Some(64));
    assert_eq!(ann.get("etcdsnap.io/compression").map(String::as_str), Some("none"));
    assert!(ann.get("etcdsnap.io/etcd-revision").is_some_and(|r| r.parse::<i64>().is_ok()));
    assert_eq!(cr.spec.snapshot_name, name);
    assert_eq!(cr.spec.node_name, "node-1");
    assert_eq!(cr.spec.location, location);
    let meta = cr.spec.metadata.clone().unwrap_or_default();
    assert_eq!(meta.get("cluster-name").map(String::as_str), Some("c-12345"));
    let status = cr.status.clone().unwrap_or_default();
    assert_eq!(status.ready_to_use, Some(true));
    let size = std::fs::metadata(dir.join(&name))?.len();
    assert_eq!(status.size.map(|q| q.0), Some(size.to_string()));
    let stamp = name.rsplit('-').next().and_then(|s| s.parse::<i64>().ok()).ok_or("no timestamp")?;
    assert_eq!(status.creation_time.map(|t| t.0.as_second()), Some(stamp));
    // The same extra metadata is in etcdsnap's record on disk, and in K3s's file as K3s writes it.
    let meta_dir = env.data_dir("node-1").join(".metadata");
    let records = common::layout::records_dir(&env.data_dir("node-1").join("snapshots"));
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(records.join(format!("{name}.etcdsnap.json")))?)?;
    assert_eq!(doc["extraMetadata"]["cluster-name"], "c-12345");
    let k3s: BTreeMap<String, String> = serde_json::from_slice(&std::fs::read(meta_dir.join(&name))?)?;
    assert_eq!(k3s.get("cluster-name").map(String::as_str), Some("c-12345"));
    // K3s's event.
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let evs = events.list(&ListParams::default()).await?.items;
    let ev = evs.iter().find(|e| e.involved_object.name.as_deref() == Some(expected.as_str())).ok_or("no event")?;
    assert_eq!(ev.reason.as_deref(), Some("ETCDSnapshotCreated"));
    assert_eq!(ev.message.clone().unwrap_or_default(), format!("Snapshot {name} saved on node-1"));

    // K3s's test vectors, accepted by the real API server.
    let kube = env.kube("node-1").await?;
    let s3_name = "on-demand-k3s-server-1-1730308816";
    let s3_location = "s3://etcd/k3s-test/on-demand-k3s-server-1-1730308816";
    let mut failed = record("etcd-snapshot-server1-1700000000", StorageKind::Local, "server1", "");
    failed.outcome = Outcome::Failed { message: "etcd unreachable".into() };
    let vectors = vec![
        (
            record(
                s3_name,
                StorageKind::Local,
                "k3s-server-1",
                "file:///var/lib/rancher/k3s/server/db/snapshots/on-demand-k3s-server-1-1730308816",
            ),
            "local-on-demand-k3s-server-1-1730308816-3e9290",
        ),
        (record(s3_name, StorageKind::S3, "", s3_location), "s3-on-demand-k3s-server-1-1730308816-79b15c"),
        (record(s3_name, StorageKind::S3, "k3s-server-1", s3_location), "s3-on-demand-k3s-server-1-1730308816-3b38ed"),
        (
            record(
                "PRUNE_TEST-server1-1700000000",
                StorageKind::Local,
                "server1",
                "file:///var/lib/rancher/k3s/server/db/snapshots/PRUNE_TEST-server1-1700000000",
            ),
            "local-etcd-snapshot-server1-1700000000-02dd00",
        ),
        (failed, "local-etcd-snapshot-server1-1700000000-7f409b"),
    ];
    let records: Vec<SnapshotRecord> = vectors.iter().map(|(r, _)| r.clone()).collect();
    let published = publish::publish_records(&kube, &records).await;
    assert!(published.errors.is_empty(), "{:?}", published.errors);
    assert_eq!(published.created, 5);
    let api: Api<ETCDSnapshotFile> = Api::all(client.clone());
    for (_, name) in &vectors {
        assert!(api.get_opt(name).await?.is_some(), "{name} missing");
    }
    let s3_cr = api.get("s3-on-demand-k3s-server-1-1730308816-79b15c").await?;
    assert_eq!(s3_cr.spec.node_name, "s3");
    let s3_labels = s3_cr.metadata.labels.unwrap_or_default();
    assert_eq!(s3_labels.get(LABEL_STORAGE_NODE).map(String::as_str), Some("s3"));
    assert_eq!(s3_cr.spec.s3.and_then(|s| s.bucket).as_deref(), Some("etcd"));
    let failed_cr = api.get("local-etcd-snapshot-server1-1700000000-7f409b").await?;
    let st = failed_cr.status.unwrap_or_default();
    assert_eq!(st.ready_to_use, Some(false));
    assert_eq!(st.size.map(|q| q.0).as_deref(), Some("0"));
    assert_eq!(st.error.and_then(|e| e.message).as_deref(), Some("etcd unreachable"));
    // Publishing the same records again writes nothing.
    let before = env.audit().len();
    let again = publish::publish_records(&kube, &records).await;
    assert_eq!(again.unchanged, 5);
    assert!(admin_writes(&env.audit(), before).is_empty());

    // kubectl (v1.36.3 from testbins) shows K3s's columns, sizes and times from status.
    let kubectl = tokio::process::Command::new(testenv::testbin("kubectl")?)
        .args(["get", "etcdsnapshotfiles", "--kubeconfig"])
        .arg(env.api.kubeconfig_path())
        .output()
        .await?;
    let text = String::from_utf8_lossy(&kubectl.stdout);
    assert!(kubectl.status.success(), "{}", String::from_utf8_lossy(&kubectl.stderr));
    let header: Vec<&str> = text.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["NAME", "SNAPSHOTNAME", "NODE", "LOCATION", "SIZE", "CREATIONTIME"]);
    let line = text.lines().find(|l| l.starts_with(&expected)).ok_or("no row")?;
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols[1..5], [name.as_str(), "node-1", location.as_str(), size.to_string().as_str()]);
    assert!(!cols[5].is_empty(), "{line}");
    let s3_line =
        text.lines().find(|l| l.starts_with("s3-on-demand-k3s-server-1-1730308816-79b15c")).ok_or("no s3 row")?;
    assert!(s3_line.contains(" s3 ") && s3_line.contains("2891808"), "{s3_line}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_saves_become_failed_resources_without_secrets() -> TestResult {
    let env = Env::start().await?;
    let dead = format!("http://127.0.0.1:{}", testenv::free_port()?);
    let data_dir = s(&env.data_dir("node-1"));
    let kubeconfig = s(env.api.kubeconfig_path());
    let out = run(
        &["save", "--data-dir", &data_dir, "--token", "K10::server:topsecretpassword", "--dial-timeout", "1s"],
        &[("ETCDSNAP_ENDPOINTS", dead.as_str()), ("ETCDSNAP_NODE_NAME", "node-1"), ("KUBECONFIG", kubeconfig.as_str())],
    )
    .await
    .expect_fail();
    assert!(out.stderr.contains("no snapshot saved"), "{}", out.stderr);
    let items = env.resources().await?;
    assert_eq!(items.len(), 1, "{items:?}");
    let cr = &items[0];
    let name = cr.metadata.name.clone().unwrap_or_default();
    assert!(name.starts_with("local-on-demand-node-1-"), "{name}");
    let expected = cr_name(CrNameInput {
        name: &cr.spec.snapshot_name,
        storage: StorageKind::Local,
        node_name: "node-1",
        location: "",
        created_unix: 0,
    });
    assert_eq!(name, expected, "a failed local save hashes the node name alone");
    assert_eq!(cr.spec.location, "");
    let status = cr.status.clone().unwrap_or_default();
    assert_eq!(status.ready_to_use, Some(false));
    let message = status.error.and_then(|e| e.message).unwrap_or_default();
    assert!(!message.is_empty());
    let json = serde_json::to_string(cr)?;
    assert!(!json.contains("topsecretpassword"), "{json}");
    let events: Api<Event> = Api::namespaced(env.api.client().await?, "default");
    let evs = events.list(&ListParams::default()).await?.items;
    let ev = evs.iter().find(|e| e.involved_object.name.as_deref() == Some(name.as_str())).ok_or("no event")?;
    assert_eq!(ev.reason.as_deref(), Some("ETCDSnapshotFailed"));
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert_eq!(
        ev.message.clone().unwrap_or_default(),
        format!("Failed to save snapshot {} on node-1: {message}", cr.spec.snapshot_name)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_restores_removes_and_a_no_op_writes_nothing() -> TestResult {
    let env = Env::start().await?;
    for _ in 0..3 {
        env.etcdsnap("node-1", &["save"]).await.expect_ok();
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let client = env.api.client().await?;
    let api: Api<ETCDSnapshotFile> = Api::all(client.clone());
    let all = names_of(&env.resources().await?);
    assert_eq!(all.len(), 3);

    // A resource deleted by hand comes back.
    let victim = all.iter().next().cloned().ok_or("none")?;
    api.delete(&victim, &DeleteParams::default()).await?;
    let out = env.etcdsnap("node-1", &["reconcile"]).await.expect_ok();
    assert!(out.stdout.contains("1 created, 0 updated, 0 deleted, 2 unchanged"), "{}", out.stdout);
    assert!(out.stdout.contains("Leader duties done"), "{}", out.stdout);
    assert_eq!(names_of(&env.resources().await?), all);

    // A snapshot file deleted by hand loses its resource.
    let dir = env.snapshot_dir("node-1");
    let gone = files_in(&dir).into_iter().next().ok_or("no file")?;
    std::fs::remove_file(dir.join(&gone))?;
    let out = env.etcdsnap("node-1", &["reconcile"]).await.expect_ok();
    assert!(out.stdout.contains("0 created, 0 updated, 1 deleted, 2 unchanged"), "{}", out.stdout);
    let left = env.resources().await?;
    assert_eq!(left.len(), 2);
    assert!(left.iter().all(|c| c.spec.snapshot_name != gone));

    // Nothing changed: zero write requests, of any kind, without the leader's Lease...
    let before = env.audit().len();
    let out = env.etcdsnap("node-1", &["reconcile", "--no-leader"]).await.expect_ok();
    assert!(out.stdout.contains("0 created, 0 updated, 0 deleted, 2 unchanged"), "{}", out.stdout);
    let events = env.audit();
    let writes = admin_writes(&events, before);
    assert!(writes.is_empty(), "no-op reconcile wrote: {writes:?}");
    // ...and with the leader duties, only taking and releasing the leader Lease.
    let before = env.audit().len();
    let out = env.etcdsnap("node-1", &["reconcile"]).await.expect_ok();
    assert!(out.stdout.contains("legacy ConfigMap 2 entries (0 left out"), "{}", out.stdout);
    assert!(out.stdout.contains("unchanged)"), "{}", out.stdout);
    let events = env.audit();
    let writes = admin_writes(&events, before);
    assert!(
        writes.len() == 2 && writes.iter().all(|w| w.resource == "leases" && w.name == "etcdsnap-leader"),
        "{writes:?}"
    );
    // The library, holding the Lease as the agent does: zero writes.
    let kube = env.kube("node-1").await?;
    let term = lead(&client, "node-1", Duration::from_secs(30)).await?;
    let ctx_dir = dir.canonicalize()?;
    let local = etcdsnap_storage::store::local::LocalStore::open(&ctx_dir, false, "node-1")?;
    let listing = etcdsnap_storage::store::SnapshotStore::list(&local).await?;
    let state = StorageState { local: Some(listing.records), s3: None, s3_location: None, deleted: BTreeSet::new() };
    let before = env.audit().len();
    let view = LeaderView { liveness: NodeLiveness::read(&client).await?, term: term.clone() };
    let report = reconcile_leader(&kube, &state, &view).await?;
    assert_eq!((report.created, report.updated, report.deleted, report.unchanged), (0, 0, 0, 2));
    let events = env.audit();
    assert!(admin_writes(&events, before).is_empty());
    // One LIST of resources for the pass (2 objects, one page).
    let lists = events[before..].iter().filter(|e| e.verb == "list" && e.resource == "etcdsnapshotfiles").count();
    assert_eq!(lists, 1);

    // Delete and prune remove their resources at once.
    let first = files_in(&dir).into_iter().next().ok_or("no file")?;
    let out = env.etcdsnap("node-1", &["delete", &first]).await.expect_ok();
    assert!(out.stdout.contains("deleted"), "{}", out.stdout);
    assert_eq!(env.resources().await?.len(), 1);
    env.etcdsnap("node-1", &["save"]).await.expect_ok();
    assert_eq!(env.resources().await?.len(), 2);
    env.etcdsnap("node-1", &["prune", "--retention", "1"]).await.expect_ok();
    let left = env.resources().await?;
    assert_eq!(left.len(), 1);
    assert_eq!(files_in(&dir), [left[0].spec.snapshot_name.clone()]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saves_succeed_while_the_api_server_is_down_and_one_reconcile_catches_up() -> TestResult {
    let mut env = Env::start().await?;
    env.etcdsnap("node-1", &["save"]).await.expect_ok();
    assert_eq!(env.resources().await?.len(), 1);
    env.api.stop();
    for _ in 0..5 {
        let out = env.etcdsnap("node-1", &["save"]).await.expect_ok();
        assert_eq!(out.stderr.matches("Kubernetes API not usable").count(), 1, "{}", out.stderr);
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    assert_eq!(files_in(&env.snapshot_dir("node-1")).len(), 6);
    env.api.restart().await?;
    assert_eq!(env.resources().await?.len(), 1);
    let out = env.etcdsnap("node-1", &["reconcile"]).await.expect_ok();
    assert!(out.stdout.contains("5 created, 0 updated, 0 deleted, 1 unchanged"), "{}", out.stdout);
    let items = env.resources().await?;
    let expected: BTreeSet<String> = files_in(&env.snapshot_dir("node-1")).into_iter().collect();
    let got: BTreeSet<String> = items.iter().map(|c| c.spec.snapshot_name.clone()).collect();
    assert_eq!(got, expected);
    // Rebuilt from the metadata documents: sha256 and revision came back too.
    for cr in &items {
        let ann = cr.metadata.annotations.clone().unwrap_or_default();
        assert!(ann.contains_key("etcdsnap.io/sha256"), "{cr:?}");
        assert!(ann.contains_key("etcdsnap.io/etcd-revision"), "{cr:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_kubernetes_everything_else_works_and_says_so_once() -> TestResult {
    let env = Env::start().await?;
    let data_dir = s(&env.data_dir("node-1"));
    let endpoints = env.etcd.endpoints().join(",");
    let base = [("ETCDSNAP_ENDPOINTS", endpoints.as_str()), ("ETCDSNAP_NODE_NAME", "node-1"), ("HOME", "/nonexistent")];
    let out = run(&["save", "--data-dir", &data_dir], &base).await.expect_ok();
    assert_eq!(
        out.stderr
            .matches("Kubernetes not configured (no kubeconfig found): ETCDSnapshotFile resources are skipped")
            .count(),
        1,
        "{}",
        out.stderr
    );
    // A KUBECONFIG naming no file is no kubeconfig; a broken one is reported; saving goes on.
    let mut missing = base.to_vec();
    missing.push(("KUBECONFIG", "/nonexistent/kubeconfig"));
    let out = run(&["save", "--data-dir", &data_dir], &missing).await.expect_ok();
    assert!(out.stderr.contains("(no kubeconfig found)"), "{}", out.stderr);
    let broken = env.data.path().join("broken-kubeconfig");
    std::fs::write(&broken, "this: [is not a kubeconfig")?;
    let broken = s(&broken);
    let out = run(&["save", "--data-dir", &data_dir, "--kubeconfig", &broken], &base).await.expect_ok();
    assert_eq!(out.stderr.matches("Kubernetes not usable").count(), 1, "{}", out.stderr);
    assert_eq!(files_in(&env.snapshot_dir("node-1")).len(), 3);

    // --no-kube with a usable kubeconfig and the CRD installed, so that a resource written by
    // mistake would be there to find: none is, and the binary made no request at all.
    etcdsnap_kube::crd::ensure_crd(&env.api.client().await?).await?;
    let kubeconfig = s(env.api.kubeconfig_path());
    let mut with_kube = base.to_vec();
    with_kube.push(("KUBECONFIG", kubeconfig.as_str()));
    let before = env.audit().len();
    let out = run(&["save", "--data-dir", &data_dir, "--no-kube"], &with_kube).await.expect_ok();
    assert_eq!(out.stderr.matches("(--no-kube)").count(), 1, "{}", out.stderr);
    let requests: Vec<AuditEvent> = env.audit().into_iter().skip(before).filter(|e| e.user == "admin").collect();
    assert!(requests.is_empty(), "--no-kube talked to the API server: {requests:#?}");
    let resources = env.resources().await?;
    assert!(resources.is_empty(), "--no-kube wrote resources: {resources:?}");
    run(&["ls", "--data-dir", &data_dir, "--no-kube"], &with_kube).await.expect_ok();
    let first = files_in(&env.snapshot_dir("node-1")).into_iter().next().ok_or("no file")?;
    run(&["delete", "--data-dir", &data_dir, &first], &base).await.expect_ok();
    Ok(())
}

/// Two nodes with the same S3 listing reconcile at the same time, repeatedly, while one of them
/// also publishes a fresh upload: every S3 resource is created exactly once and none is updated
/// or deleted. (S3 storage itself is another module; these records stand in for its listing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_reconcile_s3_concurrently_without_flapping() -> TestResult {
    let env = Env::start().await?;
    let a = env.kube("node-a").await?;
    let b = env.kube("node-b").await?;
    etcdsnap_kube::crd::ensure_crd(&a.client).await?;
    let mut listing = s3_records(10, "node-a", 1_700_000_000);
    listing.extend(s3_records(10, "node-b", 1_700_000_000));
    let before = env.audit().len();
    let round = |kube: Kube, listing: Vec<SnapshotRecord>| async move {
        let client = kube.client.clone();
        let node = kube.settings.node_name.clone();
        renew_heartbeat(&client, &node, Duration::from_secs(3600), Duration::from_secs(60)).await?;
        let location = listing.first().and_then(|r| r.s3.clone());
        let state = StorageState {
            local: Some(Vec::new()),
            s3: Some(listing),
            s3_location: location,
            deleted: BTreeSet::new(),
        };
        let mut elector = LeaderElector::new(client.clone(), &node, Timing::for_lease(Duration::from_secs(15)));
        let report = if let Role::Leader(term) = elector.round().await? {
            let view = LeaderView { liveness: NodeLiveness::read(&client).await?, term };
            reconcile_leader(&kube, &state, &view).await?
        } else {
            reconcile_node(&kube, &state).await?
        };
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(report)
    };
    for i in 0..3 {
        let (ra, rb) = tokio::join!(round(a.clone(), listing.clone()), round(b.clone(), listing.clone()));
        let (ra, rb) = (ra.map_err(|e| e.to_string())?, rb.map_err(|e| e.to_string())?);
        assert!(ra.errors.is_empty() && rb.errors.is_empty(), "{ra:?} {rb:?}");
        if i == 1 {
            // node-b uploads a new snapshot and publishes its resource right away, while the
            // leader's next pass still works from a listing without it.
            let fresh = s3_records(1, "node-b", 1_800_000_000);
            let published = publish::publish_records(&b, &fresh).await;
            assert_eq!(published.created, 1, "{published:?}");
        }
    }
    listing.extend(s3_records(1, "node-b", 1_800_000_000));
    let (ra, rb) = tokio::join!(round(a.clone(), listing.clone()), round(b.clone(), listing.clone()));
    let (ra, rb) = (ra.map_err(|e| e.to_string())?, rb.map_err(|e| e.to_string())?);
    assert_eq!(ra.unchanged + rb.unchanged, 21, "{ra:?} {rb:?}");
    let events = env.audit();
    let cr_writes: Vec<&AuditEvent> =
        events[before..].iter().filter(|e| e.resource == "etcdsnapshotfiles" && e.is_write()).collect();
    let creates: Vec<&str> =
        cr_writes.iter().filter(|e| e.verb == "create" && e.code < 300).map(|e| e.name.as_str()).collect();
    let unique: BTreeSet<&str> = creates.iter().copied().collect();
    assert_eq!(creates.len(), 21, "{cr_writes:?}");
    assert_eq!(unique.len(), 21);
    assert!(cr_writes.iter().all(|e| e.verb == "create"), "updates or deletes happened: {cr_writes:?}");
    assert_eq!(env.resources().await?.len(), 21);
    Ok(())
}

async fn kubectl(env: &Env, args: &[&str]) -> Result<String, Box<dyn std::error::Error>> {
    let out = tokio::process::Command::new(testenv::testbin("kubectl")?)
        .args(args)
        .arg("--kubeconfig")
        .arg(env.api.kubeconfig_path())
        .output()
        .await?;
    if !out.status.success() {
        return Err(format!("kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn deploy(file: &str) -> String {
    s(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy").join(file))
}

/// deploy/crd.yaml and deploy/rbac.yaml applied as an operator applies them, and a kubeconfig
/// for the agent's service account they grant, with its token.
async fn install_crd_and_rbac(env: &Env) -> Result<(String, PathBuf), Box<dyn std::error::Error>> {
    kubectl(env, &["apply", "-f", &deploy("crd.yaml")]).await?;
    kubectl(env, &["wait", "--for=condition=Established", "crd/etcdsnapshotfiles.k3s.cattle.io"]).await?;
    kubectl(env, &["apply", "-f", &deploy("rbac.yaml")]).await?;
    let token = env.api.mint_service_account_token(SYSTEM_NAMESPACE, "etcdsnap").await?;
    let kubeconfig = env.api.write_kubeconfig("agent-kubeconfig", &token)?;
    Ok((token, kubeconfig))
}

/// The agent's identity from deploy/rbac.yaml is enough for every duty, and no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_role_is_enough_and_no_more() -> TestResult {
    let env = Env::start().await?;
    let (token, kubeconfig) = install_crd_and_rbac(&env).await?;
    let admin = env.api.client().await?;
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), SYSTEM_NAMESPACE);
    let extra: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "k3s-etcd-snapshot-extra-metadata"}, "data": {"team": "platform"}
    }))?;
    cms.create(&PostParams::default(), &extra).await?;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), SYSTEM_NAMESPACE);
    for (name, data) in [
        (
            "etcdsnap-s3-config",
            serde_json::json!({"etcd-s3-bucket": "etcd", "etcd-s3-endpoint": "s3.example.com:9000"}),
        ),
        ("other-secret", serde_json::json!({"password": "hunter2"})),
    ] {
        let s: Secret = serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "stringData": data}))?;
        secrets.create(&PostParams::default(), &s).await?;
    }
    let user = "system:serviceaccount:kube-system:etcdsnap";
    let before = env.audit().len();

    let agent = |args: Vec<String>| {
        let env = &env;
        let kubeconfig = kubeconfig.clone();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            env.etcdsnap_with("node-1", &args, &kubeconfig).await
        }
    };
    let a = |args: &[&str]| args.iter().map(|s| s.to_string()).collect::<Vec<String>>();
    for _ in 0..3 {
        agent(a(&["save", "--token", "mysecret"])).await.expect_ok();
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let out = agent(a(&["reconcile", "--s3-config-secret", "etcdsnap-s3-config"])).await.expect_ok();
    assert!(out.stdout.contains("Leader duties done"), "{}", out.stdout);
    assert!(out.stderr.contains("S3 settings from the config secret"), "{}", out.stderr);
    let first = files_in(&env.snapshot_dir("node-1")).into_iter().next().ok_or("no file")?;
    agent(a(&["delete", &first])).await.expect_ok();
    agent(a(&["prune", "--retention", "1"])).await.expect_ok();
    let out = agent(a(&["ls", "--cluster", "-o", "json"])).await.expect_ok();
    assert_eq!(out.json()["items"].as_array().map(Vec::len), Some(1));
    let out = agent(a(&["reconcile"])).await.expect_ok();
    assert!(out.stdout.contains("legacy ConfigMap 1 entries"), "{}", out.stdout);
    assert!(!out.stderr.contains("forbidden"), "{}", out.stderr);

    // Everything above: not a single request refused.
    let events = env.audit();
    let mine: Vec<&AuditEvent> = events[before..].iter().filter(|e| e.user == user).collect();
    assert!(mine.len() > 20, "the agent barely talked to the API server: {mine:?}");
    let refused: Vec<&&AuditEvent> = mine.iter().filter(|e| e.code == 403).collect();
    assert!(refused.is_empty(), "refused: {refused:?}");
    for resource in ["etcdsnapshotfiles", "configmaps", "leases", "events", "secrets", "namespaces"] {
        assert!(mine.iter().any(|e| e.resource == resource), "never used {resource}");
    }
    let legacy = cms.get(LEGACY_CONFIGMAP).await?;
    assert_eq!(legacy.data.map(|d| d.len()), Some(1));
    let crs = env.resources().await?;
    assert_eq!(crs[0].spec.metadata.clone().unwrap_or_default().get("team").map(String::as_str), Some("platform"));

    // And no more.
    let sa = env.api.client_for_token(&token).await?;
    let forbidden = |r: Result<(), kube::Error>| matches!(r, Err(kube::Error::Api(s)) if s.code == 403);
    let sa_secrets: Api<Secret> = Api::namespaced(sa.clone(), SYSTEM_NAMESPACE);
    assert!(forbidden(sa_secrets.get("other-secret").await.map(|_| ())));
    assert!(forbidden(sa_secrets.list(&ListParams::default()).await.map(|_| ())));
    let sa_cms: Api<ConfigMap> = Api::namespaced(sa.clone(), SYSTEM_NAMESPACE);
    let other: ConfigMap =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "other"}, "data": {"a": "b"}}))?;
    assert!(forbidden(sa_cms.create(&PostParams::default(), &other).await.map(|_| ())));
    // Another namespace: nothing at all.
    let elsewhere_cms: Api<ConfigMap> = Api::namespaced(sa.clone(), "default");
    assert!(forbidden(elsewhere_cms.list(&ListParams::default()).await.map(|_| ())));
    assert!(forbidden(elsewhere_cms.create(&PostParams::default(), &other).await.map(|_| ())));
    let elsewhere_secrets: Api<Secret> = Api::namespaced(sa.clone(), "default");
    assert!(forbidden(elsewhere_secrets.list(&ListParams::default()).await.map(|_| ())));
    let elsewhere_leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(sa.clone(), "default");
    assert!(forbidden(elsewhere_leases.list(&ListParams::default()).await.map(|_| ())));
    let mut extra = sa_cms.get("k3s-etcd-snapshot-extra-metadata").await?;
    extra.data = Some(BTreeMap::from([("team".to_string(), "evil".to_string())]));
    assert!(forbidden(
        sa_cms.replace("k3s-etcd-snapshot-extra-metadata", &PostParams::default(), &extra).await.map(|_| ())
    ));
    let system_leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(admin.clone(), SYSTEM_NAMESPACE);
    let scheduler: k8s_openapi::api::coordination::v1::Lease = serde_json::from_value(
        serde_json::json!({"metadata": {"name": "kube-scheduler"}, "spec": {"holderIdentity": "real-scheduler"}}),
    )?;
    let mut scheduler = system_leases.create(&PostParams::default(), &scheduler).await?;
    let sa_leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(sa.clone(), SYSTEM_NAMESPACE);
    scheduler.spec.get_or_insert_default().holder_identity = Some("etcdsnap".into());
    assert!(forbidden(sa_leases.replace("kube-scheduler", &PostParams::default(), &scheduler).await.map(|_| ())));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_deploy_manifest_is_accepted_by_the_api_server() -> TestResult {
    let env = Env::start().await?;
    for file in ["crd.yaml", "rbac.yaml", "rbac-node-annotations.yaml"] {
        kubectl(&env, &["apply", "-f", &deploy(file)]).await?;
    }
    // The DaemonSet would need a kubelet to run; the API server validates it fully server-side.
    let out = kubectl(&env, &["apply", "--dry-run=server", "-f", &deploy("daemonset.yaml")]).await?;
    assert!(out.contains("daemonset.apps/etcdsnap-agent created (server dry run)"), "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotate_node_marks_the_node_like_k3s_with_its_own_optional_role() -> TestResult {
    let env = Env::start().await?;
    let (_, kubeconfig) = install_crd_and_rbac(&env).await?;
    let admin = env.api.client().await?;
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(admin.clone());
    let node: k8s_openapi::api::core::v1::Node =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "node-1"}}))?;
    nodes.create(&PostParams::default(), &node).await?;
    env.etcdsnap_with("node-1", &["save"], &kubeconfig).await.expect_ok();

    // Off by default: the Node is not touched.
    env.etcdsnap_with("node-1", &["reconcile"], &kubeconfig).await.expect_ok();
    assert!(nodes.get("node-1").await?.metadata.annotations.unwrap_or_default().is_empty());
    // On, with only deploy/rbac.yaml: a clear error naming the node, not silence.
    let out = env.etcdsnap_with("node-1", &["reconcile", "--annotate-node"], &kubeconfig).await.expect_fail();
    assert!(out.stderr.contains("node node-1") && out.stderr.contains("forbidden"), "{}", out.stderr);
    // With the optional role: K3s's annotation, RFC 3339, written once.
    kubectl(&env, &["apply", "-f", &deploy("rbac-node-annotations.yaml")]).await?;
    env.etcdsnap_with("node-1", &["reconcile", "--annotate-node"], &kubeconfig).await.expect_ok();
    let annotations = nodes.get("node-1").await?.metadata.annotations.unwrap_or_default();
    let stamp = annotations.get("etcd.k3s.cattle.io/local-snapshots-timestamp").ok_or("no annotation")?;
    assert!(stamp.parse::<jiff::Timestamp>().is_ok(), "{stamp}");
    let before = env.audit().len();
    env.etcdsnap_with("node-1", &["reconcile", "--annotate-node", "--no-leader"], &kubeconfig).await.expect_ok();
    let events = env.audit();
    let node_writes: Vec<_> = events[before..].iter().filter(|e| e.is_write() && e.resource == "nodes").collect();
    assert!(node_writes.is_empty(), "a fresh mark was written again: {node_writes:?}");
    Ok(())
}

/// Writes `n` snapshot files (1 byte each) with metadata documents carrying `extra` into `dir`.
fn write_snapshots(dir: &Path, node: &str, first: i64, n: usize, extra: &BTreeMap<String, String>) -> TestResult {
    let meta_dir = dir.parent().ok_or("no parent")?.join(".metadata");
    std::fs::create_dir_all(&meta_dir)?;
    std::fs::create_dir_all(dir)?;
    for i in 0..n {
        let name = format!("etcd-snapshot-{node}-{}", first + i as i64);
        let mut r = record(&name, StorageKind::Local, node, &format!("file://{}/{name}", dir.display()));
        r.size = 1;
        r.sha256 = Some("ab".repeat(32));
        r.extra_metadata = Some(extra.clone());
        std::fs::write(dir.join(&name), b"x")?;
        std::fs::write(meta_dir.join(&name), r.to_document().to_json())?;
    }
    Ok(())
}

/// 20,000 snapshots with 1.1 KB of extra metadata each: every one gets its resource, and the
/// legacy ConfigMap, written after every step, is accepted by the real API server and stays under
/// the byte limit, holding the newest snapshots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_configmap_stays_bounded_with_20000_snapshots() -> TestResult {
    let env = Env::start().await?;
    let kube = env.kube("node-1").await?;
    let client = kube.client.clone();
    etcdsnap_kube::crd::ensure_crd(&client).await?;
    renew_heartbeat(&client, "node-1", Duration::from_secs(3600), Duration::ZERO).await?;
    let extra = BTreeMap::from([("cluster-state".to_string(), "s".repeat(1100))]);
    let dir = env.snapshot_dir("node-1");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let max_bytes = etcdsnap_kube::LegacySettings::default().max_bytes;
    let (steps, per_step) = (4, 5_000);
    for step in 0..steps {
        write_snapshots(&dir, "node-1", 1_700_000_000 + (step * per_step) as i64, per_step, &extra)?;
        let local = etcdsnap_storage::store::local::LocalStore::open(&dir, false, "node-1")?;
        let listing = etcdsnap_storage::store::SnapshotStore::list(&local).await?;
        let total = listing.records.len();
        assert_eq!(total, (step + 1) * per_step);
        let state =
            StorageState { local: Some(listing.records), s3: None, s3_location: None, deleted: BTreeSet::new() };
        let term = lead(&client, "node-1", Duration::from_secs(600)).await?;
        let view = LeaderView { liveness: NodeLiveness::read(&client).await?, term };
        let report = reconcile_leader(&kube, &state, &view).await?;
        assert!(report.errors.is_empty(), "{:?}", &report.errors[..report.errors.len().min(3)]);
        assert_eq!(report.created, per_step);
        let legacy = report.legacy.clone().ok_or("no legacy sync")?;
        assert!(legacy.written, "{legacy:?}");

        // The API server's view: every snapshot has its resource...
        let crs = etcdsnap_kube::resources::list(&client, None).await?;
        assert_eq!(crs.len(), total);
        // ...and the ConfigMap it accepted is under the limit and holds the newest entries.
        let cm = cms.get(LEGACY_CONFIGMAP).await?;
        let bytes = serde_json::to_vec(&cm)?.len();
        let data = cm.data.clone().unwrap_or_default();
        eprintln!(
            "step {step}: {total} snapshots, ConfigMap {} entries, {bytes} bytes (estimate {})",
            data.len(),
            legacy.estimated_bytes
        );
        assert!(bytes <= max_bytes, "{bytes} bytes");
        assert!(legacy.estimated_bytes >= bytes, "estimate {} < real {bytes}", legacy.estimated_bytes);
        assert!(data.len() <= 1000 && data.len() > 300, "{}", data.len());
        let newest = 1_700_000_000 + total as i64 - 1;
        let oldest_kept = newest - data.len() as i64 + 1;
        for t in [newest, oldest_kept] {
            assert!(data.contains_key(&format!("local-etcd-snapshot-node-1-{t}")), "{t} missing");
        }
        assert!(!data.contains_key(&format!("local-etcd-snapshot-node-1-{}", oldest_kept - 1)));
    }
    // A second pass over the same storage writes nothing, and lists 1 page per 1,000 objects.
    let local = etcdsnap_storage::store::local::LocalStore::open(&dir, false, "node-1")?;
    let state = StorageState {
        local: Some(etcdsnap_storage::store::SnapshotStore::list(&local).await?.records),
        s3: None,
        s3_location: None,
        deleted: BTreeSet::new(),
    };
    let term = lead(&client, "node-1", Duration::from_secs(600)).await?;
    let before = env.audit().len();
    let view = LeaderView { liveness: NodeLiveness::read(&client).await?, term: term.clone() };
    let report = reconcile_leader(&kube, &state, &view).await?;
    assert_eq!(report.unchanged, steps * per_step);
    let events = env.audit();
    assert!(admin_writes(&events, before).is_empty());
    let lists = events[before..].iter().filter(|e| e.verb == "list" && e.resource == "etcdsnapshotfiles").count();
    assert_eq!(lists, steps * per_step / 1000);
    Ok(())
}

/// A cluster that ran K3s's snapshots: its CRD (with the printer columns K3s's generated YAML
/// has), its legacy ConfigMap, its finalizer. etcdsnap lives with the CRD, adopts the ConfigMap,
/// imports its metadata into the resources, and never leaves a resource stuck Terminating.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takes_over_from_k3s_without_losing_metadata_or_leaving_finalizers() -> TestResult {
    use etcdsnap_api::LegacyEntry;
    let env = Env::start().await?;
    let client = env.api.client().await?;
    let mut k3s_crd = etcdsnap_api::crd();
    for col in k3s_crd.spec.versions[0].additional_printer_columns.iter_mut().flatten() {
        col.json_path =
            col.json_path.replace(".status.size", ".spec.size").replace(".status.creationTime", ".spec.creationTime");
    }
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    crds.create(&PostParams::default(), &k3s_crd).await?;
    kubectl(&env, &["wait", "--for=condition=Established", "crd/etcdsnapshotfiles.k3s.cattle.io"]).await?;

    // A snapshot K3s wrote (no metadata document), and K3s's ConfigMap with its extra metadata.
    let dir = env.snapshot_dir("node-1");
    std::fs::create_dir_all(&dir)?;
    let k3s_name = "on-demand-node-1-1700000100";
    std::fs::write(dir.join(k3s_name), b"x")?;
    let meta = BTreeMap::from([("cluster".to_string(), "k3s".to_string())]);
    let entry = |name: &str, node: &str| LegacyEntry {
        name: name.into(),
        location: format!("file:///var/lib/rancher/k3s/server/db/snapshots/{name}"),
        metadata: LegacyEntry::encode_metadata(&meta),
        node_name: node.into(),
        created_at: "2023-11-14T22:15:00Z".into(),
        size: 1,
        status: "successful".into(),
        ..Default::default()
    };
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let legacy: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": LEGACY_CONFIGMAP, "labels": {"origin": "k3s"}},
        "data": {
            format!("local-{k3s_name}"): entry(k3s_name, "node-1").to_json(),
            "local-on-demand-k3s-old-1600000000": entry("on-demand-k3s-old-1600000000", "k3s-old").to_json(),
        }
    }))?;
    cms.create(&PostParams::default(), &legacy).await?;

    // Resources K3s's leader put its finalizer on: one for a snapshot that is gone, one already
    // being deleted (stuck Terminating without K3s's controller).
    let api: Api<ETCDSnapshotFile> = Api::all(client.clone());
    let with_k3s_finalizer = |name: &str, node: &str, location: &str| {
        let mut resource = record(name, StorageKind::Local, node, location).to_resource(etcdsnap_api::Program::K3s);
        resource.metadata.finalizers = Some(vec![FINALIZER_K3S.into()]);
        resource
    };
    let vanished =
        with_k3s_finalizer("on-demand-node-1-1600000000", "node-1", "file:///gone/on-demand-node-1-1600000000");
    let vanished_name = vanished.metadata.name.clone().unwrap_or_default();
    api.create(&PostParams::default(), &vanished).await?;
    let stuck = with_k3s_finalizer("on-demand-node-2-1600000000", "node-2", "file:///x/on-demand-node-2-1600000000");
    let stuck_name = stuck.metadata.name.clone().unwrap_or_default();
    api.create(&PostParams::default(), &stuck).await?;
    api.delete(&stuck_name, &DeleteParams::default()).await?;
    assert!(api.get(&stuck_name).await?.metadata.deletion_timestamp.is_some());

    let out = env.etcdsnap("node-1", &["reconcile"]).await.expect_ok();
    assert!(out.stdout.contains("1 created"), "{}", out.stdout);

    // K3s's CRD is left as it was.
    let crd = crds.get("etcdsnapshotfiles.k3s.cattle.io").await?;
    assert!(crd.metadata.annotations.unwrap_or_default().is_empty());
    let paths: Vec<String> =
        crd.spec.versions[0].additional_printer_columns.iter().flatten().map(|c| c.json_path.clone()).collect();
    assert!(paths.contains(&".spec.size".to_string()), "{paths:?}");
    // The K3s snapshot's resource carries the metadata only the ConfigMap had (back-fill).
    let crs = env.resources().await?;
    let cr = crs.iter().find(|c| c.spec.snapshot_name == k3s_name).ok_or("no resource for the K3s snapshot")?;
    assert_eq!(cr.spec.metadata.as_ref(), Some(&meta));
    assert!(!cr.metadata.annotations.clone().unwrap_or_default().contains_key(ANNOTATION_TOKEN_HASH));
    // Nothing stuck.
    assert!(api.get_opt(&vanished_name).await?.is_none(), "vanished snapshot's resource still there");
    assert!(api.get_opt(&stuck_name).await?.is_none(), "resource left Terminating");
    // The ConfigMap is adopted: its labels kept, our entry current, K3s node's entry kept.
    let cm = cms.get(LEGACY_CONFIGMAP).await?;
    assert_eq!(cm.metadata.labels.unwrap_or_default().get("origin").map(String::as_str), Some("k3s"));
    let data = cm.data.unwrap_or_default();
    assert!(data.contains_key("local-on-demand-k3s-old-1600000000"), "{data:?}");
    let ours = LegacyEntry::parse(data.get(&format!("local-{k3s_name}")).ok_or("entry missing")?).ok_or("bad entry")?;
    assert_eq!(ours.extra_metadata().as_ref(), Some(&meta));
    assert!(ours.location.starts_with("file:///"), "{ours:?}");
    assert_eq!(data.len(), 2, "{data:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_changes_and_ls_cluster_lists_every_node() -> TestResult {
    use tokio::io::AsyncBufReadExt;
    let env = Env::start().await?;
    env.etcdsnap("node-1", &["save"]).await.expect_ok();
    let kubeconfig = s(env.api.kubeconfig_path());
    let mut child = common::command(&["watch", "-o", "json"])
        .env("KUBECONFIG", &kubeconfig)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let mut next = async || -> Result<(String, String), Box<dyn std::error::Error>> {
        let v = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await?.ok_or("watch ended")?;
        Ok((
            v["type"].as_str().unwrap_or_default().to_string(),
            v["object"]["spec"]["snapshotName"].as_str().unwrap_or_default().to_string(),
        ))
    };
    let existing = files_in(&env.snapshot_dir("node-1")).pop().ok_or("no file")?;
    assert_eq!(next().await?, ("ADDED".to_string(), existing.clone()));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    env.etcdsnap("node-1", &["save"]).await.expect_ok();
    let (kind, added) = next().await?;
    assert_eq!(kind, "ADDED");
    assert_ne!(added, existing);
    env.etcdsnap("node-1", &["delete", &existing]).await.expect_ok();
    assert_eq!(next().await?, ("DELETED".to_string(), existing.clone()));
    child.kill().await?;

    // Another node's snapshot, published by that node.
    let other = env.kube("node-2").await?;
    let r = record(
        "on-demand-node-2-1700000000",
        StorageKind::Local,
        "node-2",
        "file:///var/lib/etcdsnap/snapshots/on-demand-node-2-1700000000",
    );
    assert_eq!(publish::publish_records(&other, &[r]).await.created, 1);
    let out = env.etcdsnap("node-1", &["ls", "--cluster", "-o", "json"]).await.expect_ok();
    let items = out.json()["items"].as_array().cloned().unwrap_or_default();
    let nodes: BTreeSet<String> =
        items.iter().filter_map(|i| i["spec"]["nodeName"].as_str().map(String::from)).collect();
    assert_eq!(nodes, BTreeSet::from(["node-1".to_string(), "node-2".to_string()]));
    assert_eq!(items[0]["spec"]["snapshotName"], "on-demand-node-2-1700000000", "oldest first");
    let table = env.etcdsnap("node-1", &["ls", "--cluster"]).await.expect_ok();
    let header: Vec<&str> = table.stdout.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["NAME", "SNAPSHOTNAME", "NODE", "LOCATION", "SIZE", "CREATIONTIME", "READY"]);
    assert_eq!(table.stdout.lines().count(), 3, "{}", table.stdout);
    let yaml = env.etcdsnap("node-1", &["ls", "--cluster", "-o", "yaml"]).await.expect_ok();
    assert!(yaml.stdout.contains("kind: List"), "{}", yaml.stdout);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_settings_come_from_the_config_secret_and_bad_values_name_their_key() -> TestResult {
    let env = Env::start().await?;
    let client = env.api.client().await?;
    let ca = std::fs::read_to_string(env.api.ca_path())?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let ca_cm: ConfigMap =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "s3-ca"}, "data": {"ca.crt": ca}}))?;
    cms.create(&PostParams::default(), &ca_cm).await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let make = |name: &str, data: serde_json::Value| -> Result<Secret, serde_json::Error> {
        serde_json::from_value(
            serde_json::json!({"metadata": {"name": name}, "type": "etcd.k3s.cattle.io/s3-config-secret", "stringData": data}),
        )
    };
    secrets
        .create(
            &PostParams::default(),
            &make(
                "good",
                serde_json::json!({
                    "etcd-s3-endpoint": "s3.example.com:9000", "etcd-s3-bucket": "etcd", "etcd-s3-folder": "k3s",
                    "etcd-s3-access-key": "AKIA", "etcd-s3-secret-key": "s3cr3t", "etcd-s3-endpoint-ca": ca,
                    "etcd-s3-endpoint-ca-name": "s3-ca", "etcd-s3-timeout": "2m", "etcd-s3-insecure": "false"
                }),
            )?,
        )
        .await?;
    secrets
        .create(
            &PostParams::default(),
            &make("bad", serde_json::json!({"etcd-s3-bucket": "etcd", "etcd-s3-retention": "many"}))?,
        )
        .await?;
    secrets
        .create(
            &PostParams::default(),
            &make("bad-ca", serde_json::json!({"etcd-s3-bucket": "etcd", "etcd-s3-endpoint-ca-name": "no-such-cm"}))?,
        )
        .await?;
    let raw = s3_secret::load(&client, "good").await?;
    assert!(!format!("{raw:?}").contains("s3cr3t"));
    let s = raw.parse()?;
    assert_eq!(s.bucket, "etcd");
    assert_eq!(s.folder, "k3s");
    assert_eq!(s.access_key.as_deref(), Some("AKIA"));
    assert_eq!(s.timeout, Duration::from_secs(120));
    assert!(!s.insecure);
    assert_eq!(s.endpoint_ca.len(), 2, "inline CA and the CA ConfigMap");
    assert!(!format!("{s:?}").contains("s3cr3t"));
    let err = match s3_secret::load(&client, "bad").await {
        Ok(raw) => raw.parse().err().map(|e| e.to_string()).unwrap_or_default(),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("etcd-s3-retention") && !err.contains("many"), "{err}");
    let err = s3_secret::load(&client, "bad-ca").await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("etcd-s3-endpoint-ca-name") && err.contains("no-such-cm"), "{err}");
    assert!(matches!(s3_secret::load(&client, "missing").await, Err(s3_secret::S3SecretError::Missing(_))));
    Ok(())
}

fn plain_configmap(name: &str) -> ConfigMap {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(name.to_string());
    cm
}

/// Waits until the audit log shows a request for `name` (the log is written asynchronously).
async fn audited(env: &Env, name: &str) -> Result<Vec<AuditEvent>, Box<dyn std::error::Error>> {
    for _ in 0..100 {
        let events = env.api.audit_events()?;
        if events.iter().any(|e| e.name == name) {
            return Ok(events);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("no audit event for {name}").into())
}

/// A leader term's connection is fenced at the socket: during the term its writes go out; once
/// the term ended, a write on the connection that is already open never reaches the API server
/// (its audit log has no trace of it), while the node's own client and the next term's
/// connection work. This is what stops a leader paused after its last check of the term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_term_s_connection_sends_nothing_once_the_term_ended() -> TestResult {
    let env = Env::start().await?;
    let kubeconfig = kube::config::Kubeconfig::read_from(env.api.kubeconfig_path())?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    let kube = Kube::from_config(config, KubeSettings::new("alpha"))?;
    let term = LeaderTerm::fixed("alpha", Duration::from_secs(60));
    let leader: Api<ConfigMap> = Api::namespaced(kube.for_term(&term)?.client, "default");
    leader.create(&PostParams::default(), &plain_configmap("during-the-term")).await?;

    term.ended().cancel();
    let refused = leader.create(&PostParams::default(), &plain_configmap("after-the-term")).await;
    let err = format!("{:?}", refused.expect_err("a write after the term ended was accepted"));
    assert!(err.contains("LeadershipLost"), "not refused for the ended term: {err}");

    let own: Api<ConfigMap> = Api::namespaced(kube.client.clone(), "default");
    own.create(&PostParams::default(), &plain_configmap("own-duty")).await?;
    let next = LeaderTerm::fixed("alpha", Duration::from_secs(60));
    let next_leader: Api<ConfigMap> = Api::namespaced(kube.for_term(&next)?.client, "default");
    next_leader.create(&PostParams::default(), &plain_configmap("next-term")).await?;
    let events = audited(&env, "next-term").await?;
    assert!(events.iter().any(|e| e.name == "during-the-term" && e.code == 201));
    assert!(events.iter().any(|e| e.name == "own-duty" && e.code == 201));
    assert!(
        !events.iter().any(|e| e.name == "after-the-term"),
        "the API server saw the write made after the term ended"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_keeps_object_locked_snapshots_says_until_when_and_writes_no_failure() -> TestResult {
    let env = Env::start().await?;
    let s3 = testenv::S3Server::start().await?;
    // Every object is locked for a day by the bucket's default retention.
    s3.create_lock_bucket("locked", Some(("GOVERNANCE", 1))).await?;
    let (endpoints, data_dir) = (env.etcd.endpoints().join(","), s(&env.data_dir("node-1")));
    let kubeconfig = s(env.api.kubeconfig_path());
    let mut vars: Vec<(String, String)> = vec![
        ("ETCDSNAP_ENDPOINTS".into(), endpoints),
        ("ETCDSNAP_NODE_NAME".into(), "node-1".into()),
        ("KUBECONFIG".into(), kubeconfig),
        ("HOME".into(), "/nonexistent".into()),
    ];
    vars.extend(s3.etcdsnap_env("locked"));
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let args = [
        "--data-dir",
        &data_dir,
        "--schedule",
        "*/2 * * * * *",
        "--retention",
        "1",
        "--cluster-id",
        "c1",
        "--drill-schedule",
        "",
    ];
    std::fs::create_dir_all(env.data_dir("node-1"))?;
    let agent = crate::common::agent::Agent::start(&args, &vars, &env.data_dir("node-1")).await?;
    // Three saves: retention has met locked S3 snapshots at least twice.
    let saves = "etcdsnap_saves_total{status=\"success\"}";
    agent.wait_for_metric(saves, 3.0, Duration::from_secs(60)).await?;
    let prunes = "etcdsnap_etcd_snapshot_prune_duration_seconds_count{status=\"success\"}";
    let body = agent.wait_for_metric(prunes, 2.0, Duration::from_secs(30)).await?;
    let failed = "etcdsnap_etcd_snapshot_prune_duration_seconds_count{status=\"failure\"}";
    assert!(crate::common::agent::metric(&body, failed).unwrap_or(0.0) == 0.0, "a prune failed:\n{body}");
    // Still running, still healthy.
    let (code, _) = agent.get("/healthz").await?;
    assert_eq!(code, 200);
    let keys = s3.list_keys("locked", "").await?;
    let in_s3: Vec<&String> = keys.iter().filter(|k| !k.contains(".metadata/")).collect();
    assert!(in_s3.len() >= 3, "every locked snapshot stays in S3: {keys:?}");
    let log = agent.stop().await?;
    let said: Vec<&str> = log.lines().filter(|l| l.contains("is locked until")).collect();
    assert!(!said.is_empty(), "the log says until when:\n{log}");
    // The date the log names is the bucket's default, a day from the upload.
    #[allow(clippy::disallowed_methods, reason = "compared with the S3 server's clock, not etcdsnap's")]
    let now = jiff::Timestamp::now();
    let date =
        said[0].split("is locked until ").nth(1).and_then(|r| r.split(|c: char| c == ';' || c.is_whitespace()).next());
    let until: jiff::Timestamp = date.ok_or("no date")?.parse()?;
    let ahead = until.duration_since(now);
    assert!(
        ahead > jiff::SignedDuration::from_hours(23) && ahead <= jiff::SignedDuration::from_hours(25),
        "{}",
        said[0]
    );
    // No failure resource, no warning Event.
    let items = env.resources().await?;
    assert!(!items.is_empty(), "the saves were published");
    for cr in &items {
        let status = cr.status.clone().unwrap_or_default();
        assert_ne!(status.ready_to_use, Some(false), "a failure resource: {cr:?}");
    }
    let events: Api<Event> = Api::all(env.api.client().await?);
    let warnings: Vec<Event> = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .collect();
    assert!(warnings.is_empty(), "{warnings:?}");
    Ok(())
}
