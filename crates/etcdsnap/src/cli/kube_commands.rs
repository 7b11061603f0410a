//! The Kubernetes side of the commands: `crd`, `reconcile`, `watch`, `ls --cluster`, and the
//! resource writes that follow `save`, `delete` and `prune`.
//!
//! Snapshot operations never fail because of Kubernetes: without a kubeconfig (or with
//! `--no-kube`) they say once that resources are skipped; when the API server cannot be used they
//! warn once and leave the resources to the next `etcdsnap reconcile`.

use super::args::{LsArgs, OutputFormat, StorageArgs};
use super::commands::{base_context, build_s3_store, exit};
use super::kube_args::{CrdArgs, KubeArgs, ReconcileArgs, WatchArgs, WatchFormat};
use super::output::{self, rfc3339};
use crate::kube::crd::{crd_yaml, ensure_crd};
use crate::kube::lease::{
    COMMAND_LEADER_DURATION, LEADER_LEASE, LeaderLease, Leadership, NodeLiveness, renew_heartbeat,
};
use crate::kube::reconcile::{LeaderView, ReconcileReport, reconcile_leader, reconcile_node};
use crate::kube::{Kube, extra_metadata, publish, resources, s3_secret, watch as kwatch};
use crate::ops::{Context, SaveReport};
use anyhow::{Context as _, bail};
use etcdsnap_api::consts::SYSTEM_NAMESPACE;
use etcdsnap_api::{ETCDSnapshotFile, StorageKind};
use futures::StreamExt;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// Connects when Kubernetes is configured; otherwise says once why resources are skipped.
/// A kubeconfig that cannot be used is reported and treated like none: snapshot operations go on.
pub(super) async fn session(args: &KubeArgs, node: &str, no_local: bool) -> anyhow::Result<Option<KubeSession>> {
    let connected = match Kube::connect(&args.connect_options(), args.settings(node)).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("Kubernetes not usable ({e}): ETCDSnapshotFile resources are skipped");
            return Ok(None);
        }
    };
    match connected {
        Some(kube) => Ok(Some(KubeSession { kube, usable: true, no_local, secret_retention: None, started: false })),
        None => {
            let why = if args.no_kube { "--no-kube" } else { "no kubeconfig found" };
            tracing::warn!("Kubernetes not configured ({why}): ETCDSnapshotFile resources are skipped");
            Ok(None)
        }
    }
}

/// For commands that only read storage (ls, verify): Kubernetes matters only when S3 settings
/// come from the config Secret, so no connection is made otherwise.
pub(super) async fn for_reading(args: &KubeArgs, ctx: &mut Context, storage: &StorageArgs) -> anyhow::Result<()> {
    if args.s3_config_secret.is_none() || storage.s3.enabled {
        return Ok(());
    }
    if let Some(mut k) = session(args, &ctx.node_name, storage.no_local).await? {
        k.prepare(ctx, &storage.data_dir, Purpose::Read).await;
    }
    Ok(())
}

/// Kubernetes access for one command; after the first failure it stops trying (one warning).
pub(super) struct KubeSession {
    kube: Kube,
    usable: bool,
    no_local: bool,
    secret_retention: Option<usize>,
    started: bool,
}

/// What a command will do with Kubernetes, which decides what [`KubeSession::prepare`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    /// Reads storage only (ls, verify): no writes to the API server.
    Read,
    /// Changes storage and resources (delete, prune, reconcile).
    Write,
    /// Saves a snapshot: also reads the extra metadata to record with it.
    Save,
}

impl KubeSession {
    fn give_up(&mut self, what: &str, e: impl std::fmt::Display) {
        if self.usable {
            tracing::warn!(
                "Kubernetes API not usable ({what}: {e}); the snapshot operation is not affected, and `etcdsnap reconcile` will create the missing ETCDSnapshotFile resources"
            );
        }
        self.usable = false;
    }

    /// The CRD and this node's heartbeat, before any resource is written (once per command).
    async fn start(&mut self) {
        if self.started {
            return;
        }
        self.started = true;
        if let Err(e) = ensure_crd(&self.kube.client).await {
            self.give_up("CRD", e);
            return;
        }
        let s = &self.kube.settings;
        if let Err(e) =
            renew_heartbeat(&self.kube.client, &s.node_name, s.orphan_ttl, heartbeat_interval(s.orphan_ttl)).await
        {
            // Not fatal: the heartbeat only protects this node's resources from orphan cleanup.
            tracing::warn!("heartbeat lease not renewed: {e}");
        }
    }

    /// Before a command runs: the CRD and this node's heartbeat (for commands that write
    /// resources), the extra metadata (for saves), the cluster id, and S3 from the config Secret.
    pub(super) async fn prepare(&mut self, ctx: &mut Context, data_dir: &Path, purpose: Purpose) {
        if purpose != Purpose::Read {
            self.start().await;
        }
        if !self.usable {
            return;
        }
        let client = self.kube.client.clone();
        if purpose == Purpose::Save {
            match extra_metadata::read(&client, &self.kube.settings.extra_metadata_configmap).await {
                Ok(meta) => ctx.extra_metadata = meta,
                Err(e) => return self.give_up("extra metadata", e),
            }
        }
        if ctx.cluster_id.is_none() {
            match extra_metadata::cluster_id(&client).await {
                Ok(id) => ctx.cluster_id = id,
                Err(e) => return self.give_up("cluster id", e),
            }
        }
        self.use_s3_secret(ctx, data_dir).await;
    }

    /// `--s3-config-secret`: read on every operation, used when no S3 flag is set. A Secret
    /// that cannot be read or used means "S3 unavailable" for this operation (like K3s), said
    /// once, with the key at fault named.
    async fn use_s3_secret(&mut self, ctx: &mut Context, data_dir: &Path) {
        let Some(name) = self.kube.settings.s3_config_secret.clone() else {
            return;
        };
        if ctx.remote.is_some() {
            tracing::warn!(secret = %name, "ignoring the S3 config secret: S3 is configured by flags");
            return;
        }
        let settings = match s3_secret::load(&self.kube.client, &name).await {
            Ok(settings) => settings,
            Err(e) => return tracing::warn!("S3 unavailable: {e}"),
        };
        self.secret_retention = settings.retention.map(|r| r as usize);
        match build_s3_store(settings.into_store_settings(), data_dir) {
            Ok(store) => {
                tracing::info!(secret = %name, store = %store.config().describe(), "S3 settings from the config secret");
                ctx.remote_spec = Some(store.spec());
                ctx.remote = Some(store);
            }
            Err(e) => tracing::warn!("S3 unavailable: config secret {SYSTEM_NAMESPACE}/{name}: {e:#}"),
        }
    }

    /// `etcd-s3-retention` of the config Secret, when S3 came from it.
    pub(super) fn secret_retention(&self) -> Option<usize> {
        self.secret_retention
    }

    /// After a save: the resource of every copy, ready or failed.
    pub(super) async fn after_save(&mut self, report: &SaveReport) {
        if !self.usable {
            return;
        }
        let published = publish::publish_records(&self.kube, &report.records).await;
        if let Some(e) = published.errors.first() {
            self.give_up("publishing", e);
        } else {
            tracing::info!(
                created = published.created,
                updated = published.updated,
                "ETCDSnapshotFile resources written"
            );
        }
    }

    /// After a delete or prune: the removed snapshots' resources go at once.
    pub(super) async fn after_removal(&mut self, ctx: &Context, removed: &[(StorageKind, String)]) {
        if removed.is_empty() {
            return;
        }
        self.start().await;
        if !self.usable {
            return;
        }
        match publish::after_removal(&self.kube, ctx, removed, !self.no_local).await {
            Ok((report, warnings)) => {
                for w in warnings {
                    tracing::warn!("{w}");
                }
                for e in &report.errors {
                    tracing::warn!("{e}");
                }
                tracing::info!(
                    deleted = report.deleted,
                    created = report.created,
                    "ETCDSnapshotFile resources reconciled"
                );
            }
            Err(e) => self.give_up("reconcile", e),
        }
    }
}

/// How often a command renews the heartbeat (the agent renews on its own schedule).
fn heartbeat_interval(ttl: Duration) -> Duration {
    (ttl / 4).min(Duration::from_secs(3600))
}

pub async fn crd(args: CrdArgs) -> anyhow::Result<ExitCode> {
    if !args.install {
        print!("{}", crd_yaml());
        return Ok(ExitCode::SUCCESS);
    }
    let Some(kube) = Kube::connect(&args.kube.connect_options(), args.kube.settings("")).await? else {
        bail!("installing the CRD needs Kubernetes access: no kubeconfig found (or --no-kube)");
    };
    let outcome = ensure_crd(&kube.client).await?;
    println!("CRD {}: {outcome:?}", etcdsnap_api::consts::CRD_NAME);
    Ok(ExitCode::SUCCESS)
}

pub async fn reconcile(args: ReconcileArgs) -> anyhow::Result<ExitCode> {
    let mut ctx = base_context(&args.storage, false)?;
    let node = ctx.node_name.clone();
    let Some(mut session) = session(&args.kube, &node, args.storage.no_local).await? else {
        bail!("reconcile needs Kubernetes access");
    };
    let kube = session.kube.clone();
    ensure_crd(&kube.client).await.context("CRD")?;
    let s = &kube.settings;
    renew_heartbeat(&kube.client, &node, s.orphan_ttl, heartbeat_interval(s.orphan_ttl)).await.context("heartbeat")?;
    session.prepare(&mut ctx, &args.storage.data_dir, Purpose::Read).await;

    let (state, warnings) = publish::storage_state(&ctx, Default::default(), !session.no_local).await;
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let lease = LeaderLease::new(kube.client.clone(), &node, COMMAND_LEADER_DURATION);
    let leadership = if args.no_leader {
        Leadership::Follower { holder: "(not tried: --no-leader)".into() }
    } else {
        lease.try_acquire().await.context("leader lease")?
    };
    let report = match &leadership {
        Leadership::Leader => {
            let result = async {
                let liveness = NodeLiveness::read(&kube.client).await?;
                reconcile_leader(&kube, &state, &LeaderView { liveness }).await
            }
            .await;
            if let Err(e) = lease.release().await {
                tracing::warn!("releasing the leader lease: {e}");
            }
            result?
        }
        Leadership::Follower { .. } => reconcile_node(&kube, &state).await?,
    };
    print_reconcile(&node, &leadership, &state, &report);
    for e in &report.errors {
        eprintln!("error: {e}");
    }
    Ok(exit(report.errors.is_empty()))
}

fn print_reconcile(
    node: &str,
    leadership: &Leadership,
    state: &crate::kube::reconcile::StorageState,
    r: &ReconcileReport,
) {
    println!(
        "Reconciled ETCDSnapshotFile resources for node {node}: {} created, {} updated, {} deleted, {} unchanged, {} kept (TTL).",
        r.created, r.updated, r.deleted, r.unchanged, r.kept
    );
    match leadership {
        Leadership::Leader => {
            let s3 = if state.s3.is_some() { "S3 reconciled" } else { "S3 not configured" };
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
    let Some(kube) = Kube::connect(&args.kube.connect_options(), args.kube.settings("")).await? else {
        bail!("ls --cluster needs Kubernetes access: no kubeconfig found (or --no-kube)");
    };
    let mut items = resources::list(&kube.client, None).await?;
    items.sort_by(|a, b| {
        let time = |c: &ETCDSnapshotFile| c.status.as_ref().and_then(|s| s.creation_time.as_ref()).map(|t| t.0);
        (time(a), &a.spec.snapshot_name).cmp(&(time(b), &b.spec.snapshot_name))
    });
    match args.output.output {
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
    let Some(kube) = Kube::connect(&args.kube.connect_options(), args.kube.settings("")).await? else {
        bail!("watch needs Kubernetes access: no kubeconfig found (or --no-kube)");
    };
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
