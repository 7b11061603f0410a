//! Whole-cluster recovery (issue 26): every member of a three-member cluster restored from one
//! snapshot with the same `restore --all-members` on each node, one of them at a new peer URL;
//! `restore-check` on the result (and on a member restored from another snapshot); a member of
//! the old cluster that cannot join; and the bad input that writes nothing.

use crate::common::etcd::load_kube_like_data;
use crate::common::keyspace::key_space;
use crate::common::restore::{hash_kv, revision};
use crate::common::{TestResult, files_in, run, s};
use std::path::{Path, PathBuf};
use std::time::Duration;
use testenv::Etcd;

fn etcdutl() -> PathBuf {
    testenv::testbin("etcdutl").unwrap()
}

/// One etcd process on a restored data directory, killed on drop.
pub struct Member {
    pub client_url: String,
    _child: tokio::process::Child,
}

/// Starts etcd `name` on `data_dir`, listening for peers on `peer_url` and for clients on
/// `client_url`. The data directory holds the membership; the URLs only say where to listen.
pub fn start_member(name: &str, data_dir: &Path, peer_url: &str, client_url: &str, log: &Path) -> Member {
    let client_url = client_url.to_string();
    let log = std::fs::File::create(log).unwrap();
    let child = tokio::process::Command::new(testenv::testbin("etcd").unwrap())
        .arg(format!("--name={name}"))
        .arg(format!("--data-dir={}", data_dir.display()))
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .args(["--log-level=warn", "--unsafe-no-fsync"])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    Member { client_url, _child: child }
}

/// `restore NAME --all-members --member-name NAME` into `data_dir`, with `extra` flags.
async fn restore_member(
    dir: &Path,
    snapshot: &str,
    member: &str,
    data_dir: &Path,
    extra: &[&str],
) -> crate::common::Run {
    let (dir, data, tool) = (s(dir), s(data_dir), s(&etcdutl()));
    let mut args = vec!["restore", snapshot, "--all-members", "--member-name", member, "--data-dir", &data];
    args.extend(["--dir", &dir, "--etcdutl", &tool]);
    args.extend(extra);
    run(&args, &[]).await
}

/// A client of `url` once its member answers with a leader.
async fn client_when_ready(url: &str) -> etcd_client::Client {
    for _ in 0..150 {
        if let Ok(mut c) = etcd_client::Client::connect([url], None).await
            && let Ok(status) = c.status().await
            && status.leader() != 0
        {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("etcd at {url} did not answer with a leader");
}

/// The newest snapshot saved into `dir` by `save` from `endpoints`.
async fn save(data: &Path, endpoints: &str) -> String {
    let before = files_in(&data.join("snapshots"));
    let args = ["save", "--data-dir", &s(data), "--node-name", "m0", "--endpoints", endpoints, "--compress", "zstd"];
    run(&args, &[]).await.expect_ok();
    let after = files_in(&data.join("snapshots"));
    after.into_iter().find(|f| !before.contains(f)).expect("a new snapshot")
}

#[tokio::test]
async fn every_member_restores_from_one_snapshot_and_the_check_proves_it() -> TestResult {
    let mut etcd = Etcd::cluster(3).await?;
    let mut client = etcd.client().await?;
    load_kube_like_data(&mut client, 60).await?;
    let data = tempfile::tempdir()?;
    let endpoints = etcd.endpoints().join(",");
    let name = save(data.path(), &endpoints).await;
    let snap_dir = data.path().join("snapshots");
    let rev = revision(&mut client).await;
    let live = key_space(&client, rev).await;
    // A second snapshot, of a later state: restoring one member from it must be caught.
    client.put("/registry/pods/default/late", "x", None).await?;
    let later = save(data.path(), &endpoints).await;

    // The record names every member with its URLs, in ls -o json and in the restore report.
    let listed = run(&["ls", "--dir", &s(&snap_dir), "-o", "json"], &[]).await.expect_ok();
    let members = listed.stdout.matches("etcdsnap.io/etcd-members").count();
    assert_eq!(members, 2, "{}", listed.stdout);
    for m in etcd.members() {
        assert!(listed.stdout.contains(&m.peer_url), "{} not in {}", m.peer_url, listed.stdout);
    }

    // The whole cluster is lost; an old member's data directory is kept aside.
    let old_peers: Vec<String> = etcd.members().iter().map(|m| m.peer_url.clone()).collect();
    let old_clients: Vec<String> = etcd.members().iter().map(|m| m.client_url.clone()).collect();
    let dirs: Vec<PathBuf> = etcd.members().iter().map(|m| m.data_dir.clone()).collect();
    drop(client);
    for i in 0..3 {
        etcd.kill(i);
    }
    let old_copy = data.path().join("old-m1");
    let copied = std::process::Command::new("cp").arg("-a").arg(&dirs[1]).arg(&old_copy).status()?;
    assert!(copied.success());
    for d in &dirs {
        std::fs::remove_dir_all(d)?;
    }

    // Bad input: nothing is written.
    let target = data.path().join("bad");
    let bad_cases: [(&str, Vec<String>, &str); 4] = [
        ("m9", vec![], "not a voting member recorded"),
        ("m0", vec!["--member".into(), "m2=http://127.0.0.1".into()], "not a peer URL"),
        ("m0", vec!["--member".into(), format!("m2={}", old_peers[0])], "share the peer URL"),
        (
            "m0",
            vec!["--member".into(), "m2=http://127.0.0.1:1".into(), "--member".into(), "m2=http://127.0.0.1:2".into()],
            "given twice",
        ),
    ];
    for (member, extra, says) in &bad_cases {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let out = restore_member(&snap_dir, &name, member, &target, &extra).await.expect_fail();
        assert!(out.stderr.contains(says), "{says}: {}", out.stderr);
        assert!(!target.exists(), "{says}: the target was created");
    }
    // A snapshot without a member record: the same file by path, as K3s's are read.
    let plain = data.path().join("k3s").join(&name);
    std::fs::create_dir_all(plain.parent().unwrap())?;
    std::fs::copy(snap_dir.join(&name), &plain)?;
    let out = restore_member(&snap_dir, &s(&plain), "m0", &target, &[]).await.expect_fail();
    assert!(out.stderr.contains("records no cluster members"), "{}", out.stderr);
    assert!(!target.exists());

    // On a K3s server the server restores its own cluster: the plain file and its steps.
    let root = tempfile::tempdir()?;
    std::fs::create_dir_all(root.path().join("var/lib/rancher/k3s/server/db/etcd"))?;
    let (snaps, tool, dd) = (s(&snap_dir), s(&etcdutl()), s(&target));
    let args = ["restore", &name, "--all-members", "--member-name", "m0", "--data-dir", &dd, "--dir", &snaps];
    let out = run(&[&args[..], &["--etcdutl", &tool]].concat(), &[("ETCDSNAP_PRESET_ROOT", &s(root.path()))]).await;
    let out = out.expect_ok();
    assert!(out.stdout.contains("k3s server --cluster-reset --cluster-reset-restore-path="), "{}", out.stdout);
    assert!(out.stderr.contains("bootstrap data"), "{}", out.stderr);
    assert!(!target.exists());

    // The same command on every node; m2 moves to a new peer URL.
    let moved = format!("http://127.0.0.1:{}", testenv::free_port()?);
    let move_flag = format!("m2={moved}");
    // A dry run as JSON: the same member set, token and commands, and nothing written.
    let dry =
        restore_member(&snap_dir, &name, "m1", &target, &["--member", &move_flag, "--dry-run", "-o", "json"]).await;
    let dry = dry.expect_ok().json();
    assert_eq!(dry["cluster"]["members"]["m2"][0], moved.as_str(), "{dry}");
    assert!(dry["cluster"]["commands"]["m0"].as_str().unwrap_or_default().contains("--member-name m0"), "{dry}");
    assert!(!target.exists());
    let mut tokens = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        let out = restore_member(&snap_dir, &name, &format!("m{i}"), d, &["--member", &move_flag]).await.expect_ok();
        let token = out.stdout.split("cluster token ").nth(1).and_then(|t| t.split_whitespace().next());
        tokens.push(token.expect("the report prints the token").to_string());
        // The report names each other member's command, with its own name.
        for other in (0..3).filter(|j| *j != i) {
            assert!(out.stdout.contains(&format!("--member-name m{other}")), "{}", out.stdout);
        }
        assert!(out.stdout.contains("Recorded members"), "{}", out.stdout);
    }
    assert!(tokens.iter().all(|t| *t == tokens[0] && t.starts_with("etcdsnap-")), "{tokens:?}");
    assert_eq!(dry["cluster"]["token"], tokens[0].as_str(), "{dry}");
    let peers = [old_peers[0].clone(), old_peers[1].clone(), moved.clone()];
    let logs = data.path();
    let mut running: Vec<Member> = (0..3)
        .map(|i| start_member(&format!("m{i}"), &dirs[i], &peers[i], &old_clients[i], &logs.join(format!("m{i}.log"))))
        .collect();
    let urls: Vec<String> = running.iter().map(|m| m.client_url.clone()).collect();
    let mut clients = Vec::new();
    for u in &urls {
        clients.push(client_when_ready(u).await);
    }

    // One cluster of the recorded names, m2 at its new URL; the snapshot's key space, one HashKV.
    let list = clients[0].member_list().await?;
    let mut found: Vec<(String, Vec<String>)> =
        list.members().iter().map(|m| (m.name().to_string(), m.peer_urls().to_vec())).collect();
    found.sort();
    let expected: Vec<(String, Vec<String>)> = (0..3).map(|i| (format!("m{i}"), vec![peers[i].clone()])).collect();
    assert_eq!(found, expected);
    let restored = key_space(&clients[1], rev).await;
    assert_eq!(restored.len(), live.len());
    assert!(restored == live, "the restored key space differs from the live one at revision {rev}");
    let hashes: Vec<_> = {
        let mut v = Vec::new();
        for c in &mut clients {
            v.push(hash_kv(c, rev).await);
        }
        v
    };
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
    let check = ["restore-check", &name, "--dir", &s(&snap_dir), "--endpoints", &urls.join(","), "--wait", "20s"];
    let out = run(&check, &[]).await.expect_ok();
    assert!(out.stdout.contains("Verified"), "{}", out.stdout);
    // Against the other snapshot the same cluster fails the key-space check.
    let out =
        run(&["restore-check", &later, "--dir", &s(&snap_dir), "--endpoints", &urls.join(","), "--wait", "5s"], &[])
            .await
            .expect_fail();
    assert!(out.stdout.contains("key space") && out.stdout.contains("FAIL"), "{}", out.stdout);

    // A member of the old cluster (old data, old token) started beside it cannot join.
    let old_peer = format!("http://127.0.0.1:{}", testenv::free_port()?);
    let old_client = format!("http://127.0.0.1:{}", testenv::free_port()?);
    let old = start_member("m1", &old_copy, &old_peer, &old_client, &logs.join("old-m1.log"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let list = clients[0].member_list().await?;
    assert_eq!(list.members().len(), 3);
    let new_cluster = clients[0].status().await?.header().map(|h| h.cluster_id());
    if let Ok(mut c) = etcd_client::Client::connect([old.client_url.as_str()], None).await
        && let Ok(Ok(st)) = tokio::time::timeout(Duration::from_secs(3), c.status()).await
    {
        assert_ne!(st.header().map(|h| h.cluster_id()), new_cluster, "the old member joined the restored cluster");
        assert_eq!(st.leader(), 0, "the old member found a leader");
    }
    drop(old);

    // A lost member of a cluster whose other members answer is not restored by recover: it
    // prints how to replace it, and writes nothing.
    let lost = data.path().join("lost-m2");
    let tool = s(&etcdutl());
    let args = ["recover", "--data-dir", &s(&lost), "--member-name", "m2", "--dir", &s(&snap_dir), "--etcdutl", &tool];
    let out = run(&args, &[]).await.expect_fail();
    assert!(out.stderr.contains("member remove") && out.stderr.contains("member add m2"), "{}", out.stderr);
    assert!(!lost.exists());

    // m2 restored from the later snapshot: the check fails and names it.
    drop(clients);
    let m2 = running.pop().unwrap();
    drop(m2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::fs::remove_dir_all(&dirs[2])?;
    restore_member(&snap_dir, &later, "m2", &dirs[2], &["--member", &move_flag]).await.expect_ok();
    running.push(start_member("m2", &dirs[2], &moved, &old_clients[2], &logs.join("m2-again.log")));
    let urls: Vec<String> = running.iter().map(|m| m.client_url.clone()).collect();
    let check = ["restore-check", &name, "--dir", &s(&snap_dir), "--endpoints", &urls.join(","), "--wait", "5s"];
    let out = run(&check, &[]).await.expect_fail();
    assert!(out.stdout.contains("FAILED") && out.stdout.contains("m2"), "{}", out.stdout);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_restores_a_lost_one_member_cluster_to_the_last_captured_revision() -> TestResult {
    use crate::pitr_agent::{agent, churn, save, wait_durable};
    let etcd = Etcd::single().await?;
    let mut client = etcd.client().await?;
    load_kube_like_data(&mut client, 60).await?;
    let data = tempfile::tempdir()?;
    save(&etcd, data.path()).await;
    let capturing = agent(&etcd, data.path()).await;
    churn(&mut client, "after", 1500).await;
    let rev = revision(&mut client).await;
    wait_durable(&capturing, rev).await;
    capturing.stop().await?;
    let live = key_space(&client, rev).await;

    let target = data.path().join("etcd-data");
    let peer = testenv::free_port()?;
    let (snaps, tool, bin) =
        (s(&data.path().join("snapshots")), s(&etcd.testbin("etcdutl")?), s(&etcd.testbin("etcd")?));
    let peer_url = format!("http://127.0.0.1:{peer}");
    let args = [
        "recover",
        "--data-dir",
        &s(&target),
        "--member-name",
        "m0",
        "--initial-advertise-peer-urls",
        &peer_url,
        "--dir",
        &snaps,
        "--etcdutl",
        &tool,
        "--etcd",
        &bin,
    ];
    // A delta record that cannot be read: recover refuses rather than stop early, and writes
    // nothing. The damage is undone afterwards.
    let record = newest_delta_record(data.path());
    let good = std::fs::read(&record)?;
    std::fs::write(&record, b"{\"not\": \"a segment record\"")?;
    let out = run(&args, &[]).await.expect_fail();
    assert!(out.stderr.contains("could not be used") && out.stderr.contains("Nothing was changed"), "{}", out.stderr);
    assert!(
        !target.exists() || std::fs::read_dir(&target)?.next().is_none(),
        "recover wrote into {}",
        target.display()
    );
    std::fs::write(&record, good)?;
    let out = run(&args, &[]).await.expect_ok();
    assert!(out.stdout.contains(&format!("rolled forward to revision {rev}")), "{}\n{}", out.stdout, out.stderr);
    {
        let restored = Etcd::start_on_data_dir(&target, "m0", peer).await?;
        let mut rc = restored.client().await?;
        assert_eq!(revision(&mut rc).await, rev);
        assert!(key_space(&rc, rev).await == live, "the recovered key space differs from the live one at {rev}");
    }
    // Point in time with --all-members: two nodes roll forward to the same revision, with the
    // same token, the same key space (etcdutl's HashKV of each database at that revision) and
    // the same bytes (the replayed database is compacted before it is saved).
    let mut dbs = Vec::new();
    for node in ["a", "b"] {
        let dir = s(&data.path().join(format!("pitr-{node}")));
        let to = rev.to_string();
        let args = ["restore", "--to-revision", &to, "--all-members", "--member-name", "m0", "--data-dir", &dir];
        let run_args = [&args[..], &["--dir", &snaps, "--etcdutl", &tool, "--etcd", &bin]].concat();
        // One node reads the token from the table, the other from -o json's cluster block.
        let token = match node {
            "a" => {
                let out = run(&run_args, &[]).await.expect_ok();
                out.stdout.split("cluster token ").nth(1).and_then(|t| t.split_whitespace().next()).map(str::to_string)
            }
            _ => {
                let json = run(&[&run_args[..], &["-o", "json"]].concat(), &[]).await.expect_ok().json();
                assert!(json["cluster"]["members"]["m0"].is_array(), "{json}");
                json["cluster"]["token"].as_str().map(str::to_string)
            }
        };
        let db = Path::new(&dir).join("member/snap/db");
        let bytes = std::fs::read(&db)?;
        let hash = file_hash_kv(&testenv::testbin_version("etcdutl", "3.7")?, &db, rev)?;
        dbs.push((token, hash, bytes));
    }
    assert!(dbs[0].0.is_some() && dbs[0].0 == dbs[1].0, "tokens {:?} {:?}", dbs[0].0, dbs[1].0);
    assert_eq!(dbs[0].1, dbs[1].1, "the two members' key spaces differ");
    assert!(
        dbs[0].2 == dbs[1].2,
        "the two members' databases differ ({} and {} bytes)",
        dbs[0].2.len(),
        dbs[1].2.len()
    );
    // On a member's data, recover changes nothing.
    let before = tree(&target);
    let out = run(&args, &[]).await.expect_ok();
    assert!(out.stdout.contains("nothing changed"), "{}", out.stdout);
    assert_eq!(tree(&target), before);
    let siblings =
        std::fs::read_dir(data.path())?.flatten().filter(|e| e.file_name().to_string_lossy().contains("-old-")).count();
    assert_eq!(siblings, 0);
    Ok(())
}

/// The record of the newest delta segment captured beside `data`'s snapshot directory.
fn newest_delta_record(data: &Path) -> PathBuf {
    let deltas = data.join(".etcdsnap-deltas");
    let mut records: Vec<PathBuf> = std::fs::read_dir(&deltas)
        .expect("a delta directory")
        .flatten()
        .flat_map(|chain| std::fs::read_dir(chain.path()).into_iter().flatten().flatten())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    records.sort_by_key(|p| p.file_name().map(|n| n.to_os_string()));
    records.pop().expect("a delta record")
}

#[tokio::test]
async fn recover_without_captured_changes_restores_the_newest_snapshot_as_it_is() -> TestResult {
    let etcd = Etcd::single().await?;
    let mut client = etcd.client().await?;
    load_kube_like_data(&mut client, 20).await?;
    let data = tempfile::tempdir()?;
    save(data.path(), &etcd.endpoints().join(",")).await;
    let rev = revision(&mut client).await;
    let live = key_space(&client, rev).await;
    let target = data.path().join("etcd-data");
    let peer = testenv::free_port()?;
    let peer_url = format!("http://127.0.0.1:{peer}");
    let (snaps, tool) = (s(&data.path().join("snapshots")), s(&etcd.testbin("etcdutl")?));
    let args =
        ["recover", "--data-dir", &s(&target), "--member-name", "m0", "--initial-advertise-peer-urls", &peer_url];
    let out = run(&[&args[..], &["--dir", &snaps, "--etcdutl", &tool]].concat(), &[]).await.expect_ok();
    assert!(out.stdout.contains("No captured changes past snapshot"), "{}\n{}", out.stdout, out.stderr);
    let restored = Etcd::start_on_data_dir(&target, "m0", peer).await?;
    let mut rc = restored.client().await?;
    assert_eq!(revision(&mut rc).await, rev);
    assert!(key_space(&rc, rev).await == live, "the recovered key space differs from the snapshot's");
    Ok(())
}

/// Every file below `dir` with its size and modification time.
fn tree(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                out.push((e.path(), meta.len(), meta.modified().unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// etcdutl 3.7's HashKV of a database file at `rev` (3.6's cannot read leased keys), taken of
/// a copy (hashkv opens the file read-write).
fn file_hash_kv(etcdutl: &Path, db: &Path, rev: i64) -> Result<String, Box<dyn std::error::Error>> {
    let scratch = tempfile::tempdir()?;
    let copy = scratch.path().join("db");
    std::fs::copy(db, &copy)?;
    let out = std::process::Command::new(etcdutl)
        .args(["hashkv", &s(&copy), "--rev", &rev.to_string(), "-w", "json"])
        .output()?;
    assert!(out.status.success(), "etcdutl hashkv: {}", String::from_utf8_lossy(&out.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(format!("{}/{}", answer["hash"], answer["compactRevision"]))
}
