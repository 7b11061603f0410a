//! The command line as a person at a terminal and a script in a pipe meet it: what empty and
//! missing directories say, `ls` on 80- and 120-column terminals (tmux), `-o wide` and into a
//! pipe, a reader that goes away, Ctrl-C during a save, previews of what `prune` and `delete`
//! remove, and one clear error per failure.

use crate::common::etcd::etcd_with_objects;
use crate::common::layout::records_dir;
use crate::common::slow_etcd::{SlowEtcd, wait_for_save_in_progress};
use crate::common::terminal::Terminal;
use crate::common::{TestResult, files_in, run, s};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

/// A node name as long as cloud providers make them: its snapshot names do not fit 80 columns
/// with the other columns beside them.
const LONG_NODE: &str = "ip-172-31-10-20.eu-west-1.compute.internal";

/// Saves `n` snapshots of `base` into `dir` as node `node`.
async fn save_n(dir: &Path, node: &str, base: &str, endpoints: &str, n: usize) {
    for _ in 0..n {
        let dir = s(dir);
        let args = ["save", "--dir", &dir, "--node-name", node, "--name", base, "--endpoints", endpoints, "--no-kube"];
        run(&args, &[]).await.expect_ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_and_missing_directories_are_named_and_never_pass_for_success() -> TestResult {
    let root = tempfile::tempdir()?;
    let empty = root.path().join("empty");
    std::fs::create_dir(&empty)?;
    let (empty_dir, missing_dir) = (s(&empty), s(&root.path().join("missing")));

    // ls of an empty directory: nothing on stdout, a line on stderr, success (kubectl's way).
    let out = run(&["ls", "--dir", &empty_dir, "--node-name", "n1"], &[]).await.expect_ok();
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    assert!(out.stderr.contains(&format!("No snapshots found in {empty_dir}")), "{}", out.stderr);
    // verify of an empty one: there was nothing to check, which is no success; nor a drill.
    let out = run(&["verify", "--dir", &empty_dir, "--node-name", "n1"], &[]).await.expect_fail();
    assert!(out.stderr.contains("nothing to verify") && out.stderr.contains(&empty_dir), "{}", out.stderr);
    assert!(!out.stdout.contains("verified"), "{}", out.stdout);
    let etcdutl = s(&testenv::testbin_version("etcdutl", "3.7")?);
    let out = run(&["drill", "--dir", &empty_dir, "--node-name", "n1", "--etcdutl", &etcdutl], &[]).await.expect_fail();
    assert!(out.stderr.contains(&format!("no snapshots of node n1 to drill in {empty_dir}")), "{}", out.stderr);
    assert!(!out.stdout.contains("drilled"), "{}", out.stdout);

    // A missing directory, named by --dir or as the default of --data-dir.
    let default = root.path().join("state");
    let default_dir = s(&default.join("snapshots"));
    let missing = [
        (vec!["--dir", missing_dir.as_str()], missing_dir.clone()),
        (vec!["--data-dir", default.to_str().unwrap_or_default()], default_dir),
    ];
    for (flags, named) in &missing {
        for command in ["ls", "verify", "prune", "delete", "drill"] {
            let mut args = vec![command];
            match command {
                "delete" => args.push("on-demand-n1-1700000000"),
                "drill" => args.extend(["--etcdutl", &etcdutl]),
                _ => {}
            }
            args.extend(flags.iter().copied());
            args.extend(["--node-name", "n1"]);
            let out = run(&args, &[]).await.expect_fail();
            assert!(
                out.stderr.contains(&format!("snapshot directory {named} does not exist")),
                "{args:?}: {}",
                out.stderr
            );
            assert!(!out.stdout.contains("verified") && !out.stdout.contains("Name"), "{args:?}: {}", out.stdout);
        }
    }
    assert!(!root.path().join("missing").exists() && !default.exists(), "a reading command created a directory");
    Ok(())
}

/// The snapshot table as a terminal `columns` wide shows it (wrapped lines joined back into
/// the lines etcdsnap wrote).
async fn ls_on_a_terminal(dir: &Path, columns: u16) -> Result<String, Box<dyn std::error::Error>> {
    let bin = env!("CARGO_BIN_EXE_etcdsnap");
    let script =
        format!("env -u COLUMNS RUST_LOG=warn {bin} ls --dir {} --node-name n1; echo __done__; sleep 60", s(dir));
    let terminal = Terminal::start(columns, &script)?;
    let screen = terminal.wait_for("__done__", Duration::from_secs(30)).await?;
    let table: Vec<&str> = screen.lines().take_while(|l| !l.contains("__done__")).collect();
    Ok(table.join("\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_fits_80_and_120_column_terminals_and_gives_a_pipe_whole_bytes() -> TestResult {
    let etcd = etcd_with_objects(300).await?;
    let endpoints = etcd.endpoints().join(",");
    let data = tempfile::tempdir()?;
    let dir = data.path().join("snapshots");
    std::fs::create_dir(&dir)?;
    save_n(&dir, LONG_NODE, "on-demand", &endpoints, 2).await;
    let mut args = vec!["save", "--compress", "zstd", "--name", "etcd-snapshot", "--node-name", LONG_NODE];
    let dir_arg = s(&dir);
    args.extend(["--dir", &dir_arg, "--endpoints", &endpoints, "--no-kube"]);
    run(&args, &[]).await.expect_ok();
    let names = files_in(&dir);
    assert!(names.iter().all(|n| n.len() > 60), "{names:?}");

    for columns in [80, 120] {
        let screen = ls_on_a_terminal(&dir, columns).await?;
        let lines: Vec<&str> = screen.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1 + names.len(), "a header and a row per snapshot:\n{screen}");
        for line in &lines {
            let wide = line.chars().count();
            assert!(wide <= usize::from(columns), "wrapped at {columns} columns ({wide} wide):\n{screen}");
        }
        assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>(), ["Name", "Where", "Size", "Created", "Drill"]);
        for row in &lines[1..] {
            assert!(row.contains(" local ") && row.contains("iB ") && row.contains(" ago"), "{screen}");
        }
    }

    // Into a pipe: K3s's columns, the size in whole bytes, exactly the file's.
    let piped = run(&["ls", "--dir", &dir_arg, "--node-name", "n1"], &[]).await.expect_ok();
    let mut rows = piped.stdout.lines();
    let header: Vec<&str> = rows.next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["Name", "Location", "Size", "Created", "Drill"], "{}", piped.stdout);
    let mut listed = Vec::new();
    for row in rows {
        let cells: Vec<&str> = row.split_whitespace().collect();
        let bytes = std::fs::metadata(dir.join(cells[0]))?.len();
        assert_eq!(cells[2], bytes.to_string(), "{row}");
        assert_eq!(cells[1], format!("file://{}/{}", dir.canonicalize()?.display(), cells[0]));
        listed.push(cells[0].to_string());
    }
    listed.sort();
    assert_eq!(listed, names);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_goes_away_ends_ls_quietly() -> TestResult {
    let etcd = etcd_with_objects(50).await?;
    let data = tempfile::tempdir()?;
    let dir = data.path().join("snapshots");
    std::fs::create_dir(&dir)?;
    save_n(&dir, "n1", "on-demand", &etcd.endpoints().join(","), 1).await;
    for format in ["json", "yaml", "table"] {
        let mut cmd = crate::common::command(&["ls", "--dir", &s(&dir), "--node-name", "n1", "-o", format]);
        cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn()?;
        // The reader is gone before the first byte is written: the write fails with EPIPE.
        drop(child.stdout.take());
        let out = child.wait_with_output().await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "-o {format}: {stderr}");
        assert!(!stderr.contains("Broken pipe") && !stderr.contains("panicked"), "-o {format}: {stderr}");
    }
    Ok(())
}

/// The snapshot names a prune's or delete's output says it removes (or would remove).
fn removed_names(stdout: &str, dry_run: bool) -> BTreeSet<String> {
    stdout
        .lines()
        .filter_map(|l| match dry_run {
            true => l.trim_start().strip_prefix("delete ").map(|n| n.trim().to_string()),
            false => {
                l.strip_prefix("Snapshot ").and_then(|r| r.split_once(" deleted from ")).map(|(n, _)| n.to_string())
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_and_delete_dry_runs_remove_nothing_and_say_exactly_what_the_real_ones_remove() -> TestResult {
    let etcd = etcd_with_objects(50).await?;
    let endpoints = etcd.endpoints().join(",");
    let data = tempfile::tempdir()?;
    let dir = data.path().join("snapshots");
    std::fs::create_dir(&dir)?;
    save_n(&dir, "n1", "on-demand", &endpoints, 4).await;
    save_n(&dir, "n1", "weekly", &endpoints, 2).await;
    let before = files_in(&dir);
    let dir_arg = s(&dir);
    let prune = |dry: bool| {
        let dir = dir_arg.clone();
        async move {
            let mut args = vec!["prune", "--dir", &dir, "--node-name", "n1", "--retention", "2", "--no-kube"];
            if dry {
                args.push("--dry-run");
            }
            run(&args, &[]).await.expect_ok()
        }
    };

    let preview = prune(true).await;
    assert_eq!(files_in(&dir), before, "a dry run removed something:\n{}", preview.stdout);
    let would = removed_names(&preview.stdout, true);
    assert_eq!(would.len(), 2, "{}", preview.stdout);
    assert!(preview.stdout.contains("keep the newest 2 of on-demand-<node>-<time> per node"), "{}", preview.stdout);
    assert_eq!(preview.stdout.lines().filter(|l| l.trim_start().starts_with("keep ")).count(), 2, "{}", preview.stdout);
    assert!(preview.stdout.contains("nothing was deleted"), "{}", preview.stdout);

    let real = prune(false).await;
    let removed = removed_names(&real.stdout, false);
    assert_eq!(removed, would, "the dry run said:\n{}\nthe prune did:\n{}", preview.stdout, real.stdout);
    assert_eq!(real.stdout.lines().count(), removed.len(), "one line per removal:\n{}{}", real.stdout, real.stderr);
    let expected: Vec<String> = before.iter().filter(|n| !removed.contains(*n)).cloned().collect();
    assert_eq!(files_in(&dir), expected);

    // delete --dry-run: where it would delete from, and nothing deleted.
    let victim = expected.iter().find(|n| n.starts_with("weekly-")).cloned().ok_or("no weekly snapshot")?;
    let args = ["delete", &victim, "--dir", &dir_arg, "--node-name", "n1", "--no-kube", "--dry-run"];
    let preview = run(&args, &[]).await.expect_ok();
    let canonical = dir.canonicalize()?;
    assert!(preview.stdout.contains(&format!("Snapshot {victim} would be deleted from {}.", canonical.display())));
    assert_eq!(files_in(&dir), expected);
    let real = run(&args[..args.len() - 1], &[]).await.expect_ok();
    assert_eq!(real.stdout, format!("Snapshot {victim} deleted from {}.\n", canonical.display()), "{}", real.stderr);
    assert!(!dir.join(&victim).exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_a_save_saves_nothing_and_says_so() -> TestResult {
    let slow = SlowEtcd::start(1000, 300_000).await?;
    let data = tempfile::tempdir()?;
    let dir = data.path().join("snapshots");
    std::fs::create_dir(&dir)?;
    let args = ["save", "--dir", &s(&dir), "--node-name", "n1", "--endpoints", &slow.endpoint, "--no-kube"];
    let mut cmd = crate::common::command(&args);
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let child = cmd.spawn()?;
    let pid = child.id().ok_or("no pid")?;
    wait_for_save_in_progress(pid, &dir, 50_000, Duration::from_secs(30)).await?;
    let sent = std::process::Command::new("kill").args(["-INT", &pid.to_string()]).status()?;
    assert!(sent.success());
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.trim_end().ends_with("interrupted: no snapshot saved"), "{stderr}");
    assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(files_in(&dir).is_empty() && files_in(&records_dir(&dir)).is_empty(), "an interrupted save left files");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_wide_adds_the_location_revision_compression_cluster_id_history_and_lock() -> TestResult {
    let etcd = etcd_with_objects(100).await?;
    let endpoints = etcd.endpoints().join(",");
    let mut client = etcd.client().await?;
    let status = client.status().await?;
    let header = status.header().ok_or("no header")?;
    // etcdctl's spelling of the cluster id; no write comes after this revision.
    let (cluster_id, revision) = (format!("{:x}", header.cluster_id()), header.revision());
    let data = tempfile::tempdir()?;
    let dir = data.path().join("snapshots");
    std::fs::create_dir(&dir)?;
    let dir_arg = s(&dir);
    for compress in ["none", "zstd"] {
        let args = ["save", "--dir", &dir_arg, "--node-name", "n1", "--endpoints", &endpoints, "--compress", compress];
        run(&[&args[..], &["--no-kube"]].concat(), &[]).await.expect_ok();
    }
    let out = run(&["ls", "--dir", &dir_arg, "--node-name", "n1", "-o", "wide"], &[]).await.expect_ok();
    let mut lines = out.stdout.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
    let wide = [
        "Name",
        "Where",
        "Location",
        "Size",
        "Created",
        "Drill",
        "Revision",
        "Compression",
        "Cluster-ID",
        "History",
        "Locked-Until",
    ];
    assert_eq!(header, wide, "{}", out.stdout);
    let canonical = dir.canonicalize()?;
    let (mut compressions, mut histories) = (BTreeSet::new(), BTreeSet::new());
    for row in lines {
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells.len(), wide.len(), "{row}");
        let name = cells[0];
        assert_eq!(cells[1], "local", "{row}");
        assert_eq!(cells[2], format!("file://{}/{name}", canonical.display()), "{row}");
        assert_eq!(cells[3], std::fs::metadata(dir.join(name))?.len().to_string(), "whole bytes: {row}");
        assert!(cells[4].parse::<jiff::Timestamp>().is_ok(), "an RFC 3339 time: {row}");
        assert_eq!(cells[5], "-", "never drilled: {row}");
        assert_eq!(cells[6], revision.to_string(), "{row}");
        assert_eq!(cells[7], if name.ends_with(".zst") { "zstd" } else { "none" }, "{row}");
        assert_eq!(cells[8], cluster_id, "{row}");
        assert_eq!(cells[10], "-", "a local copy is never locked: {row}");
        compressions.insert(cells[7].to_string());
        histories.insert(cells[9].to_string());
    }
    assert_eq!(compressions.len(), 2, "{}", out.stdout);
    // The second save found the live etcd to be the first one's history, and said so.
    assert_eq!(histories.len(), 1, "{}", out.stdout);
    assert!(histories.iter().all(|h| h.len() == 16 && h != "legacy"), "{}", out.stdout);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_on_a_terminal_clears_the_progress_bar_and_says_nothing_was_saved() -> TestResult {
    let slow = SlowEtcd::start(1000, 300_000).await?;
    let data = tempfile::tempdir()?;
    let dir = data.path().join("snapshots");
    std::fs::create_dir(&dir)?;
    let bin = env!("CARGO_BIN_EXE_etcdsnap");
    let script = format!(
        "RUST_LOG=warn {bin} save --dir {} --node-name n1 --endpoints {} --no-kube; echo __done__ $?; sleep 60",
        s(&dir),
        slow.endpoint
    );
    let terminal = Terminal::start(100, &script)?;
    let during = terminal.wait_for(" of ", Duration::from_secs(30)).await?;
    assert!(during.contains("Saving snapshot ["), "no progress bar:\n{during}");
    terminal.send_keys("C-c")?;
    let screen = terminal.wait_for("__done__", Duration::from_secs(30)).await?;
    let lines: Vec<&str> = screen.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect();
    assert_eq!(lines, ["interrupted: no snapshot saved", "__done__ 130"], "the screen after Ctrl-C:\n{screen}");
    assert!(files_in(&dir).is_empty() && files_in(&records_dir(&dir)).is_empty(), "an interrupted save left files");
    Ok(())
}

/// The lines of `stderr` that are log lines at `level` (`WARN`, `INFO`).
fn log_lines<'a>(stderr: &'a str, level: &str) -> Vec<&'a str> {
    let tag = format!(" {level} ");
    stderr.lines().filter(|l| l.contains(&tag)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_save_says_so_once_with_a_hint_and_no_kube_asked_for_is_no_warning() -> TestResult {
    let etcd = etcd_with_objects(50).await?;
    let live = etcd.endpoints()[0].clone();
    let data = tempfile::tempdir()?;
    let dir = data.path().join("snapshots");
    std::fs::create_dir(&dir)?;
    let dir_arg = s(&dir);
    let save = |endpoints: String| {
        let dir = dir_arg.clone();
        async move { run(&["save", "--dir", &dir, "--node-name", "n1", "--endpoints", &endpoints, "--no-kube"], &[]).await }
    };
    let dead = |n: usize| -> Result<Vec<String>, Box<dyn std::error::Error>> {
        (0..n).map(|_| Ok(format!("http://127.0.0.1:{}", testenv::free_port()?))).collect()
    };
    let errors = |stderr: &str| stderr.lines().filter(|l| l.starts_with("error")).count();

    // A wrong endpoint: one error naming it, no snapshot named that was never taken, no warning.
    let [wrong] = <[String; 1]>::try_from(dead(1)?).map_err(|_| "one port")?;
    let out = save(wrong.clone()).await.expect_fail();
    assert_eq!(errors(&out.stderr), 1, "{}", out.stderr);
    assert!(out.stderr.contains("error: no snapshot saved: ") && out.stderr.contains(&wrong), "{}", out.stderr);
    assert!(log_lines(&out.stderr, "WARN").is_empty(), "{}", out.stderr);
    assert!(!out.stdout.contains("Snapshot") && !out.stderr.contains("Snapshot "), "{}\n{}", out.stdout, out.stderr);
    // Two wrong ones: a warning for the first (the next is tried), the error for the last.
    let two = dead(2)?;
    let out = save(two.join(",")).await.expect_fail();
    let warnings = log_lines(&out.stderr, "WARN");
    assert_eq!(warnings.len(), 1, "{}", out.stderr);
    assert!(warnings[0].contains("trying the next") && warnings[0].contains(&two[0]), "{}", out.stderr);
    assert_eq!(errors(&out.stderr), 1, "{}", out.stderr);
    assert!(out.stderr.contains(&format!("cannot reach etcd at {}", two[1])), "{}", out.stderr);
    // https against a member that serves plain HTTP: the hint names the URL to use.
    let https = live.replacen("http://", "https://", 1);
    let out = save(https).await.expect_fail();
    assert_eq!(errors(&out.stderr), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("(the member may serve plain HTTP: try --endpoints {live})")),
        "no hint: {}",
        out.stderr
    );
    assert!(files_in(&dir).is_empty() && files_in(&records_dir(&dir)).is_empty(), "a failed save left files");

    // A dead endpoint before a live one: one warning, and the save goes on.
    let out = save(format!("{},{live}", dead(1)?[0])).await.expect_ok();
    assert_eq!(log_lines(&out.stderr, "WARN").len(), 1, "{}", out.stderr);
    // --no-kube asked for: an info line at most, on every command, never a warning.
    let name = files_in(&dir).pop().ok_or("no snapshot")?;
    for args in [
        vec!["save", "--endpoints", live.as_str()],
        vec!["ls"],
        vec!["verify"],
        vec!["prune", "--retention", "5"],
        vec!["delete", "--dry-run", name.as_str()],
    ] {
        let all = [&args[..], &["--dir", &dir_arg, "--node-name", "n1", "--no-kube"]].concat();
        let out = run(&all, &[]).await.expect_ok();
        assert!(log_lines(&out.stderr, "WARN").is_empty(), "{args:?}: {}", out.stderr);
        assert!(!out.stderr.contains("not configured"), "{args:?}: {}", out.stderr);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_counts_add_up_and_takes_paths() -> TestResult {
    let etcd = etcd_with_objects(100).await?;
    let endpoints = etcd.endpoints().join(",");
    let data = tempfile::tempdir()?;
    let dir = data.path().join("snapshots");
    std::fs::create_dir(&dir)?;
    save_n(&dir, "n1", "on-demand", &endpoints, 3).await;
    let names = files_in(&dir);
    let [good, unrecorded, damaged] = <[String; 3]>::try_from(names).map_err(|n| format!("{n:?}"))?;
    std::fs::remove_file(records_dir(&dir).join(format!("{unrecorded}.etcdsnap.json")))?;
    let mut bytes = std::fs::read(dir.join(&damaged))?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(dir.join(&damaged), &bytes)?;

    let dir_arg = s(&dir);
    let out = run(&["verify", "--dir", &dir_arg, "--node-name", "n1"], &[]).await.expect_fail();
    let row = |name: &str| out.stdout.lines().find(|l| l.starts_with(name)).unwrap_or_default().to_string();
    assert!(row(&good).ends_with(" OK"), "{}", out.stdout);
    assert!(row(&unrecorded).contains("WARNING: no record: trailer valid, sha256 and size not checked"));
    assert!(row(&damaged).contains("FAILED: "), "{}", out.stdout);
    let summary = "3 checked: 1 verified against their record, 1 trailer only (no record), 1 failed.";
    assert_eq!(out.stdout.lines().last(), Some(summary), "{}", out.stdout);
    assert_eq!(out.stderr.matches("has no record").count(), 1, "{}", out.stderr);
    let json = run(&["verify", "--dir", &dir_arg, "--node-name", "n1", "-o", "json"], &[]).await.expect_fail().json();
    let items = json["items"].as_array().ok_or("no items")?;
    let count = |key: &str, value: bool| items.iter().filter(|i| i[key] == value).count();
    assert_eq!((items.len(), count("ok", true), count("againstRecord", true)), (3, 2, 2), "{json}");

    // Paths, as restore and drill take them: `./name` from the snapshot directory is checked
    // against its record; a copy elsewhere, with no record, against etcd's trailer only.
    let copies = data.path().join("copies");
    std::fs::create_dir(&copies)?;
    std::fs::copy(dir.join(&good), copies.join("copy.db"))?;
    let mut cmd = crate::common::command(&["verify", &format!("./{good}"), "../copies/copy.db"]);
    let out: crate::common::Run = cmd.current_dir(&dir).output().await?.into();
    let out = out.expect_ok();
    assert!(out.stdout.lines().any(|l| l.starts_with(good.as_str()) && l.ends_with(" OK")), "{}", out.stdout);
    assert!(out.stdout.lines().any(|l| l.starts_with("copy.db") && l.contains("WARNING: no record")));
    assert!(out.stdout.contains("2 checked: 1 verified against their record, 1 trailer only (no record), 0 failed."));
    let mut cmd = crate::common::command(&["verify", &format!("./{damaged}")]);
    let out: crate::common::Run = cmd.current_dir(&dir).output().await?.into();
    assert!(out.expect_fail().stdout.contains("1 checked: 0 verified against their record, 0 trailer only"));
    // A path that is not there is named, and nothing is checked.
    let out = run(&["verify", &s(&copies.join("gone.db"))], &[]).await.expect_fail();
    assert!(out.stderr.contains("gone.db") && !out.stdout.contains("checked"), "{}\n{}", out.stdout, out.stderr);
    Ok(())
}
