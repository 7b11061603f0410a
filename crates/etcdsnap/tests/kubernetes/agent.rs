//! `etcdsnap agent` as a process, against real etcd and S3: schedule, retention, metrics,
//! health, shutdown, and copies a replica missed made on the agent's own once it is back.

use crate::common::agent::{Agent, metric};
use crate::common::etcd::etcd_with_objects;
use crate::common::slow_etcd::{SlowEtcd, unpublished_bytes};
use crate::common::{self, TestResult, files_in, s};
use std::path::Path;
use std::time::{Duration, Instant};
use testenv::{Azurite, Etcd, Fault, S3Server};

const BUCKET: &str = "agent";

/// `--endpoints`, `--node-name n1` and `--data-dir`: every single-node agent's first arguments.
fn node_n1<'a>(endpoints: &'a str, data_dir: &'a str) -> [&'a str; 6] {
    ["--endpoints", endpoints, "--node-name", "n1", "--data-dir", data_dir]
}

fn snapshots(dir: &Path) -> Vec<String> {
    files_in(&dir.join("snapshots")).into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_snapshots_keep_retention_locally_and_in_s3_and_move_the_gauges() -> TestResult {
    let etcd = etcd_with_objects(200).await?;
    let s3 = S3Server::with_bucket(BUCKET).await?;
    let data = tempfile::tempdir()?;
    // etcd, the node, its data directory and S3 from the environment, as a DaemonSet gives them.
    let mut env: Vec<(String, String)> = vec![
        ("ETCDSNAP_ENDPOINTS".into(), etcd.endpoints().join(",")),
        ("ETCDSNAP_NODE_NAME".into(), "node-1".into()),
        ("ETCDSNAP_DATA_DIR".into(), s(data.path())),
    ];
    env.extend(s3.etcdsnap_env(BUCKET));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let args = ["--schedule", "*/2 * * * * *", "--retention", "2", "--cluster-id", "c1", "--compress", "zstd"];
    let started = etcdsnap_storage::clock::now().as_second() as f64;
    let agent = Agent::start(&args, &env, data.path()).await?;
    let first = agent.wait_for_metric("etcdsnap_saves_total{status=\"success\"}", 1.0, Duration::from_secs(30)).await?;
    let first_local =
        metric(&first, "etcdsnap_last_success_timestamp_seconds{location=\"local\"}").ok_or("no local gauge")?;
    assert!(first_local >= started);
    let body = agent.wait_for_metric("etcdsnap_saves_total{status=\"success\"}", 4.0, Duration::from_secs(40)).await?;
    // Freshness moves forward; sizes, verification and all six K3s measures are there.
    assert!(
        metric(&body, "etcdsnap_last_success_timestamp_seconds{location=\"local\"}").is_some_and(|t| t > first_local)
    );
    assert!(metric(&body, "etcdsnap_last_success_timestamp_seconds{location=\"s3\"}").is_some_and(|t| t >= started));
    assert!(metric(&body, "etcdsnap_last_verified_timestamp_seconds").is_some_and(|t| t >= started));
    assert!(metric(&body, "etcdsnap_snapshot_size_bytes{location=\"s3\"}").is_some_and(|s| s > 0.0));
    for m in ["save", "save_local", "save_s3", "prune"] {
        let series = format!("etcdsnap_etcd_snapshot_{m}_duration_seconds_count{{status=\"success\"}}");
        assert!(metric(&body, &series).is_some_and(|n| n >= 1.0), "{series} missing:\n{body}");
    }
    let log = agent.stop().await?;
    // Retention held: the newest 2 locally and in S3, with their documents.
    let local = snapshots(data.path());
    assert_eq!(local.len(), 2, "{local:?}");
    assert!(local.iter().all(|n| n.starts_with("etcd-snapshot-node-1-") && n.ends_with(".zst")));
    let remote: Vec<String> =
        s3.list_keys(BUCKET, "").await?.into_iter().filter(|k| !k.starts_with(".metadata/")).collect();
    assert_eq!(remote, local, "S3 keeps the same two");
    assert!(log.contains("snapshot taken"), "one line per snapshot: {log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_snapshot_leaves_nothing_partial_and_exits_zero() -> TestResult {
    let slow = SlowEtcd::start(3000, 200_000).await?;
    let s3 = S3Server::with_bucket(BUCKET).await?;
    let data = tempfile::tempdir()?;
    let (endpoint, dd) = (slow.endpoint.clone(), s(data.path()));
    let args = [&node_n1(&endpoint, &dd)[..], &["--schedule", "* * * * * *"], &s3.etcdsnap_flags(BUCKET)].concat();
    let agent = Agent::start(&args, &s3.credentials_env(), data.path()).await?;
    let snapdir = data.path().join("snapshots");
    let deadline = Instant::now() + Duration::from_secs(30);
    let pid = agent.pid().ok_or("no pid")?;
    while unpublished_bytes(pid, &snapdir).is_none() || s3.list_multipart_uploads(BUCKET).await?.is_empty() {
        assert!(Instant::now() < deadline, "no snapshot in progress: {}", agent.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t = Instant::now();
    let log = agent.stop().await?;
    assert!(t.elapsed() < Duration::from_secs(15), "shutdown took {:?}", t.elapsed());
    assert!(log.contains("cancelled by shutdown"), "{log}");
    assert!(files_in(&snapdir).is_empty(), "left behind: {:?}", files_in(&snapdir));
    assert!(s3.list_multipart_uploads(BUCKET).await?.is_empty(), "a multipart upload was left open");
    assert!(s3.list_keys(BUCKET, "").await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlapping_run_is_skipped_and_counted() -> TestResult {
    let slow = SlowEtcd::start(2000, 500_000).await?;
    let data = tempfile::tempdir()?;
    let (endpoint, dd) = (slow.endpoint.clone(), s(data.path()));
    let args = [&node_n1(&endpoint, &dd)[..], &["--schedule", "* * * * * *"]].concat();
    let agent = Agent::start(&args, &[], data.path()).await?;
    agent.wait_for_metric("etcdsnap_scheduled_runs_skipped_total", 2.0, Duration::from_secs(30)).await?;
    slow.proxy.set_fault(Fault::None);
    let log = agent.stop().await?;
    assert!(log.contains("skipped: the previous run is still going"), "{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_settings_fail_at_start_naming_the_flag() -> TestResult {
    let data = tempfile::tempdir()?;
    let dd = s(data.path());
    let base = ["agent", "--node-name", "n1", "--data-dir", dd.as_str()];
    let cases: [(&[&str], &str); 9] = [
        (&["--schedule", "every five minutes"], "--schedule"),
        (&["--schedule", "0 0 30 2 *"], "--schedule"),
        // A cron error names the field at fault.
        (&["--schedule", "61 * * * *"], "the minute field \"61\""),
        (&["--schedule", "0 25 * * *"], "the hour field \"25\""),
        (&["--schedule", "0 0 * 13 *"], "the month field \"13\""),
        (&["--schedule", "0 0 * *"], "4 fields; a schedule has 5 (minute hour day-of-month month day-of-week)"),
        (&["--metrics-addr", "not-an-address"], "--metrics-addr"),
        (&["--s3", "--s3-bucket", ""], "--s3-bucket"),
        (&["--snapshot-name", "../x"], "--snapshot-name"),
    ];
    for (extra, flag) in cases {
        let args: Vec<&str> = base.iter().chain(extra.iter()).copied().collect();
        let out = tokio::time::timeout(Duration::from_secs(20), common::run(&args, &[])).await?;
        assert!(!out.ok(), "{extra:?} was accepted");
        assert!(out.stderr.contains(flag), "{extra:?}: {}", out.stderr);
    }
    // A port already taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?.to_string();
    let args: Vec<&str> = base.iter().copied().chain(["--metrics-addr", addr.as_str()]).collect();
    let out = tokio::time::timeout(Duration::from_secs(20), common::run(&args, &[])).await?;
    assert!(!out.ok() && out.stderr.contains("--metrics-addr"), "{}", out.stderr);
    Ok(())
}

/// The agent says when its next snapshot is due, at start and after each run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_logs_when_the_next_snapshot_is_due() -> TestResult {
    let etcd = etcd_with_objects(20).await?;
    let data = tempfile::tempdir()?;
    let (endpoints, dd) = (etcd.endpoints().join(","), s(data.path()));
    // Once a year, at midnight on 1 January, in UTC.
    let yearly = [&node_n1(&endpoints, &dd)[..], &["--schedule", "0 0 1 1 *", "--no-kube"]].concat();
    let agent = Agent::start(&yearly, &[("TZ", "UTC")], data.path()).await?;
    let next_year = etcdsnap_storage::clock::now().to_zoned(jiff::tz::TimeZone::UTC).year() + 1;
    let due = format!("at={next_year}-01-01T00:00:00Z");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.log_text().contains("next scheduled snapshot in") {
        assert!(Instant::now() < deadline, "no next run logged:\n{}", agent.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = agent.stop().await?;
    let line = log.lines().find(|l| l.contains("next scheduled snapshot in")).unwrap_or_default();
    assert!(line.contains(" INFO ") && line.contains(&due), "{line}");
    assert!(snapshots(data.path()).is_empty(), "a snapshot before its time");

    // Every second: each run is followed by the next one's time.
    let every_second = [&node_n1(&endpoints, &dd)[..], &["--schedule", "* * * * * *", "--no-kube"]].concat();
    let agent = Agent::start(&every_second, &[], data.path()).await?;
    agent.wait_for_metric("etcdsnap_saves_total{status=\"success\"}", 2.0, Duration::from_secs(30)).await?;
    let log = agent.stop().await?;
    let taken = log.matches("snapshot taken").count();
    assert!(taken >= 2 && log.matches("next scheduled snapshot in").count() > taken, "{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_etcd() -> TestResult {
    let mut etcd = Etcd::single().await?;
    let data = tempfile::tempdir()?;
    let (endpoints, dd) = (etcd.endpoints().join(","), s(data.path()));
    let args = [&node_n1(&endpoints, &dd)[..], &["--disable-snapshots", "--dial-timeout", "1s"]].concat();
    let agent = Agent::start(&args, &[], data.path()).await?;
    agent.wait_for("/readyz", |_, code| code == 200, Duration::from_secs(20)).await?;
    etcd.kill(0);
    let body = agent.wait_for("/readyz", |_, code| code == 503, Duration::from_secs(30)).await?;
    assert!(body.contains("[-] etcd failed"), "{body}");
    etcd.restart(0).await?;
    agent.wait_for("/readyz", |_, code| code == 200, Duration::from_secs(30)).await?;
    let (code, _) = agent.get("/healthz").await?;
    assert_eq!(code, 200);
    agent.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_that_failed_while_s3_was_down_are_retried_by_later_runs() -> TestResult {
    let etcd = etcd_with_objects(100).await?;
    let mut s3 = S3Server::with_bucket(BUCKET).await?;
    let data = tempfile::tempdir()?;
    let (endpoints, dd) = (etcd.endpoints().join(","), s(data.path()));
    // Owned: the server is stopped and restarted while they are in use.
    let s3_flags: Vec<String> = s3.etcdsnap_flags(BUCKET).into_iter().map(String::from).collect();
    let s3_flags: Vec<&str> = s3_flags.iter().map(String::as_str).collect();
    let (access, secret) = (s3.access_key().to_string(), s3.secret_key().to_string());
    let env = [("AWS_ACCESS_KEY_ID", access.as_str()), ("AWS_SECRET_ACCESS_KEY", secret.as_str())];
    let schedule = ["--schedule", "*/2 * * * * *", "--retention", "3", "--s3-timeout", "3s", "--cluster-id", "c1"];
    let args = [&node_n1(&endpoints, &dd)[..], &schedule, &s3_flags].concat();
    s3.stop();
    let agent = Agent::start(&args, &env, data.path()).await?;
    // Two runs with S3 down: local copies kept, uploads failed.
    let body = agent
        .wait_for_metric(
            "etcdsnap_etcd_snapshot_save_s3_duration_seconds_count{status=\"error\"}",
            2.0,
            Duration::from_secs(60),
        )
        .await?;
    assert!(metric(&body, "etcdsnap_last_success_timestamp_seconds{location=\"s3\"}").is_none());
    s3.restart().await?;
    // Within a few runs, S3 holds exactly what the local directory holds (the newest 3),
    // including snapshots taken while it was down.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let local = snapshots(data.path());
        let remote: Vec<String> =
            s3.list_keys(BUCKET, "").await?.into_iter().filter(|k| !k.starts_with(".metadata/")).collect();
        let caught_up =
            local.len() == 3 && remote == local && agent.log_text().contains("whose earlier upload had failed");
        if caught_up {
            break;
        }
        assert!(Instant::now() < deadline, "S3 {remote:?} never caught up with local {local:?}:\n{}", agent.log_text());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    agent.stop().await?;
    // What was uploaded late verifies like anything else.
    let verify = ["verify", "--data-dir", &dd, "--node-name", "n1", "--no-local"];
    let out = common::run(&[&verify[..], &s3_flags].concat(), &env).await;
    assert!(out.ok(), "{}\n{}", out.stdout, out.stderr);
    Ok(())
}

/// A schedule (six fields, UTC) that fires once, `secs` seconds from now.
fn once_in(secs: i64) -> String {
    let at = etcdsnap_storage::clock::now()
        .checked_add(jiff::SignedDuration::from_secs(secs))
        .unwrap()
        .to_zoned(jiff::tz::TimeZone::UTC);
    format!("{} {} {} {} {} *", at.second(), at.minute(), at.hour(), at.day(), at.month())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_catches_a_replica_up_on_its_own_once_it_is_back() -> TestResult {
    let etcd = etcd_with_objects(50).await?;
    let s3 = S3Server::with_bucket(BUCKET).await?;
    let data = tempfile::tempdir()?;
    let mut vars: Vec<(String, String)> = vec![
        ("ETCDSNAP_ENDPOINTS".into(), etcd.endpoints().join(",")),
        ("ETCDSNAP_NODE_NAME".into(), "node-a".into()),
        ("ETCDSNAP_DATA_DIR".into(), s(data.path())),
        ("ETCDSNAP_NO_KUBE".into(), "true".into()),
        ("TZ".into(), "UTC".into()),
    ];
    vars.extend(s3.etcdsnap_env(BUCKET));
    let env: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    const REPLICA: &str = "replica";
    let mut azurite = Azurite::with_container(REPLICA).await?;
    let url = format!("az://{REPLICA}/k3s");
    let mut flags = vec!["--replica".to_string(), url.clone()];
    for o in azurite.replica_options() {
        flags.extend(["--replica-option".to_string(), o]);
    }
    azurite.stop();
    // One scheduled save, in a few seconds, while the replica is down; copies missed are tried
    // again every 3 s.
    let schedule = once_in(6);
    let mut agent_args =
        vec!["--schedule", schedule.as_str(), "--drill-schedule", "", "--replica-retry-interval", "3s"];
    agent_args.extend(flags.iter().map(String::as_str));
    let agent = Agent::start(&agent_args, &env, data.path()).await?;
    let behind = format!("etcdsnap_replica_behind_snapshots{{replica=\"{url}\"}}");
    agent.wait_for_metric(&behind, 1.0, Duration::from_secs(60)).await?;
    let saved = snapshots(data.path());
    assert_eq!(saved.len(), 1, "{saved:?}");
    assert!(azurite.list_names(REPLICA, "").await.is_err(), "the replica is down");

    // Back: within a retry interval or two, with no other save, the replica holds the snapshot.
    azurite.restart().await?;
    agent.wait_for("/metrics", |b, _| metric(b, &behind) == Some(0.0), Duration::from_secs(30)).await?;
    let key = format!("k3s/{}", saved[0]);
    let local = std::fs::read(data.path().join("snapshots").join(&saved[0]))?;
    assert!(azurite.get_blob(REPLICA, &key).await? == local, "{key} differs from the local copy");
    assert_eq!(snapshots(data.path()), saved, "no other save was taken");
    let log = agent.stop().await?;
    assert!(log.contains("copied to replica"), "{log}");
    Ok(())
}
