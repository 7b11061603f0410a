//! The commands that are about resources: `crd`, `reconcile`, `watch` and `ls --cluster`. (The
//! resource writes that follow `save`, `delete` and `prune` are the session's.)

use super::args::{LsArgs, OutputFormat};
use super::commands::{exit, session_config};
use super::kube_args::{CrdArgs, KubeArgs, ReconcileArgs, WatchArgs, WatchFormat};
use super::output;
use anyhow::{Context as _, bail};
use etcdsnap::ops::reconcile::{self as reconcile_job, PassOutcome};
use etcdsnap::session::{KubePolicy, Purpose, Session};
use etcdsnap_api::ETCDSnapshotFile;
use etcdsnap_api::consts::SYSTEM_NAMESPACE;
use etcdsnap_kube::crd::{crd_yaml, ensure_crd};
use etcdsnap_kube::leader::{COMMAND_LEADER_DURATION, LEADER_LEASE, LeaderElector, Role, Timing};
use etcdsnap_kube::lease::{heartbeat_interval, renew_heartbeat};
use etcdsnap_kube::{Kube, resources, watch as kwatch};
use futures::StreamExt;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long `reconcile` watches a leader Lease that is not being renewed before it gives up on
/// the leader's duties: a holder that died without releasing it is waited out for the Lease's
/// duration (30 s for an agent), never longer than this.
const LEADER_WAIT: Duration = Duration::from_secs(120);

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
    let (role, election) = if args.no_leader {
        (Role::Follower { holder: "(not tried: --no-leader)".into() }, None)
    } else {
        lead(&kube, &node).await?
    };
    // The leader's writes go through a connection fenced by the term (`Kube::for_term`).
    let writer = match role.term() {
        Some(term) => kube.for_term(term)?,
        None => kube.clone(),
    };
    let result = reconcile_job::run_pass(&writer, &ctx, role.term(), session.local_managed()).await;
    if let Some((stop, task)) = election {
        stop.cancel(); // ends the term and releases the Lease
        let _ = task.await;
    }
    let outcome = result?;
    print_reconcile(&node, &role, &outcome);
    for e in &outcome.report.errors {
        eprintln!("error: {e}");
    }
    // A store that cannot be listed was reported as a warning; its resources were left as they are.
    Ok(exit(outcome.report.errors.is_empty()))
}

/// Tries to lead for the one-shot pass; when it does, the term is renewed in the background
/// until the returned token is cancelled.
async fn lead(kube: &Kube, node: &str) -> anyhow::Result<(Role, Option<(CancellationToken, JoinHandle<()>)>)> {
    // Its own identity: the agent on this node is another holder, not this command.
    let identity = format!("{node}/reconcile-{}", std::process::id());
    let mut elector = LeaderElector::new(kube.client.clone(), &identity, Timing::for_lease(COMMAND_LEADER_DURATION));
    let role = elector.acquire_within(LEADER_WAIT).await.context("leader lease")?;
    let Role::Leader(term) = &role else { return Ok((role, None)) };
    let stop = CancellationToken::new();
    let task = tokio::spawn(elector.run(stop.clone(), tokio::sync::watch::Sender::new(Some(term.clone()))));
    Ok((role, Some((stop, task))))
}

fn print_reconcile(node: &str, role: &Role, outcome: &PassOutcome) {
    let r = &outcome.report;
    println!(
        "Reconciled ETCDSnapshotFile resources for node {node}: {} created, {} updated, {} deleted, {} unchanged, {} kept (TTL).",
        r.created, r.updated, r.deleted, r.unchanged, r.kept
    );
    match role {
        Role::Leader(_) => {
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
        Role::Follower { holder } => {
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
            let cells = output::Cells::for_stdout();
            rows.extend(items.iter().map(|cr| row(cr, cells)));
            print!("{}", output::table(&rows));
        }
        format => {
            let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items});
            output::print_structured(&list, format)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn row(cr: &ETCDSnapshotFile, cells: output::Cells) -> Vec<String> {
    let status = cr.status.clone().unwrap_or_default();
    vec![
        cr.metadata.name.clone().unwrap_or_default(),
        cr.spec.snapshot_name.clone(),
        cr.spec.node_name.clone(),
        cells.location(&cr.spec.location),
        status.size.map(|q| cells.quantity(&q.0)).unwrap_or_default(),
        status.creation_time.map(|t| cells.created(t.0)).unwrap_or_default(),
        status.ready_to_use.unwrap_or(false).to_string(),
    ]
}

pub async fn watch(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let kube = connect(&args.kube, "watch").await?;
    let mut stream = Box::pin(kwatch::changes(&kube.client));
    let cells = output::Cells::for_stdout();
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
            WatchFormat::Table => format!("{} {}", change.kind(), row(change.object(), cells).join(" ")),
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}
