//! Two snapshot directories in one parent (`/backup/a`, `/backup/b`): each keeps its own
//! records, locks and scratch files, no save's cleanup in one removes anything of the other,
//! and records an earlier release left in the shared parent are found and moved, not lost.

use crate::common::etcd::etcd_with_objects;
use crate::common::layout::records_dir;
use crate::common::{TestResult, files_in, run, s};
use std::collections::BTreeMap;
use std::path::Path;

/// `verify --dir dir -o json`: every snapshot's stored sha256 must equal its recorded one.
async fn verified_against_records(dir: &Path, endpoints: &str) -> Result<BTreeMap<String, String>, String> {
    let out = run(&["verify", "--dir", &s(dir), "--node-name", "n1", "--endpoints", endpoints, "-o", "json"], &[])
        .await
        .expect_ok();
    let mut checked = BTreeMap::new();
    for item in out.json()["items"].as_array().ok_or("no items")? {
        let name = item["name"].as_str().unwrap_or_default().to_string();
        let (recorded, stored) = (&item["recordedSha256"], &item["storedSha256"]);
        if !recorded.is_string() || recorded != stored || item["ok"] != true {
            return Err(format!("{name} in {} not checked against its record: {item}", dir.display()));
        }
        checked.insert(name, recorded.as_str().unwrap_or_default().to_string());
    }
    let on_disk = files_in(dir);
    if checked.keys().cloned().collect::<Vec<_>>() != on_disk {
        return Err(format!(
            "verify of {} checked {:?}, the directory holds {on_disk:?}",
            dir.display(),
            checked.keys()
        ));
    }
    Ok(checked)
}

/// Runs a save into `dir` that stops right after writing its record (before the snapshot is
/// published) and kills it there: what a crash at the worst moment leaves.
#[cfg(feature = "failpoints")]
async fn save_killed_after_its_record(dir: &Path, endpoints: &str) -> TestResult {
    use etcdsnap_storage::failpoint;
    use tokio::io::{AsyncBufReadExt, BufReader};
    let dir = s(dir);
    let mut cmd = crate::common::command(&["save", "--dir", &dir, "--node-name", "n1", "--endpoints", endpoints]);
    cmd.env(failpoint::ENV, failpoint::LOCAL_AFTER_METADATA).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn()?;
    let mut lines = BufReader::new(child.stderr.take().ok_or("no stderr")?).lines();
    let wanted = format!("failpoint {} reached", failpoint::LOCAL_AFTER_METADATA);
    let reached = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains(&wanted) {
                return true;
            }
        }
        false
    })
    .await;
    child.start_kill()?;
    child.wait().await?;
    if reached != Ok(true) {
        return Err(format!("the save into {dir} never reached {}", failpoint::LOCAL_AFTER_METADATA).into());
    }
    Ok(())
}

/// Saves into both directories, a save killed in each after writing its record, and saves
/// again: every record of a published snapshot survives, each interrupted save's record is
/// removed by the next save into its own directory only, and `verify --dir` of each checks
/// every snapshot against its recorded sha256.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_snapshot_directories_in_one_parent_keep_every_record() -> TestResult {
    let etcd = etcd_with_objects(200).await?;
    let endpoints = etcd.endpoints().join(",");
    let parent = tempfile::tempdir()?;
    let (a, b) = (parent.path().join("a"), parent.path().join("b"));
    for dir in [&a, &b] {
        std::fs::create_dir(dir)?;
    }
    let save = |dir: &Path| {
        let (dir, endpoints) = (s(dir), endpoints.clone());
        async move {
            run(&["save", "--dir", &dir, "--node-name", "n1", "--endpoints", &endpoints], &[]).await.expect_ok();
        }
    };
    let records = |dir: &Path| files_in(&records_dir(dir));
    let with_suffix = |names: Vec<String>| names.iter().map(|n| format!("{n}.etcdsnap.json")).collect::<Vec<_>>();
    for dir in [&a, &b, &a, &b] {
        save(dir).await;
    }
    assert_eq!(records(&a), with_suffix(files_in(&a)));
    assert_eq!(records(&b), with_suffix(files_in(&b)));

    save_killed_after_its_record(&a, &endpoints).await?;
    let orphan_a: Vec<String> = records(&a).into_iter().filter(|r| !with_suffix(files_in(&a)).contains(r)).collect();
    assert_eq!(orphan_a.len(), 1, "the killed save left its record: {:?}", records(&a));
    // A save into b leaves everything of a alone, its interrupted save's record included.
    save(&b).await;
    assert!(records(&a).contains(&orphan_a[0]), "a save into b removed a record of a");
    save_killed_after_its_record(&b, &endpoints).await?;
    save(&a).await;
    assert_eq!(records(&a), with_suffix(files_in(&a)), "a's own save removes a's interrupted record");
    assert_eq!(records(&b).len(), files_in(&b).len() + 1, "a save into a touched b's records");
    save(&b).await;
    assert_eq!(records(&b), with_suffix(files_in(&b)));

    let (in_a, in_b) =
        (verified_against_records(&a, &endpoints).await?, verified_against_records(&b, &endpoints).await?);
    assert_eq!((in_a.len(), in_b.len()), (3, 4), "{in_a:?} {in_b:?}");
    // Neither directory lists the other's snapshots, and both hold snapshots only.
    let listed = run(&["ls", "--dir", &s(&a), "--node-name", "n1", "-o", "json"], &[]).await.expect_ok().json();
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(3));
    for dir in [&a, &b] {
        assert!(std::fs::read_dir(dir)?.flatten().all(|e| e.file_type().is_ok_and(|t| t.is_file())));
        assert!(crate::common::layout::private_dir(dir).join("lock").is_file(), "{} has its own lock", dir.display());
    }
    assert!(!parent.path().join(".etcdsnap/lock").exists(), "no lock shared by the two");
    assert!(files_in(&parent.path().join(".metadata")).is_empty(), "no extra metadata: nothing of K3s's");
    Ok(())
}

/// Records where the earlier release kept them, `<parent>/.metadata/<name>.etcdsnap.json`
/// beside the shared lock: listed and verified against as they are, moved by the next save
/// into their own directory, left in place by a save into the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_the_earlier_shared_layout_are_found_and_moved() -> TestResult {
    let etcd = etcd_with_objects(100).await?;
    let endpoints = etcd.endpoints().join(",");
    let parent = tempfile::tempdir()?;
    let (a, b) = (parent.path().join("a"), parent.path().join("b"));
    let shared = parent.path().join(".metadata");
    // The earlier release kept both directories' records in one place: their names differed.
    let save = |dir: &Path| {
        let (dir, endpoints) = (s(dir), endpoints.clone());
        let base = if dir.ends_with('a') { "in-a" } else { "in-b" };
        async move {
            run(&["save", "--dir", &dir, "--name", base, "--node-name", "n1", "--endpoints", &endpoints], &[])
                .await
                .expect_ok();
        }
    };
    for dir in [&a, &b] {
        std::fs::create_dir(dir)?;
        save(dir).await;
        save(dir).await;
    }
    let before = (verified_against_records(&a, &endpoints).await?, verified_against_records(&b, &endpoints).await?);
    // The earlier release's layout: every record in the shared .metadata, its lock beside it.
    std::fs::create_dir_all(&shared)?;
    std::fs::create_dir_all(parent.path().join(".etcdsnap"))?;
    std::fs::write(parent.path().join(".etcdsnap/lock"), b"")?;
    for dir in [&a, &b] {
        for record in files_in(&records_dir(dir)) {
            std::fs::rename(records_dir(dir).join(&record), shared.join(&record))?;
        }
    }
    assert_eq!(files_in(&shared).len(), 4);
    let found = (verified_against_records(&a, &endpoints).await?, verified_against_records(&b, &endpoints).await?);
    assert_eq!(found, before, "records in the shared parent are read where they are");

    save(&b).await;
    let left: Vec<String> = files_in(&shared);
    let a_records: Vec<String> = files_in(&a).iter().map(|n| format!("{n}.etcdsnap.json")).collect();
    assert_eq!(left, a_records, "a save into b moves b's records and leaves a's");
    assert_eq!(files_in(&records_dir(&b)).len(), 3);
    save(&a).await;
    assert!(files_in(&shared).is_empty(), "{:?}", files_in(&shared));
    let after = (verified_against_records(&a, &endpoints).await?, verified_against_records(&b, &endpoints).await?);
    for (name, sha) in before.0.iter().chain(&before.1) {
        assert_eq!(after.0.get(name).or(after.1.get(name)), Some(sha), "{name}: record lost in the move");
    }
    Ok(())
}

/// K3s keeps its extra metadata in `<parent>/.metadata/<name>`, shared by every snapshot
/// directory of the parent. An interrupted save into b whose name a holds (its record is
/// all it left) is cleaned up by b's next save: b's record goes, and K3s's file of that name,
/// which may be a's, stays, with a's record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k3s_metadata_of_a_snapshot_the_other_directory_holds_is_never_removed() -> TestResult {
    let etcd = etcd_with_objects(50).await?;
    let endpoints = etcd.endpoints().join(",");
    let parent = tempfile::tempdir()?;
    let (a, b) = (parent.path().join("a"), parent.path().join("b"));
    for dir in [&a, &b] {
        std::fs::create_dir(dir)?;
    }
    let save = |dir: &Path| {
        let (dir, endpoints) = (s(dir), endpoints.clone());
        async move {
            run(&["save", "--dir", &dir, "--node-name", "n1", "--endpoints", &endpoints], &[]).await.expect_ok();
        }
    };
    save(&a).await;
    let [name] = <[String; 1]>::try_from(files_in(&a)).map_err(|n| format!("{n:?}"))?;
    let record = format!("{name}.etcdsnap.json");
    // K3s's extra metadata of a's snapshot, as K3s writes it.
    let k3s_file = parent.path().join(".metadata").join(&name);
    std::fs::create_dir(parent.path().join(".metadata"))?;
    std::fs::write(&k3s_file, br#"{"cluster":"prod"}"#)?;
    // What a save into b of the same name, killed after its record, leaves.
    std::fs::create_dir_all(records_dir(&b))?;
    std::fs::copy(records_dir(&a).join(&record), records_dir(&b).join(&record))?;

    // Another base name: within the same second a save into b would otherwise take the name.
    let args = ["save", "--dir", &s(&b), "--name", "in-b", "--node-name", "n1", "--endpoints", &endpoints];
    run(&args, &[]).await.expect_ok();
    let b_records = files_in(&records_dir(&b));
    assert!(
        b_records.len() == 1 && b_records[0].starts_with("in-b-n1-"),
        "b's interrupted record stays: {b_records:?}"
    );
    assert_eq!(std::fs::read(&k3s_file)?, br#"{"cluster":"prod"}"#, "K3s's file of a's snapshot changed");
    assert_eq!(files_in(&records_dir(&a)), [record]);
    let listed = run(&["ls", "--dir", &s(&a), "--node-name", "n1", "-o", "json"], &[]).await.expect_ok().json();
    assert_eq!(listed["items"][0]["spec"]["metadata"]["cluster"], "prod", "{listed}");
    assert_eq!(verified_against_records(&a, &endpoints).await?.len(), 1);
    Ok(())
}
