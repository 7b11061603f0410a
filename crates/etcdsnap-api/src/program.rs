//! The program whose names etcdsnap writes and reads: K3s or RKE2.
//!
//! RKE2 runs K3s's snapshot code with its own program name in every name K3s builds from it:
//! the storage-node label and the token-hash annotation (`etcd.rke2.cattle.io/...`), the legacy
//! and extra-metadata ConfigMaps (`rke2-etcd-snapshots`), the S3 user metadata
//! (`rke2-node-name`), the Node annotations, the metric names and the configuration file. The
//! CRD (`etcdsnapshotfiles.k3s.cattle.io`), the object names, the finalizer and the event reasons
//! are the same for both. A server only reads names of its own program: a resource without its
//! storage-node label is one its cleanup deletes, and an S3 object without its node-name
//! metadata is named after `s3`. So every name below follows one [`Program`], chosen once per
//! process.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// K3s or RKE2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Program {
    #[default]
    K3s,
    Rke2,
}

impl Program {
    pub const ALL: [Program; 2] = [Program::K3s, Program::Rke2];

    /// `k3s` or `rke2`: K3s's `version.Program`.
    pub fn name(self) -> &'static str {
        match self {
            Program::K3s => "k3s",
            Program::Rke2 => "rke2",
        }
    }

    /// `K3s` or `RKE2`, as their documentation writes them.
    pub fn display_name(self) -> &'static str {
        match self {
            Program::K3s => "K3s",
            Program::Rke2 => "RKE2",
        }
    }

    /// The other one.
    pub fn other(self) -> Program {
        match self {
            Program::K3s => Program::Rke2,
            Program::Rke2 => Program::K3s,
        }
    }

    /// Label on every resource: the node that stores the snapshot, or `s3`.
    pub fn label_storage_node(self) -> &'static str {
        match self {
            Program::K3s => "etcd.k3s.cattle.io/snapshot-storage-node",
            Program::Rke2 => "etcd.rke2.cattle.io/snapshot-storage-node",
        }
    }

    /// Annotation holding the 12-hex-character hash of the server token.
    pub fn annotation_token_hash(self) -> &'static str {
        match self {
            Program::K3s => "etcd.k3s.cattle.io/snapshot-token-hash",
            Program::Rke2 => "etcd.rke2.cattle.io/snapshot-token-hash",
        }
    }

    /// Node annotation: time of the node's last local reconcile (RFC 3339).
    pub fn annotation_local_reconciled(self) -> &'static str {
        match self {
            Program::K3s => "etcd.k3s.cattle.io/local-snapshots-timestamp",
            Program::Rke2 => "etcd.rke2.cattle.io/local-snapshots-timestamp",
        }
    }

    /// Node annotation: time of the node's last S3 reconcile (RFC 3339).
    pub fn annotation_s3_reconciled(self) -> &'static str {
        match self {
            Program::K3s => "etcd.k3s.cattle.io/s3-snapshots-timestamp",
            Program::Rke2 => "etcd.rke2.cattle.io/s3-snapshots-timestamp",
        }
    }

    /// The legacy ConfigMap in kube-system listing snapshots.
    pub fn legacy_configmap(self) -> &'static str {
        match self {
            Program::K3s => "k3s-etcd-snapshots",
            Program::Rke2 => "rke2-etcd-snapshots",
        }
    }

    /// The ConfigMap in kube-system whose `data` is copied into every new snapshot's metadata
    /// (Rancher writes its cluster spec there).
    pub fn extra_metadata_configmap(self) -> &'static str {
        match self {
            Program::K3s => "k3s-etcd-snapshot-extra-metadata",
            Program::Rke2 => "rke2-etcd-snapshot-extra-metadata",
        }
    }

    /// S3 user metadata (sent as `x-amz-meta-<key>`): the `kube-system` namespace's UID.
    pub fn s3_meta_cluster_id(self) -> &'static str {
        match self {
            Program::K3s => "k3s-cluster-id",
            Program::Rke2 => "rke2-cluster-id",
        }
    }

    /// S3 user metadata: the uploading node.
    pub fn s3_meta_node_name(self) -> &'static str {
        match self {
            Program::K3s => "k3s-node-name",
            Program::Rke2 => "rke2-node-name",
        }
    }

    /// S3 user metadata: the server token's hash.
    pub fn s3_meta_token_hash(self) -> &'static str {
        match self {
            Program::K3s => "k3s-token-hash",
            Program::Rke2 => "rke2-token-hash",
        }
    }

    /// The prefix of every S3 user metadata key of this program (`k3s-`).
    pub fn s3_meta_prefix(self) -> &'static str {
        match self {
            Program::K3s => "k3s-",
            Program::Rke2 => "rke2-",
        }
    }

    /// The prefix of the server's snapshot histograms (`k3s_etcd_snapshot_save_duration_seconds`).
    pub fn metric_prefix(self) -> &'static str {
        match self {
            Program::K3s => "k3s",
            Program::Rke2 => "rke2",
        }
    }

    /// The server's data directory, relative to `/`.
    pub fn data_dir(self) -> &'static str {
        match self {
            Program::K3s => "var/lib/rancher/k3s",
            Program::Rke2 => "var/lib/rancher/rke2",
        }
    }

    /// The server's configuration file, relative to `/`; drop-ins are in `<file>.d/`.
    pub fn config_file(self) -> &'static str {
        match self {
            Program::K3s => "etc/rancher/k3s/config.yaml",
            Program::Rke2 => "etc/rancher/rke2/config.yaml",
        }
    }

    /// The variable naming another configuration file (K3s's `<PROGRAM>_CONFIG_FILE`).
    pub fn config_file_env(self) -> &'static str {
        match self {
            Program::K3s => "K3S_CONFIG_FILE",
            Program::Rke2 => "RKE2_CONFIG_FILE",
        }
    }

    /// The server command a cluster reset is run with (`k3s server`, `rke2 server`).
    pub fn server_command(self) -> &'static str {
        match self {
            Program::K3s => "k3s server",
            Program::Rke2 => "rke2 server",
        }
    }

    /// The systemd unit of a server.
    pub fn server_unit(self) -> &'static str {
        match self {
            Program::K3s => "k3s",
            Program::Rke2 => "rke2-server",
        }
    }
}

impl fmt::Display for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Program {
    type Err = String;

    fn from_str(s: &str) -> Result<Program, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "k3s" => Ok(Program::K3s),
            "rke2" => Ok(Program::Rke2),
            other => Err(format!("unknown program {other:?}: k3s or rke2")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_built_from_the_program_as_k3s_builds_it() {
        for p in Program::ALL {
            let n = p.name();
            assert_eq!(p.label_storage_node(), format!("etcd.{n}.cattle.io/snapshot-storage-node"));
            assert_eq!(p.annotation_token_hash(), format!("etcd.{n}.cattle.io/snapshot-token-hash"));
            assert_eq!(p.annotation_local_reconciled(), format!("etcd.{n}.cattle.io/local-snapshots-timestamp"));
            assert_eq!(p.annotation_s3_reconciled(), format!("etcd.{n}.cattle.io/s3-snapshots-timestamp"));
            assert_eq!(p.legacy_configmap(), format!("{n}-etcd-snapshots"));
            assert_eq!(p.extra_metadata_configmap(), format!("{n}-etcd-snapshot-extra-metadata"));
            for (key, suffix) in [
                (p.s3_meta_cluster_id(), "cluster-id"),
                (p.s3_meta_node_name(), "node-name"),
                (p.s3_meta_token_hash(), "token-hash"),
            ] {
                assert_eq!(key, format!("{n}-{suffix}"));
                assert!(key.starts_with(p.s3_meta_prefix()));
            }
            assert_eq!(p.data_dir(), format!("var/lib/rancher/{n}"));
            assert_eq!(p.config_file(), format!("etc/rancher/{n}/config.yaml"));
            assert_eq!(p.config_file_env(), format!("{}_CONFIG_FILE", n.to_uppercase()));
            assert_eq!(p.metric_prefix(), n);
            assert_eq!(p.other().other(), p);
            assert_ne!(p.other(), p);
        }
        assert_eq!(Program::Rke2.label_storage_node(), "etcd.rke2.cattle.io/snapshot-storage-node");
        assert_eq!(Program::K3s.s3_meta_node_name(), "k3s-node-name");
    }

    #[test]
    fn programs_parse_and_print_as_their_names() {
        assert_eq!("rke2".parse(), Ok(Program::Rke2));
        assert_eq!(" K3S ".parse(), Ok(Program::K3s));
        assert!("rke".parse::<Program>().is_err());
        assert_eq!(Program::Rke2.to_string(), "rke2");
        assert_eq!(serde_json::to_string(&Program::Rke2).unwrap(), "\"rke2\"");
        assert_eq!(Program::default(), Program::K3s);
    }
}
