//! Prometheus metrics: K3s's six snapshot histograms under an `etcdsnap_` prefix (same buckets:
//! 0.008 s doubling 15 times, label `status` = success|error) and again under the server's own
//! names (`k3s_etcd_snapshot_*`, `rke2_etcd_snapshot_*`) for dashboards made for K3s or RKE2,
//! prune durations, sizes, and
//! freshness gauges an alert can watch ("no successful S3 snapshot for 13 hours"), and the state
//! deploy/monitoring's alerts need: the last save's and drill's outcome, the leader, the schedule's
//! period, and how full the bounded legacy ConfigMap is.

use etcdsnap_api::Program;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
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

impl Cause {
    /// The causes reconcile passes report (`ReconcileError::cause`, and listing failures).
    pub const KNOWN: [&'static str; 7] = [
        "storage_list",
        "api_read",
        "api_write",
        "leadership_lost",
        "legacy_configmap",
        "finalizer",
        "node_annotation",
    ];
}

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
    pub last_save_succeeded: Gauge,
    pub last_drill_passed: Gauge,
    pub leader: Gauge,
    pub schedule_interval: Gauge<f64, AtomicU64>,
    pub legacy: LegacyGauges,
    pub pitr: PitrGauges,
    pub replicas: super::replica_metrics::ReplicaGauges,
    pub info: Family<InfoLabels, Gauge>,
}

/// Point-in-time capture (`agent --deltas`): how far behind the newest durable change is (the
/// recovery point), and what was written.
#[derive(Default)]
pub struct PitrGauges {
    /// Seconds since every change was last known durable; set when scraped, while capturing.
    pub lag: Gauge<f64, AtomicU64>,
    /// 1 while this agent captures (it leads, or runs without Kubernetes).
    pub capturing: Gauge,
    pub durable_revision: Gauge,
    pub bytes: Counter,
    pub events: Counter,
    /// Chains that could not continue (each is followed by a full snapshot).
    pub breaks: Counter,
    /// The newest revision whose segment is in S3 too.
    pub uploaded_revision: Gauge,
    pub upload_failures: Counter,
    /// Unix milliseconds up to which every change is durable (0: not known).
    caught_up_ms: AtomicI64,
    /// When the newest durable segment's last revision was observed (Unix milliseconds).
    segment_observed_ms: AtomicI64,
}

impl PitrGauges {
    /// Every change up to `at_ms` is durable.
    pub fn durable_until(&self, at_ms: i64) {
        self.caught_up_ms.fetch_max(at_ms, Ordering::Relaxed);
    }

    /// A segment became durable: its last revision and when that was observed.
    pub fn segment_written(&self, last_revision: i64, observed_ms: i64) {
        self.durable_revision.set(last_revision);
        self.segment_observed_ms.fetch_max(observed_ms, Ordering::Relaxed);
        self.durable_until(observed_ms);
    }

    /// When the newest durable segment's last revision was observed (0: none yet).
    pub fn segment_observed_ms(&self) -> i64 {
        self.segment_observed_ms.load(Ordering::Relaxed)
    }

    /// Capture starts (true) or stops (false) on this agent.
    pub fn set_capturing(&self, on: bool, now_ms: i64) {
        self.capturing.set(i64::from(on));
        if on {
            // A new capture is judged from now, not from a previous term's last segment.
            self.caught_up_ms.store(now_ms, Ordering::Relaxed);
        }
    }

    fn refresh_lag(&self, now_ms: i64) {
        let lag = match self.capturing.get() {
            0 => 0.0,
            _ => (now_ms - self.caught_up_ms.load(Ordering::Relaxed)).max(0) as f64 / 1000.0,
        };
        self.lag.set(lag);
    }
}

/// `etcdsnap_agent_info{node, version} 1`: joins a scrape target to its node name, so that
/// dashboards can show nodes rather than addresses.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InfoLabels {
    pub node: String,
    pub version: String,
}

/// The legacy ConfigMap as the leader last planned it, beside its bounds: an alert fires before
/// entries have to be left out, not after.
#[derive(Default)]
pub struct LegacyGauges {
    pub bytes: Gauge,
    pub entries: Gauge,
    pub dropped: Gauge,
    pub max_bytes: Gauge,
    pub max_entries: Gauge,
}

impl Metrics {
    /// The metrics, K3s's histograms also under K3s's names.
    pub fn new() -> Metrics {
        Metrics::for_program(Program::K3s)
    }

    /// The metrics, K3s's histograms also under `program`'s names (`rke2_etcd_snapshot_*`).
    pub fn for_program(program: Program) -> Metrics {
        let mut root = Registry::default();
        let registry = root.sub_registry_with_prefix("etcdsnap");
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
            last_save_succeeded: Gauge::default(),
            last_drill_passed: Gauge::default(),
            leader: Gauge::default(),
            schedule_interval: Gauge::default(),
            legacy: LegacyGauges::default(),
            pitr: PitrGauges::default(),
            replicas: Default::default(),
            info: Family::default(),
            registry: Registry::default(),
        };
        let histograms: [(&str, &str, &Durations); 7] = [
            // The first six are the server's own, registered under its names below too.
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
        for &(name, help, h) in &histograms {
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
        register_state(registry, &m);
        for (name, help, h) in histograms.into_iter().take(6) {
            let name = name.replace("etcd_snapshot_", &format!("{}_etcd_snapshot_", program.metric_prefix()));
            root.register(name, format!("{help} (the {} server's name)", program.display_name()), h.clone());
        }
        m.start_counters_at_zero();
        Metrics { registry: root, ..m }
    }

    /// Creates every known label value of the counters at 0, so that `increase()` and alerts see
    /// the first failure as a change rather than as a series appearing from nothing.
    fn start_counters_at_zero(&self) {
        for status in [Status::Success, Status::Error] {
            let _ = self.saves.get_or_create(&StatusLabel { status });
        }
        for cause in Cause::KNOWN {
            let _ = self.reconcile_failures.get_or_create(&CauseLabel { cause: Cause(cause) });
        }
        for result in ["passed", "failed"] {
            let _ = self.drills.get_or_create(&ResultLabel { result });
        }
    }

    /// Names this agent's node in `etcdsnap_agent_info`.
    pub fn set_info(&self, node: &str) {
        let labels = InfoLabels { node: node.to_string(), version: env!("CARGO_PKG_VERSION").to_string() };
        self.info.get_or_create(&labels).set(1);
    }

    /// Records a save's outcome for the "last save failed" alert.
    pub fn saved(&self, ok: bool) {
        self.saves.get_or_create(&StatusLabel { status: Status::of(ok) }).inc();
        self.last_save_succeeded.set(i64::from(ok));
    }

    /// The legacy ConfigMap as a sync left it, and its bounds.
    pub fn legacy_synced(&self, report: &etcdsnap_kube::legacy::SyncReport, limits: &etcdsnap_kube::LegacySettings) {
        let g = &self.legacy;
        g.bytes.set(report.estimated_bytes as i64);
        g.entries.set(report.entries as i64);
        g.dropped.set(report.dropped as i64);
        g.max_bytes.set(limits.max_bytes as i64);
        g.max_entries.set(limits.max_keys as i64);
    }

    /// Raises a location's last success to `at` (Unix seconds) unless a later one is known: on
    /// start, from the newest snapshot found in storage, so a restarted agent is not "stale"
    /// (or silent) until its next scheduled save.
    pub fn seen_success(&self, location: Location, at: f64) {
        let gauge = self.last_success.get_or_create(&LocationLabel { location });
        if gauge.get() < at {
            gauge.set(at);
        }
    }

    /// Counts one restore drill and stamps its time.
    pub fn drilled(&self, passed: bool) {
        let label = ResultLabel { result: if passed { "passed" } else { "failed" } };
        self.drills.get_or_create(&label).inc();
        let now = etcdsnap_storage::clock::now().as_millisecond() as f64 / 1000.0;
        self.last_drill.get_or_create(&label).set(now);
        self.last_drill_passed.set(i64::from(passed));
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
        self.pitr.refresh_lag(etcdsnap_storage::clock::now().as_millisecond());
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// The gauges of [`Metrics`] that describe state rather than work done.
fn register_state(registry: &mut Registry, m: &Metrics) {
    registry.register(
        "last_save_succeeded",
        "1 when the last snapshot save reached every location, 0 when it failed anywhere",
        m.last_save_succeeded.clone(),
    );
    registry.register(
        "last_drill_passed",
        "1 when the last restore drill passed, 0 when it failed",
        m.last_drill_passed.clone(),
    );
    registry.register("agent_info", "Always 1: the agent's node name and version", m.info.clone());
    registry.register("leader", "1 while this agent holds the leader Lease", m.leader.clone());
    registry.register(
        "schedule_interval_seconds",
        "Time between two scheduled snapshots (absent without a schedule)",
        m.schedule_interval.clone(),
    );
    register_pitr(registry, &m.pitr);
    m.replicas.register(registry);
    let legacy = &m.legacy;
    let gauges: [(&str, &str, &Gauge); 5] = [
        ("legacy_configmap_bytes", "Estimated size of the legacy ConfigMap the leader keeps", &legacy.bytes),
        ("legacy_configmap_entries", "Entries in the legacy ConfigMap", &legacy.entries),
        (
            "legacy_configmap_dropped_entries",
            "Oldest entries left out of the legacy ConfigMap to keep it within its bounds",
            &legacy.dropped,
        ),
        ("legacy_configmap_max_bytes", "The legacy ConfigMap's size bound", &legacy.max_bytes),
        ("legacy_configmap_max_entries", "The legacy ConfigMap's entry bound", &legacy.max_entries),
    ];
    for (name, help, g) in gauges {
        registry.register(name, help, g.clone());
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn register_pitr(registry: &mut Registry, d: &PitrGauges) {
    registry.register(
        "delta_lag_seconds",
        "Age of the newest durable point-in-time change: the recovery point (0 when not capturing)",
        d.lag.clone(),
    );
    registry.register("delta_capturing", "1 while this agent captures etcd's changes (--deltas)", d.capturing.clone());
    registry.register(
        "delta_durable_revision",
        "The newest etcd revision captured durably",
        d.durable_revision.clone(),
    );
    registry.register("delta_bytes", "Bytes of delta segments written", d.bytes.clone());
    registry.register("delta_events", "etcd events written to delta segments", d.events.clone());
    registry.register(
        "delta_uploaded_revision",
        "The newest etcd revision whose delta segment is in S3 too",
        d.uploaded_revision.clone(),
    );
    registry.register("delta_upload_failures", "Failed passes of delta uploads to S3", d.upload_failures.clone());
    registry.register(
        "delta_chain_breaks",
        "Delta chains that could not continue (compaction, a failed watch); each is followed by a full snapshot",
        d.breaks.clone(),
    );
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

    #[test]
    fn the_server_s_histograms_are_exposed_under_its_own_names_too() {
        let m = Metrics::for_program(Program::Rke2);
        Metrics::observe(&m.save, true, Duration::from_millis(20));
        Metrics::observe(&m.reconcile_s3, false, Duration::from_secs(1));
        let text = m.encode();
        for name in ["etcdsnap_etcd_snapshot_save_duration_seconds", "rke2_etcd_snapshot_save_duration_seconds"] {
            assert!(text.contains(&format!("{name}_bucket{{le=\"0.008\",status=\"success\"}} 0")), "{text}");
            assert!(text.contains(&format!("{name}_count{{status=\"success\"}} 1")), "{name}: {text}");
        }
        assert!(text.contains("rke2_etcd_snapshot_reconcile_s3_duration_seconds_count{status=\"error\"} 1"), "{text}");
        assert!(!text.contains("rke2_etcd_snapshot_prune"), "K3s has no prune histogram");
        assert!(!text.contains("k3s_etcd_snapshot"), "{text}");
        let k3s = Metrics::new();
        Metrics::observe(&k3s.save_local, true, Duration::from_millis(20));
        let k3s = k3s.encode();
        assert!(k3s.contains("k3s_etcd_snapshot_save_local_duration_seconds_count{status=\"success\"} 1"), "{k3s}");
        assert_eq!(text.matches("# EOF").count(), 1);
    }

    #[test]
    fn the_delta_lag_is_the_age_of_the_last_moment_everything_was_durable() {
        let d = PitrGauges::default();
        d.refresh_lag(10_000);
        assert_eq!(d.lag.get(), 0.0, "not capturing: no lag to report");
        d.set_capturing(true, 1_000);
        d.durable_until(4_000);
        d.durable_until(3_000);
        d.refresh_lag(10_000);
        assert_eq!(d.lag.get(), 6.0, "a later confirmation is never undone by an earlier one");
        d.set_capturing(false, 11_000);
        d.refresh_lag(20_000);
        assert_eq!(d.lag.get(), 0.0);
        let text = Metrics::new().encode();
        for name in ["etcdsnap_delta_lag_seconds", "etcdsnap_delta_bytes_total", "etcdsnap_delta_events_total"] {
            assert!(text.contains(name), "{name} missing: {text}");
        }
    }

    #[test]
    fn a_success_seen_in_storage_never_moves_the_last_success_back() {
        let m = Metrics::new();
        m.seen_success(Location::Local, 100.0);
        m.seen_success(Location::Local, 50.0);
        assert_eq!(m.last_success.get_or_create(&LocationLabel { location: Location::Local }).get(), 100.0);
        m.seen_success(Location::Local, 200.0);
        assert_eq!(m.last_success.get_or_create(&LocationLabel { location: Location::Local }).get(), 200.0);
    }

    #[test]
    fn outcomes_of_saves_and_drills_are_gauges_too() {
        let m = Metrics::new();
        m.saved(false);
        m.drilled(true);
        m.leader.set(1);
        let text = m.encode();
        assert!(text.contains("etcdsnap_last_save_succeeded 0"), "{text}");
        assert!(text.contains("etcdsnap_saves_total{status=\"error\"} 1"), "{text}");
        assert!(text.contains("etcdsnap_last_drill_passed 1"), "{text}");
        assert!(text.contains("etcdsnap_leader 1"), "{text}");
        assert!(text.contains("etcdsnap_legacy_configmap_max_bytes 0"), "{text}");
    }
}
