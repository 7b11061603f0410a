//! The chaos soak (a benchmark, not a test; `bench/soak.sh` runs it): three agents on a
//! three-member etcd, one API server and one S3 server behind a cutting proxy, all real and on
//! loopback, saving every 2 s while a seeded chaos driver pauses and kills agents, restarts the
//! API server, cuts S3 and kills the etcd leader. Then the chaos stops, the fleet settles, the
//! agents stop, and the servers are read directly to judge the invariants (see `check.rs`).
//!
//! Environment: `ETCDSNAP_BIN` (the binary under test, required), `SOAK_MINUTES` (30),
//! `SOAK_SEED` (random, printed), `SOAK_REPORT` (a JSON report file, optional), `SOAK_FAULTS`
//! (the kinds of fault to inject, comma-separated, e.g. `cut-s3,kill-etcd-leader`; all by
//! default: narrows a soak down to one fault when looking for what a fault leaves behind).

mod agents;
mod chaos;
mod check;
mod fds;
mod report;

use agents::{Agent, BUCKET, Fleet, NODES};
use anyhow::Context;
use std::time::{Duration, Instant};
use testenv::{Etcd, FaultProxy, KubeApiServer, S3Server};

/// Calm at the end, before the agents stop: two reconcile intervals and a Lease or two.
const SETTLE: Duration = Duration::from_secs(90);

struct Options {
    bin: std::path::PathBuf,
    minutes: u64,
    seed: u64,
    report: Option<std::path::PathBuf>,
    faults: Vec<chaos::Kind>,
}

impl Options {
    fn from_env() -> anyhow::Result<Options> {
        let bin = std::env::var_os("ETCDSNAP_BIN").context("ETCDSNAP_BIN must name the etcdsnap binary")?;
        let minutes = match std::env::var("SOAK_MINUTES") {
            Ok(m) => m.parse().context("SOAK_MINUTES must be a whole number")?,
            Err(_) => 30,
        };
        let seed = match std::env::var("SOAK_SEED") {
            Ok(s) => s.parse().context("SOAK_SEED must be a whole number")?,
            Err(_) => rand::random(),
        };
        let faults = match std::env::var("SOAK_FAULTS") {
            Ok(list) if !list.trim().is_empty() => chaos::Kind::parse_list(&list)?,
            _ => chaos::KINDS.to_vec(),
        };
        anyhow::ensure!(!faults.is_empty(), "SOAK_FAULTS names no fault");
        let report = std::env::var_os("SOAK_REPORT").map(Into::into);
        Ok(Options { bin: bin.into(), minutes, seed, report, faults })
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let opts = Options::from_env()?;
    let faults: Vec<&str> = opts.faults.iter().map(|k| k.name()).collect();
    eprintln!("soak: seed {} for {} minutes, faults: {}", opts.seed, opts.minutes, faults.join(" "));
    let mut etcd = Etcd::cluster(3).await?;
    let mut api = KubeApiServer::start(&etcd).await?;
    let s3 = S3Server::start().await?;
    s3.create_bucket(BUCKET).await?;
    let proxy = FaultProxy::start(&format!("127.0.0.1:{}", s3.port())).await?;
    let work = tempfile::tempdir()?;
    let fleet = Fleet {
        bin: opts.bin.clone(),
        kubeconfig: api.kubeconfig_path().to_path_buf(),
        s3_endpoint: proxy.addr().to_string(),
        access_key: s3.access_key().to_string(),
        secret_key: s3.secret_key().to_string(),
        peers: fds::Peers::new(&etcd.endpoints(), api.url(), &proxy.addr().to_string()),
    };
    let endpoints = etcd.endpoints();
    let mut agents: Vec<Agent> = NODES
        .iter()
        .zip(&endpoints)
        .map(|(node, endpoint)| Agent::new(node, endpoint.clone(), work.path()))
        .collect::<anyhow::Result<_>>()?;
    let started = Instant::now();
    for a in &mut agents {
        a.start(&fleet, started)?;
    }
    let workload = tokio::spawn(workload(etcd.client().await?));

    let chaos_end = started + Duration::from_secs(opts.minutes * 60).saturating_sub(SETTLE);
    let mut chaos = chaos::Chaos::new(opts.seed, opts.faults.clone());
    let mut world =
        chaos::World { etcd: &mut etcd, api: &mut api, proxy: &proxy, agents: &mut agents, fleet: &fleet, started };
    chaos.run(&mut world, chaos_end).await?;
    world.sleep_sampling(SETTLE).await;
    workload.abort();
    for a in &mut agents {
        a.stop()?;
    }
    // The legacy ConfigMap follows the resources through the leader, so the last saves of the
    // agents stopped last may not be in it yet. Once nothing saves any more, one agent leads
    // alone for a while (no schedule) and brings it up to date: the check judges that state.
    agents[0].start_with(&fleet, started, &["--disable-snapshots"])?;
    tokio::time::sleep(Duration::from_secs(30)).await;
    agents[0].stop()?;

    let client = api.client().await?;
    let verdict = check::check(&agents, &fleet, &client).await?;
    let verified = verify_all(&agents, &fleet).await?;
    let report = report::Report::new(&opts, started.elapsed(), &agents, &chaos, &verdict, &verified);
    println!("{}", report.markdown());
    if let Some(path) = &opts.report {
        std::fs::write(path, serde_json::to_string_pretty(&report.json())?)?;
    }
    anyhow::ensure!(report.violations() == 0, "the soak found {} invariant violations", report.violations());
    Ok(())
}

/// A cluster's background writes: 20 puts a second over 2,000 keys of 1 KiB, errors ignored
/// (the etcd leader is killed now and then).
async fn workload(mut client: etcd_client::Client) {
    let value = vec![b'x'; 1024];
    let mut i: u64 = 0;
    loop {
        let _ = client.put(format!("/registry/soak/{}", i % 2000), value.clone(), None).await;
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `etcdsnap verify` of every node's local and S3 snapshots, by the binary under test.
async fn verify_all(agents: &[Agent], fleet: &Fleet) -> anyhow::Result<report::Verified> {
    let mut verified = report::Verified::default();
    for a in agents {
        let out = tokio::process::Command::new(&fleet.bin)
            .arg("verify")
            .args(a.common_args(fleet))
            .args(["--no-kube", "-o", "json"])
            .env("AWS_ACCESS_KEY_ID", &fleet.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &fleet.secret_key)
            .output()
            .await?;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("verify of {}: {}", a.node, String::from_utf8_lossy(&out.stderr)))?;
        for item in json.get("items").and_then(|r| r.as_array()).into_iter().flatten() {
            let location = item.get("location").and_then(|l| l.as_str()).unwrap_or_default().to_string();
            let ok = item.get("ok").and_then(serde_json::Value::as_bool) == Some(true);
            *verified.results.entry(location).or_insert(ok) &= ok;
        }
        if let Some(errors) = json.get("errors").and_then(|e| e.as_array())
            && !errors.is_empty()
        {
            verified.listing_errors += errors.len();
            eprintln!("soak: verify of {} could not list: {errors:?}", a.node);
        }
    }
    Ok(verified)
}
