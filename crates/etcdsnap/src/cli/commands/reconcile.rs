//! `etcdsnap reconcile`: one pass bringing the resources in line with storage: this node's, and
//! the leader's duties when the leader Lease can be taken for the pass.

use crate::cli::flags::SnapshotFlags;
use crate::cli::output::reconcile as view;
use crate::cli::{exit, help, resolve};
use anyhow::{Context as _, bail};
use clap::Args;
use etcdsnap::ops::reconcile as reconcile_job;
use etcdsnap::session::{KubePolicy, Purpose, Session};
use etcdsnap_kube::Kube;
use etcdsnap_kube::crd::ensure_crd;
use etcdsnap_kube::leader::{COMMAND_LEADER_DURATION, LeaderElector, Role, Timing};
use etcdsnap_kube::lease::{heartbeat_interval, renew_heartbeat};
use std::process::ExitCode;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
#[command(
    after_help = EXAMPLES,
    mut_args(help::unused(&[help::ETCD, help::TOKEN, help::COMPRESS, help::RETENTION, help::SAVE_ONLY, &["name", "output"]]))
)]
pub struct ReconcileArgs {
    /// Only this node's duties, even if the leader Lease is free.
    #[arg(long)]
    pub no_leader: bool,
    #[command(flatten)]
    pub flags: SnapshotFlags,
}

const EXAMPLES: &str = "Examples:
  # This node's resources, and the leader's duties if the leader Lease is free
  etcdsnap reconcile

  # Only this node's resources, S3 included
  etcdsnap reconcile --no-leader --s3 --s3-bucket backups
";

/// How long `reconcile` watches a leader Lease that is not being renewed before it gives up on
/// the leader's duties: a holder that died without releasing it is waited out for the Lease's
/// duration (30 s for an agent), never longer than this.
const LEADER_WAIT: Duration = Duration::from_secs(120);

pub async fn run(args: ReconcileArgs) -> anyhow::Result<ExitCode> {
    let flags = &args.flags;
    let config = resolve::session_config(&flags.node, flags.retention.s3_retention, false, KubePolicy::OneShot)?;
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
    crate::cli::output::emit(&view::text(&node, &role, &outcome))?;
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
