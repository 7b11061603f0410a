//! `etcdsnap agent`.

use super::args::AgentArgs;
use super::commands::{base_context, etcd_config, token_hash};
use crate::agent::Index;
use crate::agent::health::{Dependency, EtcdDependency, Health, KubeDependency, StoreDependency};
use crate::agent::kube_index::{KubeDutySettings, KubeIndex};
use crate::agent::metrics::Metrics;
use crate::agent::schedule::Schedule;
use crate::agent::{Agent, AgentSettings};
use crate::kube::Kube;
use anyhow::Context as _;
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub async fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    // Everything is validated before anything starts: a bad flag fails at once, by name.
    let schedule = if args.disable_snapshots {
        None
    } else {
        Some(Schedule::parse(&args.schedule).map_err(|e| anyhow::anyhow!("--schedule: {e}"))?)
    };
    let mut ctx = base_context(&args.storage, true)?;
    ctx.etcd = etcd_config(&args.etcd);
    ctx.token_hash = token_hash(&args.token)?;
    ctx.zstd_level = args.compress.zstd_level;
    if ctx.local.is_none() && ctx.remote.is_none() {
        anyhow::bail!("nothing to save to: --no-local needs --s3");
    }
    let settings = AgentSettings {
        schedule,
        base_name: args.snapshot_name.clone(),
        compression: args.compress.compression(),
        retention: args.retention,
        s3_retention: args.s3_retention.unwrap_or(args.retention),
        metrics_addr: args.metrics_addr,
        verify_after_save: args.verify_after_save,
        jitter: args.schedule_jitter,
    };
    etcdsnap_api::SnapshotName::parse(&etcdsnap_api::snapshot_file_name(
        &settings.base_name,
        &ctx.node_name,
        0,
        settings.compression,
    ))
    .context("--snapshot-name")?;
    let mut dependencies: Vec<Box<dyn Dependency>> = vec![Box::new(EtcdDependency(ctx.etcd.clone()))];
    if let Some(remote) = &ctx.remote {
        dependencies.push(Box::new(StoreDependency(remote.clone())));
    }
    let metrics = Arc::new(Metrics::new());
    let kube = match Kube::connect(&args.kube.connect_options(), args.kube.settings(&ctx.node_name)).await {
        Ok(Some(kube)) => Some(kube),
        Ok(None) => {
            let why = if args.kube.no_kube { "--no-kube" } else { "no kubeconfig found" };
            tracing::warn!("Kubernetes not configured ({why}): ETCDSnapshotFile resources are skipped");
            None
        }
        Err(e) => anyhow::bail!("Kubernetes: {e}"),
    };
    let index: Option<Arc<dyn Index>> = kube.map(|kube| {
        dependencies.push(Box::new(KubeDependency(kube.client.clone())));
        let duties = KubeDutySettings {
            reconcile_interval: args.reconcile_interval,
            lease_duration: args.leader_lease_duration,
            local_managed: !args.storage.no_local,
            data_dir: args.storage.data_dir.clone(),
            periodic_reconcile: !args.disable_snapshots,
        };
        Arc::new(KubeIndex::new(kube, ctx.clone(), duties, metrics.clone())) as Arc<dyn Index>
    });
    let health = Arc::new(Health::new(dependencies));
    let stop = CancellationToken::new();
    spawn_signal_handler(stop.clone())?;
    Agent::new(ctx, settings, metrics, index).run(stop, health).await?;
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM and SIGINT cancel `stop`; the agent then finishes or aborts cleanly and exits 0.
fn spawn_signal_handler(stop: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        stop.cancel();
    });
    Ok(())
}
