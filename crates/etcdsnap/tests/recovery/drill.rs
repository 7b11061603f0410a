//! Restore drills end to end, against real etcd members (3.5, 3.6, 3.7), a real S3 server and a
//! real API server: the HashKV recorded at save time, the hash level (etcdutl hashkv of the
//! contents), the boot level (a private etcd on a restored copy), a snapshot rewritten so that
//! its sha256 still matches, and a drill killed mid-way.

use crate::common::agent::metric;
use crate::common::cluster::{BUCKET, start_agent};
use crate::common::etcd::{etcd_with_objects, load_kube_like_data};
use crate::common::layout::records_dir;
use crate::common::restore::revision;
use crate::common::{self, TestResult, files_in, run, s};
use etcdsnap_api::ETCDSnapshotFile;
use etcdsnap_api::consts::{ANNOTATION_DRILL, ANNOTATION_DRILLED_AT, ANNOTATION_ETCD_HASHKV};
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use testenv::{Etcd, KubeApiServer, S3Server};

const OBJECTS: usize = 200;

/// etcdutl and etcd of the newest pinned release: drills at the hash level need etcdutl 3.7 or
/// later (its hashkv reads leased keys), and read snapshots of every version.
fn tools() -> (String, String) {
    let etcdutl = testenv::testbin_version("etcdutl", "3.7").unwrap();
    let etcd = testenv::testbin_version("etcd", "3.7").unwrap();
    (s(&etcdutl), s(&etcd))
}

/// The flags of a node that keeps its snapshots under `data_dir` and has no API server.
fn local_node<'a>(data_dir: &'a str, node: &'a str, endpoints: &'a str) -> [&'a str; 7] {
    ["--data-dir", data_dir, "--node-name", node, "--endpoints", endpoints, "--no-kube"]
}

/// The snapshot files a save left in `dir` (not the metadata).
fn snapshots(dir: &Path) -> Vec<String> {
    files_in(dir).into_iter().filter(|f| !f.starts_with('.')).collect()
}

/// Each item of a drill's JSON passed at the boot level, its hash equal to the recorded one
/// and to the booted etcd's, with every Kubernetes object there.
fn assert_passed_at_boot_level(out: &serde_json::Value, what: &str, objects: usize) {
    let items = out["items"].as_array().unwrap();
    assert!(!items.is_empty(), "{what}: {out}");
    for item in items {
        assert_eq!(item["passed"], true, "{what}: {item}");
        assert_eq!(item["level"], "boot", "{what}: {item}");
        assert!(item["recordedHashKV"].is_object(), "{what}: no HashKV recorded: {item}");
        assert_eq!(item["recordedHashKV"], item["computedHashKV"], "{what}: {item}");
        assert_eq!(item["booted"]["hashKV"], item["computedHashKV"], "{what}: {item}");
        assert_eq!(item["booted"]["kubernetesKeys"], objects as i64, "{what}: {item}");
        assert_eq!(item["recordedKubernetesKeys"], objects as i64, "{what}: {item}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_of_etcd_3_5_3_6_and_3_7_pass_hash_and_boot_drills_in_every_format() -> TestResult {
    let (etcdutl, etcd_bin) = tools();
    for minor in ["3.5", "3.6", "3.7"] {
        let etcd = Etcd::single_version(minor).await?;
        let mut client = etcd.client().await?;
        load_kube_like_data(&mut client, OBJECTS).await?;
        // A compaction, so the recorded hash covers a range that does not start at 1.
        let rev = revision(&mut client).await;
        client.compact(rev / 2, None).await?;
        let data = tempfile::tempdir()?;
        let dd = s(data.path());
        let endpoints = etcd.endpoints().join(",");
        let node = local_node(&dd, "node-1", &endpoints);
        for compress in ["none", "zstd", "zip"] {
            run(&[&["save"], &node[..], &["--compress", compress]].concat(), &[]).await.expect_ok();
        }
        let names = snapshots(&data.path().join("snapshots"));
        assert_eq!(names.len(), 3, "{names:?}");
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let tools = ["--etcdutl", &etcdutl, "--drill-etcd", &etcd_bin, "-o", "json"];
        let out = run(&[&["drill"], &node[..], &tools[..], &names[..]].concat(), &[]).await.expect_ok();
        assert_passed_at_boot_level(&out.json(), &format!("etcd {minor}"), OBJECTS);
    }
    Ok(())
}

/// The operator's case: an etcd a real kube-apiserver writes to (its master lease and Events
/// are attached to etcd leases), a zstd save, then drills with whatever etcdutl the host has.
/// etcdutl 3.6's `hashkv` panics on leased keys: alone it is refused before anything runs,
/// naming what works; with an etcd binary the booted etcd hashes instead; etcdutl 3.7 hashes
/// offline. Every way, the contents match the HashKV recorded at save time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_an_etcd_that_a_kube_apiserver_writes_to_drills_with_every_etcdutl() -> TestResult {
    let (etcdutl_3_7, _) = tools();
    let etcdutl_3_6 = s(&testenv::testbin_version("etcdutl", "3.6")?);
    let etcd_3_6 = s(&testenv::testbin_version("etcd", "3.6")?);
    let etcd = Etcd::single_version("3.6").await?;
    let _api = KubeApiServer::start(&etcd).await?;
    let mut client = etcd.client().await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.leases().await?.leases().is_empty() {
        assert!(Instant::now() < deadline, "the API server attached no key to a lease");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let data = tempfile::tempdir()?;
    let dd = s(data.path());
    let endpoints = etcd.endpoints().join(",");
    let node = local_node(&dd, "node-1", &endpoints);
    run(&[&["save"], &node[..], &["--compress", "zstd"]].concat(), &[]).await.expect_ok();
    let drill = |tools: Vec<String>| {
        let args: Vec<String> = ["drill".to_string()]
            .into_iter()
            .chain(node.iter().map(|a| a.to_string()))
            .chain(tools)
            .chain(["-o", "json"].map(String::from))
            .collect();
        async move { run(&args, &[]).await }
    };

    let refused = drill(vec!["--etcdutl".into(), etcdutl_3_6.clone()]).await.expect_fail();
    for needle in ["etcdutl 3.6.", "lease", "etcdutl 3.7 or later", "--drill-etcd"] {
        assert!(refused.stderr.contains(needle), "{needle:?} missing:\n{}", refused.stderr);
    }
    assert!(refused.stdout.trim().is_empty(), "a refused drill printed a result:\n{}", refused.stdout);

    let booted = drill(vec!["--etcdutl".into(), etcdutl_3_6, "--drill-etcd".into(), etcd_3_6]).await.expect_ok().json();
    let offline = drill(vec!["--etcdutl".into(), etcdutl_3_7]).await.expect_ok().json();
    for (out, level, hashed_by) in [(&booted, "boot", "bootedEtcd"), (&offline, "hash", "etcdutl")] {
        let item = &out["items"][0];
        assert_eq!(item["passed"], true, "{item}");
        assert_eq!(item["level"], level, "{item}");
        assert_eq!(item["hashedBy"], hashed_by, "{item}");
        assert!(item["recordedHashKV"].is_object(), "no HashKV recorded: {item}");
        assert_eq!(item["recordedHashKV"], item["computedHashKV"], "{item}");
    }
    assert_eq!(booted["items"][0]["computedHashKV"], offline["items"][0]["computedHashKV"]);
    Ok(())
}

/// Saves go on while a workload writes as fast as it can: the HashKV recorded for each
/// snapshot still matches its contents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_taken_under_writes_matches_its_recorded_hashkv() -> TestResult {
    let (etcdutl, _) = tools();
    let etcd = etcd_with_objects(OBJECTS).await?;
    let mut writer = etcd.client().await?;
    let workload = tokio::spawn(async move {
        for i in 0u64.. {
            let _ = writer.put(format!("/registry/busy/{}", i % 500), vec![b'w'; 512], None).await;
        }
    });
    let data = tempfile::tempdir()?;
    let dd = s(data.path());
    let endpoints = etcd.endpoints().join(",");
    let node = local_node(&dd, "node-1", &endpoints);
    for _ in 0..3 {
        run(&[&["save"], &node[..], &["--compress", "zstd"]].concat(), &[]).await.expect_ok();
    }
    workload.abort();
    let names = snapshots(&data.path().join("snapshots"));
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let out = run(&[&["drill"], &node[..], &["--etcdutl", &etcdutl, "-o", "json"], &names[..]].concat(), &[])
        .await
        .expect_ok()
        .json();
    for item in out["items"].as_array().unwrap() {
        assert_eq!(item["passed"], true, "{item}");
        assert_eq!(item["level"], "hash", "{item}");
        assert_eq!(item["recordedHashKV"], item["computedHashKV"], "{item}");
    }
    Ok(())
}

/// S3 and Kubernetes: two nodes save into one bucket; a drill of one node's S3 snapshot
/// streams it from the bucket, and its result lands on that snapshot's resource (annotations
/// and an Event), not on the other node's. Then the snapshot is rewritten consistently (the
/// bytes of another cluster's snapshot, with a valid trailer, and a metadata document that
/// records their sha256 and size): `verify` cannot tell, the drill fails on the HashKV, names
/// the mismatch and marks the resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drills_of_s3_snapshots_mark_their_resources_and_a_consistent_rewrite_fails_on_the_hashkv() -> TestResult {
    let (etcdutl, etcd_bin) = tools();
    let etcd = etcd_with_objects(OBJECTS).await?;
    let api = KubeApiServer::start(&etcd).await?;
    let s3 = S3Server::with_bucket("drills").await?;
    let data = tempfile::tempdir()?;
    let kubeconfig = s(api.kubeconfig_path());
    let endpoints = etcd.endpoints().join(",");
    let env = s3.credentials_env();
    // `etcdsnap <command>` as `node`, with S3 only.
    let etcdsnap = |command: &[&str], node: &str| -> Vec<String> {
        let mut args: Vec<String> = command.iter().map(|a| a.to_string()).collect();
        let dd = s(&data.path().join(node));
        let node_flags =
            ["--data-dir", &dd, "--node-name", node, "--endpoints", &endpoints, "--kubeconfig", &kubeconfig];
        args.extend(node_flags.map(String::from));
        args.extend(s3.etcdsnap_flags("drills").into_iter().map(String::from));
        args.push("--no-local".into());
        args
    };
    // server-1 and k3s-server-1: names that are suffixes of each other.
    for node in ["server-1", "k3s-server-1"] {
        run(&etcdsnap(&["save", "--compress", "zstd"], node), &env).await.expect_ok();
    }
    let client = api.client().await?;
    let resources: Api<ETCDSnapshotFile> = Api::all(client.clone());
    let of = |node: &str, items: &[ETCDSnapshotFile]| -> ETCDSnapshotFile {
        items.iter().find(|r| r.spec.snapshot_name.starts_with(&format!("on-demand-{node}-"))).cloned().unwrap()
    };
    let all = resources.list(&ListParams::default()).await?.items;
    let mine = of("server-1", &all);
    assert!(mine.metadata.annotations.as_ref().unwrap().contains_key(ANNOTATION_ETCD_HASHKV), "{mine:?}");

    // The default drill of server-1: its newest S3 snapshot, at the boot level.
    let drill = ["drill", "--etcdutl", &etcdutl, "--drill-etcd", &etcd_bin, "-o", "json"];
    let out = run(&etcdsnap(&drill, "server-1"), &env).await.expect_ok().json();
    assert_passed_at_boot_level(&out, "S3", OBJECTS);
    assert_eq!(out["items"].as_array().unwrap().len(), 1, "{out}");
    assert_eq!(out["items"][0]["name"], mine.spec.snapshot_name.as_str(), "{out}");
    let all = resources.list(&ListParams::default()).await?.items;
    let marked = of("server-1", &all);
    let annotations = marked.metadata.annotations.clone().unwrap();
    assert_eq!(annotations.get(ANNOTATION_DRILL).map(String::as_str), Some("passed"), "{annotations:?}");
    assert!(annotations.contains_key(ANNOTATION_DRILLED_AT), "{annotations:?}");
    let other = of("k3s-server-1", &all);
    assert!(
        !other.metadata.annotations.unwrap_or_default().contains_key(ANNOTATION_DRILL),
        "the other node's was marked"
    );
    assert_eq!(marked.spec, mine.spec, "K3s's fields changed");
    assert_eq!(marked.status, mine.status, "K3s's fields changed");

    // The rewrite: another cluster's snapshot (valid trailer, the same revision) in its place,
    // with a metadata document that agrees with the new bytes.
    let name = mine.spec.snapshot_name.clone();
    let annotations = mine.metadata.annotations.clone().unwrap_or_default();
    let revision: i64 = annotations.get(etcdsnap_api::consts::ANNOTATION_ETCD_REVISION).unwrap().parse()?;
    let forged = forge_from_another_cluster(data.path(), revision).await?;
    replace_in_s3(&s3, "drills", &name, forged).await?;
    let verified = run(&etcdsnap(&["verify", &name], "server-1"), &env).await;
    assert!(verified.ok(), "verify should not see a consistent rewrite:\n{}\n{}", verified.stdout, verified.stderr);
    let drill = ["drill", "--etcdutl", &etcdutl, "-o", "json", &name];
    let failed = run(&etcdsnap(&drill, "server-1"), &env).await.expect_fail();
    let item = &failed.json()["items"][0];
    assert_eq!(item["passed"], false, "{item}");
    assert!(item["result"].as_str().unwrap().contains("HashKV mismatch"), "{item}");
    let marked = of("server-1", &resources.list(&ListParams::default()).await?.items);
    let verdict = marked.metadata.annotations.unwrap_or_default().get(ANNOTATION_DRILL).cloned().unwrap_or_default();
    assert!(verdict.starts_with("failed: HashKV mismatch"), "{verdict}");
    let events: Api<Event> = Api::namespaced(client, "default");
    let reasons: Vec<String> =
        events.list(&ListParams::default()).await?.items.into_iter().filter_map(|e| e.reason).collect();
    assert!(reasons.iter().any(|r| r == "ETCDSnapshotDrillPassed"), "{reasons:?}");
    assert!(reasons.iter().any(|r| r == "ETCDSnapshotDrillFailed"), "{reasons:?}");
    Ok(())
}

/// The bytes of a zstd snapshot of a different etcd: same shape of data, a valid trailer, and
/// exactly revision `at` (so only its contents differ from the snapshot it replaces).
async fn forge_from_another_cluster(work: &Path, at: i64) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let other = Etcd::single().await?;
    let mut client = other.client().await?;
    load_kube_like_data(&mut client, OBJECTS).await?;
    for i in revision(&mut client).await..at {
        client.put(format!("/registry/configmaps/forged/cm-{}", i % 50), format!("forged {i}"), None).await?;
    }
    assert_eq!(revision(&mut client).await, at, "the forgery is not at the recorded revision");
    let dir = work.join("forgery");
    let (dd, endpoints) = (s(&dir), other.endpoints().join(","));
    let args = [&["save"], &local_node(&dd, "forger", &endpoints)[..]].concat();
    run(&[&args[..], &["--compress", "zstd"]].concat(), &[]).await.expect_ok();
    let file = snapshots(&dir.join("snapshots")).pop().ok_or("no forged snapshot")?;
    Ok(std::fs::read(dir.join("snapshots").join(file))?)
}

/// Puts `forged` at `name` in the bucket (keeping the object's user metadata) and rewrites
/// etcdsnap's record of `name` to agree with the new bytes' sha256 and size.
async fn replace_in_s3(s3: &S3Server, bucket: &str, name: &str, forged: Vec<u8>) -> TestResult {
    use sha2::Digest;
    let sha: String = sha2::Sha256::digest(&forged).iter().map(|b| format!("{b:02x}")).collect();
    let record_key = format!(".metadata/{name}{}", etcdsnap_api::consts::RECORD_SUFFIX);
    let (record, record_meta) = s3.get_object(bucket, &record_key).await?;
    let mut record: serde_json::Value = serde_json::from_slice(&record)?;
    record["sha256"] = sha.into();
    record["size"] = forged.len().into();
    let (_, meta) = s3.get_object(bucket, name).await?;
    let meta: Vec<(&str, &str)> = meta.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    s3.put_object(bucket, name, forged, &meta).await?;
    let record_meta: Vec<(&str, &str)> = record_meta.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    s3.put_object(bucket, &record_key, serde_json::to_vec(&record)?, &record_meta).await?;
    Ok(())
}

/// A drill SIGKILLed while its private etcd runs leaves its scratch directory but no etcd (the
/// etcd dies with it); the next drill removes the directory and passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_drill_leaves_no_etcd_running_and_the_next_one_cleans_up() -> TestResult {
    let (etcdutl, etcd_bin) = tools();
    let etcd = etcd_with_objects(OBJECTS).await?;
    let data = tempfile::tempdir()?;
    let scratch = tempfile::tempdir()?;
    let (dd, sd) = (s(data.path()), s(scratch.path()));
    let endpoints = etcd.endpoints().join(",");
    let node = local_node(&dd, "node-1", &endpoints);
    run(&[&["save"], &node[..]].concat(), &[]).await.expect_ok();

    let tools = ["--etcdutl", &etcdutl, "--drill-etcd", &etcd_bin, "--drill-dir", &sd];
    let mut drill = common::command(&[&["drill"], &node[..], &tools[..]].concat())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let booting = |root: &Path| -> Option<PathBuf> {
        let dir = std::fs::read_dir(root).ok()?.flatten().map(|e| e.path()).find(|p| p.is_dir())?;
        dir.join("etcd.log").exists().then_some(dir)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let dir = loop {
        if let Some(dir) = booting(scratch.path()) {
            break dir;
        }
        assert!(Instant::now() < deadline, "the drill never reached its boot level");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    drill.start_kill()?;
    drill.wait().await?;
    assert!(dir.exists(), "the killed drill's directory is expected to stay until the next drill");
    let deadline = Instant::now() + Duration::from_secs(10);
    while etcd_running_in(&dir) {
        assert!(Instant::now() < deadline, "the drill's etcd outlived the drill");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let out =
        run(&[&["drill"], &node[..], &["--etcdutl", &etcdutl, "--drill-dir", &sd]].concat(), &[]).await.expect_ok();
    assert!(out.stdout.contains("1 drilled: 1 passed, 0 not compared, 0 failed"), "{}", out.stdout);
    assert!(!dir.exists(), "the next drill left the abandoned directory");
    assert_eq!(std::fs::read_dir(scratch.path())?.count(), 0, "the drill left its own directory");

    // The result is kept in the snapshot's record: ls shows it, and a restore's report says it.
    let table = run(&[&["ls"], &node[..]].concat(), &[]).await.expect_ok();
    let row = table.stdout.lines().nth(1).unwrap_or_default().to_string();
    assert!(row.split_whitespace().last() == Some("passed"), "{}", table.stdout);
    let name = row.split_whitespace().next().unwrap_or_default().to_string();
    let target = s(&data.path().join("restored"));
    let restore =
        ["restore", &name, "--dir", &s(&data.path().join("snapshots")), "--data-dir", &target, "--member-name", "m"];
    let report = run(&[&restore[..], &["--etcdutl", &etcdutl, "--dry-run"]].concat(), &[]).await.expect_ok();
    assert!(report.stdout.contains("passed a restore drill at"), "{}", report.stdout);
    Ok(())
}

/// Whether any process has `dir` on its command line.
fn etcd_running_in(dir: &Path) -> bool {
    let needle = s(dir);
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|p| std::fs::read(p.path().join("cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle)))
}

/// Two agents with scheduled drills beside each other on one bucket: each drills its own local
/// snapshots, the leader the S3 ones; every drilled resource says `passed`, and the metrics
/// count the drills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_drill_on_a_schedule_each_its_own_and_the_leader_s3() -> TestResult {
    let (etcdutl, _) = tools();
    let etcd = etcd_with_objects(OBJECTS).await?;
    let api = KubeApiServer::start(&etcd).await?;
    let s3 = S3Server::with_bucket(BUCKET).await?;
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir()).collect::<Result<_, _>>()?;
    let extra = ["--drill-schedule", "*/4 * * * * *", "--etcdutl", &etcdutl];
    let endpoint = &etcd.endpoints()[0];
    let mut agents = Vec::new();
    for (node, dir) in ["server-1", "k3s-server-1"].iter().zip(&dirs) {
        agents.push(start_agent(node, endpoint, dir.path(), &api, Some(&s3), &extra, &[]).await?);
    }
    let resources: Api<ETCDSnapshotFile> = Api::all(api.client().await?);
    let drilled = |r: &ETCDSnapshotFile| {
        r.metadata.annotations.as_ref().and_then(|a| a.get(ANNOTATION_DRILL)).map(String::as_str) == Some("passed")
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        // Until an agent installed the CRD, there is nothing to list.
        let all = resources.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default();
        let local_of = |node: &str| all.iter().any(|r| r.spec.s3.is_none() && r.spec.node_name == node && drilled(r));
        let s3_done = all.iter().any(|r| r.spec.s3.is_some() && drilled(r));
        if local_of("server-1") && local_of("k3s-server-1") && s3_done {
            break;
        }
        let failed: Vec<_> = all
            .iter()
            .filter_map(|r| r.metadata.annotations.as_ref()?.get(ANNOTATION_DRILL).filter(|v| *v != "passed"))
            .collect();
        assert!(failed.is_empty(), "drills failed: {failed:?}");
        assert!(
            Instant::now() < deadline,
            "not every store was drilled:\n{}\n{}",
            agents[0].log_text(),
            agents[1].log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (_, metrics) = agents[0].get("/metrics").await?;
    let passed = metric(&metrics, "etcdsnap_drills_total{result=\"passed\"}");
    assert!(passed.is_some_and(|n| n >= 1.0), "{metrics}");
    assert_eq!(metric(&metrics, "etcdsnap_last_drill_passed"), Some(1.0), "{metrics}");
    assert!(metrics.contains("etcdsnap_last_drill_timestamp_seconds{result=\"passed\"}"), "{metrics}");
    for agent in agents {
        agent.stop().await?;
    }
    Ok(())
}

/// A later snapshot of the same etcd put in an earlier one's place, its record made to agree
/// with the new bytes (sha256, size): the later file still holds every revision up to the
/// earlier one, so it hashes alike at the recorded revision and counts the same objects there.
/// Only its own revision tells them apart: the drill fails at both levels and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_snapshot_in_an_earlier_ones_place_fails_the_drill() -> TestResult {
    use sha2::Digest;
    let (etcdutl, etcd_bin) = tools();
    let etcd = etcd_with_objects(OBJECTS).await?;
    let data = tempfile::tempdir()?;
    let dd = s(data.path());
    let endpoints = etcd.endpoints().join(",");
    let node = local_node(&dd, "node-1", &endpoints);
    run(&[&["save"], &node[..]].concat(), &[]).await.expect_ok();
    let mut client = etcd.client().await?;
    for i in 0..5 {
        client.put(format!("/registry/configmaps/later/cm-{i}"), "after the first snapshot", None).await?;
    }
    run(&[&["save"], &node[..]].concat(), &[]).await.expect_ok();
    let dir = data.path().join("snapshots");
    let names = snapshots(&dir);
    let [earlier, later] = [&names[0], &names[1]];
    let forged = std::fs::read(dir.join(later))?;
    std::fs::write(dir.join(earlier), &forged)?;
    let record_path = records_dir(&dir).join(format!("{earlier}{}", etcdsnap_api::consts::RECORD_SUFFIX));
    let mut record: serde_json::Value = serde_json::from_slice(&std::fs::read(&record_path)?)?;
    let recorded = record["etcd"]["revision"].as_i64().unwrap();
    record["sha256"] = hex::encode(sha2::Sha256::digest(&forged)).into();
    record["size"] = forged.len().into();
    std::fs::write(&record_path, serde_json::to_vec(&record)?)?;
    run(&[&["verify"], &node[..], &[earlier.as_str()]].concat(), &[]).await.expect_ok();

    for tools in [vec!["--etcdutl", &etcdutl], vec!["--etcdutl", &etcdutl, "--drill-etcd", &etcd_bin]] {
        let args = [&["drill"], &node[..], &tools[..], &["-o", "json", earlier.as_str()]].concat();
        let item = run(&args, &[]).await.expect_fail().json()["items"][0].clone();
        assert_eq!(item["passed"], false, "{item}");
        let result = item["result"].as_str().unwrap_or_default();
        assert!(result.contains(&format!("its record says {recorded}")), "{tools:?}: {item}");
        assert!(result.contains(&format!("holds revision {}", recorded + 5)), "{tools:?}: {item}");
    }
    Ok(())
}

/// A snapshot saved without a HashKV (`--record-hashkv false`) is hashed, but there is nothing
/// to compare its contents with: the drill says `not compared` and why, never `passed`, and so
/// do the count, the record (`ls`), the resource's annotation and its Event. It is no failure:
/// the drill exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_without_a_recorded_hashkv_is_not_compared_and_never_passes() -> TestResult {
    let (etcdutl, _) = tools();
    let etcd = etcd_with_objects(OBJECTS).await?;
    let api = KubeApiServer::start(&etcd).await?;
    let data = tempfile::tempdir()?;
    let (dd, kubeconfig, endpoints) = (s(data.path()), s(api.kubeconfig_path()), etcd.endpoints().join(","));
    let node = ["--data-dir", &dd, "--node-name", "node-1", "--endpoints", &endpoints, "--kubeconfig", &kubeconfig];
    run(&[&["save", "--record-hashkv", "false"], &node[..]].concat(), &[]).await.expect_ok();
    let dir = data.path().join("snapshots");
    let [name] = <[String; 1]>::try_from(snapshots(&dir)).map_err(|n| format!("{n:?}"))?;
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(records_dir(&dir).join(format!("{name}.etcdsnap.json")))?)?;
    assert!(record["etcd"]["revision"].is_i64() && record["etcd"].get("hashKv").is_none(), "{record}");

    let table = run(&[&["drill", &name, "--etcdutl", &etcdutl], &node[..]].concat(), &[]).await.expect_ok();
    let row = table.stdout.lines().find(|l| l.starts_with(name.as_str())).unwrap_or_default();
    assert!(row.ends_with(" not compared"), "{}", table.stdout);
    assert!(table.stdout.contains(&format!("not compared: {name}: no HashKV was recorded at save time")));
    assert!(table.stdout.contains("1 drilled: 0 passed, 1 not compared, 0 failed."), "{}", table.stdout);
    let args = [&["drill", &name, "--etcdutl", &etcdutl, "-o", "json"], &node[..]].concat();
    let item = run(&args, &[]).await.expect_ok().json()["items"][0].clone();
    assert_eq!(item["passed"], false, "{item}");
    assert!(item["recordedHashKV"].is_null() && item["computedHashKV"].is_object(), "{item}");
    let result = item["result"].as_str().unwrap_or_default().to_string();
    assert!(result.starts_with("not compared: no HashKV was recorded"), "{item}");

    // The record, the resource and its Event say the same.
    let listed = run(&[&["ls"], &node[..]].concat(), &[]).await.expect_ok();
    let row = listed.stdout.lines().find(|l| l.starts_with(name.as_str())).unwrap_or_default();
    assert!(row.ends_with(" not compared"), "{}", listed.stdout);
    let client = api.client().await?;
    let resources: Api<ETCDSnapshotFile> = Api::all(client.clone());
    let all = resources.list(&ListParams::default()).await?.items;
    let resource = all.iter().find(|r| r.spec.snapshot_name == name).ok_or("no resource")?;
    let annotations = resource.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(annotations.get(ANNOTATION_DRILL), Some(&result), "{annotations:?}");
    assert!(!annotations.contains_key(ANNOTATION_ETCD_HASHKV), "{annotations:?}");
    let events: Api<Event> = Api::namespaced(client, "default");
    let reasons: Vec<String> =
        events.list(&ListParams::default()).await?.items.into_iter().filter_map(|e| e.reason).collect();
    assert!(reasons.iter().any(|r| r == "ETCDSnapshotDrillNotCompared"), "{reasons:?}");
    assert!(!reasons.iter().any(|r| r == "ETCDSnapshotDrillPassed"), "{reasons:?}");
    Ok(())
}
