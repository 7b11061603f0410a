//! `etcdsnap restore` end to end: snapshots of a real etcd, restored with the real etcdutl, and
//! a real etcd started on the result to read the keys back. Damaged and hostile snapshots, token
//! checks, occupied targets and dry runs are checked to leave the target exactly as it was.

use crate::common::etcd::{etcd_with_objects, load_kube_like_data};
use crate::common::layout::records_dir;
use crate::common::restore::{restore_args, revision};
use crate::common::snapshot_files::etcdctl_snapshot;
use crate::common::{Run, TestResult, files_in, run, s};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use testenv::{Etcd, S3Server};

const TOKEN: &str = "mysecret";
const TOKEN_HASH: &str = "652c7dc687d9";
const KNOWN: usize = 40;

/// The pinned etcdutl.
fn etcdutl() -> PathBuf {
    testenv::testbin("etcdutl").unwrap()
}

/// An etcd with known keys and a snapshot directory holding one snapshot per format, saved
/// with the server token `mysecret`.
struct Fixture {
    _etcd: Etcd,
    data: tempfile::TempDir,
    /// Snapshot names by compression (`none`, `zstd`, `zip`).
    names: BTreeMap<&'static str, String>,
    revision: i64,
}

impl Fixture {
    async fn new(formats: &[&'static str]) -> Result<Fixture, Box<dyn std::error::Error>> {
        let etcd = etcd_with_objects(150).await?;
        let mut client = etcd.client().await?;
        for i in 0..KNOWN {
            client.put(format!("/restore-test/key-{i:03}"), format!("value-{i}"), None).await?;
        }
        let revision = revision(&mut client).await;
        let data = tempfile::tempdir()?;
        let endpoints = etcd.endpoints().join(",");
        let mut names = BTreeMap::new();
        for &compress in formats {
            let before = files_in(&data.path().join("snapshots"));
            run(
                &[
                    "save",
                    "--data-dir",
                    &s(data.path()),
                    "--node-name",
                    "node-1",
                    "--endpoints",
                    &endpoints,
                    "--compress",
                    compress,
                    "--token",
                    TOKEN,
                ],
                &[],
            )
            .await
            .expect_ok();
            let after = files_in(&data.path().join("snapshots"));
            let new = after.into_iter().find(|f| !before.contains(f)).ok_or("no new snapshot")?;
            names.insert(compress, new);
        }
        Ok(Fixture { _etcd: etcd, data, names, revision })
    }

    fn dir(&self) -> PathBuf {
        self.data.path().join("snapshots")
    }

    fn path(&self, compress: &str) -> PathBuf {
        self.dir().join(&self.names[compress])
    }
}

/// Starts etcd on a restored data directory and checks every known key.
async fn assert_keys_back(data_dir: &Path, name: &str, peer_port: u16) -> Result<i64, Box<dyn std::error::Error>> {
    let etcd = Etcd::start_on_data_dir(data_dir, name, peer_port).await?;
    let mut client = etcd.client().await?;
    let resp = client.get("/restore-test/", Some(etcd_client::GetOptions::new().with_prefix())).await?;
    assert_eq!(resp.kvs().len(), KNOWN);
    for (i, kv) in resp.kvs().iter().enumerate() {
        assert_eq!(kv.key_str()?, format!("/restore-test/key-{i:03}"));
        assert_eq!(kv.value_str()?, format!("value-{i}"));
    }
    let pods =
        client.get("/registry/pods/", Some(etcd_client::GetOptions::new().with_prefix().with_count_only())).await?;
    assert!(pods.count() > 0);
    let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
    Ok(revision)
}

async fn restore(args: &[String], extra: &[&str]) -> Run {
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend_from_slice(extra);
    run(&all, &[]).await
}

/// Every file and directory below `dir` with its size: what "untouched" is compared with.
fn tree(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            let meta = match p.symlink_metadata() {
                Ok(m) => m,
                Err(_) => continue,
            };
            out.push((p.strip_prefix(dir).map(s).unwrap_or_default(), if meta.is_dir() { 0 } else { meta.len() }));
            if meta.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A target directory holding data, inside its own parent so that everything restore might
/// leave behind (working directories, `-old-` copies) is visible.
fn occupied_target() -> Result<(tempfile::TempDir, PathBuf), Box<dyn std::error::Error>> {
    let parent = tempfile::tempdir()?;
    let target = parent.path().join("etcd");
    std::fs::create_dir_all(target.join("member"))?;
    std::fs::write(target.join("member/precious"), "the data that was here")?;
    Ok((parent, target))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_restores_and_etcd_serves_the_keys() -> TestResult {
    let fx = Fixture::new(&["none", "zstd", "zip"]).await?;
    for compress in ["none", "zstd", "zip"] {
        let parent = tempfile::tempdir()?;
        let target = parent.path().join("etcd");
        let port = testenv::free_port()?;
        let mut args = restore_args(&[&fx.names[compress]], &target, port, &etcdutl());
        args.extend(["--dir".into(), s(&fx.dir()), "--token".into(), TOKEN.into()]);
        let bump = compress == "none";
        if bump {
            args.extend(["--bump-revision".into(), "1000000".into(), "--mark-compacted".into()]);
        }
        let out = restore(&args, &[]).await.expect_ok();
        assert!(out.stdout.contains("All checks passed."), "{compress}: {}", out.stdout);
        assert!(out.stdout.contains("Restored "), "{compress}: {}", out.stdout);
        // Only the restored directory is left next to the target: no working directory.
        assert_eq!(std::fs::read_dir(parent.path())?.count(), 1, "{compress}: {:?}", tree(parent.path()));
        let revision = assert_keys_back(&target, "m0", port).await?;
        if bump {
            assert!(revision >= fx.revision + 1_000_000, "{revision} vs {}", fx.revision);
        } else {
            assert!(revision >= fx.revision, "{revision} vs {}", fx.revision);
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_shows_everything_and_dry_run_touches_nothing() -> TestResult {
    let fx = Fixture::new(&["zstd"]).await?;
    let (parent, target) = occupied_target()?;
    // What a killed restore leaves behind is pointed out, not deleted.
    std::fs::create_dir(parent.path().join(".etcd.etcdsnap-restore-AbC123"))?;
    let before = tree(parent.path());
    let snapshots_before = tree(fx.data.path());
    let port = testenv::free_port()?;
    let mut args = restore_args(&[&s(&fx.path("zstd"))], &target, port, &etcdutl());
    args.extend(["--token".into(), TOKEN.into(), "--dry-run".into(), "-o".into(), "json".into()]);
    let out = restore(&args, &[]).await.expect_ok();
    let r = out.json();
    assert_eq!(r["ok"], true);
    assert_eq!(r["dryRun"], true);
    assert_eq!(r["snapshot"]["name"], fx.names["zstd"].as_str());
    assert_eq!(r["snapshot"]["source"], "file");
    assert_eq!(r["snapshot"]["compression"], "zstd");
    assert_eq!(r["snapshot"]["nodeName"], "node-1");
    assert_eq!(r["snapshot"]["metadata"], "document");
    assert_eq!(r["snapshot"]["etcdVersion"], "3.6.16");
    assert!(r["snapshot"]["etcdRevision"].as_i64().unwrap_or(0) >= fx.revision);
    assert!(r["snapshot"]["createdAt"].is_string());
    assert_eq!(r["integrity"]["recordedSha256"], r["integrity"]["computedSha256"]);
    assert_eq!(r["integrity"]["trailerValid"], true);
    assert!(r["integrity"]["decompressedSize"].as_u64().unwrap_or(0) > r["snapshot"]["size"].as_u64().unwrap_or(0));
    assert_eq!(r["token"]["result"], "match");
    assert_eq!(r["token"]["recorded"], TOKEN_HASH);
    assert!(r["space"]["availableBytes"].as_u64().unwrap_or(0) > 0);
    assert_eq!(r["space"]["basis"], "recorded-db-size");
    assert_eq!(r["target"]["state"], "occupied");
    assert!(r["target"]["moveAsideTo"].as_str().is_some_and(|p| p.starts_with(&format!("{}-old-", s(&target)))));
    assert_eq!(r["etcdutl"]["version"], "3.6.16");
    assert!(!out.stdout.contains(TOKEN), "the token itself is never printed");
    assert!(!out.stderr.contains(TOKEN), "the token itself is never logged");
    let names: Vec<&str> =
        r["checks"].as_array().ok_or("no checks")?.iter().filter_map(|c| c["name"].as_str()).collect();
    for expected in
        ["metadata", "size", "token", "drill", "target", "space", "etcdutl", "versions", "member", "sha256", "trailer"]
    {
        assert!(names.contains(&expected), "{expected} missing from {names:?}");
    }
    let leftovers =
        r["checks"].as_array().and_then(|c| c.iter().find(|c| c["name"] == "leftovers")).ok_or("no leftovers check")?;
    assert_eq!(leftovers["status"], "warn");
    assert!(leftovers["detail"].as_str().is_some_and(|d| d.contains("etcdsnap-restore-AbC123")));
    // Whether the revision is bumped is said either way (Kubernetes' guidance asks for it).
    let versions = r["checks"].as_array().and_then(|c| c.iter().find(|c| c["name"] == "versions"));
    let detail = versions.and_then(|v| v["detail"].as_str()).unwrap_or_default();
    assert!(detail.contains("not bumped") && detail.contains("--bump-revision"), "{detail}");
    assert_eq!(tree(parent.path()), before, "dry run changed the target's parent");
    assert_eq!(tree(fx.data.path()), snapshots_before, "dry run changed the snapshot directory");

    // The table says the same, in words. `--no-kube` is taken, as by every command.
    let mut args = restore_args(&[&s(&fx.path("zstd"))], &target, port, &etcdutl());
    args.extend(["--dry-run".into(), "--no-kube".into()]);
    let out = restore(&args, &[]).await.expect_ok();
    assert!(!out.stderr.contains(" WARN "), "{}", out.stderr);
    assert!(out.stdout.contains("Dry run: "), "{}", out.stdout);
    assert!(out.stdout.contains("moved aside to"), "{}", out.stdout);
    assert!(out.stdout.contains("nothing was changed"), "{}", out.stdout);
    assert_eq!(tree(parent.path()), before);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_and_hostile_snapshots_are_refused_before_the_target_is_touched() -> TestResult {
    let fx = Fixture::new(&["none", "zstd"]).await?;
    let bad = tempfile::tempdir()?;
    let plain = std::fs::read(fx.path("none"))?;
    let port = testenv::free_port()?;

    // A flipped byte in a plain snapshot (no metadata: etcd's trailer alone catches it).
    let mut flipped = plain.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x01;
    let flipped_path = bad.path().join("flipped.db");
    std::fs::write(&flipped_path, &flipped)?;
    // A truncated plain snapshot.
    let truncated_path = bad.path().join("truncated.db");
    std::fs::write(&truncated_path, &plain[..plain.len() - 1000])?;
    // A flipped byte in a zstd snapshot that has its metadata document (sha256 mismatch).
    let zst = fx.path("zstd");
    let mut zbytes = std::fs::read(&zst)?;
    let zmid = zbytes.len() / 2;
    zbytes[zmid] ^= 0x40;
    std::fs::write(&zst, &zbytes)?;
    // A truncated snapshot whose metadata document records its real size.
    let cut = fx.path("none");
    std::fs::write(&cut, &plain[..plain.len() / 2])?;
    // A zip whose entry name escapes the directory, and one with two entries.
    let escape = bad.path().join("escape.zip");
    write_zip(&escape, &[("../../etc/evil", &plain)])?;
    let two = bad.path().join("two.zip");
    write_zip(&two, &[("a-n-1", &plain), ("b-n-2", &plain)])?;

    let cases: [(&Path, &str); 6] = [
        (&flipped_path, "trailer does not match"),
        (&truncated_path, "trailer does not match"),
        (&zst, "zstd data is damaged"),
        (&cut, "truncated"),
        (&escape, "not a plain file name"),
        (&two, "more than one entry"),
    ];
    for (path, expected) in cases {
        let (parent, target) = occupied_target()?;
        let before = tree(parent.path());
        let out = restore(&restore_args(&[&s(path)], &target, port, &etcdutl()), &[]).await.expect_fail();
        assert!(
            out.stdout.contains(expected) && out.stdout.contains("FAIL"),
            "{}: expected {expected:?} in\n{}",
            path.display(),
            out.stdout
        );
        assert!(out.stderr.contains("restore refused"), "{}", out.stderr);
        assert!(out.stdout.contains("nothing was touched"), "{}", out.stdout);
        // One error, and no line at the default level about an etcdutl restore that a failed
        // check discarded (it may start while the bytes are still read).
        assert_eq!(out.stderr.lines().filter(|l| l.starts_with("error")).count(), 1, "{}", out.stderr);
        assert!(!out.stderr.lines().any(|l| l.contains(" INFO ") && l.contains("etcdutl")), "{}", out.stderr);
        assert_eq!(tree(parent.path()), before, "{}: the target's parent changed", path.display());
    }
    // Nothing was extracted next to the hostile zip or in the current directory.
    assert!(!bad.path().join("../../etc/evil").exists());
    assert!(!Path::new("etc/evil").exists());
    Ok(())
}

fn write_zip(path: &Path, entries: &[(&str, &[u8])]) -> Result<(), Box<dyn std::error::Error>> {
    let mut z = zip::ZipWriter::new_stream(std::fs::File::create(path)?);
    for (name, data) in entries {
        z.start_file(
            *name,
            zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated),
        )?;
        std::io::Write::write_all(&mut z, data)?;
    }
    z.finish()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_match_mismatch_and_unknown() -> TestResult {
    let fx = Fixture::new(&["none"]).await?;
    let path = s(&fx.path("none"));
    let (parent, target) = occupied_target()?;
    let port = testenv::free_port()?;
    let base = restore_args(&[&path], &target, port, &etcdutl());
    let token_file = parent.path().join("token");
    std::fs::write(&token_file, format!("K10{}::server:{TOKEN}\n", "ab".repeat(32)))?;
    let before_with_token = tree(parent.path());

    // Match, from the flag and from a K3s token file.
    for extra in [vec!["--token", TOKEN], vec!["--token-file", &s(&token_file)]] {
        let mut extra = extra;
        extra.extend(["--dry-run", "-o", "json"]);
        let r = restore(&base, &extra).await.expect_ok().json();
        assert_eq!(r["token"]["result"], "match", "{extra:?}");
        assert_eq!(r["token"]["current"], TOKEN_HASH);
    }
    assert!(tree(parent.path()) == before_with_token);

    // Mismatch: refused, and the message says why the old token matters.
    let out = restore(&base, &["--token", "rotated-token"]).await.expect_fail();
    assert!(out.stdout.contains("token    FAIL"), "{}", out.stdout);
    assert!(out.stdout.contains("bootstrap data"), "{}", out.stdout);
    assert!(out.stdout.contains("--ignore-token-mismatch"), "{}", out.stdout);
    assert!(out.stderr.contains("restore refused: token"), "{}", out.stderr);
    assert!(!out.stdout.contains("rotated-token") && !out.stderr.contains("rotated-token"));
    assert_eq!(tree(parent.path()), before_with_token);
    let r = restore(&base, &["--token", "rotated-token", "-o", "json"]).await.expect_fail().json();
    assert_eq!(r["token"]["result"], "mismatch");
    assert_eq!(r["ok"], false);
    let check = |name: &str| r["checks"].as_array().unwrap().iter().find(|c| c["name"] == name).cloned().unwrap();
    assert_eq!(check("token")["status"], "fail");
    assert_eq!(check("metadata")["status"], "pass");
    assert_eq!(check("drill")["status"], "skipped", "never drilled");
    // Integrity is not even read once a check failed.
    assert!(r["integrity"]["computedSha256"].is_null());

    // Mismatch, overridden: the restore goes ahead.
    let out = restore(&base, &["--token", "rotated-token", "--ignore-token-mismatch"]).await.expect_ok();
    assert!(out.stdout.contains("token    WARN"), "{}", out.stdout);
    assert!(out.stdout.contains("ignored (--ignore-token-mismatch)"), "{}", out.stdout);
    assert_keys_back(&target, "m0", port).await?;

    // Unknown: no token given (a warning), or no hash recorded (a K3s snapshot): restores.
    let fresh = parent.path().join("fresh");
    let r = restore(&restore_args(&[&path], &fresh, port, &etcdutl()), &["--dry-run", "-o", "json"])
        .await
        .expect_ok()
        .json();
    assert_eq!(r["token"]["result"], "unknown");
    assert_eq!(r["token"]["recorded"], TOKEN_HASH);
    let bare = parent.path().join("bare.db");
    std::fs::copy(fx.path("none"), &bare)?;
    let r = restore(&restore_args(&[&s(&bare)], &fresh, port, &etcdutl()), &["--token", TOKEN, "-o", "json"])
        .await
        .expect_ok()
        .json();
    assert_eq!(r["token"]["result"], "unknown");
    assert!(r["token"]["recorded"].is_null());
    assert_eq!(r["restored"]["dataDir"], s(&fresh));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k3s_style_zip_without_metadata_restores() -> TestResult {
    let etcd = Etcd::single().await?;
    let mut client = etcd.client().await?;
    for i in 0..KNOWN {
        client.put(format!("/restore-test/key-{i:03}"), format!("value-{i}"), None).await?;
    }
    load_kube_like_data(&mut client, 50).await?;
    // K3s's layout: server/db/snapshots, and its extra-metadata map in server/db/.metadata.
    let root = tempfile::tempdir()?;
    let snapdir = root.path().join("server/db/snapshots");
    std::fs::create_dir_all(&snapdir)?;
    std::fs::create_dir_all(root.path().join("server/db/.metadata"))?;
    let plain = snapdir.join("on-demand-server1-1700000000");
    etcdctl_snapshot(&etcd, &plain).await?;
    let zipped = snapdir.join("on-demand-server1-1700000000.zip");
    write_zip(&zipped, &[("on-demand-server1-1700000000", &std::fs::read(&plain)?)])?;
    std::fs::remove_file(&plain)?;
    std::fs::write(
        root.path().join("server/db/.metadata/on-demand-server1-1700000000.zip"),
        r#"{"rancher.io/cluster":"c-abc"}"#,
    )?;

    // Restored by name from K3s's snapshot directory (PATH has the testbins: no --etcdutl).
    let target = root.path().join("server/db/etcd");
    let port = testenv::free_port()?;
    let path_env = format!("{}:{}", s(&testenv::testbins_dir()), std::env::var("PATH").unwrap_or_default());
    let out = run(
        &[
            "restore",
            "on-demand-server1-1700000000.zip",
            "--dir",
            &s(&snapdir),
            "--data-dir",
            &s(&target),
            "--member-name",
            "m0",
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{port}"),
            "--token",
            TOKEN,
            "-o",
            "json",
        ],
        &[("PATH", path_env.as_str())],
    )
    .await
    .expect_ok();
    let r = out.json();
    assert_eq!(r["snapshot"]["source"], "local");
    assert_eq!(r["snapshot"]["metadata"], "k3s-extra-metadata");
    assert_eq!(r["snapshot"]["compression"], "zip");
    assert_eq!(r["token"]["result"], "unknown");
    assert_eq!(r["integrity"]["zipEntry"], "on-demand-server1-1700000000");
    assert_eq!(r["integrity"]["trailerValid"], true);
    assert_eq!(r["space"]["basis"], "zip-directory");
    // The entry was never written anywhere but the private working directory, now gone.
    assert_eq!(files_in(&snapdir), ["on-demand-server1-1700000000.zip"]);
    assert!(!Path::new("on-demand-server1-1700000000").exists());
    let db = root.path().join("server/db");
    let mut left: Vec<String> =
        std::fs::read_dir(&db)?.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    assert_eq!(left, [".metadata", "etcd", "snapshots"]);
    drop(etcd);
    assert_keys_back(&target, "m0", port).await?;
    Ok(())
}

/// A stand-in for etcdutl that reports a version and then fails, or claims success without
/// writing anything.
fn fake_etcdutl(dir: &Path, restore_behaviour: &str) -> Result<PathBuf, Box<dyn std::error::Error>> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("fake-etcdutl");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nif [ \"$1\" = version ]; then echo 'etcdutl version: 3.6.16'; exit 0; fi\n{restore_behaviour}\n"
        ),
    )?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_occupied_data_dir_is_moved_aside_and_kept_when_etcdutl_fails() -> TestResult {
    let fx = Fixture::new(&["none", "zstd"]).await?;
    let tools = tempfile::tempdir()?;
    let port = testenv::free_port()?;

    // etcdutl fails (plain file: etcdutl runs while the bytes are checked; zstd: after).
    let failing = fake_etcdutl(tools.path(), "echo 'member: disk on fire' >&2; exit 3")?;
    std::fs::create_dir(tools.path().join("hollow"))?;
    let hollow = fake_etcdutl(&tools.path().join("hollow"), "exit 0")?;
    for (compress, tool, expected) in [
        ("none", &failing, "disk on fire"),
        ("zstd", &failing, "disk on fire"),
        ("zstd", &hollow, "holds no etcd database"),
    ] {
        let (parent, target) = occupied_target()?;
        let before = tree(parent.path());
        let mut args = restore_args(&[&s(&fx.path(compress))], &target, port, &etcdutl());
        args.extend(["--etcdutl".into(), s(tool)]);
        let out = restore(&args, &[]).await.expect_fail();
        assert!(out.stdout.contains("All checks passed."), "{}", out.stdout);
        assert!(out.stderr.contains(expected), "{compress}: {}", out.stderr);
        assert!(out.stderr.contains("not touched"), "{}", out.stderr);
        assert_eq!(tree(parent.path()), before, "{compress}: the target's parent changed");
    }

    // The real etcdutl: the old data directory is moved aside, intact, and the new one works.
    let (parent, target) = occupied_target()?;
    let out = restore(&restore_args(&[&s(&fx.path("zstd"))], &target, port, &etcdutl()), &[]).await.expect_ok();
    let aside: Vec<PathBuf> = std::fs::read_dir(parent.path())?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("etcd-old-")))
        .collect();
    assert_eq!(aside.len(), 1, "{:?}", tree(parent.path()));
    assert_eq!(std::fs::read_to_string(aside[0].join("member/precious"))?, "the data that was here");
    assert!(out.stdout.contains(&s(&aside[0])), "{}", out.stdout);
    assert!(!target.join("member/precious").exists());
    assert_eq!(std::fs::read_dir(parent.path())?.count(), 2, "{:?}", tree(parent.path()));
    assert_keys_back(&target, "m0", port).await?;

    // Restoring again keeps both earlier directories.
    restore(&restore_args(&[&s(&fx.path("zstd"))], &target, port, &etcdutl()), &[]).await.expect_ok();
    assert_eq!(std::fs::read_dir(parent.path())?.count(), 3, "{:?}", tree(parent.path()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_touches_nothing() -> TestResult {
    let fx = Fixture::new(&["none"]).await?;
    let path = s(&fx.path("none"));
    let (parent, target) = occupied_target()?;
    let port = testenv::free_port()?;
    let scratch = tempfile::tempdir()?;
    let before = tree(parent.path());
    let refuse = |args: Vec<String>, expected: &'static str| async move {
        let out = restore(&args, &[]).await.expect_fail();
        let all = format!("{}{}", out.stdout, out.stderr);
        assert!(all.contains(expected), "expected {expected:?} in\n{all}");
    };

    let missing = s(&scratch.path().join("missing.db"));
    refuse(restore_args(&[&missing], &target, port, &etcdutl()), "does not exist").await;
    refuse(restore_args(&[&s(scratch.path())], &target, port, &etcdutl()), "is a directory").await;
    let mut unknown = restore_args(&["on-demand-node-1-1"], &target, port, &etcdutl());
    unknown.extend(["--dir".into(), s(&fx.dir())]);
    refuse(unknown, "not found in").await;
    let mut no_tool = restore_args(&[&path], &target, port, &etcdutl());
    no_tool.extend(["--etcdutl".into(), s(&scratch.path().join("etcdutl"))]);
    refuse(no_tool, "--etcdutl").await;
    // Found but broken: refused by the pre-flight (its restore run, already started for a
    // plain file, is stopped and discarded).
    let broken = scratch.path().join("broken-etcdutl");
    std::fs::write(&broken, "#!/bin/sh\necho 'cannot execute' >&2\nexit 126\n")?;
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let mut broken_tool = restore_args(&[&path], &target, port, &etcdutl());
    broken_tool.extend(["--etcdutl".into(), s(&broken)]);
    refuse(broken_tool, "`etcdutl version` failed").await;
    std::fs::remove_file(&broken)?;
    // Not in PATH either.
    let mut args: Vec<&str> = vec!["restore", &path, "--data-dir"];
    let t = s(&target);
    args.extend([t.as_str(), "--member-name", "m0"]);
    let out = run(&args, &[("PATH", "/nonexistent")]).await.expect_fail();
    assert!(out.stdout.contains("etcdutl not found in PATH"), "{}", out.stdout);

    let file_target = scratch.path().join("a-file");
    std::fs::write(&file_target, "x")?;
    refuse(restore_args(&[&path], &file_target, port, &etcdutl()), "is not a directory").await;
    refuse(restore_args(&[&path], &scratch.path().join("no/such/parent/etcd"), port, &etcdutl()), "does not exist")
        .await;
    // An occupied directory that is not an etcd data directory is not moved aside.
    std::fs::write(scratch.path().join("some-file"), "x")?;
    refuse(restore_args(&[&path], scratch.path(), port, &etcdutl()), "not an etcd data directory").await;
    // Nor one that holds the snapshot being restored.
    let inside = target.join("member/backup.db");
    std::fs::copy(fx.path("none"), &inside)?;
    refuse(restore_args(&[&s(&inside)], &target, port, &etcdutl()), "the snapshot is inside").await;
    std::fs::remove_file(&inside)?;
    let mut bump = restore_args(&[&path], &target, port, &etcdutl());
    bump.extend(["--bump-revision".into(), "10".into()]);
    refuse(bump, "--mark-compacted").await;

    // Not enough space: a metadata document recording a 1 PiB database.
    let huge = scratch.path().join("snapshots/on-demand-node-1-1700000000");
    std::fs::create_dir_all(huge.parent().ok_or("no parent")?)?;
    std::fs::copy(fx.path("none"), &huge)?;
    let doc = std::fs::read_to_string(
        records_dir(&fx.data.path().join("snapshots")).join(format!("{}.etcdsnap.json", fx.names["none"])),
    )?;
    let mut doc: serde_json::Value = serde_json::from_str(&doc)?;
    doc["name"] = "on-demand-node-1-1700000000.zst".into();
    doc["compression"] = "zstd".into();
    doc["etcd"]["dbSize"] = (1u64 << 50).into();
    std::fs::create_dir_all(scratch.path().join(".metadata"))?;
    let zst = scratch.path().join("snapshots/on-demand-node-1-1700000000.zst");
    std::fs::write(&zst, zstd::encode_all(std::fs::File::open(&huge)?, 3)?)?;
    std::fs::write(scratch.path().join(".metadata/on-demand-node-1-1700000000.zst"), serde_json::to_vec(&doc)?)?;
    let out = restore(&restore_args(&[&s(&zst)], &target, port, &etcdutl()), &[]).await.expect_fail();
    assert!(out.stdout.contains("space    FAIL"), "{}", out.stdout);
    assert!(out.stdout.contains("free at least"), "{}", out.stdout);

    assert_eq!(tree(parent.path()), before);
    Ok(())
}

/// The path S3 takes: any `SnapshotStore`, streamed through `open`, decompressed into the
/// working directory in the same pass that checks it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_streams_from_any_store() -> TestResult {
    use etcdsnap::restore::{self, MemberSettings, RestoreOutcome, RestoreRequest, SnapshotSource, SourceKind};
    use etcdsnap_storage::store::SnapshotStore;
    use etcdsnap_storage::store::local::LocalStore;

    let fx = Fixture::new(&["zstd"]).await?;
    let store: Arc<dyn SnapshotStore> = Arc::new(LocalStore::open(&fx.dir(), false, "node-1")?);
    let name = etcdsnap_api::SnapshotName::parse(&fx.names["zstd"])?;
    let source = SnapshotSource::from_store(store, &name).await?;
    assert!(source.path().is_none());
    assert_eq!(source.kind, SourceKind::Local);
    let parent = tempfile::tempdir()?;
    let port = testenv::free_port()?;
    let request = RestoreRequest {
        source,
        data_dir: parent.path().join("etcd"),
        member: MemberSettings {
            name: "m0".into(),
            initial_cluster: format!("m0=http://127.0.0.1:{port}"),
            initial_advertise_peer_urls: format!("http://127.0.0.1:{port}"),
            initial_cluster_token: "etcd-cluster".into(),
            bump_revision: None,
            mark_compacted: false,
        },
        etcdutl: Some(testenv::testbin("etcdutl")?),
        token: Some(restore::CurrentToken { hash: etcdsnap_api::TokenHash::of_token(TOKEN)?, from: "--token".into() }),
        ignore_token_mismatch: false,
        keys: Default::default(),
        encryption_config: None,
        dry_run: false,
    };
    let mut seen = None;
    let outcome = restore::restore(&request, None, |r| seen = Some(r.clone())).await?;
    let RestoreOutcome::Restored { report, installed, .. } = outcome else {
        return Err(format!("not restored: {outcome:?}").into());
    };
    assert!(seen.is_some_and(|r| r.ok));
    assert_eq!(report.token.result, restore::TokenResult::Match);
    assert_eq!(installed.moved_aside, None);
    assert_eq!(std::fs::read_dir(parent.path())?.count(), 1);
    assert_keys_back(&parent.path().join("etcd"), "m0", port).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_from_s3_by_name_including_k3s_objects() -> TestResult {
    let etcd = etcd_with_objects(150).await?;
    let mut client = etcd.client().await?;
    for i in 0..KNOWN {
        client.put(format!("/restore-test/key-{i:03}"), format!("value-{i}"), None).await?;
    }
    let s3 = S3Server::with_bucket("snaps").await?;
    let data = tempfile::tempdir()?;
    let mut s3_args = s3.etcdsnap_flags("snaps");
    s3_args.extend(["--s3-folder", "prod"]);
    let creds = s3.credentials_env();
    let mut save = vec!["save", "--data-dir", data.path().to_str().ok_or("path")?, "--node-name", "node-1"];
    let endpoints = etcd.endpoints().join(",");
    save.extend(["--endpoints", &endpoints, "--no-local", "--compress", "zstd", "--token", TOKEN]);
    save.extend(&s3_args);
    run(&save, &creds).await.expect_ok();
    let name =
        s3.list_keys("snaps", "prod/").await?.into_iter().find(|k| !k.contains(".metadata")).ok_or("no object")?;
    let name = name.trim_start_matches("prod/").to_string();

    // By name from S3, streamed: checked, restored, and etcd serves the keys.
    let target = data.path().join("restored");
    let port = testenv::free_port()?;
    let mut args: Vec<String> = restore_args(&[&name], &target, port, &etcdutl());
    args.extend(s3_args.iter().map(|a| a.to_string()));
    let all: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut with_token = all.clone();
    with_token.extend(["--token", TOKEN, "-o", "json"]);
    let r = run(&with_token, &creds).await.expect_ok().json();
    assert_eq!(r["token"]["result"], "match");
    assert_eq!(r["snapshot"]["location"], format!("s3://snaps/prod/{name}"), "{r}");
    assert_eq!(r["snapshot"]["source"], "s3");
    assert_keys_back(&target, "m0", port).await?;

    // A URL instead of a name is refused with the way to say it.
    let mut url = all.clone();
    url[1] = "s3://snaps/prod/x";
    let out = run(&url, &creds).await.expect_fail();
    assert!(out.stderr.contains("--s3-bucket and --s3-folder"), "{}", out.stderr);

    // What K3s uploads: a plain snapshot whose token hash is only in S3 user metadata.
    let k3s_file = data.path().join("k3s.db");
    etcdctl_snapshot(&etcd, &k3s_file).await?;
    let k3s_meta = [("K3s-Node-Name", "server-1"), ("K3s-Token-Hash", TOKEN_HASH)];
    s3.put_object("snaps", "prod/etcd-snapshot-server-1-1700000000", std::fs::read(&k3s_file)?, &k3s_meta).await?;
    let mut k3s = all.clone();
    k3s[1] = "etcd-snapshot-server-1-1700000000";
    let k3s_target = data.path().join("from-k3s");
    let k3s_target_s = s(&k3s_target);
    k3s[3] = &k3s_target_s;
    let mut mismatch = k3s.clone();
    mismatch.extend(["--token", "another-token"]);
    let out = run(&mismatch, &creds).await.expect_fail();
    assert!(out.stderr.contains("restore refused: token"), "{}", out.stderr);
    assert!(!k3s_target.exists(), "refused restores touch nothing");
    let mut matching = k3s.clone();
    matching.extend(["--token", TOKEN]);
    run(&matching, &creds).await.expect_ok();
    assert_keys_back(&k3s_target, "m0", port).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_in_use_is_refused_and_the_running_etcd_keeps_serving() -> TestResult {
    let fx = Fixture::new(&["none"]).await?;
    let port = testenv::free_port()?;
    let snapshot = s(&fx.path("none"));

    // The live etcd's own data directory: its locks and open files say it is in use.
    let live = fx._etcd.members()[0].data_dir.clone();
    let parent = live.parent().ok_or("no parent")?.to_path_buf();
    let siblings = || std::fs::read_dir(&parent).map(|d| d.count()).unwrap_or_default();
    let before = siblings();
    for extra in [&[][..], &["--dry-run"][..]] {
        let out = restore(&restore_args(&[&snapshot], &live, port, &etcdutl()), extra).await.expect_fail();
        assert!(out.stdout.contains("in use"), "{}", out.stdout);
        // The testbin's command name is etcd-v<version>.
        assert!(out.stdout.contains("is in use: etcd"), "the report does not name etcd:\n{}", out.stdout);
        assert!(out.stdout.contains("systemctl stop k3s"), "{}", out.stdout);
    }
    assert_eq!(siblings(), before, "something was created or moved beside the live data directory");
    assert!(live.join("member/snap/db").is_file());
    let mut client = fx._etcd.client().await?;
    client.put("/after-refused-restore", "still serving", None).await?;
    let got = client.get("/after-refused-restore", None).await?;
    assert_eq!(got.kvs().first().map(|kv| kv.value().to_vec()), Some(b"still serving".to_vec()));

    // Any process with a file open there counts, not only etcd.
    let (parent, target) = occupied_target()?;
    let held = std::fs::File::open(target.join("member/precious"))?;
    let mut holder = std::process::Command::new("sleep").arg("60").stdin(held).spawn()?;
    let out = restore(&restore_args(&[&snapshot], &target, port, &etcdutl()), &[]).await.expect_fail();
    assert!(out.stdout.contains(&format!("sleep (pid {})", holder.id())), "{}", out.stdout);
    holder.kill()?;
    holder.wait()?;
    assert_eq!(std::fs::read_to_string(target.join("member/precious"))?, "the data that was here");

    // Something that starts using the directory while etcdutl works is caught at the swap:
    // this etcdutl restores for real, then leaves a process sitting in the target.
    let tools = tempfile::tempdir()?;
    let sneaky = fake_etcdutl(
        tools.path(),
        &format!(
            "{} \"$@\" || exit $?\n(cd {} && exec sleep 60) </dev/null >/dev/null 2>&1 &\necho $! > {}",
            s(&etcdutl()),
            s(&target),
            s(&tools.path().join("pid"))
        ),
    )?;
    let before = tree(parent.path());
    let mut args = restore_args(&[&snapshot], &target, port, &etcdutl());
    args.extend(["--etcdutl".into(), s(&sneaky)]);
    let out = restore(&args, &[]).await.expect_fail();
    assert!(out.stderr.contains("is in use") && out.stderr.contains("nothing was moved"), "{}", out.stderr);
    assert_eq!(tree(parent.path()), before, "the target's parent changed");
    let pid = std::fs::read_to_string(tools.path().join("pid"))?;
    std::process::Command::new("kill").arg(pid.trim()).status()?;
    Ok(())
}
