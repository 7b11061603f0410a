//! How far behind each replica is, for `/metrics` and the `EtcdsnapReplicaBehind` alert:
//! snapshots it is missing, the age of the oldest of them, and when it last held everything.

use crate::ops::ReplicaStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplicaLabel {
    /// The replica's URL as `--replica` gives it (never credentials: they are refused there).
    pub replica: String,
}

/// The replica gauges, one series per replica.
#[derive(Debug, Default, Clone)]
pub struct ReplicaGauges {
    pub behind: Family<ReplicaLabel, Gauge>,
    pub lag: Family<ReplicaLabel, Gauge<f64, AtomicU64>>,
    pub last_in_sync: Family<ReplicaLabel, Gauge<f64, AtomicU64>>,
}

impl ReplicaGauges {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "replica_behind_snapshots",
            "Snapshots of this node the replica should hold and does not (copies failed or pending)",
            self.behind.clone(),
        );
        registry.register(
            "replica_lag_seconds",
            "Age of the oldest snapshot the replica is missing; 0 when it holds every one",
            self.lag.clone(),
        );
        registry.register(
            "replica_last_in_sync_timestamp_seconds",
            "When a replication pass last left the replica holding every snapshot",
            self.last_in_sync.clone(),
        );
    }

    /// Records the replicas as a replication pass left them.
    pub fn observe(&self, statuses: &[ReplicaStatus]) {
        let now = etcdsnap_storage::clock::now();
        for status in statuses {
            let label = ReplicaLabel { replica: status.url.clone() };
            self.behind.get_or_create(&label).set(status.behind.len() as i64);
            self.lag.get_or_create(&label).set(status.lag_seconds(now) as f64);
            if status.behind.is_empty() && status.errors.is_empty() {
                self.last_in_sync.get_or_create(&label).set(now.as_second() as f64);
            }
        }
    }
}
