//! Kubernetes integration: the `ETCDSnapshotFile` CRD and one resource per snapshot, reconcile
//! from storage, events, the bounded legacy ConfigMap, extra metadata, the S3 config Secret and
//! the Leases that decide who writes what.
//!
//! Everything here is optional at run time: without Kubernetes, snapshots are still saved with
//! their metadata documents, and the next reconcile rebuilds every resource from storage.
//!
//! Who writes what (so two nodes never race on one object):
//! - every node writes the resources of its own local snapshots (label = its node name);
//! - the leader (Lease `kube-system/etcdsnap-leader`) writes the S3 resources (label `s3`), deletes
//!   the resources of nodes whose heartbeat Lease went stale, and maintains the legacy ConfigMap;
//! - right after its own save, delete or prune, a node writes the resources of exactly the
//!   snapshots it touched, S3 ones included (a new S3 resource is protected from the leader's
//!   reconcile for a minute, like K3s does, so the two cannot flap).
//!
//! A long-running caller (the agent) uses it like this: [`Kube::connect`], then
//! [`crd::ensure_crd`] once; on a timer [`lease::renew_heartbeat`] and
//! [`lease::LeaderLease::try_acquire`]; each reconcile period [`publish::storage_state`] followed
//! by [`reconcile::reconcile_leader`] (with [`lease::NodeLiveness::read`]) while leading, else
//! [`reconcile::reconcile_node`]; around each scheduled save [`extra_metadata::read`] and
//! [`publish::publish_records`]; after its own deletions [`publish::after_removal`]. S3 settings
//! from a Secret come from [`s3_secret::load`], read again for every operation.

pub mod connect;
pub mod crd;
pub mod events;
pub mod extra_metadata;
pub mod lease;
pub mod legacy;
pub mod node_annotations;
pub mod publish;
pub mod reconcile;
pub mod resources;
pub mod s3_secret;
pub mod watch;

pub use connect::{ConnectError, ConnectOptions, Kube, KubeSettings, LegacySettings};

use kube::Error as KubeClientError;

/// A failed request to the API server, naming what was being done to which object.
#[derive(Debug, thiserror::Error)]
// The client error is part of the message rather than a `source`, so that error chains printed
// by the binary do not repeat it.
#[error("{action} {object}: {error}")]
pub struct ApiError {
    pub action: &'static str,
    pub object: String,
    pub error: KubeClientError,
}

impl ApiError {
    pub fn new(action: &'static str, object: impl Into<String>) -> impl FnOnce(KubeClientError) -> ApiError {
        let object = object.into();
        move |error| ApiError { action, object, error }
    }

    pub fn is_not_found(&self) -> bool {
        status_is(&self.error, |s| s.is_not_found())
    }

    pub fn is_conflict(&self) -> bool {
        status_is(&self.error, |s| s.is_conflict() || s.is_already_exists())
    }

    pub fn is_forbidden(&self) -> bool {
        status_is(&self.error, |s| s.is_forbidden())
    }
}

/// Whether a client error is an API status matching `pred`.
pub fn status_is(e: &KubeClientError, pred: impl Fn(&kube::core::Status) -> bool) -> bool {
    matches!(e, KubeClientError::Api(s) if pred(s))
}

/// How many times a write that lost a race (409) is re-read and retried before giving up.
pub const CONFLICT_RETRIES: usize = 5;
