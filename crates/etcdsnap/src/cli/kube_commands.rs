//! The commands that are about resources: `crd`, `reconcile`, `watch` and `ls --cluster`. (The
//! resource writes that follow `save`, `delete` and `prune` are the session's.)

use super::args::{LsArgs, OutputFormat};
use super::commands::{exit, session_config};
use super::kube_args::{CrdArgs, KubeArgs, ReconcileArgs, WatchArgs, WatchFormat};
use super::output::{self, rfc3339};
use anyhow::{Context as _, bail};
use etcdsnap::ops::reconcile::{self as reconcile_job, PassOutcome};
use etcdsnap::session::{KubePolicy, Purpose, Session};
use etcdsnap_api::ETCDSnapshotFile;
use etcdsnap_api::consts::SYSTEM_NAMESPACE;
use etcdsnap_kube::crd::{crd_yaml, ensure_crd};
use etcdsnap_kube::lease::{
    COMMAND_LEADER_DURATION, LEADER_LEASE, LeaderLease, Leadership, heartbeat_interval, renew_heartbeat,
};
use etcdsnap_kube::{Kube, resources, watch as kwatch};
use futures::StreamExt;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

/// A connection for the commands that read or write resources only (no storage).
async fn connect(args: &KubeArgs, what: &str) -> anyhow::Result<Kube> {
    match Kube::connect(&args.connect_options(), args.settings("")).await? {
        Some(kube) => Ok(kube),
        None => bail!("{what} needs Kubernetes access: no kubeconfig found (or --no-kube)"),
    }
}

pub async fn crd(args: CrdArgs) -> anyhow::Result<ExitCode> {
    if !args.install {
        print!("{}", crd_yaml());
        return Ok(ExitCode::SUCCESS);
    }
    let kube = connect(&args.kube, "installing the CRD").await?;
    let outcome = ensure_crd(&kube.client).await?;
    println!("CRD {}: {outcome:?}", etcdsnap_api::consts::CRD_NAME);
    Ok(ExitCode::SUCCESS)
}

pub async fn reconcile(args: ReconcileArgs) -> anyhow::Result<ExitCode> {
    let config = session_config(&args.flags.node, false, KubePolicy::OneShot)?;
    let session = Session::open(config).await?;
    let Some(kube) = session.kube().cloned() else {
        bail!("reconcile needs Kubernetes access: no kubeconfig found (or --no-kube)");
    };
    let node = session.node_name().to_string();
    ensure_crd(&kube.client).await.context("CRD")?;
    let s = &kube.settings;
    renew_heartbeat(&kube.client, &node, s.orphan_ttl, heartbeat_interval(s.orphan_ttl)).await.context("heartbeat")?;
    let ctx = session.context(Purpose::Read).await;
    let lease = LeaderLease::new(kube.client.clone(), &node, COMMAND_LEADER_DURATION);
    let leadership = if args.no_leader {
        Leadership::Follower { holder: "(not tried: --no-leader)".into() }
    } else {
        lease.try_acquire().await.context("leader lease")?
    };
    let leading = leadership.is_leader();
    let result = reconcile_job::run_pass(&kube, &ctx, leading, session.local_managed()).await;
    if leading && let Err(e) = lease.release().await {
        tracing::warn!("releasing the leader lease: {e}");
    }
    let outcome = result?;
    print_reconcile(&node, &leadership, &outcome);
    for e in &outcome.report.errors {
        eprintln!("error: {e}");
    }
    // A store that cannot be listed was reported as a warning; its resources were left as they are.
    Ok(exit(outcome.report.errors.is_empty()))
}

fn print_reconcile(node: &str, leadership: &Leadership, outcome: &PassOutcome) {
    let r = &outcome.report;
    println!(
        "Reconciled ETCDSnapshotFile resources for node {node}: {} created, {} updated, {} deleted, {} unchanged, {} kept (TTL).",
        r.created, r.updated, r.deleted, r.unchanged, r.kept
    );
    match leadership {
        Leadership::Leader => {
            let s3 = if outcome.listing.state.s3.is_some() { "S3 reconciled" } else { "S3 not configured" };
            let legacy = match &r.legacy {
                Some(l) => format!(
                    "legacy ConfigMap {} entries ({} left out, ~{} bytes, {})",
                    l.entries,
                    l.dropped,
                    l.estimated_bytes,
                    if l.written { "written" } else { "unchanged" }
                ),
                None => "legacy ConfigMap off".into(),
            };
            println!(
                "Leader duties done (this node holds lease {SYSTEM_NAMESPACE}/{LEADER_LEASE}): {s3}, departed nodes {:?}, {legacy}.",
                r.orphaned_nodes
            );
        }
        Leadership::Follower { holder } => {
            println!("Leader duties skipped: lease {SYSTEM_NAMESPACE}/{LEADER_LEASE} is held by {holder}.")
        }
    }
}

/// `ls --cluster`: every node's resources, from the API server.
pub(super) async fn ls_cluster(args: &LsArgs) -> anyhow::Result<ExitCode> {
    let kube = connect(&args.flags.node.kube, "ls --cluster").await?;
    let mut items = resources::list(&kube.client, None).await?;
    items.sort_by(|a, b| {
        let time = |c: &ETCDSnapshotFile| c.status.as_ref().and_then(|s| s.creation_time.as_ref()).map(|t| t.0);
        (time(a), &a.spec.snapshot_name).cmp(&(time(b), &b.spec.snapshot_name))
    });
    match args.flags.output.output {
        OutputFormat::Table => {
            let mut rows = vec![
                ["NAME", "SNAPSHOTNAME", "NODE", "LOCATION", "SIZE", "CREATIONTIME", "READY"]
                    .map(String::from)
                    .to_vec(),
            ];
            rows.extend(items.iter().map(row));
            print!("{}", output::table(&rows));
        }
        format => {
            let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items});
            output::print_structured(&list, format)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn row(cr: &ETCDSnapshotFile) -> Vec<String> {
    let status = cr.status.clone().unwrap_or_default();
    vec![
        cr.metadata.name.clone().unwrap_or_default(),
        cr.spec.snapshot_name.clone(),
        cr.spec.node_name.clone(),
        cr.spec.location.clone(),
        status.size.map(|q| q.0).unwrap_or_default(),
        status.creation_time.map(|t| rfc3339(t.0)).unwrap_or_default(),
        status.ready_to_use.unwrap_or(false).to_string(),
    ]
}

pub async fn watch(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let kube = connect(&args.kube, "watch").await?;
    let mut stream = Box::pin(kwatch::changes(&kube.client));
    if args.output == WatchFormat::Table {
        println!("EVENT NAME SNAPSHOTNAME NODE LOCATION SIZE CREATIONTIME READY");
    }
    while let Some(change) = stream.next().await {
        let change = match change {
            Ok(c) => c,
            Err(e) => {
                // The watcher retries on its own; say so and keep going.
                tracing::warn!("watch interrupted, resuming: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let line = match args.output {
            WatchFormat::Json => serde_json::json!({"type": change.kind(), "object": change.object()}).to_string(),
            WatchFormat::Table => format!("{} {}", change.kind(), row(change.object()).join(" ")),
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}
