//! GCS and Azure Blob Storage as a node's primary remote store (`--gcs-*`, `--azure-*`): the
//! real `etcdsnap` binary saving into a fake-gcs-server bucket and an Azurite container, with
//! and without a local copy, then `ls`, `verify`, `restore NAME` (the key space compared with
//! the live one), `prune` scoped to this node and cluster, listings that lie (a proxy in front
//! of each server), the agent's schedule and retention on Azure, the ETCDSnapshotFile resource
//! of an Azure snapshot, and flags that are wrong.

use crate::common::agent::Agent;
use crate::common::etcd::etcd_with_objects;
use crate::common::keyspace::assert_same_key_space;
use crate::common::{Run, TestResult, files_in, run, s};
use std::time::Duration;
use testenv::{Azurite, Etcd, GcsServer, Lie, LyingS3Proxy};

const BUCKET: &str = "snaps";
const FOLDER: &str = "k3s";
/// A snapshot of another node of this cluster, and one of this node's name in another cluster.
const OTHER_NODE: &str = "on-demand-node-b-1600000000";
const OTHER_CLUSTER: &str = "on-demand-node-a-1600000001";

/// The server behind the primary store.
enum Server {
    Gcs(GcsServer, tempfile::TempDir),
    Azure(Azurite),
}

impl Server {
    async fn gcs() -> Result<Server, Box<dyn std::error::Error>> {
        let gcs = GcsServer::with_bucket(BUCKET).await?;
        let keys = tempfile::tempdir()?;
        Ok(Server::Gcs(gcs, keys))
    }

    async fn azure() -> Result<Server, Box<dyn std::error::Error>> {
        Ok(Server::Azure(Azurite::with_container(BUCKET).await?))
    }

    /// The value of option `key` of the server's replica options.
    fn option(options: &[String], key: &str) -> String {
        let prefix = format!("{key}=");
        options.iter().find_map(|o| o.strip_prefix(&prefix)).unwrap_or_default().to_string()
    }

    /// The flags naming the store (the Azure key comes from the environment: see `env`), with
    /// the service at `endpoint` when given (a proxy), else the server itself.
    fn flags(&self, endpoint: Option<&str>) -> Vec<String> {
        match self {
            Server::Gcs(gcs, keys) => {
                let file = keys.path().join("key.json");
                let key = Self::option(&gcs.replica_options(), "google_service_account_key");
                std::fs::write(&file, key).expect("the key file");
                let url = endpoint.map_or_else(|| gcs.url(), str::to_string);
                [
                    ("--gcs-bucket", BUCKET.to_string()),
                    ("--gcs-folder", FOLDER.into()),
                    ("--gcs-endpoint", url),
                    ("--gcs-credentials", s(&file)),
                ]
                .into_iter()
                .flat_map(|(f, v)| [f.to_string(), v])
                .collect()
            }
            Server::Azure(azurite) => {
                let options = azurite.replica_options();
                let url = endpoint.map_or_else(|| azurite.account_url(), str::to_string);
                [
                    ("--azure-container", BUCKET.to_string()),
                    ("--azure-folder", FOLDER.into()),
                    ("--azure-endpoint", url),
                    ("--azure-account", Self::option(&options, "azure_storage_account_name")),
                ]
                .into_iter()
                .flat_map(|(f, v)| [f.to_string(), v])
                .collect()
            }
        }
    }

    /// The environment the store needs besides its flags: Azure's key, as `az` names it.
    fn env(&self) -> Vec<(String, String)> {
        match self {
            Server::Gcs(..) => Vec::new(),
            Server::Azure(azurite) => {
                let key = Self::option(&azurite.replica_options(), "azure_storage_account_key");
                vec![("AZURE_STORAGE_KEY".into(), key)]
            }
        }
    }

    fn scheme(&self) -> &'static str {
        match self {
            Server::Gcs(..) => "gs",
            Server::Azure(_) => "az",
        }
    }

    async fn get(&self, file: &str) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
        let key = format!("{FOLDER}/{file}");
        Ok(match self {
            Server::Gcs(gcs, _) => gcs.get_object(BUCKET, &key).await?,
            Server::Azure(azurite) => azurite.get_blob(BUCKET, &key).await?,
        })
    }

    async fn put(&self, file: &str, body: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
        let key = format!("{FOLDER}/{file}");
        match self {
            Server::Gcs(gcs, _) => gcs.put_object(BUCKET, &key, body.to_vec()).await?,
            Server::Azure(azurite) => azurite.put_blob(BUCKET, &key, body.to_vec()).await?,
        }
        Ok(())
    }

    /// The snapshots in the folder (no record, no sub-folder), sorted.
    async fn snapshots(&self) -> Result<Vec<String>, Box<dyn std::error::Error>> {
        let prefix = format!("{FOLDER}/");
        let names = match self {
            Server::Gcs(gcs, _) => gcs.list_names(BUCKET, &prefix).await?,
            Server::Azure(azurite) => azurite.list_names(BUCKET, &prefix).await?,
        };
        let mut snapshots: Vec<String> =
            names.iter().filter_map(|k| k.strip_prefix(&prefix)).filter(|k| !k.contains('/')).map(Into::into).collect();
        snapshots.sort();
        Ok(snapshots)
    }
}

struct Node {
    env: Vec<(String, String)>,
    data: tempfile::TempDir,
}

impl Node {
    fn new(etcd: &Etcd, server: &Server) -> Node {
        let data = tempfile::tempdir().expect("a temporary directory");
        let mut env: Vec<(String, String)> = vec![
            ("ETCDSNAP_ENDPOINTS".into(), etcd.endpoints().join(",")),
            ("ETCDSNAP_NODE_NAME".into(), "node-a".into()),
            ("ETCDSNAP_DATA_DIR".into(), s(data.path())),
            ("ETCDSNAP_CLUSTER_ID".into(), "cluster-1".into()),
            ("ETCDSNAP_NO_KUBE".into(), "true".into()),
        ];
        env.extend(server.env());
        Node { env, data }
    }

    async fn run(&self, args: &[String]) -> Run {
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run(args, &env).await
    }

    fn local(&self) -> Vec<String> {
        files_in(&self.data.path().join("snapshots"))
    }
}

fn args(a: &[&str], more: &[String]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).chain(more.iter().cloned()).collect()
}

/// Saves one snapshot (a second after the last: names carry the second) and returns its name,
/// read from the store's listing.
async fn save(node: &Node, server: &Server, extra: &[&str]) -> String {
    let before = server.snapshots().await.expect("the store's listing");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut a = args(&["save", "--compress", "zstd"], &server.flags(None));
    a.extend(extra.iter().map(|e| e.to_string()));
    node.run(&a).await.expect_ok();
    let mut new: Vec<String> =
        server.snapshots().await.expect("the store's listing").into_iter().filter(|n| !before.contains(n)).collect();
    assert_eq!(new.len(), 1, "{new:?}");
    new.remove(0)
}

/// Puts `n` values of 1 MiB that do not compress: snapshots of more than one 8 MiB part.
async fn put_large_values(etcd: &Etcd, n: usize) -> TestResult {
    let mut client = etcd.client().await?;
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..n {
        let value: Vec<u8> = (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        client.put(format!("/registry/blobs/default/blob-{i}"), value, None).await?;
    }
    Ok(())
}

/// The whole life of snapshots in one primary store.
async fn save_list_verify_restore_prune(server: Server) -> TestResult {
    let etcd = etcd_with_objects(100).await?;
    // Three parts and some: parts in flight, then the last one sent when the upload completes.
    put_large_values(&etcd, 20).await?;
    let node = Node::new(&etcd, &server);
    let flags = server.flags(None);

    // With the local copy: both hold the same bytes, and the record is beside it.
    let first = save(&node, &server, &[]).await;
    let local = std::fs::read(node.data.path().join("snapshots").join(&first))?;
    assert!(local.len() > 16 << 20, "{} bytes: not three parts", local.len());
    assert!(server.get(&first).await? == local, "{first} differs from the local copy");
    let record: serde_json::Value =
        serde_json::from_slice(&server.get(&format!(".metadata/{first}.etcdsnap.json")).await?)?;
    let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&local));
    assert_eq!(record["sha256"].as_str(), Some(sha256.as_str()), "{record}");
    // Without: in the store only.
    let second = save(&node, &server, &["--no-local"]).await;
    assert!(!node.local().contains(&second), "{second} kept locally with --no-local");

    // Another node's snapshot, and another cluster's of this node's name, with their records:
    // this node's retention must never count them.
    let record = String::from_utf8(server.get(&format!(".metadata/{first}.etcdsnap.json")).await?)?;
    for (name, from, to) in [(OTHER_NODE, "node-a", "node-b"), (OTHER_CLUSTER, "cluster-1", "cluster-2")] {
        let other = record.replace(&first, name).replace(from, to);
        server.put(name, b"not ours").await?;
        server.put(&format!(".metadata/{name}.etcdsnap.json"), other.as_bytes()).await?;
    }

    // ls shows both of ours where they are.
    let listed = node.run(&args(&["ls", "-o", "json"], &flags)).await.expect_ok().json();
    let locations: Vec<String> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["spec"]["location"].as_str().unwrap_or_default().into())
        .collect();
    for name in [&first, &second] {
        let url = format!("{}://{BUCKET}/{FOLDER}/{name}", server.scheme());
        assert!(locations.contains(&url), "{url} not in {locations:?}");
    }
    // A second listing reads the records from the cache in the data directory.
    node.run(&args(&["ls"], &flags)).await.expect_ok();
    let cache = files_in(&node.data.path().join("cache"));
    assert_eq!(cache.len(), 1, "one listing cache file: {cache:?}");
    let cached: serde_json::Value =
        serde_json::from_slice(&std::fs::read(node.data.path().join("cache").join(&cache[0]))?)?;
    let entries = cached["entries"].as_object().ok_or("no entries")?;
    assert_eq!(entries.len(), 4, "every record, by its ETag: {cached}");
    assert!(entries.values().all(|e| e["etag"].as_str().is_some_and(|t| !t.is_empty())), "{cached}");

    // verify reads it from the store.
    let verified = node.run(&args(&["verify", &second], &flags)).await.expect_ok();
    assert_eq!(verified.stdout.matches("OK").count(), 1, "{}", verified.stdout);

    // restore NAME streams it from the store: the key space is the live one.
    let revision = etcd.client().await?.status().await?.header().map(|h| h.revision()).unwrap_or_default();
    let dir = tempfile::tempdir()?;
    let target = dir.path().join("etcd");
    let port = testenv::free_port()?;
    let mut restore = args(&["restore", &second, "--member-name", "m0"], &flags);
    restore.extend(["--data-dir".into(), s(&target), "--etcdutl".into(), s(&testenv::testbin("etcdutl")?)]);
    restore.extend(["--initial-advertise-peer-urls".into(), format!("http://127.0.0.1:{port}")]);
    let out = node.run(&restore).await.expect_ok();
    assert!(out.stdout.contains("Restored "), "{}", out.stdout);
    let restored = Etcd::start_on_data_dir(&target, "m0", port).await?;
    let keys = assert_same_key_space(&etcd.client().await?, &restored.client().await?, revision).await;
    assert!(keys >= 100, "{keys} keys");
    drop(restored);
    // recover on an empty data directory takes the newest snapshot from the store.
    let target = dir.path().join("recovered");
    let port = testenv::free_port()?;
    let mut recover = args(&["recover", "--member-name", "m0", "--data-dir", &s(&target)], &flags);
    recover.extend(["--etcdutl".into(), s(&testenv::testbin("etcdutl")?)]);
    recover.extend(["--initial-advertise-peer-urls".into(), format!("http://127.0.0.1:{port}")]);
    let out = node.run(&recover).await.expect_ok();
    assert!(out.stdout.contains(&format!("past snapshot {second}")), "{}\n{}", out.stdout, out.stderr);
    let recovered = Etcd::start_on_data_dir(&target, "m0", port).await?;
    assert_same_key_space(&etcd.client().await?, &recovered.client().await?, revision).await;
    drop(recovered);

    // Retention of one: our older snapshot goes with its record; the others stay.
    let pruned = node.run(&args(&["prune", "--retention", "1"], &flags)).await.expect_ok();
    assert!(pruned.stdout.contains(&first), "{}", pruned.stdout);
    let mut expected = vec![OTHER_NODE.to_string(), OTHER_CLUSTER.into(), second.clone()];
    expected.sort();
    assert_eq!(server.snapshots().await?, expected);
    assert!(server.get(&format!(".metadata/{first}.etcdsnap.json")).await.is_err(), "the record stayed");
    for name in [OTHER_NODE, OTHER_CLUSTER, second.as_str()] {
        server.get(&format!(".metadata/{name}.etcdsnap.json")).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_as_the_primary_store() -> TestResult {
    save_list_verify_restore_prune(Server::gcs().await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_as_the_primary_store() -> TestResult {
    save_list_verify_restore_prune(Server::azure().await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_saves_on_schedule_into_azure_and_keeps_its_retention() -> TestResult {
    let etcd = etcd_with_objects(20).await?;
    let server = Server::azure().await?;
    let node = Node::new(&etcd, &server);
    // Another node's snapshot, older than every scheduled one: never counted.
    server.put(OTHER_NODE, b"not ours").await?;
    let mut args = vec!["--schedule", "*/2 * * * * *", "--retention", "2", "--no-local", "--compress", "zstd"];
    let flags = server.flags(None);
    args.extend(flags.iter().map(String::as_str));
    let env: Vec<(&str, &str)> = node.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let agent = Agent::start(&args, &env, node.data.path()).await?;
    agent.wait_for_metric("etcdsnap_saves_total{status=\"success\"}", 4.0, Duration::from_secs(40)).await?;
    agent.stop().await?;
    let held = server.snapshots().await?;
    let ours: Vec<&String> = held.iter().filter(|n| n.starts_with("etcd-snapshot-node-a-")).collect();
    assert_eq!(ours.len(), 2, "retention 2 in the container: {held:?}");
    assert!(held.contains(&OTHER_NODE.to_string()), "{held:?}");
    for name in ours {
        server.get(&format!(".metadata/{name}.etcdsnap.json")).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_azure_snapshot_has_a_remote_resource_that_reconcile_keeps_and_delete_removes() -> TestResult {
    let etcd = etcd_with_objects(20).await?;
    let api = testenv::KubeApiServer::start(&etcd).await?;
    let client = api.client().await?;
    let server = Server::azure().await?;
    let mut node = Node::new(&etcd, &server);
    node.env.retain(|(k, _)| k != "ETCDSNAP_NO_KUBE");
    node.env.push(("ETCDSNAP_KUBECONFIG".into(), s(api.kubeconfig_path())));
    let flags = server.flags(None);
    let name = save(&node, &server, &["--no-local"]).await;
    let crs: kube::Api<etcdsnap_api::ETCDSnapshotFile> = kube::Api::all(client.clone());
    let items = crs.list(&Default::default()).await?.items;
    assert_eq!(items.len(), 1, "{items:?}");
    let cr = &items[0];
    assert!(cr.metadata.name.as_deref().is_some_and(|n| n.starts_with("s3-")), "{:?}", cr.metadata.name);
    assert_eq!(cr.spec.location, format!("az://{BUCKET}/{FOLDER}/{name}"));
    let spec = cr.spec.s3.as_ref().ok_or("no spec.s3")?;
    assert_eq!((spec.bucket.as_deref(), spec.prefix.as_deref()), (Some(BUCKET), Some(FOLDER)));
    assert_eq!(cr.status.as_ref().and_then(|s| s.ready_to_use), Some(true));
    // The listing finds what the resource says: nothing to change.
    let out = node.run(&args(&["reconcile"], &flags)).await.expect_ok();
    assert!(out.stdout.contains("0 created, 0 updated, 0 deleted"), "{}", out.stdout);
    node.run(&args(&["delete", &name], &flags)).await.expect_ok();
    assert!(crs.list(&Default::default()).await?.items.is_empty(), "the resource stayed");
    assert!(server.snapshots().await?.is_empty());
    Ok(())
}

/// Listings through a proxy that lies (HTML sent as 200, a listing cut short) fail `ls` and
/// `prune`, and nothing is deleted.
async fn a_lying_listing_fails_closed(server: Server) -> TestResult {
    let etcd = etcd_with_objects(20).await?;
    // fake-gcs-server routes by Host: it must see its own.
    let (proxy, through) = match &server {
        Server::Gcs(gcs, _) => (LyingS3Proxy::start_rewriting_host(&gcs.url()).await?, ""),
        Server::Azure(azurite) => {
            let upstream = azurite.account_url().replace("/devstoreaccount1", "");
            (LyingS3Proxy::start(&upstream).await?, "/devstoreaccount1")
        }
    };
    let node = Node::new(&etcd, &server);
    let flags = server.flags(Some(&format!("http://{}{through}", proxy.endpoint())));
    let first = save(&node, &server, &["--no-local"]).await;
    let second = save(&node, &server, &["--no-local"]).await;
    // The truth through the proxy first: the store is reachable that way.
    let out = node.run(&args(&["ls"], &flags)).await.expect_ok();
    assert!(out.stdout.contains(&second), "{}", out.stdout);
    for lie in [Lie::HtmlOk, Lie::TruncatedList] {
        proxy.lie_to_next_lists(lie, 1000);
        let out = node.run(&args(&["ls"], &flags)).await.expect_fail();
        assert!(out.stderr.contains("refused listing answer"), "{lie:?}: {}", out.stderr);
        let out = node.run(&args(&["prune", "--retention", "1"], &flags)).await.expect_fail();
        assert!(!out.stdout.contains("Removed"), "{lie:?}: {}", out.stdout);
        proxy.tell_the_truth();
    }
    let mut both = vec![first, second];
    both.sort();
    assert_eq!(server.snapshots().await?, both, "nothing was deleted");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_azure_listing_that_lies_fails_closed() -> TestResult {
    a_lying_listing_fails_closed(Server::azure().await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gcs_listing_that_lies_fails_closed() -> TestResult {
    a_lying_listing_fails_closed(Server::gcs().await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_store_flags_are_refused() -> TestResult {
    let etcd = etcd_with_objects(5).await?;
    let data = tempfile::tempdir()?;
    let env = [
        ("ETCDSNAP_ENDPOINTS", etcd.endpoints().join(",")),
        ("ETCDSNAP_DATA_DIR", s(data.path())),
        ("ETCDSNAP_NODE_NAME", "node-a".into()),
        ("ETCDSNAP_NO_KUBE", "true".into()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let port = testenv::free_port()?;
    let unreachable = format!("http://127.0.0.1:{port}/acct");
    for (given, says) in [
        (vec!["save", "--gcs-folder", "k3s"], "need --gcs-bucket"),
        (vec!["save", "--azure-endpoint", "http://127.0.0.1:1/a"], "need --azure-container"),
        (vec!["save", "--s3", "--s3-bucket", "b", "--gcs-bucket", "b"], "not two"),
        (vec!["save", "--gcs-bucket", "b", "--azure-container", "c"], "not both"),
        (vec!["save", "--gcs-bucket", "b", "--s3-lock-retention", "2h"], "is not S3"),
        (
            vec![
                "ls",
                "--no-local",
                "--azure-container",
                "c",
                "--azure-account",
                "acct",
                "--azure-endpoint",
                &unreachable,
            ],
            "az://c",
        ),
    ] {
        let out = run(&given, &env).await.expect_fail();
        assert!(out.stderr.contains(says), "{given:?}: {}", out.stderr);
    }
    assert!(files_in(&data.path().join("snapshots")).is_empty(), "nothing was saved");
    Ok(())
}
