//! The replica flags (`--replica`, `--replica-option`, `--replica-retention`, and
//! `restore --from-replica`): second stores that receive a copy of every snapshot after its
//! save. They live in the storage flags every snapshot command and the agent flatten.

use clap::Args;
use etcdsnap::restore::SnapshotSource;
use etcdsnap_api::SnapshotName;
use etcdsnap_storage::store::SnapshotStore;
use etcdsnap_storage::store::replica::{ReplicaConfig, ReplicaStore, parse_replicas};
use std::sync::Arc;

/// The help heading of these flags.
pub const HEADING: &str = "Replicas";

/// Where copies of every snapshot go, and how many each keeps.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = HEADING)]
pub struct ReplicaArgs {
    /// A second store that receives a copy of every snapshot of this node after its save,
    /// checked by sha256 on arrival: s3://bucket/folder, gs://bucket/folder,
    /// az://container/folder or file:///dir (repeatable). Credentials come from the provider's
    /// usual environment (AWS_*, GOOGLE_*, AZURE_*) or from --replica-option.
    #[arg(long = "replica", env = "ETCDSNAP_REPLICA", value_name = "URL", value_delimiter = ',')]
    pub urls: Vec<String>,
    /// A setting of the replicas of one provider, as object_store names it: aws_endpoint,
    /// aws_allow_http, google_base_url, google_service_account, azure_storage_account_name,
    /// azure_storage_endpoint, ... (repeatable; the key's prefix says which replicas it is for).
    #[arg(long = "replica-option", value_name = "KEY=VALUE")]
    pub options: Vec<String>,
    /// Snapshots of --name to keep per node in each replica, the newest N (this cluster's only);
    /// applied where local retention is (the agent, prune) [default: the local rules,
    /// --retention and --keep-*]
    #[arg(long, env = "ETCDSNAP_REPLICA_RETENTION", value_name = "N")]
    pub replica_retention: Option<usize>,
}

impl ReplicaArgs {
    /// The replicas' settings, checked (nothing is contacted).
    pub fn configs(&self) -> anyhow::Result<Vec<ReplicaConfig>> {
        Ok(parse_replicas(&self.urls, &self.options)?)
    }
}

/// `restore NAME --from-replica URL` (or `--to-revision`/`--to-time`): the snapshot, and the
/// delta segments of a point-in-time restore, are read from that replica alone.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = HEADING)]
pub struct FromReplicaArgs {
    /// NAME is a snapshot in this replica (as --replica spells it): streamed from it, checked
    /// against the record stored there; neither the snapshot directory nor S3 is read. With
    /// --to-revision/--to-time, the base snapshot and the delta segments come from the replica.
    #[arg(long, value_name = "URL", conflicts_with = "enabled")]
    pub from_replica: Option<String>,
    /// A setting of the replica, as for --replica (repeatable).
    #[arg(long = "replica-option", value_name = "KEY=VALUE", requires = "from_replica")]
    pub options: Vec<String>,
}

impl FromReplicaArgs {
    /// The replica of --from-replica; None without it.
    pub fn store(&self) -> anyhow::Result<Option<Arc<dyn SnapshotStore>>> {
        let Some(url) = &self.from_replica else { return Ok(None) };
        let mut configs = parse_replicas(std::slice::from_ref(url), &self.options)?;
        let config = configs.pop().ok_or_else(|| anyhow::anyhow!("--from-replica {url}: no replica"))?;
        Ok(Some(Arc::new(ReplicaStore::new(config)?)))
    }

    /// The snapshot `given` (a name, as `ls` shows it) in the replica; None without
    /// --from-replica.
    pub async fn source(&self, given: &str) -> anyhow::Result<Option<SnapshotSource>> {
        let Some(store) = self.store()? else { return Ok(None) };
        let name = SnapshotName::parse(given)
            .map_err(|e| anyhow::anyhow!("with --from-replica give the snapshot's name ({given:?}: {e})"))?;
        Ok(Some(SnapshotSource::from_store(store, &name).await?))
    }
}
