//! Replicas end to end (`--replica`): the real `etcdsnap` binary copying every snapshot into a
//! second versitygw bucket, a fake-gcs-server bucket and an Azurite container, each then read
//! by `ls`, `verify` and `restore --from-replica` alone, pruned by its own retention without
//! touching another cluster's objects, and brought up to date after an outage.

use crate::common::etcd::etcd_with_objects;
use crate::common::keyspace::assert_same_key_space;
use crate::common::{Run, TestResult, files_in, run, s};
use std::time::Duration;
use testenv::{Azurite, Etcd, GcsServer, Lie, LyingS3Proxy, S3Server};

const PRIMARY: &str = "snaps";
const REPLICA: &str = "replica";
const FOLDER: &str = "k3s";
/// An older snapshot of the same node name, recorded by another cluster, in every replica.
const OTHER: &str = "on-demand-node-a-1600000000";

/// The replica servers.
struct Replicas {
    s3: S3Server,
    gcs: GcsServer,
    azurite: Azurite,
}

impl Replicas {
    async fn start(s3: S3Server) -> Result<Replicas, Box<dyn std::error::Error>> {
        s3.create_bucket(REPLICA).await?;
        Ok(Replicas {
            s3,
            gcs: GcsServer::with_bucket(REPLICA).await?,
            azurite: Azurite::with_container(REPLICA).await?,
        })
    }

    fn urls(&self) -> [String; 3] {
        [format!("s3://{REPLICA}/{FOLDER}"), format!("gs://{REPLICA}/{FOLDER}"), format!("az://{REPLICA}/{FOLDER}")]
    }

    /// The options that reach the test server of replica `i` (of [`Replicas::urls`]).
    fn options(&self, i: usize) -> Vec<String> {
        let options = match i {
            0 => vec![
                format!("aws_endpoint={}", self.s3.url()),
                "aws_allow_http=true".into(),
                "aws_region=us-east-1".into(),
            ],
            1 => self.gcs.replica_options(),
            _ => self.azurite.replica_options(),
        };
        options.into_iter().flat_map(|o| ["--replica-option".to_string(), o]).collect()
    }

    /// `--replica URL` for each, and the options that reach the test servers.
    fn flags(&self) -> Vec<String> {
        let mut flags = Vec::new();
        for (i, url) in self.urls().into_iter().enumerate() {
            flags.extend(["--replica".to_string(), url]);
            flags.extend(self.options(i));
        }
        flags
    }

    /// The bytes of object `file` of the folder in each replica.
    async fn objects(&self, file: &str) -> Result<[Vec<u8>; 3], Box<dyn std::error::Error>> {
        let key = format!("{FOLDER}/{file}");
        Ok([
            self.s3.get_object(REPLICA, &key).await?.0,
            self.gcs.get_object(REPLICA, &key).await?,
            self.azurite.get_blob(REPLICA, &key).await?,
        ])
    }

    /// Puts `body` at `file` of the folder in each replica.
    async fn put(&self, file: &str, body: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
        let key = format!("{FOLDER}/{file}");
        self.s3.put_object(REPLICA, &key, body.to_vec(), &[]).await?;
        self.gcs.put_object(REPLICA, &key, body.to_vec()).await?;
        self.azurite.put_blob(REPLICA, &key, body.to_vec()).await?;
        Ok(())
    }
}

struct Node {
    env: Vec<(String, String)>,
    data: tempfile::TempDir,
}

impl Node {
    fn new(etcd: &Etcd, s3: &S3Server) -> Node {
        let data = tempfile::tempdir().expect("a temporary directory");
        let mut env: Vec<(String, String)> = vec![
            ("ETCDSNAP_ENDPOINTS".into(), etcd.endpoints().join(",")),
            ("ETCDSNAP_NODE_NAME".into(), "node-a".into()),
            ("ETCDSNAP_DATA_DIR".into(), s(data.path())),
            ("ETCDSNAP_CLUSTER_ID".into(), "cluster-1".into()),
            ("ETCDSNAP_S3_FOLDER".into(), FOLDER.into()),
            ("ETCDSNAP_NO_KUBE".into(), "true".into()),
        ];
        env.extend(s3.etcdsnap_env(PRIMARY));
        Node { env, data }
    }

    async fn run(&self, args: &[String]) -> Run {
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run(args, &env).await
    }

    /// Without the primary's settings (a restore from a replica alone), credentials aside.
    async fn run_without_primary(&self, args: &[String]) -> Run {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .filter(|(k, _)| !k.starts_with("ETCDSNAP_S3"))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        run(args, &env).await
    }

    fn snapshots(&self) -> Vec<String> {
        files_in(&self.data.path().join("snapshots"))
    }
}

fn args(a: &[&str], more: &[String]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).chain(more.iter().cloned()).collect()
}

/// Saves one snapshot and returns its name (a second apart: names carry the second).
async fn save(node: &Node, replicas: &[String]) -> String {
    let before = node.snapshots();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    node.run(&args(&["save", "--compress", "zstd"], replicas)).await.expect_ok();
    let mut new: Vec<String> = node.snapshots().into_iter().filter(|n| !before.contains(n)).collect();
    assert_eq!(new.len(), 1, "{new:?}");
    new.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_s3_gcs_and_azure_hold_identical_copies_that_verify_restore_and_prune() -> TestResult {
    let etcd = etcd_with_objects(200).await?;
    let s3 = S3Server::with_bucket(PRIMARY).await?;
    let node = Node::new(&etcd, &s3);
    let replicas = Replicas::start(s3).await?;
    let flags = replicas.flags();

    let first = save(&node, &flags).await;
    // Another cluster's snapshot of a node of the same name, older than every one of ours, with
    // its record: the replicas' retention must never count it.
    let record = replicas.objects(&format!(".metadata/{first}.etcdsnap.json")).await?[0].clone();
    let other_record = String::from_utf8(record)?.replace(&first, OTHER).replace("cluster-1", "cluster-2");
    assert!(other_record.contains("cluster-2"), "{other_record}");
    replicas.put(OTHER, b"another cluster's bytes").await?;
    replicas.put(&format!(".metadata/{OTHER}.etcdsnap.json"), other_record.as_bytes()).await?;

    let second = save(&node, &flags).await;
    for name in [&first, &second] {
        let local = std::fs::read(node.data.path().join("snapshots").join(name))?;
        for (copy, url) in replicas.objects(name).await?.iter().zip(replicas.urls()) {
            assert!(copy == &local, "{name} in {url} differs from the local copy");
        }
        // The record copied byte for byte from the local copy's, whose hash is that of the bytes.
        let records = replicas.objects(&format!(".metadata/{name}.etcdsnap.json")).await?;
        assert!(records.iter().all(|r| *r == records[0]), "{name}: the replicas' records differ");
        let record: serde_json::Value = serde_json::from_slice(&records[0])?;
        let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&local));
        assert_eq!(record["sha256"].as_str(), Some(sha256.as_str()), "{name}: {record}");
    }

    // ls and verify read the replicas too.
    let listed = node.run(&args(&["ls", "-o", "json"], &flags)).await.expect_ok().json();
    let locations: Vec<String> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["spec"]["location"].as_str().unwrap_or_default().into())
        .collect();
    for url in replicas.urls() {
        assert!(locations.contains(&format!("{url}/{second}")), "{url}/{second} not in {locations:?}");
    }
    let verified = node.run(&args(&["verify", &second], &flags)).await.expect_ok();
    assert_eq!(verified.stdout.matches("OK").count(), 5, "local, S3 and three replicas: {}", verified.stdout);

    // The local and the primary S3 copies gone, each replica alone restores the key space.
    node.run(&args(&["delete", &second], &[])).await.expect_ok();
    assert!(!node.snapshots().contains(&second));
    assert!(replicas.s3.get_object(PRIMARY, &format!("{FOLDER}/{second}")).await.is_err());
    let revision = etcd.client().await?.status().await?.header().map(|h| h.revision()).unwrap_or_default();
    let live = etcd.client().await?;
    for (i, url) in replicas.urls().iter().enumerate() {
        let dir = tempfile::tempdir()?;
        let target = dir.path().join("etcd");
        let port = testenv::free_port()?;
        let mut restore =
            args(&["restore", &second, "--from-replica", url, "--member-name", "m0"], &replicas.options(i));
        restore.extend(["--data-dir".into(), s(&target), "--etcdutl".into(), s(&testenv::testbin("etcdutl")?)]);
        restore.extend(["--initial-advertise-peer-urls".into(), format!("http://127.0.0.1:{port}")]);
        let out = node.run_without_primary(&restore).await.expect_ok();
        assert!(out.stdout.contains("Restored "), "{url}: {}", out.stdout);
        let restored = Etcd::start_on_data_dir(&target, "m0", port).await?;
        let keys = assert_same_key_space(&live, &restored.client().await?, revision).await;
        assert!(keys >= 200, "{url}: {keys} keys");
    }

    // Retention of one per replica: our older snapshot goes, the other cluster's stays.
    let third = save(&node, &flags).await;
    let pruned = node.run(&args(&["prune", "--retention", "5", "--replica-retention", "1"], &flags)).await.expect_ok();
    for name in [&first, &second] {
        let removed = format!("Removed {name} from replica");
        assert_eq!(pruned.stdout.matches(&removed).count(), 3, "{}", pruned.stdout);
    }
    let names = [
        replicas.s3.list_keys(REPLICA, "k3s/").await?,
        replicas.gcs.list_names(REPLICA, "k3s/").await?,
        replicas.azurite.list_names(REPLICA, "k3s/").await?,
    ];
    for (keys, url) in names.iter().zip(replicas.urls()) {
        let mut snapshots: Vec<&str> =
            keys.iter().filter_map(|k| k.strip_prefix("k3s/")).filter(|k| !k.contains('/')).collect();
        snapshots.sort();
        // `second`, deleted from the local directory and S3 only, stayed in the replicas until
        // their retention counted it: older than `third`, it went with `first`.
        let mut expected = vec![OTHER, third.as_str()];
        expected.sort();
        assert_eq!(snapshots, expected, "{url}");
        assert!(keys.contains(&format!("k3s/.metadata/{OTHER}.etcdsnap.json")), "{url}: {keys:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_was_down_catches_up_after_the_next_save() -> TestResult {
    let etcd = etcd_with_objects(50).await?;
    let s3 = S3Server::with_bucket(PRIMARY).await?;
    let node = Node::new(&etcd, &s3);
    let mut azurite = Azurite::with_container(REPLICA).await?;
    let mut flags = vec!["--replica".to_string(), format!("az://{REPLICA}/{FOLDER}")];
    for o in azurite.replica_options() {
        flags.extend(["--replica-option".to_string(), o]);
    }
    azurite.stop();
    // The save succeeds; the copy waits.
    let missed = save(&node, &flags).await;
    azurite.restart().await?;
    assert!(azurite.list_names(REPLICA, "").await?.is_empty());
    let next = save(&node, &flags).await;
    let held = azurite.list_names(REPLICA, &format!("{FOLDER}/")).await?;
    for name in [&missed, &next] {
        assert!(held.contains(&format!("{FOLDER}/{name}")), "{name} not in {held:?}");
        let local = std::fs::read(node.data.path().join("snapshots").join(name))?;
        assert!(azurite.get_blob(REPLICA, &format!("{FOLDER}/{name}")).await? == local, "{name} differs");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_listing_that_lies_fails_closed() -> TestResult {
    let etcd = etcd_with_objects(50).await?;
    let s3 = S3Server::with_bucket(PRIMARY).await?;
    let node = Node::new(&etcd, &s3);
    let replicas = Replicas::start(s3).await?;
    // Every replica behind a lying proxy.
    let s3_proxy = LyingS3Proxy::start(&replicas.s3.url()).await?;
    let az_proxy = LyingS3Proxy::start(&replicas.azurite.account_url().replace("/devstoreaccount1", "")).await?;
    // fake-gcs-server routes by Host: its proxy sends the server's own (GCS signs nothing with it).
    let gcs_proxy = LyingS3Proxy::start_rewriting_host(&replicas.gcs.url()).await?;
    let mut flags = vec!["--replica".to_string(), format!("s3://{REPLICA}/{FOLDER}")];
    for o in [
        format!("aws_endpoint=http://{}", s3_proxy.endpoint()),
        "aws_allow_http=true".into(),
        "aws_region=us-east-1".into(),
    ] {
        flags.extend(["--replica-option".to_string(), o]);
    }
    flags.extend(["--replica".to_string(), format!("az://{REPLICA}/{FOLDER}")]);
    for o in replicas.azurite.replica_options() {
        let o = o.replace(&replicas.azurite.account_url(), &format!("http://{}/devstoreaccount1", az_proxy.endpoint()));
        flags.extend(["--replica-option".to_string(), o]);
    }
    flags.extend(["--replica".to_string(), format!("gs://{REPLICA}/{FOLDER}")]);
    for o in replicas.gcs.replica_options() {
        let o = o.replace(&replicas.gcs.url(), &format!("http://{}", gcs_proxy.endpoint()));
        flags.extend(["--replica-option".to_string(), o]);
    }
    let first = save(&node, &flags).await;
    let second = save(&node, &flags).await;
    for proxy in [&s3_proxy, &az_proxy, &gcs_proxy] {
        for lie in [Lie::HtmlOk, Lie::TruncatedList] {
            proxy.lie_to_next_lists(lie, 1000);
            let out = node.run(&args(&["ls"], &flags)).await.expect_fail();
            assert!(out.stderr.contains("replica"), "{lie:?}: {}", out.stderr);
            // Retention of one, on a listing that lies: nothing is removed, the prune fails.
            let out = node.run(&args(&["prune", "--replica-retention", "1"], &flags)).await.expect_fail();
            assert!(!out.stdout.contains("Removed"), "{lie:?}: {}", out.stdout);
            proxy.tell_the_truth();
        }
    }
    for name in [&first, &second] {
        let local = std::fs::read(node.data.path().join("snapshots").join(name))?;
        let key = format!("{FOLDER}/{name}");
        assert!(replicas.s3.get_object(REPLICA, &key).await?.0 == local, "{name} in the S3 replica");
        assert!(replicas.azurite.get_blob(REPLICA, &key).await? == local, "{name} in the Azure replica");
        assert!(replicas.gcs.get_object(REPLICA, &key).await? == local, "{name} in the GCS replica");
    }
    Ok(())
}
