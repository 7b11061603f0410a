//! What `--help` shows of each command (headings, only the flags it uses, examples) and the
//! combinations the parser refuses before anything runs (exit 2, nothing written).

use std::process::{Command, Output};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

fn etcdsnap(args: &[&str]) -> Result<Output> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_etcdsnap"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("ETCDSNAP_") || k.starts_with("AWS_")) {
        cmd.env_remove(k);
    }
    Ok(cmd.args(args).env("RUST_LOG", "warn").output()?)
}

fn help(command: &str) -> Result<String> {
    let out = etcdsnap(&[command, "--help"])?;
    assert!(out.status.success(), "{command} --help failed");
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

const COMMANDS: [&str; 14] = [
    "save",
    "ls",
    "delete",
    "prune",
    "verify",
    "agent",
    "crd",
    "reconcile",
    "watch",
    "restore",
    "drill",
    "kit",
    "completion",
    "man",
];

#[test]
fn every_command_has_examples_and_its_options_under_headings() -> Result {
    for command in COMMANDS {
        let text = help(command)?;
        let examples = text.split_once("\nExamples:\n").map(|(_, e)| e).unwrap_or_default();
        assert!(examples.contains(&format!("etcdsnap {command}")), "{command}: no examples\n{text}");
        assert!(text.contains("\nGlobal options:\n"), "{command}: no global heading\n{text}");
    }
    let save = help("save")?;
    for heading in ["etcd:", "Storage:", "S3:", "Kubernetes:", "Output:", "Global options:"] {
        assert!(save.lines().any(|l| l == heading), "save: no {heading}\n{save}");
    }
    let position = |h: &str| save.lines().position(|l| l == h);
    assert!(position("etcd:") < position("Storage:") && position("Storage:") < position("S3:"), "{save}");
    Ok(())
}

#[test]
fn a_command_shows_only_the_options_it_uses() -> Result {
    let save = help("save")?;
    for unused in ["--orphan-ttl", "--legacy-configmap", "--annotate-node", "--retention", "--s3-retention"] {
        assert!(!save.contains(unused), "save --help lists {unused}:\n{save}");
    }
    for used in ["--endpoints", "--s3-bucket", "--compress", "--zstd-level", "--token", "--extra-metadata-configmap"] {
        assert!(save.contains(used), "save --help lacks {used}:\n{save}");
    }
    let ls = help("ls")?;
    for unused in ["--endpoints", "--token", "--compress", "--retention", "--name ", "--orphan-ttl"] {
        assert!(!ls.contains(unused), "ls --help lists {unused}:\n{ls}");
    }
    assert!(ls.contains("wide"), "{ls}");
    let prune = help("prune")?;
    assert!(prune.contains("--retention") && prune.contains("--dry-run") && !prune.contains("--endpoints"), "{prune}");
    let restore = help("restore")?;
    assert!(!restore.contains("Also keep snapshots in S3"), "{restore}");
    assert!(restore.contains("NAME is a snapshot in the S3 folder"), "{restore}");
    assert!(
        restore.contains("--member-name") && restore.contains("--etcd-cluster-id") && restore.contains("--no-kube")
    );
    // K3s's flags are still taken where K3s takes them, the ones a command ignores included.
    for args in [
        &["ls", "--snapshot-retention", "3", "--etcd-snapshot-compress", "--name", "x", "--dir", "/nonexistent"][..],
        &["save", "--snapshot-retention", "3", "--dir", "/nonexistent"],
    ] {
        assert_ne!(etcdsnap(args)?.status.code(), Some(2), "{args:?} refused");
    }
    Ok(())
}

#[test]
fn conflicting_flags_are_refused_with_exit_2_and_nothing_written() -> Result {
    let data = tempfile::tempdir()?;
    let dd = data.path().to_string_lossy().into_owned();
    let cases: [(&[&str], &str); 9] = [
        (&["save", "--compress", "zstd", "--snapshot-compress"], "--snapshot-compress"),
        (&["save", "--compress", "zip", "--etcd-snapshot-compress"], "--snapshot-compress"),
        (&["save", "--zstd-level", "9"], "--zstd-level"),
        (&["save", "--snapshot-compress", "--zstd-level", "9"], "--zstd-level"),
        (&["agent", "--compress", "zip", "--zstd-level", "3"], "--zstd-level"),
        (&["agent", "--disable-snapshots", "--schedule", "@hourly"], "--schedule"),
        (&["ls", "--cluster", "--no-kube"], "--no-kube"),
        (&["crd", "--install", "--no-kube"], "--no-kube"),
        (&["verify", "-o", "wide"], "wide"),
    ];
    for (args, named) in cases {
        let mut args = args.to_vec();
        if args[0] != "crd" {
            args.extend(["--data-dir", &dd]);
        }
        let out = etcdsnap(&args)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(named), "{args:?} does not name {named}: {stderr}");
    }
    // The old spellings that meant something else elsewhere are gone from restore.
    for old in [["--name", "m0"], ["--cluster-id", "abc"]] {
        let mut args = vec!["restore", "--to-revision", "5", "--data-dir", &dd, "--member-name", "m0"];
        args.extend(old);
        assert_eq!(etcdsnap(&args)?.status.code(), Some(2), "{args:?} accepted");
    }
    assert_eq!(std::fs::read_dir(data.path())?.count(), 0, "a refused command wrote something");
    Ok(())
}
