//! The reliability suite (`make faults`): crashes, outages, corruption, hostile storage content
//! and races, injected against a real etcd, kube-apiserver and S3 server. After each fault the
//! same invariants are checked: every published snapshot verifies, nothing half-written is
//! visible, one reconcile makes the ETCDSnapshotFile resources match storage exactly, files are
//! private, and no log line carries a credential. `docs/reliability.md` summarises the results.
// Helpers of an integration test may panic too: clippy.toml allows it in #[test] functions only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

/// The helpers in `tests/common/` this binary uses (each binary names its own, so the compiler
/// reports one that no test calls).
#[path = "common"]
mod common {
    pub mod agent;
    mod cli;
    pub use cli::*;
}

use common::agent::{Agent, metric};
use common::{Run, TestResult, files_in, s};
use etcdsnap_api::ETCDSnapshotFile;
use etcdsnap_storage::failpoint;
use kube::api::{Api, ListParams};
use rand::{RngExt, SeedableRng};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use testenv::{Etcd, Fault, FaultProxy, KubeApiServer, S3Server};
use tokio::io::{AsyncBufReadExt, BufReader};

const BUCKET: &str = "faults";
const NODE: &str = "node-1";
/// Per-request S3 timeout of the suite; also how long an open upload must be idle before a save
/// of its node aborts it (10 minutes by default).
const S3_TIMEOUT: Duration = Duration::from_secs(4);
/// A K3s-format server token; its password part must never reach a log.
const SERVER_TOKEN: &str =
    "K100123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef::server:faults-server-password";
const TOKEN_SECRET: &str = "faults-server-password";

type Error = Box<dyn std::error::Error>;

/// One etcd, kube-apiserver and S3 server, a node's data dir, and a transcript of everything
/// the binary printed (for the credential check).
struct World {
    etcd: Etcd,
    api: KubeApiServer,
    s3: S3Server,
    data: tempfile::TempDir,
    logs: tempfile::TempDir,
    transcript: Mutex<String>,
}

impl World {
    /// Servers up, `mb` megabytes in etcd (at least the mid-stream failpoint's worth when a
    /// crash test needs an open multipart upload).
    async fn start(mb: usize) -> Result<World, Error> {
        let etcd = Etcd::single().await?;
        load_megabytes(&etcd, mb).await?;
        let api = KubeApiServer::start(&etcd).await?;
        let s3 = S3Server::with_bucket(BUCKET).await?;
        Ok(World {
            etcd,
            api,
            s3,
            data: tempfile::tempdir()?,
            logs: tempfile::tempdir()?,
            transcript: Mutex::new(String::new()),
        })
    }

    fn data_dir(&self) -> &Path {
        self.data.path()
    }

    fn snapshot_dir(&self) -> PathBuf {
        self.data.path().join("snapshots")
    }

    /// etcdsnap's own directory of the snapshot directory: its records, locks, partial files.
    fn private_dir(&self) -> PathBuf {
        self.data.path().join(".etcdsnap/dirs/snapshots")
    }

    fn records_dir(&self) -> PathBuf {
        self.private_dir().join("records")
    }

    /// Settings shared by every run: etcd, node, data dir, S3, Kubernetes, server token.
    fn env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vec![
            ("ETCDSNAP_ENDPOINTS".into(), self.etcd.endpoints().join(",")),
            ("ETCDSNAP_NODE_NAME".into(), NODE.into()),
            ("ETCDSNAP_DATA_DIR".into(), s(self.data_dir())),
            ("ETCDSNAP_TOKEN".into(), SERVER_TOKEN.into()),
            ("KUBECONFIG".into(), s(self.api.kubeconfig_path())),
            ("RUST_LOG".into(), "info,etcdsnap=debug".into()),
        ];
        env.extend(self.s3.etcdsnap_env(BUCKET));
        // A save aborts the uploads its node left open once they are idle this long.
        env.push(("ETCDSNAP_S3_TIMEOUT".into(), format!("{}s", S3_TIMEOUT.as_secs())));
        env.push(("ETCDSNAP_S3_STALE_UPLOAD_AFTER".into(), format!("{}s", S3_TIMEOUT.as_secs())));
        env
    }

    fn command(&self, args: &[&str], extra: &[(&str, &str)]) -> tokio::process::Command {
        let mut cmd = common::command(args);
        for (k, v) in self.env() {
            cmd.env(k, v);
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd
    }

    fn record(&self, what: &str, out: &str) {
        if let Ok(mut t) = self.transcript.lock() {
            t.push_str(&format!("--- {what}\n{out}\n"));
        }
    }

    async fn run(&self, args: &[&str]) -> Run {
        self.run_with(args, &[]).await
    }

    async fn run_with(&self, args: &[&str], extra: &[(&str, &str)]) -> Run {
        let out: Run = match self.command(args, extra).output().await {
            Ok(o) => o.into(),
            Err(e) => panic!("cannot run etcdsnap: {e}"),
        };
        self.record(&args.join(" "), &format!("{}\n{}", out.stdout, out.stderr));
        out
    }

    /// Starts `etcdsnap args` with `ETCDSNAP_FAILPOINT=armed`, following its stderr.
    fn spawn_armed(&self, args: &[&str], armed: &str) -> Result<Armed, Error> {
        let mut cmd = self.command(args, &[(failpoint::ENV, armed)]);
        cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn()?;
        let lines = BufReader::new(child.stderr.take().ok_or("no stderr")?).lines();
        Ok(Armed { child, lines, log: String::new() })
    }

    /// Runs `etcdsnap args` with `point` armed, waits until the process stops there and kills
    /// it with SIGKILL.
    async fn kill_at(&self, point: &str, args: &[&str]) -> Result<(), Error> {
        let mut armed = self.spawn_armed(args, point)?;
        let reached = armed.until_failpoint(point, Duration::from_secs(90)).await;
        armed.child.start_kill()?;
        armed.child.wait().await?;
        self.record(&format!("{} (killed at {point})", args.join(" ")), &armed.log);
        if !reached {
            return Err(format!("etcdsnap {} never reached {point}:\n{}", args.join(" "), armed.log).into());
        }
        Ok(())
    }

    /// Names of published snapshots per location, from `etcdsnap ls -o json`.
    async fn stored(&self) -> Result<BTreeSet<(String, bool)>, Error> {
        let out = self.run(&["ls", "-o", "json"]).await.expect_ok();
        let mut set = BTreeSet::new();
        for item in out.json()["items"].as_array().ok_or("no items")? {
            if item["status"]["readyToUse"] != true {
                continue;
            }
            let name = item["spec"]["snapshotName"].as_str().ok_or("no name")?.to_string();
            let s3 = item["spec"]["location"].as_str().unwrap_or_default().starts_with("s3://");
            set.insert((name, s3));
        }
        Ok(set)
    }

    /// Ready resources as (snapshotName, is S3); fails on duplicates.
    async fn resources(&self) -> Result<BTreeSet<(String, bool)>, Error> {
        let api: Api<ETCDSnapshotFile> = Api::all(self.api.client().await?);
        let mut set = BTreeSet::new();
        for cr in api.list(&ListParams::default()).await?.items {
            if cr.status.as_ref().and_then(|s| s.ready_to_use) != Some(true) {
                continue;
            }
            let key = (cr.spec.snapshot_name.clone(), cr.spec.s3.is_some());
            if !set.insert(key.clone()) {
                return Err(format!("two resources for {key:?}").into());
            }
        }
        Ok(set)
    }

    /// The invariants every fault must leave intact.
    async fn assert_consistent(&self, after: &str) -> Result<BTreeSet<(String, bool)>, Error> {
        let stored = self.stored().await?;
        let verify = self.run(&["verify"]).await;
        // With nothing stored, verify has nothing to check, and says so as an error.
        let nothing = stored.is_empty() && verify.stderr.contains("nothing to verify");
        assert!(
            verify.ok() || nothing,
            "after {after}: a published snapshot fails verify\n{}\n{}",
            verify.stdout,
            verify.stderr
        );
        let reconcile = self.run(&["reconcile"]).await;
        assert!(reconcile.ok(), "after {after}: reconcile failed\n{}\n{}", reconcile.stdout, reconcile.stderr);
        let resources = self.resources().await?;
        assert_eq!(resources, stored, "after {after}: resources do not match storage");
        assert_private(self.data_dir());
        Ok(stored)
    }

    /// Nothing half-done survives a normal run: no partial file, no open multipart upload, no
    /// record or metadata without its snapshot.
    async fn assert_nothing_partial(&self, after: &str) -> Result<(), Error> {
        let partial = files_in(&self.private_dir().join("partial"));
        assert!(partial.is_empty(), "after {after}: {partial:?} survived");
        let uploads = self.s3.list_multipart_uploads(BUCKET).await?;
        assert!(uploads.is_empty(), "after {after}: multipart uploads left open: {uploads:?}");
        let snapshots: BTreeSet<String> = files_in(&self.snapshot_dir()).into_iter().collect();
        for doc in files_in(&self.data_dir().join(".metadata")).into_iter().chain(files_in(&self.records_dir())) {
            let name = doc.strip_suffix(".etcdsnap.json").unwrap_or(&doc);
            assert!(snapshots.contains(name), "after {after}: local metadata {doc} without its snapshot");
        }
        let keys: BTreeSet<String> = self.s3.list_keys(BUCKET, "").await?.into_iter().collect();
        for key in &keys {
            if let Some(doc) = key.strip_prefix(".metadata/") {
                let name = doc.strip_suffix(".etcdsnap.json").unwrap_or(doc);
                assert!(keys.contains(name), "after {after}: S3 metadata {key} without its object");
            }
        }
        Ok(())
    }

    /// The snapshot directory holds published snapshots only, whatever happened: K3s takes every
    /// file there for a snapshot.
    fn assert_snapshots_only(&self, after: &str) {
        let odd: Vec<String> =
            files_in(&self.snapshot_dir()).into_iter().filter(|f| f.ends_with(".part") || f.starts_with('.')).collect();
        assert!(odd.is_empty(), "after {after}: the snapshot directory holds {odd:?}");
    }

    /// No access key, secret key or server token in anything the binary printed.
    fn assert_no_secrets(&self, extra: &[&str]) {
        let transcript = self.transcript.lock().map(|t| t.clone()).unwrap_or_default();
        assert!(!transcript.is_empty());
        let mut secrets = vec![self.s3.access_key(), self.s3.secret_key(), TOKEN_SECRET];
        secrets.extend_from_slice(extra);
        for (i, secret) in secrets.iter().enumerate() {
            let leaks: Vec<&str> = transcript.lines().filter(|l| l.contains(secret)).collect();
            assert!(leaks.is_empty(), "credential #{i} reached the output in:\n{}", leaks.join("\n"));
        }
    }

    async fn start_agent(&self, args: &[&str], extra: &[(&str, &str)]) -> Result<Agent, Error> {
        let env = self.env();
        let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        all.extend_from_slice(extra);
        Agent::start(args, &all, self.logs.path()).await
    }

    /// SIGTERM; the agent must exit 0. Its log joins the transcript.
    async fn stop_agent(&self, agent: Agent) -> Result<(), Error> {
        let log = agent.stop().await?;
        self.record("agent", &log);
        Ok(())
    }
}

/// An `etcdsnap` process with a failpoint armed, its stderr read line by line.
struct Armed {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
    log: String,
}

impl Armed {
    /// Reads stderr until `point` is announced; false if the process ended or `timeout` passed.
    async fn until_failpoint(&mut self, point: &str, timeout: Duration) -> bool {
        let wanted = format!("failpoint {point} reached");
        let (lines, log) = (&mut self.lines, &mut self.log);
        tokio::time::timeout(timeout, async {
            while let Ok(Some(line)) = lines.next_line().await {
                log.push_str(&line);
                log.push('\n');
                if line.contains(&wanted) {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false)
    }

    /// The rest of stderr, then the exit status.
    async fn finish(mut self) -> Result<(std::process::ExitStatus, String), Error> {
        while let Ok(Some(line)) = self.lines.next_line().await {
            self.log.push_str(&line);
            self.log.push('\n');
        }
        Ok((self.child.wait().await?, self.log))
    }
}

/// The local and the S3 names of a set of (name, is S3).
fn by_location(stored: &BTreeSet<(String, bool)>) -> (BTreeSet<&String>, BTreeSet<&String>) {
    let names = |s3: bool| stored.iter().filter(|(_, in_s3)| *in_s3 == s3).map(|(n, _)| n).collect();
    (names(false), names(true))
}

/// Waits until the agent counts at least `n` successful saves; returns the count.
async fn saves_at_least(agent: &Agent, n: f64) -> Result<f64, Error> {
    let series = "etcdsnap_saves_total{status=\"success\"}";
    let body = agent.wait_for_metric(series, n, Duration::from_secs(60)).await?;
    Ok(metric(&body, series).unwrap_or(n))
}

/// Puts about `mb` megabytes into etcd in 64 KiB values.
async fn load_megabytes(etcd: &Etcd, mb: usize) -> Result<(), Error> {
    let client = etcd.client().await?;
    let value = "v".repeat(64 * 1024);
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let (mut client, value) = (client.clone(), value.clone());
        tasks.spawn(async move {
            for i in (worker..mb * 16).step_by(8) {
                client.put(format!("/registry/configmaps/load/cm-{i:06}"), value.clone(), None).await?;
            }
            Ok::<(), etcd_client::Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// Every directory below `dir` is 0700 and every file 0600.
fn assert_private(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = path.symlink_metadata() else { continue };
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777;
        if meta.is_dir() {
            assert_eq!(mode, 0o700, "{} is {mode:o}", path.display());
            assert_private(&path);
        } else {
            assert_eq!(mode, 0o600, "{} is {mode:o}", path.display());
        }
    }
}

/// Polls `check` until it holds or `timeout` passes.
async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<(), Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, Error>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await? {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("timed out: {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

// --- 1. Process crash ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_every_point_of_a_save_loses_nothing() -> TestResult {
    let world = World::start(32).await?;
    for point in failpoint::POINTS {
        world.kill_at(point, &["save"]).await?;
        // The fault is real: the killed save left its debris behind (but never in the snapshot
        // directory, where the bytes in flight have no name).
        world.assert_snapshots_only(&format!("SIGKILL at {point}"));
        if *point == failpoint::LOCAL_AFTER_METADATA {
            let records = files_in(&world.records_dir());
            let orphans = records.iter().filter(|r| r.ends_with(".etcdsnap.json")).count();
            assert!(orphans > files_in(&world.snapshot_dir()).len(), "SIGKILL at {point}: no orphan record");
        }
        let left_upload =
            [failpoint::MID_STREAM, failpoint::BEFORE_COMMIT, failpoint::S3_AFTER_METADATA].contains(point);
        if left_upload {
            assert!(!world.s3.list_multipart_uploads(BUCKET).await?.is_empty(), "SIGKILL at {point}: no open upload");
        }
        world.assert_consistent(&format!("SIGKILL at {point}")).await?;
        // The next run cleans up what the killed one left and succeeds; an upload is only
        // aborted once it has been idle for the threshold (no save could still be writing it).
        if !world.s3.list_multipart_uploads(BUCKET).await?.is_empty() {
            tokio::time::sleep(S3_TIMEOUT).await;
        }
        world.run(&["save"]).await.expect_ok();
        world.assert_nothing_partial(&format!("the run after SIGKILL at {point}")).await?;
        world.assert_consistent(&format!("the run after SIGKILL at {point}")).await?;
    }
    world.assert_no_secrets(&[]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_agent_mid_save_is_repaired_by_the_next_agent() -> TestResult {
    let world = World::start(32).await?;
    let args = ["--schedule", "*/2 * * * * *", "--reconcile-interval", "3s", "--retention", "10"];
    for point in failpoint::POINTS {
        let agent = world.start_agent(&args, &[(failpoint::ENV, point)]).await?;
        let wanted = format!("failpoint {point} reached");
        eventually(&format!("agent reaches {point}"), Duration::from_secs(60), || {
            let seen = agent.log_text().contains(&wanted);
            async move { Ok(seen) }
        })
        .await?;
        let log = agent.kill().await?;
        world.record("agent", &log);
        world.assert_consistent(&format!("SIGKILL of the agent at {point}")).await?;

        // A fresh agent saves again, uploads what the killed one left local-only, and its
        // reconcile makes the resources whole.
        let agent = world.start_agent(&args, &[]).await?;
        saves_at_least(&agent, 1.0).await?;
        eventually("S3 holds every local snapshot and no upload is left open", Duration::from_secs(60), || async {
            let stored = world.stored().await?;
            let (local, remote) = by_location(&stored);
            let open = world.s3.list_multipart_uploads(BUCKET).await?;
            Ok(local == remote && world.resources().await? == stored && open.is_empty())
        })
        .await?;
        world.assert_snapshots_only(&format!("the agent after SIGKILL at {point}"));
        world.stop_agent(agent).await?;
        world.assert_nothing_partial(&format!("the agent after SIGKILL at {point}")).await?;
        world.assert_consistent(&format!("the agent after SIGKILL at {point}")).await?;
    }
    world.assert_no_secrets(&[]);
    Ok(())
}

// --- 2. Outages ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_saves_go_on_while_the_api_server_is_down_and_resources_catch_up() -> TestResult {
    let mut world = World::start(4).await?;
    let args = ["--schedule", "*/2 * * * * *", "--reconcile-interval", "3s", "--retention", "20"];
    let agent = world.start_agent(&args, &[]).await?;
    saves_at_least(&agent, 1.0).await?;
    world.api.stop();
    let before = saves_at_least(&agent, 0.0).await?;
    saves_at_least(&agent, before + 3.0).await?;
    world.api.restart().await?;
    eventually("resources match storage after the outage", Duration::from_secs(60), || async {
        Ok(world.resources().await? == world.stored().await?)
    })
    .await?;
    world.stop_agent(agent).await?;
    let stored = world.assert_consistent("an API server outage").await?;
    assert!(stored.len() >= 8, "saves during the outage are missing: {stored:?}");
    world.assert_no_secrets(&[]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_s3_times_out_keeps_the_local_copy_and_is_caught_up_later() -> TestResult {
    let world = World::start(4).await?;
    let proxy = FaultProxy::start(&world.s3.endpoint()).await?;
    let via_proxy = proxy.addr().to_string();
    let extra = [("ETCDSNAP_S3_ENDPOINT", via_proxy.as_str()), ("ETCDSNAP_S3_TIMEOUT", "2s")];
    proxy.set_fault(Fault::Stall);
    // One CLI save: the local copy is published, S3 is a clear failure and a failure resource.
    let started = Instant::now();
    let out = world.run_with(&["save"], &extra).await.expect_fail();
    assert!(started.elapsed() < Duration::from_secs(60), "the timeout was not applied");
    assert!(out.stderr.contains("was not saved to s3") && out.stderr.contains("timed out"), "{}", out.stderr);
    let api: Api<ETCDSnapshotFile> = Api::all(world.api.client().await?);
    let failed: Vec<ETCDSnapshotFile> = api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|cr| cr.status.as_ref().and_then(|s| s.ready_to_use) == Some(false))
        .collect();
    assert_eq!(failed.len(), 1, "one failure resource for the S3 copy: {failed:?}");
    assert!(failed[0].spec.s3.is_some());

    // The agent, while S3 still stalls, keeps saving locally; once S3 answers again every local
    // snapshot gets its S3 copy and its resources.
    let args = ["--schedule", "*/3 * * * * *", "--reconcile-interval", "3s", "--retention", "20"];
    let agent = world.start_agent(&args, &extra).await?;
    agent
        .wait_for_metric(
            "etcdsnap_etcd_snapshot_save_s3_duration_seconds_count{status=\"error\"}",
            1.0,
            Duration::from_secs(90),
        )
        .await?;
    proxy.set_fault(Fault::None);
    eventually("S3 catches up with local", Duration::from_secs(90), || async {
        let stored = world.run_with(&["ls", "-o", "json"], &extra).await;
        let items = stored.json()["items"].as_array().cloned().unwrap_or_default();
        let ready = |s3: bool| -> BTreeSet<String> {
            items
                .iter()
                .filter(|i| i["status"]["readyToUse"] == true)
                .filter(|i| i["spec"]["location"].as_str().unwrap_or_default().starts_with("s3://") == s3)
                .filter_map(|i| i["spec"]["snapshotName"].as_str().map(String::from))
                .filter(|n| n.starts_with("etcd-snapshot-"))
                .collect()
        };
        Ok(ready(false).len() >= 2 && ready(false) == ready(true))
    })
    .await
    .map_err(|e| format!("{e}\nagent log:\n{}", agent.log_text()))?;
    world.stop_agent(agent).await?;
    // The next on-demand save uploads the on-demand snapshot whose upload timed out.
    let out = world.run_with(&["save"], &extra).await.expect_ok();
    assert_eq!(out.stdout.matches("s3://").count(), 2, "{}", out.stdout);
    let stored = world.stored().await?;
    let (local, remote) = by_location(&stored);
    assert_eq!(local, remote, "every local snapshot has its S3 copy");
    world.run_with(&["reconcile"], &extra).await.expect_ok();
    assert_eq!(world.resources().await?, stored);
    world.assert_nothing_partial("an S3 stall").await?;
    world.assert_no_secrets(&[]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_etcd_leader_mid_snapshot_makes_the_save_retry_from_a_survivor() -> TestResult {
    let mut etcd = Etcd::cluster(3).await?;
    load_megabytes(&etcd, 24).await?;
    let leader = etcd.leader_index().await?;
    // The leader first, behind a slow link, so the snapshot is in flight when it dies.
    let target = etcd.members()[leader].client_url.trim_start_matches("http://").to_string();
    let proxy = FaultProxy::start(&target).await?;
    proxy.set_fault(Fault::Throttle(4 << 20));
    let mut endpoints = vec![format!("http://{}", proxy.addr())];
    endpoints.extend(etcd.endpoints().into_iter().enumerate().filter(|(i, _)| *i != leader).map(|(_, e)| e));
    let endpoints = endpoints.join(",");
    let data = tempfile::tempdir()?;
    let dd = s(data.path());
    let args = ["save", "--endpoints", &endpoints, "--node-name", NODE, "--data-dir", &dd, "--no-kube"];
    let child =
        common::command(&args).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn()?;
    // Kill once the snapshot is flowing (a few MiB through the slow link), however slowly the
    // process started.
    eventually("the snapshot stream from the leader starts", Duration::from_secs(60), || {
        let flowing = proxy.forwarded() > 4 << 20;
        async move { Ok(flowing) }
    })
    .await?;
    etcd.kill(leader);
    let out: Run = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output()).await??.into();
    // The stream broke with the leader; the same save took the snapshot again from a survivor.
    let out = out.expect_ok();
    assert!(out.stderr.contains("taking the snapshot again from another member"), "{}", out.stderr);
    let published: Vec<String> = files_in(&data.path().join("snapshots")).into_iter().collect();
    assert_eq!(published.len(), 1, "{published:?}");
    let verified = common::run(&["verify", "--data-dir", &dd, "--node-name", NODE, "--no-kube", "-o", "json"], &[])
        .await
        .expect_ok();
    assert_eq!(verified.json()["items"].as_array().map(Vec::len), Some(1), "{}", verified.stdout);
    // With only the dead member left to try, the save fails clearly and publishes nothing.
    let dead_only = format!("http://{}", proxy.addr());
    let alone = ["save", "--endpoints", &dead_only, "--node-name", NODE, "--data-dir", &dd, "--no-kube"];
    let out = common::run(&alone, &[]).await.expect_fail();
    assert!(out.stderr.contains(&dead_only), "the error names the endpoint: {}", out.stderr);
    let after: Vec<String> = files_in(&data.path().join("snapshots")).into_iter().collect();
    assert_eq!(after, published);
    assert_private(data.path());
    Ok(())
}

// --- 3. Corruption ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_anywhere_is_caught_by_verify_and_restore() -> TestResult {
    let world = World::start(1).await?;
    let mut names = Vec::new();
    for compression in ["none", "zstd", "zip"] {
        let out = world.run(&["save", "--compress", compression, "-o", "json"]).await.expect_ok();
        let name = out.json()["items"][0]["spec"]["snapshotName"].as_str().ok_or("no name")?.to_string();
        names.push(name);
        tokio::time::sleep(Duration::from_millis(1100)).await; // distinct names
    }
    let seed: u64 = std::env::var("FAULTS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("corruption trials with FAULTS_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let target = tempfile::tempdir()?;
    let restore_into = s(&target.path().join("member-data"));
    let local_only = [("ETCDSNAP_S3", "false")];
    const TRIALS: usize = 100;
    for trial in 0..TRIALS {
        for s3 in [false, true] {
            let name = &names[trial % names.len()];
            let path = if s3 { world.s3.root().join(BUCKET).join(name) } else { world.snapshot_dir().join(name) };
            let original = std::fs::read(&path)?;
            let offset = rng.random_range(0..original.len());
            let bit = 1u8 << rng.random_range(0..8);
            let mut damaged = original.clone();
            damaged[offset] ^= bit;
            std::fs::write(&path, &damaged)?;
            let what = format!(
                "trial {trial}: {name} in {} with byte {offset} ^ {bit:#04x} (seed {seed})",
                if s3 { "S3" } else { "local" }
            );
            let env: &[(&str, &str)] = if s3 { &[] } else { &local_only };
            let verify_args: &[&str] = if s3 { &["verify", "--no-local", name] } else { &["verify", name] };
            let verify = world.run_with(verify_args, env).await;
            assert!(!verify.ok(), "{what}: verify passed\n{}", verify.stdout);
            let mut args =
                vec!["restore", name.as_str(), "--data-dir", &restore_into, "--member-name", "m0", "--dry-run"];
            let dir = s(&world.snapshot_dir());
            if !s3 {
                args.extend(["--dir", dir.as_str()]);
            }
            let restore = world.run_with(&args, env).await;
            assert!(!restore.ok(), "{what}: restore --dry-run passed\n{}", restore.stdout);
            assert!(restore.stdout.contains("FAIL"), "{what}: no failed check in\n{}", restore.stdout);
            std::fs::write(&path, &original)?;
        }
    }
    assert!(!Path::new(&restore_into).exists(), "a refused restore touched its target");
    // Undamaged again, everything verifies.
    world.run(&["verify"]).await.expect_ok();
    Ok(())
}

// --- 4. Hostile storage content --------------------------------------------------------------

/// Every file below `dir` with its contents: "untouched" is this staying the same.
fn contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap_or_default()));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_storage_content_is_skipped_with_a_warning_and_nothing_outside_is_touched() -> TestResult {
    let world = World::start(1).await?;
    world.run(&["save"]).await.expect_ok();
    let outside = tempfile::tempdir()?;
    std::fs::write(outside.path().join("secret"), "TOP SECRET, not a snapshot")?;
    std::fs::write(outside.path().join("victim"), "must stay as it is")?;
    let before_outside = contents(outside.path());
    let snaps = world.snapshot_dir();
    // K3s's metadata directory (etcdsnap reads it, and creates it only for extra metadata).
    let meta = world.data_dir().join(".metadata");
    std::fs::create_dir_all(&meta)?;
    let records = world.records_dir();
    let real = files_in(&snaps).into_iter().next().ok_or("no snapshot")?;

    // Local: a snapshot that is a symlink out of the directory; a metadata document that is a
    // symlink; one that is huge, one deeply nested, one not JSON, one about another snapshot.
    std::os::unix::fs::symlink(outside.path().join("secret"), snaps.join("etcd-snapshot-node-1-1700000001"))?;
    let plain = std::fs::read(snaps.join(&real))?;
    let hostile_docs: [(&str, Vec<u8>); 5] = [
        ("etcd-snapshot-node-1-1700000002", Vec::new()), // symlinked below
        ("etcd-snapshot-node-1-1700000003", vec![b' '; 3 << 20]),
        ("etcd-snapshot-node-1-1700000004", format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes()),
        ("etcd-snapshot-node-1-1700000005", b"\x00\xffnot json at all".to_vec()),
        (
            "etcd-snapshot-node-1-1700000006",
            br#"{"apiVersion":"etcdsnap.io/v1","name":"../../victim","node":"node-1","location":"x","createdAt":"2023-11-14T22:13:20Z","size":1,"sha256":"00","compression":"none"}"#.to_vec(),
        ),
    ];
    for (name, doc) in &hostile_docs {
        std::fs::write(snaps.join(name), &plain)?;
        if doc.is_empty() {
            std::os::unix::fs::symlink(outside.path().join("secret"), meta.join(name))?;
        } else {
            std::fs::write(meta.join(name), doc)?;
        }
    }
    // etcdsnap's own records, hostile too: a symlink out, and a lie about another snapshot.
    std::os::unix::fs::symlink(
        outside.path().join("secret"),
        records.join("etcd-snapshot-node-1-1700000003.etcdsnap.json"),
    )?;
    std::fs::write(records.join("etcd-snapshot-node-1-1700000005.etcdsnap.json"), &hostile_docs[4].1)?;
    // `.part` links planted where older releases wrote: nothing must follow them.
    let now = etcdsnap_storage::clock::now().as_second();
    for t in now..now + 60 {
        let _ = std::os::unix::fs::symlink(
            outside.path().join("victim"),
            snaps.join(format!("etcd-snapshot-node-1-{t}.part")),
        );
    }

    // S3: keys with `../`, a very long name, a name Kubernetes would not accept, and hostile
    // metadata documents.
    let body = std::fs::read(snaps.join(&real))?;
    let long = format!("etcd-snapshot-{}-node-1-1700000010", "x".repeat(200));
    let s3_hostile: Vec<(String, Vec<u8>)> = vec![
        ("../etcd-snapshot-node-1-1700000011".into(), Vec::new()),
        ("a/../../etcd-snapshot-node-1-1700000012".into(), Vec::new()),
        (long.clone(), Vec::new()),
        ("Etcd_Snapshot!@UPPER-node-1-1700000013".into(), Vec::new()),
        ("etcd-snapshot-node-1-1700000014".into(), vec![b'{'; 3 << 20]),
        ("etcd-snapshot-node-1-1700000015".into(), format!("{}1{}", "{\"a\":".repeat(50_000), "}".repeat(50_000)).into_bytes()),
        ("etcd-snapshot-node-1-1700000016".into(), b"<xml>not json</xml>".to_vec()),
        (
            "etcd-snapshot-node-1-1700000017".into(),
            br#"{"apiVersion":"etcdsnap.io/v1","name":"etcd-snapshot-other-1","node":"node-1","location":"x","createdAt":"2023-11-14T22:13:20Z","size":1,"sha256":"00","compression":"none"}"#.to_vec(),
        ),
    ];
    let mut planted = Vec::new();
    for (key, doc) in &s3_hostile {
        // The server itself may refuse some keys (a `..` segment, say): those cannot be planted.
        if world.s3.put_object(BUCKET, key, body.clone(), &[("k3s-node-name", NODE)]).await.is_err() {
            eprintln!("the S3 server refused the key {key:?}; not planted");
            continue;
        }
        if !doc.is_empty() {
            world.s3.put_object(BUCKET, &format!(".metadata/{key}"), doc.clone(), &[]).await?;
        }
        planted.push(key.clone());
    }
    assert!(planted.len() >= 6, "too few hostile objects planted: {planted:?}");

    let cwd = tempfile::tempdir()?;
    let in_cwd = |args: &[&str]| {
        let mut cmd = world.command(args, &[]);
        cmd.current_dir(cwd.path());
        cmd
    };
    let ls: Run = in_cwd(&["ls", "-o", "json"]).output().await?.into();
    world.record("ls", &format!("{}\n{}", ls.stdout, ls.stderr));
    assert!(ls.ok(), "{}\n{}", ls.stdout, ls.stderr);
    // Each hostile entry is named in a warning.
    for name in ["etcd-snapshot-node-1-1700000001"].into_iter().chain(hostile_docs.iter().map(|(n, _)| *n)).chain(
        planted.iter().filter(|k| !k.contains("..")).map(String::as_str).filter(|k| k.ends_with(['4', '5', '6', '7'])),
    ) {
        assert!(ls.stderr.contains(name), "no warning names {name}:\n{}", ls.stderr);
    }
    // Nothing from outside was read into a record.
    assert!(!ls.stdout.contains("TOP SECRET"));

    let reconcile: Run = in_cwd(&["reconcile"]).output().await?.into();
    world.record("reconcile", &format!("{}\n{}", reconcile.stdout, reconcile.stderr));
    assert!(reconcile.ok(), "{}\n{}", reconcile.stdout, reconcile.stderr);
    // Every resource name is one Kubernetes accepted; none points outside the store.
    for cr in Api::<ETCDSnapshotFile>::all(world.api.client().await?).list(&ListParams::default()).await?.items {
        assert!(!cr.spec.snapshot_name.contains('/'), "{:?}", cr.spec);
    }
    let verify: Run = in_cwd(&["verify"]).output().await?.into();
    world.record("verify", &format!("{}\n{}", verify.stdout, verify.stderr));
    let save: Run = in_cwd(&["save"]).output().await?.into();
    world.record("save", &format!("{}\n{}", save.stdout, save.stderr));
    assert!(save.ok(), "{}\n{}", save.stdout, save.stderr);
    for bad in ["../outside", "../../etc/passwd", "/etc/passwd", "etcd-snapshot-node-1-1700000001"] {
        let out: Run = in_cwd(&["restore", bad, "--data-dir", "target", "--member-name", "m0", "--dry-run"])
            .output()
            .await?
            .into();
        world.record("restore", &format!("{}\n{}", out.stdout, out.stderr));
        assert!(!out.ok(), "restore of {bad} was accepted:\n{}", out.stdout);
    }
    for bad in ["../victim", "etcd-snapshot-node-1-1700000001/../../x"] {
        let out: Run = in_cwd(&["delete", bad]).output().await?.into();
        assert!(!out.ok(), "delete of {bad} was accepted");
    }
    assert_eq!(contents(outside.path()), before_outside, "a file outside the store changed");
    assert!(std::fs::read_dir(cwd.path())?.next().is_none(), "something was written to the current directory");
    assert!(!verify.stdout.contains("TOP SECRET") && !verify.stderr.contains("TOP SECRET"));
    world.assert_no_secrets(&[]);
    Ok(())
}

// --- 5. Concurrency --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_saves_agents_and_reconciles_never_lose_or_duplicate_a_record() -> TestResult {
    let world = World::start(24).await?;
    // Two saves on one directory: the second is refused while the first holds the lock.
    // The first save is held mid-stream for 8 s; the others run once it is there.
    let mut first = world.spawn_armed(&["save"], "mid-stream=8000")?;
    let held = first.until_failpoint(failpoint::MID_STREAM, Duration::from_secs(60)).await;
    assert!(held, "the first save never reached mid-stream:\n{}", first.log);
    let second = world.run(&["save"]).await.expect_fail();
    assert!(second.stderr.contains("another etcdsnap"), "{}", second.stderr);
    // An S3-only save of the same node takes the same lock.
    let s3_only = world.run(&["save", "--no-local"]).await.expect_fail();
    assert!(s3_only.stderr.contains("another etcdsnap"), "{}", s3_only.stderr);
    let (status, first_log) = first.finish().await?;
    world.record("save", &first_log);
    assert!(status.success(), "{first_log}");

    // A CLI save during an agent's save is refused the same way; the agent's save completes.
    let args = ["--schedule", "*/5 * * * * *", "--reconcile-interval", "2s", "--retention", "20"];
    let agent = world.start_agent(&args, &[(failpoint::ENV, "mid-stream=4000")]).await?;
    eventually("the agent is mid-save", Duration::from_secs(30), || {
        let seen = agent.log_text().contains("failpoint mid-stream reached");
        async move { Ok(seen) }
    })
    .await?;
    let cli = world.run(&["save"]).await.expect_fail();
    assert!(cli.stderr.contains("another etcdsnap"), "{}", cli.stderr);

    // Reconciles from the CLI racing the agent's (and each other) on the same resources and the
    // legacy ConfigMap: conflicts are retried, nothing is duplicated or lost.
    let mut racers = tokio::task::JoinSet::new();
    for _ in 0..4 {
        racers.spawn(world.command(&["reconcile"], &[]).output());
    }
    while let Some(done) = racers.join_next().await {
        let out: Run = done??.into();
        world.record("reconcile", &format!("{}\n{}", out.stdout, out.stderr));
        assert!(out.ok(), "a racing reconcile failed:\n{}\n{}", out.stdout, out.stderr);
    }
    world.stop_agent(agent).await?;
    let stored = world.assert_consistent("concurrent saves and reconciles").await?;
    let cm: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(world.api.client().await?, "kube-system");
    world.run(&["reconcile"]).await.expect_ok();
    let legacy = cm.get("k3s-etcd-snapshots").await?;
    assert_eq!(legacy.data.map(|d| d.len()), Some(stored.len()), "legacy ConfigMap entries != snapshots");
    world.assert_nothing_partial("concurrent saves").await?;
    world.assert_no_secrets(&[]);
    Ok(())
}

// --- 6. Security -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_reach_the_output_even_in_errors() -> TestResult {
    let world = World::start(1).await?;
    const SESSION: &str = "FwoGZXIvYXdzEXAMPLEsessiontoken";
    world.run(&["save"]).await.expect_ok();
    // Every command, including failing ones: a wrong secret, a session token S3 rejects, an
    // unreachable endpoint, a bad flag value.
    for args in [
        vec!["ls"],
        vec!["verify"],
        vec!["prune", "--retention", "1"],
        vec!["reconcile"],
        vec!["save", "--s3-endpoint", "127.0.0.1:1"],
        vec!["save", "--s3-timeout", "soon"],
    ] {
        world.run(&args).await;
    }
    world.run_with(&["ls"], &[("AWS_SECRET_ACCESS_KEY", "wrong-secret-value-123")]).await.expect_fail();
    world.run_with(&["ls"], &[("AWS_SESSION_TOKEN", SESSION)]).await;
    world.assert_no_secrets(&[SESSION, "wrong-secret-value-123"]);
    assert_private(world.data_dir());
    Ok(())
}
