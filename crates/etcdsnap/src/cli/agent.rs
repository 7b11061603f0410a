//! `etcdsnap agent`.

use super::args::AgentArgs;
use super::commands::{base_context, etcd_config, token_hash};
use crate::agent::health::{Dependency, EtcdDependency, Health, StoreDependency};
use crate::agent::schedule::Schedule;
use crate::agent::{Agent, AgentSettings};
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
    let health = Arc::new(Health::new(dependencies));
    let stop = CancellationToken::new();
    spawn_signal_handler(stop.clone())?;
    Agent::new(ctx, settings, None).run(stop, health).await?;
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
