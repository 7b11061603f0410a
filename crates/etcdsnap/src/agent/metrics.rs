//! Prometheus metrics: K3s's six snapshot histograms under an `etcdsnap_` prefix (same buckets:
//! 0.008 s doubling 15 times, label `status` = success|error), prune durations, sizes, and
//! freshness gauges an alert can watch ("no successful S3 snapshot for 13 hours").

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum Status {
    Success,
    Error,
}

/// K3s's label values are lowercase (`status="success"`).
impl EncodeLabelValue for Status {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Status::Success => "success",
            Status::Error => "error",
        })
    }
}

impl Status {
    pub fn of(ok: bool) -> Status {
        if ok { Status::Success } else { Status::Error }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: Status,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum Location {
    Local,
    S3,
}

impl EncodeLabelValue for Location {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Location::Local => "local",
            Location::S3 => "s3",
        })
    }
}

/// Why a reconcile pass (or a legacy ConfigMap sync) failed: `storage_list`, `api_read`,
/// `api_write`, `legacy_configmap`, `finalizer`, `node_annotation`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Cause(pub &'static str);

impl EncodeLabelValue for Cause {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabel {
    pub cause: Cause,
}

/// A restore drill's result: `passed` or `failed`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LocationLabel {
    pub location: Location,
}

type Durations = Family<StatusLabel, Histogram>;

fn durations() -> Durations {
    Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.008, 2.0, 15)))
}

/// Everything the agent exposes on `/metrics`.
pub struct Metrics {
    registry: Registry,
    pub save: Durations,
    pub save_local: Durations,
    pub save_s3: Durations,
    pub reconcile: Durations,
    pub reconcile_local: Durations,
    pub reconcile_s3: Durations,
    pub prune: Durations,
    pub last_success: Family<LocationLabel, Gauge<f64, AtomicU64>>,
    pub last_verified: Gauge<f64, AtomicU64>,
    pub size: Family<LocationLabel, Gauge>,
    pub skipped: Counter,
    pub saves: Family<StatusLabel, Counter>,
    pub reconcile_failures: Family<CauseLabel, Counter>,
    pub drills: Family<ResultLabel, Counter>,
    pub last_drill: Family<ResultLabel, Gauge<f64, AtomicU64>>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("etcdsnap");
        let m = Metrics {
            save: durations(),
            save_local: durations(),
            save_s3: durations(),
            reconcile: durations(),
            reconcile_local: durations(),
            reconcile_s3: durations(),
            prune: durations(),
            last_success: Family::default(),
            last_verified: Gauge::default(),
            size: Family::default(),
            skipped: Counter::default(),
            saves: Family::default(),
            reconcile_failures: Family::default(),
            drills: Family::default(),
            last_drill: Family::default(),
            registry: Registry::default(),
        };
        let histograms: [(&str, &str, &Durations); 7] = [
            ("etcd_snapshot_save_duration_seconds", "Whole snapshot save operation", &m.save),
            ("etcd_snapshot_save_local_duration_seconds", "Snapshot save to local disk", &m.save_local),
            ("etcd_snapshot_save_s3_duration_seconds", "Snapshot upload to S3", &m.save_s3),
            ("etcd_snapshot_reconcile_duration_seconds", "Whole ETCDSnapshotFile reconcile", &m.reconcile),
            (
                "etcd_snapshot_reconcile_local_duration_seconds",
                "Listing of the local snapshot directory",
                &m.reconcile_local,
            ),
            ("etcd_snapshot_reconcile_s3_duration_seconds", "Listing of the S3 folder", &m.reconcile_s3),
            ("etcd_snapshot_prune_duration_seconds", "Retention (prune) run", &m.prune),
        ];
        for (name, help, h) in histograms {
            registry.register(name, help, h.clone());
        }
        registry.register(
            "last_success_timestamp_seconds",
            "Unix time of the last successful snapshot per location",
            m.last_success.clone(),
        );
        registry.register(
            "last_verified_timestamp_seconds",
            "Unix time of the last snapshot re-read and verified after saving",
            m.last_verified.clone(),
        );
        registry.register("snapshot_size_bytes", "Size of the last successful snapshot per location", m.size.clone());
        registry.register(
            "scheduled_runs_skipped",
            "Scheduled runs skipped because the previous one (or a CLI save) was still running",
            m.skipped.clone(),
        );
        registry.register("saves", "Snapshot saves by outcome", m.saves.clone());
        registry.register(
            "reconcile_failures",
            "Failed reconcile passes and legacy ConfigMap syncs, by cause",
            m.reconcile_failures.clone(),
        );
        registry.register("drills", "Restore drills by result", m.drills.clone());
        registry.register(
            "last_drill_timestamp_seconds",
            "Unix time of the last restore drill per result",
            m.last_drill.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts one restore drill and stamps its time.
    pub fn drilled(&self, passed: bool) {
        let label = ResultLabel { result: if passed { "passed" } else { "failed" } };
        self.drills.get_or_create(&label).inc();
        let now = etcdsnap_storage::clock::now().as_millisecond() as f64 / 1000.0;
        self.last_drill.get_or_create(&label).set(now);
    }

    /// Counts one failure of a reconcile pass or legacy ConfigMap sync.
    pub fn reconcile_failed(&self, cause: Cause) {
        self.reconcile_failures.get_or_create(&CauseLabel { cause }).inc();
    }

    pub fn observe(h: &Durations, ok: bool, elapsed: Duration) {
        h.get_or_create(&StatusLabel { status: Status::of(ok) }).observe(elapsed.as_secs_f64());
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_the_k3s_measures_and_buckets() {
        let m = Metrics::new();
        Metrics::observe(&m.save, true, Duration::from_millis(20));
        Metrics::observe(&m.save_s3, false, Duration::from_secs(1));
        m.skipped.inc();
        m.reconcile_failed(Cause("storage_list"));
        m.last_success.get_or_create(&LocationLabel { location: Location::S3 }).set(1.7e9);
        let text = m.encode();
        assert!(
            text.contains("etcdsnap_etcd_snapshot_save_duration_seconds_bucket{le=\"0.008\",status=\"success\"}"),
            "{text}"
        );
        assert!(text.contains("le=\"131.072\""), "{text}");
        assert!(text.contains("etcdsnap_etcd_snapshot_save_s3_duration_seconds_count{status=\"error\"} 1"), "{text}");
        assert!(text.contains("etcdsnap_scheduled_runs_skipped_total 1"), "{text}");
        assert!(text.contains("etcdsnap_reconcile_failures_total{cause=\"storage_list\"} 1"), "{text}");
        assert!(text.contains("etcdsnap_last_success_timestamp_seconds{location=\"s3\"} 1700000000"), "{text}");
    }
}
