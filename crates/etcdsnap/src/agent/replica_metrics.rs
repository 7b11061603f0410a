//! How far behind each replica is, for `/metrics` and the `EtcdsnapReplicaBehind` alert:
//! snapshots and delta segments it is missing, how long the longest-missing of them has been
//! missing, and when it last held everything. Snapshot passes (after each save, and retried)
//! and delta passes (after each upload of segments) each report their half.

use crate::ops::ReplicaStatus;
use crate::ops::replicate_deltas::DeltaStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplicaLabel {
    /// The replica's URL as `--replica` gives it (never credentials: they are refused there).
    pub replica: String,
}

/// The replica gauges, one series per replica.
#[derive(Debug, Default, Clone)]
pub struct ReplicaGauges {
    pub behind: Family<ReplicaLabel, Gauge>,
    pub behind_segments: Family<ReplicaLabel, Gauge>,
    pub lag: Family<ReplicaLabel, Gauge<f64, AtomicU64>>,
    pub last_in_sync: Family<ReplicaLabel, Gauge<f64, AtomicU64>>,
    /// Per replica, what the last snapshot pass and the last delta pass left behind.
    halves: Arc<Mutex<HashMap<String, Halves>>>,
}

/// One replica's lag as each kind of pass left it: seconds, and whether it was in sync.
#[derive(Debug, Clone, Copy)]
struct Halves {
    snapshots: (i64, bool),
    deltas: (i64, bool),
}

impl Default for Halves {
    fn default() -> Halves {
        Halves { snapshots: (0, true), deltas: (0, true) }
    }
}

impl ReplicaGauges {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "replica_behind_snapshots",
            "Snapshots of this node the replica should hold and does not (copies failed or pending)",
            self.behind.clone(),
        );
        registry.register(
            "replica_behind_segments",
            "Delta segments (point-in-time recovery) the replica should hold and does not",
            self.behind_segments.clone(),
        );
        registry.register(
            "replica_lag_seconds",
            "Age of the oldest snapshot, or time since the first delta segment, the replica is missing; 0 when it holds every one",
            self.lag.clone(),
        );
        registry.register(
            "replica_last_in_sync_timestamp_seconds",
            "When a replication pass last left the replica holding every snapshot",
            self.last_in_sync.clone(),
        );
    }

    /// Records the replicas as a snapshot replication pass left them.
    pub fn observe(&self, statuses: &[ReplicaStatus]) {
        let now = etcdsnap_storage::clock::now();
        for status in statuses {
            let label = ReplicaLabel { replica: status.url.clone() };
            self.behind.get_or_create(&label).set(status.behind.len() as i64);
            // The segments' series exists from the first pass, 0 until a delta pass says more
            // (without --deltas there is nothing to miss).
            let _ = self.behind_segments.get_or_create(&label);
            let in_sync = status.behind.is_empty() && status.errors.is_empty();
            self.update(&status.url, now, |h| h.snapshots = (status.lag_seconds(now), in_sync));
        }
    }

    /// Records the replicas as a delta replication pass left them.
    pub fn observe_deltas(&self, statuses: &[DeltaStatus]) {
        let now = etcdsnap_storage::clock::now();
        for status in statuses {
            let label = ReplicaLabel { replica: status.url.clone() };
            self.behind_segments.get_or_create(&label).set(status.behind as i64);
            let lag = status.behind_since.map_or(0, |since| (now.as_second() - since).max(0));
            let in_sync = status.behind == 0 && status.errors.is_empty();
            self.update(&status.url, now, |h| h.deltas = (lag, in_sync));
        }
    }

    /// The lag and in-sync gauges of `url` from both halves, once `change` updated one.
    fn update(&self, url: &str, now: jiff::Timestamp, change: impl FnOnce(&mut Halves)) {
        let halves = {
            let mut all = self.halves.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let h = all.entry(url.to_string()).or_default();
            change(h);
            *h
        };
        let label = ReplicaLabel { replica: url.to_string() };
        self.lag.get_or_create(&label).set(halves.snapshots.0.max(halves.deltas.0) as f64);
        if halves.snapshots.1 && halves.deltas.1 {
            self.last_in_sync.get_or_create(&label).set(now.as_second() as f64);
        }
    }
}
