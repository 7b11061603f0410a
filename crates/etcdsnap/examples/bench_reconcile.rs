//! Benchmark of one reconcile pass against a real kube-apiserver (started here by testenv):
//! N local snapshots on disk (files plus metadata documents) and M S3 records, first pass
//! (everything created) then a pass with nothing to change. Requests are counted from the API
//! server's audit log. Run through `bench/reconcile.sh`.
//!
//! S3 storage is not part of this build yet, so the S3 side is fed as listing records (exactly
//! what the S3 store's listing returns); S3 request counts are therefore not measured here.

use etcdsnap::kube::lease::{LeaderLease, NodeLiveness, renew_heartbeat};
use etcdsnap::kube::reconcile::{LeaderView, ReconcileReport, StorageState, reconcile_leader};
use etcdsnap::kube::{Kube, KubeSettings};
use etcdsnap::record::{MetadataSource, Outcome, SnapshotRecord};
use etcdsnap::store::SnapshotStore;
use etcdsnap::store::local::LocalStore;
use etcdsnap_api::{Compression, ETCDSnapshotS3, SnapshotName, StorageKind};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use testenv::{AuditEvent, Etcd, KubeApiServer};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn record(name: &str, storage: StorageKind, location: String) -> Result<SnapshotRecord> {
    let name = SnapshotName::parse(name)?;
    Ok(SnapshotRecord {
        created_at: jiff::Timestamp::from_second(name.timestamp().unwrap_or(0))?,
        compression: Compression::None,
        name,
        storage,
        node_name: "node-1".into(),
        location,
        size: 1,
        outcome: Outcome::Ready,
        sha256: Some("ab".repeat(32)),
        etcd: None,
        token_hash: None,
        cluster_id: Some("cluster".into()),
        s3: (storage == StorageKind::S3).then(|| ETCDSnapshotS3 {
            endpoint: Some("s3.example.com".into()),
            bucket: Some("etcd".into()),
            prefix: Some("k3s".into()),
            ..Default::default()
        }),
        extra_metadata: None,
        metadata_source: MetadataSource::Document,
    })
}

fn write_local(dir: &Path, n: usize) -> Result<()> {
    let meta = dir.parent().ok_or("no parent")?.join(".metadata");
    std::fs::create_dir_all(dir)?;
    std::fs::create_dir_all(&meta)?;
    for i in 0..n {
        let name = format!("etcd-snapshot-node-1-{}", 1_700_000_000 + i);
        let r = record(&name, StorageKind::Local, format!("file://{}/{name}", dir.display()))?;
        std::fs::write(dir.join(&name), b"x")?;
        std::fs::write(meta.join(&name), r.to_document().to_json())?;
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

async fn pass(
    kube: &Kube,
    api: &KubeApiServer,
    dir: &Path,
    s3: &[SnapshotRecord],
) -> Result<(Duration, Duration, ReconcileReport, Counts)> {
    let before = api.audit_events()?.len();
    let started = Instant::now();
    let local = LocalStore::open(dir, false, "node-1")?;
    let listing = local.list().await?;
    let listed = started.elapsed();
    let state = StorageState { local: Some(listing.records), s3: Some(s3.to_vec()), deleted: Default::default() };
    let view = LeaderView { liveness: NodeLiveness::read(&kube.client).await? };
    let report = reconcile_leader(kube, &state, &view).await?;
    let total = started.elapsed();
    let events = api.audit_events()?;
    Ok((total, listed, report, count(&events[before..])))
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
    etcdsnap::kube::crd::ensure_crd(&kube.client).await?;
    renew_heartbeat(&kube.client, "node-1", Duration::from_secs(3600), Duration::ZERO).await?;
    let lease = LeaderLease::new(kube.client.clone(), "node-1", Duration::from_secs(3600));
    if !lease.try_acquire().await?.is_leader() {
        return Err("could not take the leader lease".into());
    }
    let work = tempfile::tempdir()?;
    let dir = work.path().join("snapshots");
    write_local(&dir, n_local)?;
    let s3: Vec<SnapshotRecord> = (0..n_s3)
        .map(|i| {
            let name = format!("etcd-snapshot-node-1-{}", 1_700_000_000 + i);
            record(&name, StorageKind::S3, format!("s3://etcd/k3s/{name}"))
        })
        .collect::<Result<_>>()?;

    println!(
        "| run | wall s | local listing s | created | updated | deleted | unchanged | API reads | API writes | LIST etcdsnapshotfiles | legacy ConfigMap |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for label in ["first (creates)", "no-op"] {
        let (total, listed, report, counts) = pass(&kube, &api, &dir, &s3).await?;
        if !report.errors.is_empty() {
            return Err(format!("{} errors, first: {}", report.errors.len(), report.errors[0]).into());
        }
        let legacy = report
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
        println!(
            "| {label} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} | {} | {legacy} |",
            total.as_secs_f64(),
            listed.as_secs_f64(),
            report.created,
            report.updated,
            report.deleted,
            report.unchanged,
            counts.reads,
            counts.writes,
            counts.lists
        );
        eprintln!("{label}: requests by verb and resource: {:?}", counts.by_verb);
    }
    Ok(())
}
