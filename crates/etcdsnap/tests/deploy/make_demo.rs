//! `make demo` builds only the servers the demo starts, and `make test` every one: what make
//! would run, and `testbins/build.sh` run with the demo's parts in a directory that holds only
//! those servers (it must find nothing to build and fetch no Go module).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

fn root() -> Result<PathBuf> {
    Ok(Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize()?)
}

/// The commands `make target` would run (`make -n`), from the repository's root.
fn make_dry_run(target: &str) -> Result<String> {
    let out = Command::new("make").args(["-n", target]).current_dir(root()?).output()?;
    assert!(out.status.success(), "make -n {target}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?)
}

/// `KEY=VALUE` lines of testbins/versions.env.
fn versions() -> Result<std::collections::BTreeMap<String, String>> {
    let text = std::fs::read_to_string(root()?.join("testbins/versions.env"))?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect())
}

/// The servers and tools the demo runs from the test binaries' directory: the three servers
/// testenv-up starts (crates/testenv/src/bin/testenv-up.rs: etcd, kube-apiserver, S3) and
/// every `.../target/testbins}/NAME` scripts/demo.sh calls.
fn used_by_the_demo() -> Result<BTreeSet<String>> {
    let script = std::fs::read_to_string(root()?.join("scripts/demo.sh"))?;
    let mut used: BTreeSet<String> = ["etcd", "kube-apiserver", "versitygw"].map(String::from).into();
    for (i, _) in script.match_indices("target/testbins}/") {
        let rest = &script[i + "target/testbins}/".len()..];
        let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
        used.insert(name);
    }
    Ok(used)
}

#[test]
fn make_demo_builds_only_the_servers_the_demo_starts() -> Result {
    let demo = make_dry_run("demo")?;
    let build = demo.lines().find(|l| l.starts_with("./testbins/build.sh")).ok_or("make demo builds no servers")?;
    let parts: Vec<&str> = build.split_whitespace().skip(1).collect();
    assert_eq!(parts, ["kube-apiserver", "kubectl", "etcd", "versitygw"], "{demo}");
    let test = make_dry_run("test")?;
    assert!(test.lines().any(|l| l.trim() == "./testbins/build.sh"), "make test must build every server:\n{test}");

    // A machine with only the demo's servers built, and no way to fetch a Go module.
    let v = versions()?;
    let (kube, etcd, s3) = (&v["KUBE_VERSION"], &v["ETCD_VERSION"], &v["VERSITYGW_VERSION"]);
    let built = testenv::testbins_dir();
    let out = tempfile::tempdir()?;
    let gomodcache = tempfile::tempdir()?;
    let pinned = [
        format!("kube-apiserver-{kube}"),
        format!("kubectl-{kube}"),
        format!("etcd-{etcd}"),
        format!("etcdctl-{etcd}"),
        format!("etcdutl-{etcd}"),
        format!("etcdsnap-replay-{etcd}"),
        format!("versitygw-{s3}"),
    ];
    for name in &pinned {
        std::os::unix::fs::symlink(built.join(name).canonicalize()?, out.path().join(name))?;
    }
    let run = Command::new(root()?.join("testbins/build.sh"))
        .args(&parts)
        .env("TESTBINS_DIR", out.path())
        .env("GOPROXY", "off")
        .env("GOMODCACHE", gomodcache.path())
        .output()?;
    let (stdout, stderr) = (String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "build.sh {parts:?} tried to build something:\n{stdout}\n{stderr}");
    assert!(stdout.contains("testbins: 0 built"), "{stdout}");
    for name in used_by_the_demo()? {
        assert!(out.path().join(&name).exists(), "the demo runs {name}, which make demo does not build:\n{stdout}");
    }
    let mut names: Vec<String> =
        std::fs::read_dir(out.path())?.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    let mut expected: Vec<String> = pinned.to_vec();
    expected.extend(
        ["etcd", "etcdctl", "etcdutl", "etcdsnap-replay", "kube-apiserver", "kubectl", "versitygw"].map(String::from),
    );
    expected.sort();
    assert_eq!(names, expected, "no helm, promtool or other etcd minor");
    Ok(())
}
