//! `etcdsnap agent`: validates every setting, then runs the agent (`etcdsnap::agent`) until
//! SIGTERM or SIGINT.

use crate::cli::args::{parse_byte_size, parse_duration};
use crate::cli::flags::{DrillToolArgs, NodeFlags, RetentionArgs, heading};
use crate::cli::resolve;
use crate::cli::seal::{self, EncryptionConfigArg, SealArgs, UnsealArgs};
use anyhow::Context as _;
use clap::Args;
use etcdsnap::agent::drills::DrillSettings;
use etcdsnap::agent::health::{Dependency, EtcdDependency, Health, KubeDependency, StoreDependency};
use etcdsnap::agent::kube_duties::{KubeDuties, KubeDutySettings};
use etcdsnap::agent::metrics::Metrics;
use etcdsnap::agent::schedule::Schedule;
use etcdsnap::agent::{Agent, AgentSettings};
use etcdsnap::session::{KubePolicy, Purpose, Session};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct AgentArgs {
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "ETCDSNAP_METRICS_ADDR", default_value = "127.0.0.1:9477")]
    pub metrics_addr: std::net::SocketAddr,
    /// Re-read each new local snapshot and check it after saving.
    #[arg(long, env = "ETCDSNAP_VERIFY_AFTER_SAVE", default_value_t = true, action = clap::ArgAction::Set)]
    pub verify_after_save: bool,
    /// How often the snapshot resources are reconciled with storage (jittered by 5%).
    #[arg(long, visible_alias = "etcd-snapshot-reconcile-interval", env = "ETCDSNAP_RECONCILE_INTERVAL", value_parser = parse_duration, default_value = "10m")]
    pub reconcile_interval: Duration,
    /// How long the leader Lease outlives its last renewal: a leader that dies is replaced after
    /// about this long (at once when it shuts down cleanly).
    #[arg(long, env = "ETCDSNAP_LEADER_LEASE_DURATION", value_parser = parse_duration, default_value = "30s")]
    pub leader_lease_duration: Duration,
    /// When to take snapshots: cron (5 fields, or 6 with leading seconds) or @hourly/@daily...,
    /// in the local time zone.
    #[arg(
        long,
        visible_alias = "etcd-snapshot-schedule-cron",
        env = "ETCDSNAP_SCHEDULE",
        default_value = "0 */12 * * *",
        help_heading = heading::SCHEDULE
    )]
    pub schedule: String,
    /// Base name of scheduled snapshots.
    #[arg(long, visible_alias = "etcd-snapshot-name", env = "ETCDSNAP_SNAPSHOT_NAME", default_value = "etcd-snapshot", help_heading = heading::SCHEDULE)]
    pub snapshot_name: String,
    /// Take no scheduled snapshots (and run no periodic reconcile), like K3s's flag.
    #[arg(long, visible_alias = "etcd-disable-snapshots", env = "ETCDSNAP_DISABLE_SNAPSHOTS", conflicts_with = "schedule", help_heading = heading::SCHEDULE)]
    pub disable_snapshots: bool,
    /// Upper bound of the random delay before each scheduled run.
    #[arg(long, env = "ETCDSNAP_SCHEDULE_JITTER", value_parser = parse_duration, default_value = "5s", hide = true, help_heading = heading::SCHEDULE)]
    pub schedule_jitter: Duration,
    /// How often, between saves, copies a replica missed (it was down) are tried again.
    #[arg(long, env = "ETCDSNAP_REPLICA_RETRY_INTERVAL", value_parser = parse_duration, default_value = "5m", hide = true, help_heading = heading::SCHEDULE)]
    pub replica_retry_interval: Duration,
    /// When to run restore drills (cron like --schedule); "" disables them. Each run drills the
    /// newest snapshot of each store and one older one in turn; the leader drills S3's.
    #[arg(long, env = "ETCDSNAP_DRILL_SCHEDULE", default_value = "@daily", help_heading = heading::DRILLS)]
    pub drill_schedule: String,
    /// Point-in-time recovery: capture etcd's changes between snapshots (the leader only)
    /// into delta segments beside the snapshot directory, for `restore --to-revision|--to-time`.
    #[arg(long, env = "ETCDSNAP_DELTAS", help_heading = heading::PITR)]
    pub deltas: bool,
    /// With --deltas: the longest a captured change waits before its segment is written (the
    /// recovery point objective, roughly).
    #[arg(long, env = "ETCDSNAP_DELTA_INTERVAL", value_parser = parse_duration, default_value = "10s", requires = "deltas", help_heading = heading::PITR)]
    pub delta_interval: Duration,
    /// With --deltas: a segment is written once its changes reach this size (8MiB, 512KiB,
    /// 1000000).
    #[arg(long, env = "ETCDSNAP_DELTA_MAX_BYTES", value_parser = parse_byte_size, default_value = "8MiB", requires = "deltas", help_heading = heading::PITR)]
    pub delta_max_bytes: usize,
    #[command(flatten)]
    pub drill: DrillToolArgs,
    #[command(flatten)]
    pub retention: RetentionArgs,
    #[command(flatten)]
    pub node: NodeFlags,
    #[command(flatten)]
    pub seal: SealArgs,
    #[command(flatten)]
    pub unseal: UnsealArgs,
    #[command(flatten)]
    pub encryption: EncryptionConfigArg,
}

const EXAMPLES: &str = "Examples:
  # On a K3s or RKE2 server: its paths, token and etcd certificate; snapshots every 12 hours
  etcdsnap agent

  # Hourly, 24 kept locally and in S3, restore drills daily with etcdutl 3.7+
  etcdsnap agent --schedule @hourly --retention 24 --s3 --s3-bucket backups --etcdutl /usr/local/bin/etcdutl

  # Sealed and signed snapshots; drills open them, and pass only records signed by the key
  etcdsnap agent --encrypt-to-file /etc/etcdsnap/recipients.txt --sign-key /etc/etcdsnap/sign.key \\
    --decrypt-identity /etc/etcdsnap/identity.txt --verify-key /etc/etcdsnap/sign.pub

  # Also capture every change between snapshots, for restore --to-time
  etcdsnap agent --deltas --delta-interval 5s
";

pub async fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    // Everything is validated before anything starts: a bad flag fails at once, by name.
    let schedule = if args.disable_snapshots {
        None
    } else {
        Some(Schedule::parse(&args.schedule).map_err(|e| anyhow::anyhow!("--schedule: {e}"))?)
    };
    let node = &args.node;
    let mut config = resolve::session_config(node, args.retention.s3_retention, true, KubePolicy::LongRunning)?;
    config.token_hash = resolve::node_token_hash(node)?;
    let preset = resolve::preset(&node.storage)?;
    let token = resolve::server_token(&node.token, preset.as_ref())?.map(|(t, _)| t);
    config.sealing = seal::sealing(&args.seal, &args.encryption, token, preset.as_ref())?;
    // Scheduled drills open sealed snapshots with the identity, and with a verify key drill
    // (and so pass) only snapshots whose records carry a good signature.
    config.keys = seal::open_keys(&args.unseal)?;
    let session = Arc::new(Session::open(config).await?);
    let first = session.context(Purpose::Read).await;
    if first.local.is_none() && first.remote.is_none() && session.config().kube_settings.s3_config_secret.is_none() {
        anyhow::bail!(
            "nothing to save to: --no-local needs --s3 (or --s3-config-secret), --gcs-bucket or --azure-container"
        );
    }
    if args.deltas && first.local.is_none() {
        anyhow::bail!("--deltas needs the local snapshot directory (segments are written beside it): drop --no-local");
    }
    if let Some(cloud) = session.config().cloud.as_ref().filter(|_| args.deltas) {
        anyhow::bail!(
            "--deltas keeps its segments in the snapshot directory and S3 only: with {} they would have no remote copy (use --s3, or drop --deltas)",
            cloud.url
        );
    }
    if args.deltas && args.delta_interval.is_zero() {
        anyhow::bail!("--delta-interval must be above 0");
    }
    let settings = AgentSettings {
        schedule,
        base_name: args.snapshot_name.clone(),
        compression: resolve::compression(&node.compress),
        retention: args.retention.policy(),
        metrics_addr: args.metrics_addr,
        verify_after_save: args.verify_after_save,
        jitter: args.schedule_jitter,
        replica_retry: args.replica_retry_interval,
        drills: drill_settings(&args).await?,
        deltas: args.deltas.then_some(etcdsnap::pitr::capture::CaptureSettings {
            flush_interval: args.delta_interval,
            max_bytes: args.delta_max_bytes,
            // Segments are sealed to the recipients snapshots are (those given here; recipients
            // from the S3 config Secret seal snapshots only).
            recipients: session.config().sealing.recipients.clone(),
        }),
    };
    etcdsnap_api::SnapshotName::parse(&etcdsnap_api::snapshot_file_name(
        &settings.base_name,
        session.node_name(),
        0,
        settings.compression,
    ))
    .context("--snapshot-name")?;
    if settings.schedule.is_some() {
        resolve::warn_about_server_snapshots(node, &settings.base_name)?;
    }
    let mut dependencies: Vec<Box<dyn Dependency>> = vec![Box::new(EtcdDependency(session.config().etcd.clone()))];
    if let Some(remote) = &first.remote {
        dependencies.push(Box::new(StoreDependency(remote.clone())));
    }
    let metrics = Arc::new(Metrics::for_program(session.config().kube_settings.program));
    let duties = session.kube().cloned().map(|kube| {
        dependencies.push(Box::new(KubeDependency(kube.clone())));
        let duties = KubeDutySettings {
            reconcile_interval: args.reconcile_interval,
            lease_duration: args.leader_lease_duration,
            periodic_reconcile: !args.disable_snapshots,
        };
        Arc::new(KubeDuties::new(kube, session.clone(), duties, metrics.clone()))
    });
    match (duties.is_none(), node.kube.no_kube) {
        (true, true) => tracing::info!("Kubernetes not used (--no-kube): ETCDSnapshotFile resources are skipped"),
        (true, false) => tracing::warn!("Kubernetes not configured: ETCDSnapshotFile resources are skipped"),
        (false, _) => {}
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
    match resolve::drill_options(&args.drill).await {
        Ok(mut options) => {
            options.keys = seal::open_keys(&args.unseal)?;
            Ok(Some(DrillSettings { schedule, options }))
        }
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
