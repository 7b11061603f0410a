//! The snapshot engine and local storage, end to end: the real `etcdsnap` binary against real
//! etcd servers started by testenv.

use crate::common::etcd::{etcd_with_objects, load_kube_like_data};
use crate::common::layout::records_dir;
use crate::common::slow_etcd::{SlowEtcd, wait_for_save_in_progress};
use crate::common::snapshot_files::{etcdctl_snapshot, mode};
use crate::common::{self, Run, TestResult, files_in, run, s};
use sha2::Digest;
use std::io::Read;
use std::path::Path;
use std::time::Duration;
use testenv::{Etcd, Fault, FaultProxy};

/// etcdutl's own opinion of a snapshot file (revision, keys), or its error.
async fn etcdutl_status(path: &Path) -> Result<serde_json::Value, String> {
    let out = tokio::process::Command::new(testenv::testbin("etcdutl").map_err(|e| e.to_string())?)
        .args(["snapshot", "status", "-w", "json"])
        .arg(path)
        .output()
        .await
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

fn trailer_ok(bytes: &[u8]) -> bool {
    bytes.len() > 32 && sha2::Sha256::digest(&bytes[..bytes.len() - 32]).as_slice() == &bytes[bytes.len() - 32..]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_list_verify_every_compression() -> TestResult {
    let etcd = etcd_with_objects(500).await?;
    let data = tempfile::tempdir()?;
    let data_dir = data.path().join("state");
    let endpoints = etcd.endpoints().join(",");
    let env = [("ETCDSNAP_ENDPOINTS", endpoints.as_str()), ("ETCDSNAP_NODE_NAME", "node-1")];
    let dd = s(&data_dir);
    for compress in ["none", "zstd", "zip"] {
        let out = run(&["save", "--data-dir", &dd, "--compress", compress], &env).await.expect_ok();
        assert!(out.stdout.contains("saved to file://"), "{}", out.stdout);
    }
    let snapdir = data_dir.join("snapshots");
    let metadir = data_dir.join(".metadata");
    let records = records_dir(&snapdir);
    // Least privilege: 0700 directories, 0600 files.
    assert_eq!(mode(&snapdir), 0o700);
    assert_eq!(mode(&records), 0o700);
    assert_eq!(mode(&data_dir.join(".etcdsnap")), 0o700);
    let files: Vec<String> = files_in(&snapdir).into_iter().collect();
    assert_eq!(files.len(), 3, "{files:?}");
    for f in &files {
        assert_eq!(mode(&snapdir.join(f)), 0o600, "{f}");
        assert_eq!(mode(&records.join(format!("{f}.etcdsnap.json"))), 0o600, "record of {f}");
        // No extra metadata (no Kubernetes here): no K3s metadata file, as K3s does.
        assert!(!metadir.join(f).exists(), "{f}");
        assert!(f.starts_with("on-demand-node-1-"), "{f}");
    }

    let listed = run(&["ls", "--data-dir", &dd, "-o", "json"], &env).await.expect_ok().json();
    assert_eq!(listed["kind"], "List");
    let items = listed["items"].as_array().ok_or("no items")?;
    assert_eq!(items.len(), 3);
    for item in items {
        assert_eq!(item["apiVersion"], "k3s.cattle.io/v1");
        assert_eq!(item["kind"], "ETCDSnapshotFile");
        assert_eq!(item["spec"]["nodeName"], "node-1");
        assert!(item["metadata"]["name"].as_str().unwrap_or_default().starts_with("local-on-demand-node-1-"));
        assert!(item["spec"]["location"].as_str().unwrap_or_default().starts_with("file:///"));
        assert_eq!(item["status"]["readyToUse"], true);
        let annotations = &item["metadata"]["annotations"];
        assert_eq!(annotations["etcdsnap.io/sha256"].as_str().map(str::len), Some(64));
        assert!(
            annotations["etcdsnap.io/etcd-revision"].as_str().is_some_and(|r| r.parse::<i64>().is_ok_and(|r| r > 500))
        );
    }
    let table = run(&["ls", "--data-dir", &dd], &env).await.expect_ok();
    assert!(table.stdout.starts_with("Name "), "{}", table.stdout);
    assert!(
        table.stdout.lines().next().is_some_and(
            |h| h.split_whitespace().collect::<Vec<_>>() == ["Name", "Location", "Size", "Created", "Drill"]
        ),
        "K3s's four columns, then etcdsnap's Drill:\n{}",
        table.stdout
    );
    // In a pipe (not a terminal) the table is K3s's: whole bytes, whole locations, absolute
    // times, as scripts parse them.
    for item in items {
        let name = item["spec"]["snapshotName"].as_str().ok_or("no snapshotName")?;
        let bytes: u64 = item["status"]["size"].as_str().ok_or("no size")?.parse()?;
        let row = table.stdout.lines().find(|l| l.starts_with(name)).ok_or("no row")?;
        assert!(row.contains(&format!(" {bytes} ")), "{row}");
        assert!(row.contains(item["spec"]["location"].as_str().ok_or("no location")?), "{row}");
        let created = item["status"]["creationTime"].as_str().ok_or("no creationTime")?;
        assert!(row.contains(created), "{row}");
    }

    let verified = run(&["verify", "--data-dir", &dd], &env).await.expect_ok();
    assert!(
        verified.stdout.contains("3 checked: 3 verified against their record, 0 trailer only (no record), 0 failed"),
        "{}",
        verified.stdout
    );

    // Each format decompresses, with standard tools, to a snapshot etcd itself accepts.
    for f in &files {
        let stored = std::fs::read(snapdir.join(f))?;
        let doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(records.join(format!("{f}.etcdsnap.json")))?)?;
        assert_eq!(doc["apiVersion"], "etcdsnap.io/v1");
        assert_eq!(doc["sha256"], hex::encode(sha2::Sha256::digest(&stored)));
        assert_eq!(doc["size"], stored.len() as u64);
        let raw = if f.ends_with(".zip") {
            let mut archive = zip::ZipArchive::new(std::io::Cursor::new(&stored))?;
            assert_eq!(archive.len(), 1, "exactly one entry");
            let mut entry = archive.by_index(0)?;
            assert_eq!(entry.name()?, f.trim_end_matches(".zip"));
            assert_eq!(entry.compression(), zip::CompressionMethod::Deflated);
            assert_eq!(entry.unix_mode().map(|m| m & 0o777), Some(0o600));
            let mut raw = Vec::new();
            entry.read_to_end(&mut raw)?;
            raw
        } else if f.ends_with(".zst") {
            zstd::decode_all(std::io::Cursor::new(&stored))?
        } else {
            stored.clone()
        };
        assert!(trailer_ok(&raw), "{f}: etcd trailer");
        let path = data.path().join("raw");
        std::fs::write(&path, &raw)?;
        let status = etcdutl_status(&path).await?;
        assert!(status["totalKey"].as_u64().is_some_and(|k| k >= 500), "{f}: {status}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_from_a_three_member_mtls_cluster() -> TestResult {
    let etcd = Etcd::cluster_tls(3).await?;
    load_kube_like_data(&mut etcd.client().await?, 200).await?;
    let tls = etcd.client_tls().ok_or("no tls")?.clone();
    let data = tempfile::tempdir()?;
    let dd = s(data.path());
    let endpoints = etcd.endpoints().join(",");
    let (ca, cert, key) = (tls.ca.to_string_lossy(), tls.cert.to_string_lossy(), tls.key.to_string_lossy());
    // A save of node cp-1 trusting `ca` with the client certificate `cert`/`key`.
    let save = |ca: &str, cert: &str, key: &str, extra: &[&str]| {
        let mut args =
            vec!["save", "--data-dir", &dd, "--node-name", "cp-1", "--endpoints", &endpoints, "--cacert", ca];
        args.extend(["--cert", cert, "--key", key]);
        args.extend(extra);
        args.into_iter().map(String::from).collect::<Vec<String>>()
    };
    let run_save = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&args, &[]).await
    };
    run_save(save(&ca, &cert, &key, &["--compress", "zstd"])).await.expect_ok();
    run(&["verify", "--data-dir", &dd, "--node-name", "cp-1"], &[]).await.expect_ok();

    // A client certificate from another CA is refused by etcd, and nothing is published.
    let other = testenv::Pki::new("other", &data.path().join("other-pki"))?;
    let wrong = other.client("wrong", "root", &[])?;
    let (wcert, wkey) = (wrong.cert.to_string_lossy(), wrong.key.to_string_lossy());
    let out = run_save(save(&ca, &wcert, &wkey, &["--dial-timeout", "3s"])).await.expect_fail();
    assert!(out.stderr.contains("error: no snapshot saved: "), "{}", out.stderr);
    assert!(!out.stderr.contains("Snapshot on-demand"), "a snapshot never taken is named: {}", out.stderr);
    // And a wrong CA for the server certificate is refused by us.
    let wca = s(&other.ca_path());
    run_save(save(&wca, &cert, &key, &["--dial-timeout", "3s"])).await.expect_fail();
    let published: Vec<_> = files_in(&data.path().join("snapshots")).into_iter().collect();
    assert_eq!(published.len(), 1, "{published:?}");
    Ok(())
}

/// A snapshot directory with nothing published and no leftovers.
fn assert_nothing_published(dir: &Path) {
    let files: Vec<_> = files_in(&dir.join("snapshots")).into_iter().collect();
    assert!(files.is_empty(), "published or left over: {files:?}");
    assert!(files_in(&dir.join(".metadata")).is_empty());
    assert!(files_in(&records_dir(&dir.join("snapshots"))).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_and_truncated_streams_publish_nothing() -> TestResult {
    let etcd = etcd_with_objects(1500).await?;
    let target = etcd.endpoints()[0].trim_start_matches("http://").to_string();
    let proxy = FaultProxy::start(&target).await?;
    let endpoint = format!("http://{}", proxy.addr());
    let cases = [
        (Fault::FlipByteAt(900_000), "integrity trailer does not match"),
        (Fault::CutAt(700_000), "etcd snapshot stream from"),
    ];
    for (fault, what) in cases {
        let data = tempfile::tempdir()?;
        let dd = s(data.path());
        proxy.set_fault(fault);
        let out = run(
            &["save", "--data-dir", &dd, "--node-name", "n1", "--endpoints", &endpoint, "--command-timeout", "5s"],
            &[],
        )
        .await;
        proxy.set_fault(Fault::None);
        let out = out.expect_fail();
        assert!(out.stderr.contains(what), "expected {what:?}: {}", out.stderr);
        assert_nothing_published(data.path());
        // The same path works once the network is healthy again.
        run(&["save", "--data-dir", &dd, "--node-name", "n1", "--endpoints", &endpoint], &[]).await.expect_ok();
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_mid_stream_leaves_nothing_visible_and_the_next_run_cleans_up() -> TestResult {
    let slow = SlowEtcd::start(1500, 300_000).await?;
    let data = tempfile::tempdir()?;
    let dd = s(data.path());
    let snapdir = data.path().join("snapshots");
    let args = ["save", "--data-dir", &dd, "--node-name", "n1", "--endpoints", &slow.endpoint];

    let mut child = common::command(&args).spawn()?;
    // Once the save has written data (to a file with no name yet), kill -9.
    let pid = child.id().ok_or("no pid")?;
    wait_for_save_in_progress(pid, &snapdir, 100_000, Duration::from_secs(30)).await?;
    child.start_kill()?;
    child.wait().await?;
    slow.proxy.set_fault(Fault::None);

    // The killed save left nothing anywhere K3s or a listing looks: the snapshot directory is
    // empty and the metadata directory holds no record.
    assert!(files_in(&snapdir).is_empty(), "{:?}", files_in(&snapdir));
    assert!(files_in(&data.path().join(".metadata")).is_empty());
    assert!(files_in(&records_dir(&snapdir)).is_empty());
    let listed = run(&["ls", "--data-dir", &dd, "--node-name", "n1", "-o", "json"], &[]).await.expect_ok().json();
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(0), "a killed save must not be listed");

    run(&args, &[]).await.expect_ok();
    assert_eq!(files_in(&snapdir).len(), 1, "{:?}", files_in(&snapdir));
    run(&["verify", "--data-dir", &dd, "--node-name", "n1"], &[]).await.expect_ok();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_save_into_the_same_directory_is_refused_while_one_runs() -> TestResult {
    let slow = SlowEtcd::start(1000, 400_000).await?;
    let data = tempfile::tempdir()?;
    let dd = s(data.path());
    let first =
        common::command(&["save", "--data-dir", &dd, "--node-name", "n1", "--endpoints", &slow.endpoint]).spawn()?;
    let snapdir = data.path().join("snapshots");
    let pid = first.id().ok_or("no pid")?;
    wait_for_save_in_progress(pid, &snapdir, 0, Duration::from_secs(30)).await?;
    let direct = format!("http://{}", slow.proxy.target());
    let second =
        run(&["save", "--data-dir", &dd, "--node-name", "n1", "--endpoints", &direct], &[]).await.expect_fail();
    assert!(second.stderr.contains("snapshot save already in progress"), "{}", second.stderr);
    slow.proxy.set_fault(Fault::None);
    let first: Run = first.wait_with_output().await?.into();
    first.expect_ok();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_detects_a_flipped_byte_in_every_format() -> TestResult {
    let etcd = etcd_with_objects(300).await?;
    let endpoints = etcd.endpoints().join(",");
    for compress in ["none", "zstd", "zip"] {
        let data = tempfile::tempdir()?;
        let dd = s(data.path());
        let env = [
            ("ETCDSNAP_ENDPOINTS", endpoints.as_str()),
            ("ETCDSNAP_NODE_NAME", "n1"),
            ("ETCDSNAP_DATA_DIR", dd.as_str()),
        ];
        run(&["save", "--compress", compress], &env).await.expect_ok();
        let snapdir = data.path().join("snapshots");
        let file = files_in(&snapdir).into_iter().next().ok_or("no snapshot")?;
        let path = snapdir.join(&file);
        let mut bytes = std::fs::read(&path)?;
        let at = bytes.len() / 2;
        bytes[at] ^= 0x10;
        std::fs::write(&path, &bytes)?;
        let out = run(&["verify"], &env).await.expect_fail();
        assert!(out.stdout.contains("FAILED"), "{compress}: {}", out.stdout);
        // With the metadata document gone only etcd's own trailer is left, and it still catches it.
        std::fs::remove_file(records_dir(&snapdir).join(format!("{file}.etcdsnap.json")))?;
        let out = run(&["verify", &file], &env).await.expect_fail();
        assert!(out.stdout.contains("FAILED"), "{compress} without document: {}", out.stdout);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_the_newest_per_prefix_and_node() -> TestResult {
    let etcd = Etcd::single().await?;
    let endpoints = etcd.endpoints().join(",");
    let data = tempfile::tempdir()?;
    let dd = s(data.path());
    let save = |node: &'static str, name: &'static str| {
        let (dd, endpoints) = (dd.clone(), endpoints.clone());
        async move {
            run(&["save", "--data-dir", &dd, "--endpoints", &endpoints, "--node-name", node, "--name", name], &[])
                .await
                .expect_ok()
        }
    };
    for _ in 0..4 {
        save("a", "on-demand").await;
    }
    for _ in 0..3 {
        save("b", "on-demand").await;
    }
    for _ in 0..3 {
        save("a", "on-demand-weekly").await;
    }
    let snapdir = data.path().join("snapshots");
    let before: Vec<String> = files_in(&snapdir).into_iter().collect();
    assert_eq!(before.len(), 10, "{before:?}");

    let out = run(&["prune", "--data-dir", &dd, "--node-name", "a", "--name", "on-demand", "--retention", "2"], &[])
        .await
        .expect_ok();
    assert_eq!(out.stdout.lines().filter(|l| l.contains("deleted")).count(), 3, "{}", out.stdout);
    let after: Vec<String> = files_in(&snapdir).into_iter().collect();
    let newest = |prefix: &str, n: usize| {
        let mut v: Vec<String> = before.iter().filter(|f| f.starts_with(prefix)).cloned().collect();
        v.sort_by_key(|f| f.rsplit('-').next().and_then(|t| t.parse::<i64>().ok()));
        v.split_off(v.len() - n)
    };
    let mut expected =
        [newest("on-demand-a-", 2), newest("on-demand-b-", 2), newest("on-demand-weekly-a-", 3)].concat();
    expected.sort();
    assert_eq!(after, expected);
    // Records go with their snapshots.
    let records: Vec<String> = expected.iter().map(|n| format!("{n}.etcdsnap.json")).collect();
    assert_eq!(files_in(&records_dir(&snapdir)), records);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_traversal_and_bad_names_are_refused() -> TestResult {
    let etcd = Etcd::single().await?;
    let endpoints = etcd.endpoints().join(",");
    let data = tempfile::tempdir()?;
    let dd = s(&data.path().join("d"));
    run(&["save", "--data-dir", &dd, "--endpoints", &endpoints, "--node-name", "n1"], &[]).await.expect_ok();
    let victim = data.path().join("victim");
    std::fs::write(&victim, "keep me")?;
    for bad in ["../victim", "../../victim", "a/b", "..", ".metadata", "x.part"] {
        let out = run(&["delete", "--data-dir", &dd, "--node-name", "n1", bad], &[]).await.expect_fail();
        assert!(out.stderr.contains("snapshot name"), "{bad}: {}", out.stderr);
    }
    assert!(victim.exists());
    let out = run(
        &["save", "--data-dir", &dd, "--endpoints", &endpoints, "--node-name", "n1", "--name", "../../victim"],
        &[],
    )
    .await
    .expect_fail();
    assert!(out.stderr.contains("invalid snapshot name"), "{}", out.stderr);
    let out = run(&["save", "--data-dir", &dd, "--endpoints", &endpoints, "--node-name", "Bad_Node"], &[])
        .await
        .expect_fail();
    assert!(out.stderr.contains("--node-name") && out.stderr.contains("Bad_Node"), "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(&victim)?, "keep me");
    // A name that does not exist is reported, and the exit code says so.
    let out = run(&["delete", "--data-dir", &dd, "--node-name", "n1", "on-demand-n1-1"], &[]).await.expect_fail();
    let snapdir = data.path().join("d/snapshots").canonicalize()?;
    let expected = format!("Snapshot on-demand-n1-1 not found in {}.", snapdir.display());
    assert!(out.stderr.contains(&expected), "{}", out.stderr);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_k3s_layout_directory_is_listed_and_verified() -> TestResult {
    let etcd = etcd_with_objects(100).await?;
    let root = tempfile::tempdir()?;
    // K3s: <data-dir>/server/db/snapshots and <data-dir>/server/db/.metadata
    let snapdir = root.path().join("server/db/snapshots");
    let metadir = root.path().join("server/db/.metadata");
    std::fs::create_dir_all(&snapdir)?;
    std::fs::create_dir_all(&metadir)?;
    let plain = snapdir.join("etcd-snapshot-server1-1700000000");
    etcdctl_snapshot(&etcd, &plain).await?;
    std::fs::write(metadir.join("etcd-snapshot-server1-1700000000"), r#"{"rancher.io/cluster":"c-abc","k":"v"}"#)?;
    // A K3s zip of the same (Deflate, one entry named without .zip), with unreadable metadata.
    let zipped = snapdir.join("on-demand-server1-1700000100.zip");
    {
        let mut z = zip::ZipWriter::new(std::fs::File::create(&zipped)?);
        z.start_file("on-demand-server1-1700000100", zip::write::SimpleFileOptions::default())?;
        std::io::Write::write_all(&mut z, &std::fs::read(&plain)?)?;
        z.finish()?;
    }
    std::fs::write(metadir.join("on-demand-server1-1700000100.zip"), "not json")?;
    // Things that are not snapshots.
    std::fs::write(snapdir.join("on-demand-server1-1700000200.part"), "partial")?;
    std::fs::create_dir_all(snapdir.join("nested"))?;
    std::fs::write(snapdir.join("nested/etcd-snapshot-server1-1"), "x")?;
    std::fs::write(snapdir.join(".hidden"), "x")?;

    let dir = s(&snapdir);
    let out = run(&["ls", "--dir", &dir, "--node-name", "server1", "-o", "json"], &[]).await.expect_ok();
    let listed = out.json();
    let items = listed["items"].as_array().ok_or("no items")?;
    let names: Vec<&str> = items.iter().filter_map(|i| i["spec"]["snapshotName"].as_str()).collect();
    assert_eq!(names, ["etcd-snapshot-server1-1700000000", "on-demand-server1-1700000100.zip"]);
    assert_eq!(items[0]["status"]["creationTime"], "2023-11-14T22:13:20Z");
    assert_eq!(items[0]["spec"]["metadata"]["rancher.io/cluster"], "c-abc");
    assert_eq!(items[0]["metadata"]["name"], "local-etcd-snapshot-server1-1700000000");
    assert!(
        out.stderr.contains("on-demand-server1-1700000100.zip") && out.stderr.contains("not valid JSON"),
        "{}",
        out.stderr
    );
    // Without records only etcd's trailer can be checked: a warning says so, never an `OK`.
    let verified = run(&["verify", "--dir", &dir, "--node-name", "server1"], &[]).await.expect_ok();
    let summary = "2 checked: 0 verified against their record, 2 trailer only (no record), 0 failed";
    assert!(verified.stdout.contains(summary), "{}", verified.stdout);
    assert!(!verified.stdout.contains(" OK"), "{}", verified.stdout);
    assert_eq!(verified.stdout.matches("WARNING: no record").count(), 2, "{}", verified.stdout);
    assert_eq!(verified.stderr.matches("has no record").count(), 2, "{}", verified.stderr);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learners_and_unreachable_members_are_clear_failures() -> TestResult {
    let mut etcd = Etcd::single().await?;
    let learner = etcd.add_learner().await?;
    let learner_url = etcd.members()[learner].client_url.clone();
    let data = tempfile::tempdir()?;
    let dd = s(data.path());
    let out =
        run(&["save", "--data-dir", &dd, "--node-name", "n1", "--endpoints", &learner_url], &[]).await.expect_fail();
    assert!(out.stderr.contains("is a learner"), "{}", out.stderr);

    let closed = format!("http://127.0.0.1:{}", testenv::free_port()?);
    let out =
        run(&["save", "--data-dir", &dd, "--node-name", "n1", "--endpoints", &closed, "--dial-timeout", "2s"], &[])
            .await
            .expect_fail();
    assert!(out.stderr.contains("cannot reach etcd"), "{}", out.stderr);
    assert_nothing_published(data.path());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_environment_and_flags_in_that_order_of_precedence() -> TestResult {
    let etcd = Etcd::single().await?;
    let data = tempfile::tempdir()?;
    let config = data.path().join("etcdsnap.yaml");
    let dd = data.path().join("d");
    std::fs::write(
        &config,
        format!(
            "data-dir: {}\nnode-name: from-file\nname: fromfile\nendpoints: [\"{}\"]\n# a setting of another command: a shared file is fine\nschedule: \"@hourly\"\n",
            dd.display(),
            etcd.endpoints()[0]
        ),
    )?;
    let cfg = s(&config);
    run(&["save", "--config", &cfg], &[]).await.expect_ok();
    run(&["save", "--config", &cfg], &[("ETCDSNAP_NAME", "fromenv")]).await.expect_ok();
    run(&["save", "--config", &cfg, "--name", "fromflag"], &[("ETCDSNAP_NAME", "fromenv")]).await.expect_ok();
    let files: Vec<String> = files_in(&dd.join("snapshots")).into_iter().collect();
    let bases: Vec<&str> = files.iter().filter_map(|f| f.split('-').next()).collect();
    assert_eq!(bases.len(), 3);
    for b in ["fromfile", "fromenv", "fromflag"] {
        assert!(bases.contains(&b), "{files:?}");
    }
    assert!(files.iter().all(|f| f.contains("-from-file-")), "{files:?}");

    std::fs::write(&config, "dirr: /tmp\n")?;
    let out = run(&["ls", "--config", &cfg], &[]).await;
    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("unknown setting \"dirr\""), "{}", out.stderr);
    std::fs::write(&config, "[not, a, map]\n")?;
    let out = run(&["ls", "--config", &cfg], &[]).await;
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_what_it_checked_before_a_store_it_could_not_list_and_never_overlaps_a_prune() -> TestResult {
    let etcd = Etcd::single().await?;
    let endpoints = etcd.endpoints().join(",");
    let data = tempfile::tempdir()?;
    let dd = s(data.path());
    let base = ["--data-dir", &dd, "--node-name", "a", "--no-kube"];
    for _ in 0..2 {
        let mut args = vec!["save", "--endpoints", &endpoints];
        args.extend(base);
        run(&args, &[]).await.expect_ok();
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    }
    let snapdir = data.path().join("snapshots");
    let saved = files_in(&snapdir);
    assert_eq!(saved.len(), 2);

    // S3 that cannot be reached: the local results come first, then the listing error.
    let dead_s3 = format!("127.0.0.1:{}", testenv::free_port()?);
    let mut args = vec!["verify", "--s3", "--s3-endpoint", &dead_s3, "--s3-insecure", "--s3-bucket", "b"];
    args.extend(["--s3-timeout", "2s"]);
    args.extend(base);
    let env = [("AWS_ACCESS_KEY_ID", "k"), ("AWS_SECRET_ACCESS_KEY", "s")];
    let out = run(&args, &env).await.expect_fail();
    for name in &saved {
        assert!(out.stdout.lines().any(|l| l.contains(name.as_str()) && l.contains("OK")), "{name}:\n{}", out.stdout);
    }
    assert!(
        out.stdout.contains("2 checked: 2 verified against their record, 0 trailer only (no record), 0 failed."),
        "{}",
        out.stdout
    );
    assert!(out.stderr.contains("error: listing s3://b") && out.stderr.contains("not verified"), "{}", out.stderr);
    let mut json_args = args.clone();
    json_args.extend(["-o", "json"]);
    let out = run(&json_args, &env).await.expect_fail();
    assert_eq!(out.json()["items"].as_array().map(Vec::len), Some(2), "{}", out.stdout);
    assert_eq!(out.json()["errors"].as_array().map(Vec::len), Some(1), "{}", out.stdout);

    // While a verify reads (its shared lock, held here), a prune removes nothing.
    let lock_path = crate::common::layout::private_dir(&snapdir).join("removal.lock");
    let reader = std::fs::File::open(&lock_path)?;
    reader.lock_shared()?;
    let mut prune = vec!["prune", "--retention", "1"];
    prune.extend(base);
    let out = run(&prune, &[]).await.expect_fail();
    assert!(out.stderr.contains("being read by a verify"), "{}", out.stderr);
    assert_eq!(files_in(&snapdir), saved, "a prune removed a snapshot under a verify");
    let mut delete = vec!["delete", saved[0].as_str()];
    delete.extend(base);
    run(&delete, &[]).await.expect_fail();
    assert_eq!(files_in(&snapdir), saved, "a delete removed a snapshot under a verify");
    drop(reader);

    // While a prune removes (its exclusive lock, held here for 4 s), a verify waits for it.
    let remover = std::fs::File::open(&lock_path)?;
    remover.lock()?;
    let release = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(4)).await;
        drop(remover);
    });
    let mut verify = vec!["verify"];
    verify.extend(base);
    let out = run(&verify, &[]).await.expect_ok();
    assert!(out.stderr.contains("waiting for it"), "verify did not wait for the prune:\n{}", out.stderr);
    release.await?;
    run(&prune, &[]).await.expect_ok();
    assert_eq!(files_in(&snapdir).len(), 1);
    Ok(())
}

/// A writer puts every 2 ms during the saves and after them, as a busy control plane does.
/// Each snapshot's recorded revision, in its local record and on its S3 copy, is the revision
/// its file holds as etcdutl reads it; and the saves did start while writes landed (some
/// member's status, taken before its stream, is older than the file it then streamed), so
/// the test covers the race a Status call before the stream loses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_writer_every_2ms_the_recorded_revision_is_the_one_the_file_holds() -> TestResult {
    let etcd = etcd_with_objects(300).await?;
    let s3 = testenv::S3Server::with_bucket("busy").await?;
    let mut writer = etcd.client().await?;
    let writes = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(2));
        for i in 0u64.. {
            tick.tick().await;
            if writer.put(format!("/registry/leases/busy/{}", i % 64), format!("renew-{i}"), None).await.is_err() {
                break;
            }
        }
    });
    let data = tempfile::tempdir()?;
    let dd = s(data.path());
    let endpoints = etcd.endpoints().join(",");
    let node = ["--data-dir", &dd, "--node-name", "node-1", "--endpoints", &endpoints, "--no-kube"];
    let env = s3.credentials_env();
    // Snapshot name (without extension) → the member's revision before its stream. Names, not the
    // order of a directory listing: two saves in one second get suffixed names that sort apart.
    let mut started_at = std::collections::HashMap::new();
    for compress in ["none", "zstd", "none", "zstd"] {
        let args =
            [&["save", "--log-level", "info", "--compress", compress][..], &node, &s3.etcdsnap_flags("busy")].concat();
        let out = run(&args, &env).await.expect_ok();
        // `saving etcd snapshot ... revision=N`: the member's status before the stream.
        let line = out.stderr.lines().find(|l| l.contains("saving etcd snapshot")).unwrap_or_default().to_string();
        let field = |name: &str| line.split(name).nth(1).and_then(|r| r.split_whitespace().next()).map(str::to_string);
        let status: i64 = field("revision=").and_then(|r| r.parse().ok()).unwrap();
        let snapshot = field(" snapshot=").unwrap_or_else(|| panic!("no snapshot name in {line}"));
        started_at.insert(snapshot, status);
    }
    writes.abort();

    let listed =
        run(&[&["ls", "-o", "json"][..], &node, &s3.etcdsnap_flags("busy")].concat(), &env).await.expect_ok().json();
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 8, "{listed}");
    let recorded = |item: &serde_json::Value| -> i64 {
        let r = &item["metadata"]["annotations"][etcdsnap_api::consts::ANNOTATION_ETCD_REVISION];
        r.as_str().unwrap_or_default().parse().unwrap_or_else(|_| panic!("no recorded revision: {item}"))
    };
    let snapdir = data.path().join("snapshots");
    let mut later_than_status = 0;
    let files = files_in(&snapdir);
    assert_eq!(files.len(), 4, "{files:?}");
    for file in &files {
        let status = started_at
            .get(file.as_str())
            .or_else(|| started_at.get(file.strip_suffix(".zst")?))
            .unwrap_or_else(|| panic!("{file}: no save logged it: {started_at:?}"));
        let path = snapdir.join(file);
        let plain = if file.ends_with(".zst") {
            let db = data.path().join("plain.db");
            std::fs::write(&db, zstd::decode_all(std::fs::File::open(&path)?)?)?;
            db
        } else {
            path
        };
        let holds = etcdutl_status(&plain).await?["revision"].as_i64().unwrap();
        let copies: Vec<i64> =
            items.iter().filter(|i| i["spec"]["snapshotName"] == file.as_str()).map(recorded).collect();
        assert_eq!(copies, vec![holds, holds], "{file}: recorded (local, S3) vs the file's own revision");
        assert!(holds >= *status, "{file}: holds {holds}, the member was at {status} before the stream");
        later_than_status += usize::from(holds > *status);
    }
    assert!(later_than_status > 0, "no save started while a write landed: {started_at:?}");
    Ok(())
}
