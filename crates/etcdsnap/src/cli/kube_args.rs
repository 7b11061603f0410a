//! Flags of the Kubernetes integration, shared by every command that writes or reads resources.

use super::args::{SnapshotFlags, parse_duration};
use clap::{ArgAction, Args, ValueEnum};
use etcdsnap_kube::{ConnectOptions, KubeSettings, LegacySettings};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Args)]
pub struct KubeArgs {
    /// Kubeconfig of the cluster whose ETCDSnapshotFile resources etcdsnap maintains
    /// [default: $KUBECONFIG, ~/.kube/config, or the in-cluster service account]
    #[arg(long, env = "ETCDSNAP_KUBECONFIG", value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Do not talk to Kubernetes: no resources, events, ConfigMaps or Leases.
    #[arg(long, env = "ETCDSNAP_NO_KUBE")]
    pub no_kube: bool,
    /// A node whose heartbeat Lease was not renewed for this long is gone; the leader deletes
    /// the resources of its local snapshots.
    #[arg(long, env = "ETCDSNAP_ORPHAN_TTL", value_parser = parse_duration, default_value = "24h", value_name = "DURATION")]
    pub orphan_ttl: Duration,
    /// Maintain the legacy ConfigMap kube-system/k3s-etcd-snapshots (leader only).
    #[arg(long, env = "ETCDSNAP_LEGACY_CONFIGMAP", action = ArgAction::Set, default_value_t = true, value_name = "BOOL")]
    pub legacy_configmap: bool,
    /// Largest serialized legacy ConfigMap, in bytes; oldest entries are left out to stay under it.
    #[arg(long, env = "ETCDSNAP_LEGACY_CONFIGMAP_MAX_BYTES", default_value_t = 900_000, value_name = "BYTES")]
    pub legacy_configmap_max_bytes: usize,
    /// Most entries in the legacy ConfigMap; oldest entries are left out beyond it.
    #[arg(long, env = "ETCDSNAP_LEGACY_CONFIGMAP_MAX_KEYS", default_value_t = 1_000, value_name = "N")]
    pub legacy_configmap_max_keys: usize,
    /// ConfigMap in kube-system whose data is copied into every new snapshot's metadata.
    #[arg(
        long,
        env = "ETCDSNAP_EXTRA_METADATA_CONFIGMAP",
        default_value = etcdsnap_api::consts::EXTRA_METADATA_CONFIGMAP,
        value_name = "NAME"
    )]
    pub extra_metadata_configmap: String,
    /// Secret in kube-system holding S3 settings under K3s's etcd-s3-* keys; used when no S3 flag
    /// is set, and read again on every operation.
    #[arg(long, visible_alias = "etcd-s3-config-secret", env = "ETCDSNAP_S3_CONFIG_SECRET", value_name = "NAME")]
    pub s3_config_secret: Option<String>,
    /// After each reconcile, mark this node's Node with K3s's reconciled-at annotations (needs
    /// deploy/rbac-node-annotations.yaml); for clusters where K3s servers keep the legacy ConfigMap.
    #[arg(long, env = "ETCDSNAP_ANNOTATE_NODE")]
    pub annotate_node: bool,
}

impl KubeArgs {
    pub fn connect_options(&self) -> ConnectOptions {
        ConnectOptions { kubeconfig: self.kubeconfig.clone(), disabled: self.no_kube }
    }

    pub fn settings(&self, node_name: &str) -> KubeSettings {
        KubeSettings {
            node_name: node_name.to_string(),
            orphan_ttl: self.orphan_ttl,
            legacy: LegacySettings {
                enabled: self.legacy_configmap,
                max_bytes: self.legacy_configmap_max_bytes,
                max_keys: self.legacy_configmap_max_keys,
            },
            extra_metadata_configmap: self.extra_metadata_configmap.clone(),
            s3_config_secret: self.s3_config_secret.clone(),
            annotate_node: self.annotate_node,
        }
    }
}

#[derive(Debug, Args)]
pub struct CrdArgs {
    /// Install or upgrade the CRD in the cluster (and wait until it is Established) instead of
    /// printing it.
    #[arg(long)]
    pub install: bool,
    #[command(flatten)]
    pub kube: KubeArgs,
}

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Only this node's duties, even if the leader Lease is free.
    #[arg(long)]
    pub no_leader: bool,
    #[command(flatten)]
    pub flags: SnapshotFlags,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq, Default)]
pub enum WatchFormat {
    #[default]
    Table,
    /// One JSON object per line: {"type": "ADDED|MODIFIED|DELETED", "object": {...}}.
    Json,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: WatchFormat,
    #[command(flatten)]
    pub kube: KubeArgs,
}
