//! `etcdsnap agent`.

use super::args::AgentArgs;
use super::commands::{preset, session_config, token_hash};
use anyhow::Context as _;
use etcdsnap::agent::drills::DrillSettings;
use etcdsnap::agent::health::{Dependency, EtcdDependency, Health, KubeDependency, StoreDependency};
use etcdsnap::agent::kube_duties::{KubeDuties, KubeDutySettings};
use etcdsnap::agent::metrics::Metrics;
use etcdsnap::agent::schedule::Schedule;
use etcdsnap::agent::{Agent, AgentSettings};
use etcdsnap::session::{KubePolicy, Purpose, Session};
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
    let node = &args.node;
    let mut config = session_config(node, true, KubePolicy::LongRunning)?;
    config.token_hash = token_hash(&node.token, preset(&node.storage).as_ref())?;
    let session = Arc::new(Session::open(config).await?);
    let first = session.context(Purpose::Read).await;
    if first.local.is_none() && first.remote.is_none() && session.config().kube_settings.s3_config_secret.is_none() {
        anyhow::bail!("nothing to save to: --no-local needs --s3 (or --s3-config-secret)");
    }
    if args.deltas && first.local.is_none() {
        anyhow::bail!("--deltas needs the local snapshot directory (segments are written beside it): drop --no-local");
    }
    if args.deltas && args.delta_interval.is_zero() {
        anyhow::bail!("--delta-interval must be above 0");
    }
    let settings = AgentSettings {
        schedule,
        base_name: args.snapshot_name.clone(),
        compression: node.compress.compression(),
        retention: args.retention,
        metrics_addr: args.metrics_addr,
        verify_after_save: args.verify_after_save,
        jitter: args.schedule_jitter,
        drills: drill_settings(&args).await?,
        deltas: args.deltas.then_some(etcdsnap::pitr::capture::CaptureSettings {
            flush_interval: args.delta_interval,
            max_bytes: args.delta_max_bytes,
        }),
    };
    etcdsnap_api::SnapshotName::parse(&etcdsnap_api::snapshot_file_name(
        &settings.base_name,
        session.node_name(),
        0,
        settings.compression,
    ))
    .context("--snapshot-name")?;
    let mut dependencies: Vec<Box<dyn Dependency>> = vec![Box::new(EtcdDependency(session.config().etcd.clone()))];
    if let Some(remote) = &first.remote {
        dependencies.push(Box::new(StoreDependency(remote.clone())));
    }
    let metrics = Arc::new(Metrics::new());
    let duties = session.kube().cloned().map(|kube| {
        dependencies.push(Box::new(KubeDependency(kube.clone())));
        let duties = KubeDutySettings {
            reconcile_interval: args.reconcile_interval,
            lease_duration: args.leader_lease_duration,
            periodic_reconcile: !args.disable_snapshots,
        };
        Arc::new(KubeDuties::new(kube, session.clone(), duties, metrics.clone()))
    });
    if duties.is_none() {
        tracing::warn!("Kubernetes not configured: ETCDSnapshotFile resources are skipped");
    }
    let health = Arc::new(Health::new(dependencies));
    let stop = CancellationToken::new();
    spawn_signal_handler(stop.clone())?;
    Agent::new(session, settings, metrics, duties).run(stop, health).await?;
    Ok(ExitCode::SUCCESS)
}

/// Scheduled drills, unless `--drill-schedule ""`. Without an etcdutl the agent runs anyway
/// (drills are on by default, and many hosts have no etcdutl) and says once how to enable them.
async fn drill_settings(args: &AgentArgs) -> anyhow::Result<Option<DrillSettings>> {
    if args.drill_schedule.trim().is_empty() {
        return Ok(None);
    }
    let schedule = Schedule::parse(&args.drill_schedule).map_err(|e| anyhow::anyhow!("--drill-schedule: {e}"))?;
    match args.drill.options().await {
        Ok(options) => Ok(Some(DrillSettings { schedule, options })),
        Err(e) if args.drill.etcdutl.is_none() => {
            tracing::warn!(
                "restore drills are off: {e:#} (install etcdutl 3.7+ or pass --etcdutl; --drill-schedule \"\" silences this)"
            );
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
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
