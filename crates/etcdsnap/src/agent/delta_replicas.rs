//! The agent's delta replication (`--deltas` with `--replica`): after each pass of the upload
//! loop ([`super::pitr_upload::upload_loop`]), the segments durable in the primary are copied to every
//! replica ([`crate::ops::replicate_deltas`]) and the replica gauges updated.

use super::Agent;
use etcdsnap_storage::store::s3::S3Store;
use std::path::PathBuf;
use std::time::Duration;

/// How often a delta pass lists the S3 primary when nothing new was uploaded and every replica
/// was in sync: segments another node uploaded are copied within this time.
const DELTA_REPLICATION_IDLE: Duration = Duration::from_secs(60);

/// The delta replication between passes of [`super::pitr_upload::upload_loop`].
#[derive(Default)]
pub(super) struct Replicating {
    replicator: crate::ops::replicate_deltas::DeltaReplicator,
    last: Option<std::time::Instant>,
    behind: bool,
}

/// Copies to every replica the segments durable in the primary: S3's (by the leader, as the
/// segments are the cluster's), else the local directory's (capture without S3: the local
/// segments are the primary copy, and each node copies its own). With S3 the bucket is listed
/// when this pass uploaded something, a replica was behind, or [`DELTA_REPLICATION_IDLE`] passed.
pub(super) async fn replicate(
    agent: &Agent,
    ctx: &crate::ops::Context,
    s3: Option<&S3Store>,
    deltas_dir: PathBuf,
    uploaded: usize,
    state: &mut Replicating,
) {
    let local = etcdsnap_storage::pitr::objects::LocalDeltas { dir: deltas_dir };
    let source: &dyn etcdsnap_storage::pitr::objects::DeltaObjects = match s3 {
        Some(s3) if agent.lead().is_some() => {
            let idle = state.last.is_some_and(|t| t.elapsed() < DELTA_REPLICATION_IDLE);
            if uploaded == 0 && !state.behind && idle {
                return;
            }
            s3
        }
        Some(_) => return,
        None => &local,
    };
    state.last = Some(std::time::Instant::now());
    let statuses = state.replicator.pass(source, &ctx.replicas).await;
    agent.metrics.replicas.observe_deltas(&statuses);
    let behind = statuses.iter().any(|s| s.behind > 0 || !s.errors.is_empty());
    for status in &statuses {
        if !status.errors.is_empty() && !state.behind {
            for e in &status.errors {
                tracing::warn!("{e}; retried with every upload pass");
            }
        }
    }
    if state.behind && !behind {
        tracing::info!("every replica holds every delta segment again");
    }
    state.behind = behind;
}
