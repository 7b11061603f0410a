//! etcdsnap's Kubernetes side: the `ETCDSnapshotFile` CRD and one resource per snapshot,
//! reconcile of resources against storage, K3s's events, the bounded legacy ConfigMap and the
//! controller that keeps it in step with the resources, the extra-metadata ConfigMap, the S3
//! config Secret, and the Leases that decide who writes what.
//!
//! What it owns: every request to the API server. What it must not do: build stores, list
//! storage, parse flags or decide what a command does. It receives what storage holds as
//! [`etcdsnap_storage::SnapshotRecord`]s, settings as typed values, and returns typed reports and
//! errors; the service layer (`etcdsnap`) wires the two sides together.
//!
//! Everything here is optional at run time: without Kubernetes, snapshots are still saved with
//! their metadata documents, and the next reconcile rebuilds every resource from storage.
//!
//! Who writes what (so two nodes never race on one object):
//! - every node writes the resources of its own local snapshots (label = its node name);
//! - the leader (Lease `kube-system/etcdsnap-leader`, [`leader`]), under a term checked before
//!   each such write, writes the S3 resources (label `s3`), deletes
//!   the resources of nodes whose heartbeat Lease went stale, and maintains the legacy ConfigMap;
//! - right after its own save, delete or prune, a node writes the resources of exactly the
//!   snapshots it touched, S3 ones included (a new S3 resource is protected from the leader's
//!   reconcile for a minute, like K3s does, so the two cannot flap).

pub mod client;
pub mod connect;
pub mod convert;
pub mod crd;
pub mod drills;
pub mod events;
pub mod extra_metadata;
pub mod fence;
pub mod instance;
pub mod leader;
pub mod lease;
pub mod legacy;
pub mod legacy_controller;
pub mod node_annotations;
pub mod pitr;
pub mod publish;
pub mod reconcile;
pub mod resources;
pub mod s3_secret;
pub mod watch;

pub use connect::{ConnectError, ConnectOptions, Kube, KubeSettings, LegacySettings};
pub use convert::RecordResource;

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

/// A minimal ready local record of 100 bytes taken at the time in its name, for tests.
#[cfg(test)]
pub(crate) fn test_record(name: &str, node: &str) -> etcdsnap_storage::SnapshotRecord {
    use etcdsnap_storage::SnapshotRecord;
    let name = etcdsnap_api::SnapshotName::parse(name).unwrap();
    let created = SnapshotRecord::creation_time(&name, jiff::Timestamp::UNIX_EPOCH);
    let location = format!("file:///snapshots/{name}");
    SnapshotRecord::stored(name, etcdsnap_api::StorageKind::Local, node, location, created, 100)
}
