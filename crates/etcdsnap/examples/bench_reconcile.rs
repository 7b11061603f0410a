//! Benchmark of one reconcile pass against a real kube-apiserver and S3 server (started here by
//! testenv): N local snapshots on disk (files plus metadata documents) and M objects in an S3
//! folder (half with metadata documents, half as K3s writes them), first pass (everything
//! created) then a pass with nothing to change. API requests are counted from the API server's
//! audit log, S3 requests from the S3 server's access log. Run through `bench/reconcile.sh`.

use etcdsnap_api::{SnapshotName, StorageKind};
use etcdsnap_kube::leader::{LeaderElector, LeaderTerm, Role, Timing};
use etcdsnap_kube::lease::{NodeLiveness, renew_heartbeat};
use etcdsnap_kube::reconcile::{LeaderView, ReconcileReport, StorageState, reconcile_leader};
use etcdsnap_kube::{Kube, KubeSettings};
use etcdsnap_storage::record::{MetadataSource, SnapshotRecord};
use etcdsnap_storage::store::SnapshotStore;
use etcdsnap_storage::store::local::LocalStore;
use etcdsnap_storage::store::s3::{RawS3Settings, S3Key, S3Store, SettingsOrigin};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use testenv::{AuditEvent, Etcd, KubeApiServer, S3Server};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A local snapshot's record, for its metadata document.
fn local_record(name: &str, location: String) -> Result<SnapshotRecord> {
    let name = SnapshotName::parse(name)?;
    let created = jiff::Timestamp::from_second(name.timestamp().unwrap_or(0))?;
    Ok(SnapshotRecord {
        sha256: Some("ab".repeat(32)),
        cluster_id: Some("cluster".into()),
        metadata_source: MetadataSource::Document,
        ..SnapshotRecord::stored(name, StorageKind::Local, "node-1", location, created, 1)
    })
}

fn write_local(dir: &Path, n: usize) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let layout = etcdsnap_storage::store::local::Layout::of(dir);
    std::fs::create_dir_all(layout.records())?;
    for i in 0..n {
        let name = format!("etcd-snapshot-node-1-{}", 1_700_000_000 + i);
        let r = local_record(&name, format!("file://{}/{name}", dir.display()))?;
        std::fs::write(dir.join(&name), b"x")?;
        std::fs::write(layout.record_path(&r.name), r.to_document().to_json())?;
    }
    Ok(())
}

struct Counts {
    reads: usize,
    writes: usize,
    lists: usize,
    by_verb: BTreeMap<String, usize>,
}

fn count(events: &[AuditEvent]) -> Counts {
    let mine: Vec<&AuditEvent> = events.iter().filter(|e| e.user == "admin").collect();
    let mut by_verb = BTreeMap::new();
    for e in &mine {
        *by_verb.entry(format!("{} {}", e.verb, e.resource)).or_insert(0) += 1;
    }
    Counts {
        reads: mine.iter().filter(|e| !e.is_write()).count(),
        writes: mine.iter().filter(|e| e.is_write()).count(),
        lists: mine.iter().filter(|e| e.verb == "list" && e.resource == "etcdsnapshotfiles").count(),
        by_verb,
    }
}

/// S3 requests by operation since `before` entries of the access log.
fn s3_counts(s3: &S3Server, before: usize) -> (usize, BTreeMap<String, usize>) {
    let requests = s3.requests();
    let mut by_op = BTreeMap::new();
    for r in &requests[before.min(requests.len())..] {
        *by_op.entry(r.operation.clone()).or_insert(0) += 1;
    }
    (requests.len().saturating_sub(before), by_op)
}

struct Pass {
    total: Duration,
    local_listed: Duration,
    s3_listed: Duration,
    report: ReconcileReport,
    api: Counts,
    s3_requests: (usize, BTreeMap<String, usize>),
}

async fn pass(
    kube: &Kube,
    term: &LeaderTerm,
    api: &KubeApiServer,
    dir: &Path,
    s3: &S3Server,
    store: &Arc<S3Store>,
) -> Result<Pass> {
    let before = api.audit_events()?.len();
    let s3_before = s3.requests().len();
    let started = Instant::now();
    let local = LocalStore::open(dir, false, "node-1")?;
    let listing = local.list().await?;
    let local_listed = started.elapsed();
    let s3_started = Instant::now();
    let remote = store.list().await?;
    let s3_listed = s3_started.elapsed();
    let state = StorageState {
        local: Some(listing.records),
        s3: Some(remote.records),
        s3_location: Some(store.spec()),
        deleted: Default::default(),
    };
    let view = LeaderView { liveness: NodeLiveness::read(&kube.client).await?, term: term.clone() };
    let report = reconcile_leader(kube, &state, &view).await?;
    let total = started.elapsed();
    let events = api.audit_events()?;
    Ok(Pass {
        total,
        local_listed,
        s3_listed,
        report,
        api: count(&events[before..]),
        s3_requests: s3_counts(s3, s3_before),
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let (n_local, n_s3) = (arg("--local", 10_000), arg("--s3", 10_000));
    let etcd = Etcd::start(testenv::EtcdOptions {
        extra_args: vec!["--quota-backend-bytes=8589934592".into()],
        ..Default::default()
    })
    .await?;
    let api = KubeApiServer::start(&etcd).await?;
    let kube = Kube::new(api.client().await?, KubeSettings::new("node-1"));
    etcdsnap_kube::crd::ensure_crd(&kube.client).await?;
    renew_heartbeat(&kube.client, "node-1", Duration::from_secs(3600), Duration::ZERO).await?;
    let mut elector = LeaderElector::new(kube.client.clone(), "node-1", Timing::for_lease(Duration::from_secs(3600)));
    let Role::Leader(term) = elector.round().await? else {
        return Err("could not take the leader lease".into());
    };
    let work = tempfile::tempdir()?;
    let dir = work.path().join("snapshots");
    write_local(&dir, n_local)?;
    let s3 = S3Server::start().await?;
    s3.create_bucket("etcd").await?;
    testenv::fill_snapshot_objects(&s3.url(), "etcd", "k3s", n_s3, s3.access_key(), s3.secret_key()).await?;
    let mut raw = RawS3Settings::new(SettingsOrigin::Flags);
    raw.set(S3Key::Endpoint, s3.endpoint())
        .set(S3Key::AccessKey, s3.access_key())
        .set(S3Key::SecretKey, s3.secret_key())
        .set(S3Key::Bucket, "etcd")
        .set(S3Key::Folder, "k3s")
        .set(S3Key::Insecure, "true");
    let store = S3Store::with_cache_in(raw.parse()?, work.path())?;

    println!(
        "| run | wall s | local listing s | S3 listing s | created | updated | deleted | unchanged | API reads | API writes | LIST etcdsnapshotfiles | S3 requests | legacy ConfigMap |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for label in ["first (creates)", "no-op"] {
        let p = pass(&kube, &term, &api, &dir, &s3, &store).await?;
        if !p.report.errors.is_empty() {
            return Err(format!("{} errors, first: {}", p.report.errors.len(), p.report.errors[0]).into());
        }
        let legacy = p
            .report
            .legacy
            .as_ref()
            .map(|l| {
                format!(
                    "{} entries, {} bytes est., {}",
                    l.entries,
                    l.estimated_bytes,
                    if l.written { "written" } else { "unchanged" }
                )
            })
            .unwrap_or_default();
        let s3_ops: Vec<String> = p.s3_requests.1.iter().map(|(op, n)| format!("{op} {n}")).collect();
        println!(
            "| {label} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} | {} | {} ({}) | {legacy} |",
            p.total.as_secs_f64(),
            p.local_listed.as_secs_f64(),
            p.s3_listed.as_secs_f64(),
            p.report.created,
            p.report.updated,
            p.report.deleted,
            p.report.unchanged,
            p.api.reads,
            p.api.writes,
            p.api.lists,
            p.s3_requests.0,
            s3_ops.join(", ")
        );
        eprintln!("{label}: API requests by verb and resource: {:?}", p.api.by_verb);
    }
    Ok(())
}
