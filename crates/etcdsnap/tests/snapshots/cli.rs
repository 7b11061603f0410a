//! The command line as a person at a terminal and a script in a pipe meet it: what empty and
//! missing directories say, `ls` on an 80-column terminal (tmux) and into a pipe, a reader that
//! goes away, Ctrl-C during a save, and previews of what `prune` and `delete` remove.

use crate::common::etcd::etcd_with_objects;
use crate::common::layout::records_dir;
use crate::common::slow_etcd::{SlowEtcd, wait_for_save_in_progress};
use crate::common::{TestResult, files_in, run, s};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

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
    // verify of an empty one: there was nothing to check, which is no success.
    let out = run(&["verify", "--dir", &empty_dir, "--node-name", "n1"], &[]).await.expect_fail();
    assert!(out.stderr.contains("nothing to verify") && out.stderr.contains(&empty_dir), "{}", out.stderr);
    assert!(!out.stdout.contains("verified"), "{}", out.stdout);

    // A missing directory, named by --dir or as the default of --data-dir.
    let default = root.path().join("state");
    let default_dir = s(&default.join("snapshots"));
    let missing = [
        (vec!["--dir", missing_dir.as_str()], missing_dir.clone()),
        (vec!["--data-dir", default.to_str().unwrap_or_default()], default_dir),
    ];
    for (flags, named) in &missing {
        for command in ["ls", "verify", "prune", "delete"] {
            let mut args = vec![command];
            if command == "delete" {
                args.push("on-demand-n1-1700000000");
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

/// The snapshot table as an 80-column terminal shows it, from `tmux capture-pane -J` (wrapped
/// lines joined back into the lines etcdsnap wrote).
async fn ls_on_a_terminal(dir: &Path, columns: u16) -> Result<String, Box<dyn std::error::Error>> {
    let socket = format!("etcdsnap-test-{}", std::process::id());
    let bin = env!("CARGO_BIN_EXE_etcdsnap");
    let script =
        format!("env -u COLUMNS RUST_LOG=warn {bin} ls --dir {} --node-name n1; echo __done__; sleep 60", s(dir));
    let tmux = |args: &[&str]| {
        let mut cmd = std::process::Command::new("tmux");
        cmd.args(["-L", socket.as_str(), "-f", "/dev/null"]).args(args);
        cmd
    };
    let width = columns.to_string();
    let started = tmux(&["new-session", "-d", "-x", &width, "-y", "50", &script]).status()?;
    assert!(started.success(), "tmux could not start a session");
    let deadline = Instant::now() + Duration::from_secs(30);
    let screen = loop {
        let out = tmux(&["capture-pane", "-p", "-J"]).output()?;
        let screen = String::from_utf8_lossy(&out.stdout).into_owned();
        if screen.contains("__done__") || Instant::now() > deadline {
            break screen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = tmux(&["kill-server"]).status();
    let table: Vec<&str> = screen.lines().take_while(|l| !l.contains("__done__")).collect();
    Ok(table.join("\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_fits_an_80_column_terminal_and_gives_a_pipe_whole_bytes() -> TestResult {
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

    let screen = ls_on_a_terminal(&dir, 80).await?;
    let lines: Vec<&str> = screen.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1 + names.len(), "a header and a row per snapshot:\n{screen}");
    for line in &lines {
        assert!(line.chars().count() <= 80, "wrapped at 80 columns ({} wide):\n{screen}", line.chars().count());
    }
    assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>(), ["Name", "Where", "Size", "Created", "Drill"]);
    for row in &lines[1..] {
        assert!(row.contains(" local ") && row.contains("iB ") && row.contains(" ago"), "{screen}");
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
