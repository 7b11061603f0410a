//! Replay: a full snapshot rolled forward to a target revision or time.
//!
//! First every segment of the plan is read, checked against its record's sha256 and decoded
//! ([`scan`]), while the base snapshot is restored with etcdutl into `work/data` for a
//! one-member cluster on loopback: a damaged segment fails before the private etcd starts, and
//! the pass learns the largest transaction to apply, the target's moment and the leases' TTLs.
//! Then a private etcd is booted on the restored base with request limits that fit the largest
//! captured revision. Every captured revision after the base, up to the target, is applied as
//! exactly one transaction holding all its events in their order, so that etcd numbers it as
//! it was numbered live: create and mod revisions and versions come out as they were. Many
//! transactions are in flight at once, each guarded so that etcd cannot apply it out of order,
//! and each operation's previous state is compared with the one the capture saw ([`apply`]): a
//! replay onto another history, or one that drifts, fails naming the revision and the key,
//! before anything is installed. While it runs, every lease of the replayed etcd is renewed
//! ([`leases`]). At the end the etcd must be at the target revision, HashKV there is compared
//! with the value recorded from the live cluster when there is one, and the etcd is stopped
//! cleanly (SIGTERM, then a wait); its database then becomes the snapshot file that a restore
//! installs ([`database`]).
//!
//! That is the private-etcd engine. The direct engine ([`direct`], the default when its helper
//! is found, see [`engine`]) does the same work without an etcd: `etcdsnap-replay`, built from
//! etcd's own storage packages, applies each revision as one mvcc write transaction to the
//! restored base's database file, proves it, and computes HashKV at the target; the rest (the
//! first pass, the check against the live HashKV, the snapshot file) is shared.
//!
//! A time target was mapped to a revision by the plan (the last revision observed at or before
//! the time); the replay stops there, and uses the time only for what leases have left.

mod apply;
mod database;
mod direct;
mod engine;
mod guard;
mod leases;
mod scan;

pub use direct::HELPER;
pub use engine::{EngineChoice, NoHelper, ReplayEngine, choose as choose_engine};
pub use leases::REPLAY_LEASE_TTL;
pub use scan::last_observed_by;

use crate::restore::loopback::{self, LoopbackError};
use apply::{Leases, Pipeline};
use etcd_client::Client;
use etcdsnap_api::KvHash;
use etcdsnap_storage::etcd::EtcdConfig;
use etcdsnap_storage::pitr::{ReplayPlan, SegmentError, SegmentRecord, Target};
use etcdsnap_storage::seal::Identity;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The replayed etcd's backend quota: 16 GiB, above any database etcd supports (8 GiB).
const REPLAY_QUOTA: &str = "--quota-backend-bytes=17179869184";
/// The largest answer the replay accepts from its etcd: etcd's own limit on what it sends. An
/// answer carries the previous values of the keys a revision changed, which no limit of the
/// capture bounds (a range delete of large values).
const ANSWER_LIMIT: usize = i32::MAX as usize;

/// What to replay, from where, with which binaries.
#[derive(Debug, Clone)]
pub struct Replay<'a> {
    pub plan: &'a ReplayPlan,
    pub target: Target,
    /// The directory holding the chains (`<segments_dir>/<chain>/<segment>`).
    pub segments_dir: &'a Path,
    /// The base snapshot's database file.
    pub base_snapshot: &'a Path,
    pub etcdutl: &'a Path,
    /// The etcd binary of the etcd engine (unused by the direct engine).
    pub etcd: &'a Path,
    /// A private, empty directory: the data directory is made in it.
    pub work: &'a Path,
    /// HashKV recorded from the live cluster at the target revision.
    pub expected_hash: Option<KvHash>,
    /// Where to write a snapshot of the result (a restore installs the result from it with the
    /// operator's member settings): the replay's database once its etcd has stopped, made into
    /// the file etcd's Snapshot call would have sent ([`database`]). It is moved there, not
    /// copied: the data directory of the report is left without it.
    pub save_to: Option<&'a Path>,
    /// Opens sealed segments (both passes read them).
    pub identity: Option<Arc<Identity>>,
    /// Rewrite the database in key order (`etcdutl defrag`) before it is saved: its pages then
    /// depend on what it holds, not on when the replay's etcd committed, so nodes that replay
    /// the same revisions save the same bytes (`restore --all-members`).
    pub compact: bool,
    /// The engine: `etcdsnap-replay` on the database file, or a private etcd.
    pub engine: ReplayEngine,
}

/// What a replay produced.
#[derive(Debug, Clone)]
pub struct ReplayReport {
    /// The restored data directory, rolled forward and no longer in use.
    pub data_dir: PathBuf,
    pub revision: i64,
    pub hash: KvHash,
    /// Whether `hash` was compared with one recorded from the live cluster (and matched).
    pub hash_compared: bool,
    pub revisions_applied: u64,
    pub events_applied: u64,
    /// Events whose key's previous state in the replay was the one the capture saw.
    pub events_proven: u64,
    pub leases_granted: u64,
    /// Things worth knowing that are not failures (HashKV not compared, events unchecked).
    pub notes: Vec<String>,
    pub duration: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Loopback(#[from] LoopbackError),
    #[error("the restored base {chain} is at revision {found}, its record says {expected}")]
    BaseRevision { chain: String, expected: i64, found: i64 },
    #[error("cannot read delta segment {name}: {source}")]
    Read {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("delta segment {name} is damaged: its sha256 is {found}, its record says {expected}")]
    Checksum { name: String, expected: String, found: String },
    #[error(transparent)]
    Segment(#[from] SegmentError),
    #[error("delta segment {name} holds revision {revision} where revision {expected} was expected")]
    Sequence { name: String, revision: i64, expected: i64 },
    #[error("cannot apply revision {revision}: {message}")]
    Apply { revision: i64, message: String },
    #[error("the replay drifted: applying revision {revision} left the etcd at revision {found}")]
    Drift { revision: i64, found: i64 },
    #[error(
        "the replay drifted: revision {revision} could not be applied although the one before it was (the etcd is at revision {found}: it changed by itself)"
    )]
    GuardFailed { revision: i64, found: i64 },
    #[error(
        "the replay diverged from the captured history at revision {revision}, key {key}: the capture saw it {expected} before that revision, the replay found it {found}; nothing was installed"
    )]
    Diverged { revision: i64, key: String, expected: String, found: String },
    #[error(
        "the replay diverged from the captured history at revision {revision}, key {key}: {detail}; nothing was installed"
    )]
    Produced { revision: i64, key: String, detail: String },
    #[error("cannot grant lease {lease:x} for revision {revision}: {message}")]
    Lease { revision: i64, lease: i64, message: String },
    #[error("cannot keep the replayed etcd's leases alive: {0}")]
    Leases(String),
    #[error("the captured changes end at revision {reached}, before the target {stop_at}")]
    Short { reached: i64, stop_at: i64 },
    #[error("the replay failed: {0}")]
    Query(String),
    #[error("HashKV mismatch at revision {revision}: the live cluster hashed to {expected}, the replay to {found}")]
    HashMismatch { revision: i64, expected: u32, found: u32 },
    #[error("cannot save the replayed etcd to {}: {message}", path.display())]
    Save { path: PathBuf, message: String },
}

/// Restores the base, applies the plan's revisions up to the target and checks the result.
pub async fn replay(r: &Replay<'_>) -> Result<ReplayReport, ReplayError> {
    let started = Instant::now();
    // The first pass runs while etcdutl restores the base: neither needs the other. A damaged
    // segment still fails the replay before its etcd starts (once etcdutl is done, so that
    // nothing writes in the working directory any more).
    let (plan, target, dir, identity) = (r.plan.clone(), r.target, r.segments_dir.to_path_buf(), r.identity.clone());
    let scanning = tokio::task::spawn_blocking(move || scan::scan(&plan, target, &dir, identity.as_deref()));
    let (scanned, restored) = tokio::join!(scanning, loopback::restore("pitr", r.etcdutl, r.base_snapshot, r.work));
    let scan = scanned.map_err(|e| ReplayError::Query(format!("the first pass over the segments failed: {e}")))??;
    let restored = restored?;
    tracing::debug!(
        seconds = started.elapsed().as_secs_f64(),
        revisions = scan.revisions,
        "segments read, base restored"
    );
    let mut report = match &r.engine {
        ReplayEngine::Direct(helper) => in_helper(r, helper, restored.data_dir(), scan).await,
        ReplayEngine::Etcd => in_etcd(r, &restored, scan, started).await,
    }?;
    tracing::debug!(seconds = started.elapsed().as_secs_f64(), engine = ?r.engine, "replayed and hashed");
    if let Some(path) = r.save_to {
        if r.compact {
            compact(r.etcdutl, restored.data_dir(), path).await?;
            tracing::debug!(seconds = started.elapsed().as_secs_f64(), "compacted");
        }
        let (data, revision, path) = (restored.data_dir().to_path_buf(), report.revision, path.to_path_buf());
        tokio::task::spawn_blocking(move || database::into_snapshot(&data, &path, revision))
            .await
            .map_err(|e| ReplayError::Query(format!("saving the result failed: {e}")))??;
        tracing::debug!(seconds = started.elapsed().as_secs_f64(), "saved");
    }
    report.data_dir = restored.data_dir().to_path_buf();
    report.duration = started.elapsed();
    tracing::info!(
        revision = report.revision,
        revisions = report.revisions_applied,
        proven = report.events_proven,
        seconds = report.duration.as_secs_f64(),
        "point-in-time replay done"
    );
    Ok(report)
}

/// The direct engine: `helper` rolls the database of `data_dir` forward ([`direct`]).
async fn in_helper(
    r: &Replay<'_>,
    helper: &Path,
    data_dir: &Path,
    scan: scan::Scan,
) -> Result<ReplayReport, ReplayError> {
    let job = direct::DirectJob {
        helper: helper.to_path_buf(),
        data_dir: data_dir.to_path_buf(),
        base_name: r.plan.base.name.clone(),
        base_revision: r.plan.base.revision,
        segments: r.plan.segments.clone(),
        segments_dir: r.segments_dir.to_path_buf(),
        identity: r.identity.clone(),
        scan,
        log: r.work.join("replay.log"),
    };
    let (job, done) = tokio::task::spawn_blocking(move || {
        let done = direct::run(&job);
        (job, done)
    })
    .await
    .map_err(|e| ReplayError::Query(format!("the direct engine's thread ended: {e}")))?;
    let done = done?;
    if done.revision != job.scan.stop_at {
        return Err(ReplayError::Drift { revision: job.scan.stop_at, found: done.revision });
    }
    let mut notes = Vec::new();
    let hash_compared = compare(r.expected_hash, done.hash, done.revision, &mut notes)?;
    notes.extend(proof_notes(&job.scan, done.leases_unobserved));
    Ok(ReplayReport {
        data_dir: PathBuf::new(),
        revision: done.revision,
        hash: done.hash,
        hash_compared,
        revisions_applied: done.revisions,
        events_applied: done.events,
        events_proven: done.proven,
        leases_granted: done.leases_granted,
        notes,
        duration: Duration::ZERO,
    })
}

/// The private-etcd engine: an etcd booted on the restored base, one guarded transaction per
/// revision ([`apply`]), stopped cleanly at the end.
async fn in_etcd(
    r: &Replay<'_>,
    restored: &loopback::Restored,
    scan: scan::Scan,
    started: Instant,
) -> Result<ReplayReport, ReplayError> {
    let mut cmd = tokio::process::Command::new(r.etcd);
    // The replayed etcd is scratch: its result is saved as a snapshot (etcd's own checksum) and
    // restored again, and a replay that stops half-way is started over. So it need not fsync each
    // of its (one per revision) commits, which dominates the replay's time; and its quota must
    // not stop a large cluster's replay half-way. It runs Go code on one thread (GOMAXPROCS=1):
    // etcd applies one revision after another anyway, and with a single thread its requests are
    // taken in the order they arrive, which the pipeline of [`apply`] relies on to keep its guards
    // true (with two, a guard failed and a transaction was sent again for most revisions).
    cmd.args(["--unsafe-no-fsync", REPLAY_QUOTA]).args(scan.limits.args()).env("GOMAXPROCS", "1").kill_on_drop(true);
    let etcd = restored.start(cmd, r.etcd).await?;
    tracing::debug!(seconds = started.elapsed().as_secs_f64(), "private etcd ready");
    let job = Job {
        url: etcd.url().to_string(),
        base_name: r.plan.base.name.clone(),
        base_revision: r.plan.base.revision,
        segments: r.plan.segments.clone(),
        segments_dir: r.segments_dir.to_path_buf(),
        identity: r.identity.clone(),
        expected_hash: r.expected_hash,
        scan,
    };
    let result = on_own_runtime(job).await;
    tracing::debug!(seconds = started.elapsed().as_secs_f64(), "replayed in etcd");
    etcd.stop().await;
    result
}

/// `etcdutl defrag` of the stopped etcd's data directory: every bucket copied in key order into
/// a new file, which replaces the old one.
async fn compact(etcdutl: &Path, data_dir: &Path, saving_to: &Path) -> Result<(), ReplayError> {
    let failed = |message: String| ReplayError::Save { path: saving_to.into(), message };
    let out = tokio::process::Command::new(etcdutl)
        .arg("defrag")
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| failed(format!("cannot run {} defrag: {e}", etcdutl.display())))?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stderr);
        return Err(failed(format!("{} defrag failed: {}", etcdutl.display(), said.trim())));
    }
    Ok(())
}

/// What the second pass needs, owned: it runs on a thread of its own.
struct Job {
    url: String,
    base_name: String,
    base_revision: i64,
    segments: Vec<SegmentRecord>,
    segments_dir: PathBuf,
    identity: Option<Arc<Identity>>,
    expected_hash: Option<KvHash>,
    scan: scan::Scan,
}

/// Runs the second pass on a runtime of its own with one thread, so that its requests leave in
/// the order they are made (see [`apply`]).
async fn on_own_runtime(job: Job) -> Result<ReplayReport, ReplayError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new().name("etcdsnap-replay".into()).spawn(move || {
        let result = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ReplayError::Query(format!("cannot start the replay's runtime: {e}")))
            .and_then(|rt| rt.block_on(apply_and_hash(job)));
        let _ = tx.send(result);
    });
    if let Err(e) = spawned {
        return Err(ReplayError::Query(format!("cannot start the replay's thread: {e}")));
    }
    rx.await.unwrap_or_else(|_| Err(ReplayError::Query("the replay's thread ended without an answer".into())))
}

async fn apply_and_hash(job: Job) -> Result<ReplayReport, ReplayError> {
    let config = EtcdConfig {
        endpoints: vec![job.url.clone()],
        dial_timeout: Duration::from_secs(5),
        command_timeout: Duration::from_secs(60),
        ..EtcdConfig::default()
    };
    let (member, status) = config.connect_member().await.map_err(|e| ReplayError::Query(e.to_string()))?;
    if status.revision != job.base_revision {
        let (chain, expected, found) = (job.base_name.clone(), job.base_revision, status.revision);
        return Err(ReplayError::BaseRevision { chain, expected, found });
    }
    let mut client = member.into_client();
    let started = Instant::now();
    let applied = apply_all(&job, &client).await?;
    tracing::debug!(seconds = started.elapsed().as_secs_f64(), "applied");
    let revision = revision_of(&mut client).await?;
    if revision != job.scan.stop_at {
        return Err(ReplayError::Drift { revision: job.scan.stop_at, found: revision });
    }
    let resp = client.hash_kv(revision).await.map_err(query)?;
    let hash = KvHash { hash: resp.hash(), compact_revision: resp.compact_version() };
    let mut notes = Vec::new();
    let hash_compared = compare(job.expected_hash, hash, revision, &mut notes)?;
    notes.extend(proof_notes(&job.scan, applied.leases_unobserved));
    tracing::debug!(resent = applied.resent, "replay pipeline");
    Ok(ReplayReport {
        data_dir: PathBuf::new(),
        revision,
        hash,
        hash_compared,
        revisions_applied: applied.revisions,
        events_applied: applied.events,
        events_proven: applied.proven,
        leases_granted: applied.leases_granted,
        notes,
        duration: Duration::ZERO,
    })
}

/// Reads the plan's segments again and applies every revision after the base up to the target.
async fn apply_all(job: &Job, client: &Client) -> Result<apply::Applied, ReplayError> {
    let mut leases = client.lease_client();
    let base_leases: Vec<i64> = leases.leases().await.map_err(query)?.leases().iter().map(|l| l.id()).collect();
    let kv = client
        .kv_client()
        .max_decoding_message_size(ANSWER_LIMIT)
        .max_encoding_message_size(job.scan.limits.max_request_bytes);
    let known: HashSet<i64> = base_leases.iter().copied().collect();
    let keep_alive = leases::KeepAlive::start(client.lease_client(), base_leases);
    let leases =
        Leases { client: leases, known, observed: job.scan.leases.clone(), target_ms: job.scan.target_ms, keep_alive };
    let mut pipeline = Pipeline::new(kv, leases, job.base_revision);
    let mut next = job.base_revision + 1;
    for record in &job.segments {
        if next > job.scan.stop_at {
            break;
        }
        let segment = scan::read_segment(&job.segments_dir, record, job.identity.as_deref())?;
        let first = next;
        for changes in segment.revisions.into_iter().filter(|c| c.revision >= first && c.revision <= job.scan.stop_at) {
            if changes.revision != next {
                let name = format!("{}/{}", record.chain, record.segment_name());
                return Err(ReplayError::Sequence { name, revision: changes.revision, expected: next });
            }
            next += 1;
            pipeline.push(changes).await?;
        }
    }
    let applied = pipeline.finish().await?;
    if next - 1 < job.scan.stop_at {
        return Err(ReplayError::Short { reached: next - 1, stop_at: job.scan.stop_at });
    }
    Ok(applied)
}

/// What the report says of the proof: revisions applied without a previous state to compare,
/// leases granted without an observation.
fn proof_notes(scan: &scan::Scan, leases_unobserved: u64) -> Vec<String> {
    let mut notes = Vec::new();
    if scan.unchecked > 0 && scan.unchecked == scan.events {
        notes.push(
            "unproven: the segments replayed were written by an earlier etcdsnap, without the keys' previous states, so nothing shows that the replay reproduced the captured history"
                .into(),
        );
    } else if scan.unchecked > 0 {
        notes.push(format!(
            "{} of {} events were applied unchecked: etcd could not return their keys' previous states when they were captured",
            scan.unchecked, scan.events
        ));
    }
    if leases_unobserved > 0 {
        notes.push(format!(
            "{leases_unobserved} leases were granted for {REPLAY_LEASE_TTL} s: the capture did not observe their TTL"
        ));
    }
    notes
}

/// Compares the replay's HashKV with the live cluster's; whether it was compared.
fn compare(
    expected: Option<KvHash>,
    found: KvHash,
    revision: i64,
    notes: &mut Vec<String>,
) -> Result<bool, ReplayError> {
    let Some(expected) = expected else {
        notes.push("no HashKV was recorded from the live cluster: the result was hashed, not compared".into());
        return Ok(false);
    };
    if expected.compact_revision != found.compact_revision {
        notes.push(format!(
            "HashKV not compared: the live cluster's covers compact revision {}, the replay's {}",
            expected.compact_revision, found.compact_revision
        ));
        return Ok(false);
    }
    if expected.hash != found.hash {
        return Err(ReplayError::HashMismatch { revision, expected: expected.hash, found: found.hash });
    }
    Ok(true)
}

async fn revision_of(client: &mut Client) -> Result<i64, ReplayError> {
    let status = client.status().await.map_err(query)?;
    Ok(status.header().map(|h| h.revision()).unwrap_or_default())
}

fn query(e: etcd_client::Error) -> ReplayError {
    ReplayError::Query(e.to_string())
}

/// A key as an error shows it: text as is, other bytes escaped.
fn show_key(key: &[u8]) -> String {
    String::from_utf8_lossy(key).escape_debug().to_string()
}
