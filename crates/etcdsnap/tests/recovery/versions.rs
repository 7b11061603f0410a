//! Every etcd minor users run, end to end: K3s and RKE2 releases still ship etcd 3.5, 3.6 is the
//! default here, 3.7 is the newest. For each, against a real etcd of that version: `etcdsnap
//! save` in every format, `etcdsnap verify`, `etcdsnap restore` with that version's own etcdutl,
//! and that version's etcd started on the restored data directory serving the keys back.

use crate::common::etcd::load_kube_like_data;
use crate::common::restore::{restore_args, revision};
use crate::common::{TestResult, files_in, run, s};
use std::collections::BTreeMap;
use std::path::Path;
use testenv::Etcd;

/// The minors under test. Pinned releases come from ETCD_VERSIONS in testbins/versions.env;
/// `the_tested_minors_are_the_built_ones` keeps this list and that file in step.
const MINORS: [&str; 3] = ["3.5", "3.6", "3.7"];
const FORMATS: [&str; 3] = ["none", "zstd", "zip"];
const TOKEN: &str = "mysecret";
const KNOWN: usize = 40;
const OBJECTS: usize = 150;

/// `v3.5.35` -> `3.5.35`, the form etcd and etcdutl print and etcdsnap records.
fn bare(release: &str) -> &str {
    release.trim_start_matches('v')
}

/// A check of a restore report by name.
fn check<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no {name} check in {report}"))
}

/// Arguments for restoring `name` from `dir` into `target` as member `m0` on `peer_port` with
/// `etcdutl`, reporting in JSON.
fn restore_json(name: &str, dir: &Path, target: &Path, peer_port: u16, etcdutl: &Path) -> Vec<String> {
    let mut args = restore_args(&[name], target, peer_port, etcdutl);
    args.extend(["--dir", &s(dir), "--token", TOKEN, "-o", "json"].map(String::from));
    args
}

/// Saves, verifies and restores snapshots of an etcd `minor`, and reads them back with etcd
/// `minor`.
async fn save_verify_restore(minor: &str) -> TestResult {
    let etcd = Etcd::single_version(minor).await?;
    let release = etcd.version().ok_or("no version")?.to_string();
    let mut client = etcd.client().await?;
    assert_eq!(client.status().await?.version(), bare(&release), "the etcd {minor} that runs is the pinned one");
    load_kube_like_data(&mut client, OBJECTS).await?;
    for i in 0..KNOWN {
        client.put(format!("/versions-test/key-{i:03}"), format!("{minor}-value-{i}"), None).await?;
    }
    let revision = revision(&mut client).await;

    // save, once per format, from this etcd.
    let data = tempfile::tempdir()?;
    let dd = s(data.path());
    let snapdir = data.path().join("snapshots");
    let endpoints = etcd.endpoints().join(",");
    let mut names = BTreeMap::new();
    for compress in FORMATS {
        let before = files_in(&snapdir);
        let args = ["save", "--data-dir", &dd, "--node-name", "node-1", "--endpoints", &endpoints];
        let out = run(&[&args[..], &["--compress", compress, "--token", TOKEN, "-o", "json"]].concat(), &[])
            .await
            .expect_ok();
        let saved = out.json();
        let item = &saved["items"][0];
        assert_eq!(item["status"]["readyToUse"], true, "etcd {minor}, {compress}: {saved}");
        let annotations = &item["metadata"]["annotations"];
        assert_eq!(annotations["etcdsnap.io/etcd-version"], bare(&release), "etcd {minor}, {compress}: {saved}");
        let recorded = annotations["etcdsnap.io/etcd-revision"].as_str().and_then(|r| r.parse::<i64>().ok());
        assert!(recorded.is_some_and(|r| r >= revision), "etcd {minor}, {compress}: {saved}");
        let new = files_in(&snapdir)
            .into_iter()
            .find(|f| !before.contains(f) && !f.starts_with('.'))
            .ok_or("save wrote no snapshot")?;
        names.insert(compress, new);
    }

    // verify reads every one back against its recorded checksum and etcd's own trailer.
    let verified = run(&["verify", "--data-dir", &dd], &[]).await.expect_ok();
    assert!(
        verified.stdout.contains("3 checked: 3 verified against their record, 0 trailer only (no record), 0 failed"),
        "etcd {minor}: {}",
        verified.stdout
    );

    // restore each with this minor's etcdutl, then serve it with this minor's etcd.
    let etcdutl = etcd.testbin("etcdutl")?;
    assert_eq!(etcdutl, testenv::testbin_version("etcdutl", minor)?);
    drop(client);
    drop(etcd);
    for compress in FORMATS {
        let parent = tempfile::tempdir()?;
        let target = parent.path().join("etcd");
        let port = testenv::free_port()?;
        let mut args = restore_json(&names[compress], &snapdir, &target, port, &etcdutl);
        // Every etcdutl minor takes etcdsnap's revision bump (K3s restores with it too).
        let bump = compress == "none";
        if bump {
            args.extend(["--bump-revision".into(), "1000000".into(), "--mark-compacted".into()]);
        }
        let out = run(&args, &[]).await;
        assert!(out.ok(), "etcd {minor}, {compress}: restore failed\n{}\n{}", out.stdout, out.stderr);
        let report = out.json();
        assert_eq!(report["ok"], true, "etcd {minor}, {compress}: {report}");
        assert!(report["restored"]["dataDir"].is_string(), "etcd {minor}, {compress}: {report}");
        assert_eq!(report["snapshot"]["compression"], compress);
        assert_eq!(report["snapshot"]["etcdVersion"], bare(&release), "etcd {minor}, {compress}");
        assert_eq!(report["etcdutl"]["version"], bare(&release), "etcd {minor}, {compress}");
        assert_eq!(check(&report, "versions")["status"], "pass", "etcd {minor}, {compress}: {report}");
        assert_eq!(check(&report, "trailer")["status"], "pass", "etcd {minor}, {compress}: {report}");
        let served = keys_back(&target, port, minor).await?;
        assert_eq!(served.version, bare(&release), "etcd {minor}, {compress}: restored data served by etcd {minor}");
        let floor = if bump { revision + 1_000_000 } else { revision };
        assert!(served.revision >= floor, "etcd {minor}, {compress}: revision {} < {floor}", served.revision);
    }

    // An etcdutl older than the etcd that took the snapshot is pointed out before anything is
    // written (a dry run), with the minor to use instead.
    let oldest = MINORS[0];
    if minor != oldest {
        let parent = tempfile::tempdir()?;
        let old_etcdutl = testenv::testbin_version("etcdutl", oldest)?;
        let port = testenv::free_port()?;
        let mut args = restore_json(&names["zstd"], &snapdir, &parent.path().join("etcd"), port, &old_etcdutl);
        args.push("--dry-run".into());
        let report = run(&args, &[]).await.expect_ok().json();
        let versions = check(&report, "versions");
        assert_eq!(versions["status"], "warn", "etcd {minor} snapshot, etcdutl {oldest}: {report}");
        assert!(
            versions["fix"].as_str().is_some_and(|f| f.contains(&format!("use etcdutl {minor} or newer"))),
            "{versions}"
        );
        assert_eq!(std::fs::read_dir(parent.path())?.count(), 0, "a dry run writes nothing");
    }
    Ok(())
}

/// What etcd said when started on a restored data directory.
struct Served {
    version: String,
    revision: i64,
}

/// Starts etcd `minor` on the restored `data_dir` (member `m0` on `peer_port`) and checks every
/// known key and the Kubernetes-like objects.
async fn keys_back(data_dir: &Path, peer_port: u16, minor: &str) -> Result<Served, Box<dyn std::error::Error>> {
    let etcd = Etcd::start_on_data_dir_version(data_dir, "m0", peer_port, Some(minor)).await?;
    let mut client = etcd.client().await?;
    let resp = client.get("/versions-test/", Some(etcd_client::GetOptions::new().with_prefix())).await?;
    assert_eq!(resp.kvs().len(), KNOWN, "etcd {minor}");
    for (i, kv) in resp.kvs().iter().enumerate() {
        assert_eq!(kv.key_str()?, format!("/versions-test/key-{i:03}"));
        assert_eq!(kv.value_str()?, format!("{minor}-value-{i}"));
    }
    let objects =
        client.get("/registry/", Some(etcd_client::GetOptions::new().with_prefix().with_count_only())).await?;
    assert_eq!(objects.count(), OBJECTS as i64, "etcd {minor}");
    let status = client.status().await?;
    let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
    Ok(Served { version: status.version().to_string(), revision })
}

#[test]
fn the_tested_minors_are_the_built_ones() {
    let built: Vec<String> = testenv::etcd_versions()
        .unwrap()
        .iter()
        .map(|v| bare(v).rsplit_once('.').map(|(minor, _)| minor.to_string()).unwrap())
        .collect();
    assert_eq!(built, MINORS, "ETCD_VERSIONS in testbins/versions.env and MINORS here must name the same minors");
    let default = testenv::default_etcd_version().unwrap();
    assert!(testenv::etcd_versions().unwrap().contains(&default), "the default {default} is among ETCD_VERSIONS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_3_5_save_verify_restore() -> TestResult {
    save_verify_restore("3.5").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_3_6_save_verify_restore() -> TestResult {
    save_verify_restore("3.6").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_3_7_save_verify_restore() -> TestResult {
    save_verify_restore("3.7").await
}
