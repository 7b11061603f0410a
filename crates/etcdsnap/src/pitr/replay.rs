//! Replay: a full snapshot rolled forward to a target revision or time.
//!
//! The base snapshot is restored with etcdutl into `work/data` for a one-member cluster on
//! loopback, and a private etcd is booted on it. Each segment of the plan is read and its
//! sha256 checked against its record before it is decoded. Every captured revision after the
//! base, up to the target, is applied as exactly one transaction holding all its events in
//! their order, so that etcd numbers it as it was numbered live: create and mod revisions and
//! versions come out as they were. After each transaction the member's revision must equal the
//! captured one, else the replay drifted and stops with an error. At the end HashKV at the final
//! revision is compared with the value recorded from the live cluster, when there is one, and
//! the etcd is stopped cleanly (SIGTERM, then a wait) so the data directory can be swapped in.
//!
//! A time target stops at the last revision observed at or before the time: the plan's
//! `stop_at` is a lower bound from the records; the last segment's own times give the exact one.
//!
//! Leases: a put attached to a lease the replayed etcd does not know is preceded by a grant of
//! that lease ID for [`REPLAY_LEASE_TTL`] seconds (the capture does not record TTLs; see
//! [`crate::pitr`]). Lease grants create no revision.

use crate::restore::loopback::{self, LoopbackError};
use etcd_client::{Client, LeaseGrantOptions, PutOptions, Txn, TxnOp};
use etcdsnap_api::KvHash;
use etcdsnap_storage::pitr::{EventKind, ReplayPlan, RevisionChanges, Segment, SegmentError, Target};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// TTL, in seconds, of a lease the replay grants (one first seen after the base): an hour, the
/// TTL of Kubernetes events, the most common leased keys. The lease expires that long after the
/// restored cluster starts unless its owner renews it.
pub const REPLAY_LEASE_TTL: i64 = 3600;
/// The replayed etcd's backend quota: 16 GiB, above any database etcd supports (8 GiB).
const REPLAY_QUOTA: &str = "--quota-backend-bytes=17179869184";
/// The largest decompressed segment accepted (segments are flushed at 8 MiB by default).
const SEGMENT_LIMIT: usize = 256 * 1024 * 1024;

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
    pub etcd: &'a Path,
    /// A private, empty directory: the data directory is made in it.
    pub work: &'a Path,
    /// HashKV recorded from the live cluster at the target revision.
    pub expected_hash: Option<KvHash>,
    /// Where to write a snapshot of the result, taken from the replay's etcd before it stops
    /// (a restore installs the result from it with the operator's member settings).
    pub save_to: Option<&'a Path>,
    /// Opens sealed segments.
    pub identity: Option<&'a etcdsnap_storage::seal::Identity>,
}

/// What a replay produced.
#[derive(Debug, Clone)]
pub struct ReplayReport {
    /// The restored data directory, rolled forward and no longer in use.
    pub data_dir: PathBuf,
    pub revision: i64,
    pub hash: KvHash,
    pub revisions_applied: u64,
    pub events_applied: u64,
    pub leases_granted: u64,
    /// Things worth knowing that are not failures (HashKV not compared).
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
    #[error("cannot grant lease {lease:x} for revision {revision}: {message}")]
    Lease { revision: i64, lease: i64, message: String },
    #[error("the captured changes end at revision {reached}, before the target {stop_at}")]
    Short { reached: i64, stop_at: i64 },
    #[error("the replay's etcd failed: {0}")]
    Query(String),
    #[error("HashKV mismatch at revision {revision}: the live cluster hashed to {expected}, the replay to {found}")]
    HashMismatch { revision: i64, expected: u32, found: u32 },
    #[error("cannot save the replayed etcd to {}: {message}", path.display())]
    Save { path: PathBuf, message: String },
}

/// Restores the base, applies the plan's revisions up to the target and checks the result.
pub async fn replay(r: &Replay<'_>) -> Result<ReplayReport, ReplayError> {
    let started = Instant::now();
    let restored = loopback::restore("pitr", r.etcdutl, r.base_snapshot, r.work).await?;
    let mut cmd = tokio::process::Command::new(r.etcd);
    // The replayed etcd is scratch: its result is saved as a snapshot (etcd's own checksum) and
    // restored again, and a replay that stops half-way is started over. So it need not fsync each
    // of its (one per revision) commits, which dominates the replay's time; and its quota must
    // not stop a large cluster's replay half-way.
    cmd.args(["--unsafe-no-fsync", REPLAY_QUOTA]).kill_on_drop(true);
    let mut etcd = restored.start(cmd, r.etcd).await?;
    let mut result = match Client::connect([etcd.url()], None).await {
        Ok(mut client) => apply_and_hash(r, &mut client).await,
        Err(e) => Err(query(e)),
    };
    if let (Ok(_), Some(path)) = (&result, r.save_to)
        && let Err(e) = save_snapshot(&mut etcd.member, path).await
    {
        result = Err(e);
    }
    etcd.stop().await;
    let mut report = result?;
    report.data_dir = restored.data_dir().to_path_buf();
    report.duration = started.elapsed();
    tracing::info!(
        revision = report.revision,
        revisions = report.revisions_applied,
        seconds = report.duration.as_secs_f64(),
        "point-in-time replay done"
    );
    Ok(report)
}

async fn apply_and_hash(r: &Replay<'_>, client: &mut Client) -> Result<ReplayReport, ReplayError> {
    let base = &r.plan.base;
    let found = revision_of(client).await?;
    if found != base.revision {
        return Err(ReplayError::BaseRevision { chain: base.name.clone(), expected: base.revision, found });
    }
    let mut applier = Applier { client, known_leases: HashSet::new(), revision: base.revision, report: empty_report() };
    let mut stop_at = r.plan.stop_at;
    for (i, record) in r.plan.segments.iter().enumerate() {
        if applier.revision >= stop_at && !matches!(r.target, Target::Time(_)) {
            break;
        }
        let name = format!("{}/{}", record.chain, record.segment_name());
        let segment = read_segment(r.segments_dir, &name, &record.sha256, r.identity)?;
        if let (Target::Time(ms), true) = (r.target, i + 1 == r.plan.segments.len()) {
            stop_at = segment.last_revision_observed_by(ms).unwrap_or(stop_at).max(stop_at);
        }
        applier.segment(&name, &segment, stop_at).await?;
    }
    if applier.revision < stop_at {
        return Err(ReplayError::Short { reached: applier.revision, stop_at });
    }
    let revision = applier.revision;
    let resp = applier.client.hash_kv(revision).await.map_err(query)?;
    let hash = KvHash { hash: resp.hash(), compact_revision: resp.compact_version() };
    let mut report = applier.report;
    (report.revision, report.hash) = (revision, hash);
    compare(r.expected_hash, hash, revision, &mut report.notes)?;
    Ok(report)
}

/// Streams a snapshot of the replayed etcd into `path` (a new 0600 file), fsynced. etcd's sha256
/// trailer comes with it; etcdutl checks it when the file is restored.
async fn save_snapshot(member: &mut etcdsnap_storage::etcd::EtcdMember, path: &Path) -> Result<(), ReplayError> {
    use tokio::io::AsyncWriteExt as _;
    let failed = |message: String| ReplayError::Save { path: path.into(), message };
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let mut stream = member.snapshot().await.map_err(|e| failed(e.to_string()))?;
    while let Some(chunk) = stream.next_chunk().await.map_err(|e| failed(e.to_string()))? {
        file.write_all(&chunk).await.map_err(|e| failed(e.to_string()))?;
    }
    file.sync_all().await.map_err(|e| failed(e.to_string()))
}

fn compare(expected: Option<KvHash>, found: KvHash, revision: i64, notes: &mut Vec<String>) -> Result<(), ReplayError> {
    let Some(expected) = expected else {
        notes.push("no HashKV was recorded from the live cluster: the result was hashed, not compared".into());
        return Ok(());
    };
    if expected.compact_revision != found.compact_revision {
        notes.push(format!(
            "HashKV not compared: the live cluster's covers compact revision {}, the replay's {}",
            expected.compact_revision, found.compact_revision
        ));
        return Ok(());
    }
    if expected.hash != found.hash {
        return Err(ReplayError::HashMismatch { revision, expected: expected.hash, found: found.hash });
    }
    Ok(())
}

fn empty_report() -> ReplayReport {
    ReplayReport {
        data_dir: PathBuf::new(),
        revision: 0,
        hash: KvHash { hash: 0, compact_revision: 0 },
        revisions_applied: 0,
        events_applied: 0,
        leases_granted: 0,
        notes: Vec::new(),
        duration: Duration::ZERO,
    }
}

/// Reads `segments_dir/name`, checks it against the record's sha256 (of the stored bytes: no key
/// needed), then opens it when sealed and decodes it.
fn read_segment(
    segments_dir: &Path,
    name: &str,
    sha256: &str,
    identity: Option<&etcdsnap_storage::seal::Identity>,
) -> Result<Segment, ReplayError> {
    let stored =
        std::fs::read(segments_dir.join(name)).map_err(|source| ReplayError::Read { name: name.into(), source })?;
    let found = hex::encode(Sha256::digest(&stored));
    if !found.eq_ignore_ascii_case(sha256) {
        return Err(ReplayError::Checksum { name: name.into(), expected: sha256.into(), found });
    }
    Ok(Segment::from_stored(name, &stored, SEGMENT_LIMIT, identity)?)
}

struct Applier<'a> {
    client: &'a mut Client,
    known_leases: HashSet<i64>,
    /// The revision the replayed etcd is at.
    revision: i64,
    report: ReplayReport,
}

impl Applier<'_> {
    /// Applies the revisions of `segment` after the current one, up to `stop_at`.
    async fn segment(&mut self, name: &str, segment: &Segment, stop_at: i64) -> Result<(), ReplayError> {
        for changes in &segment.revisions {
            if changes.revision <= self.revision {
                continue;
            }
            if changes.revision > stop_at {
                break;
            }
            if changes.revision != self.revision + 1 {
                let expected = self.revision + 1;
                return Err(ReplayError::Sequence { name: name.into(), revision: changes.revision, expected });
            }
            self.apply(changes).await?;
        }
        Ok(())
    }

    /// Applies one captured revision as one transaction and checks the etcd's revision after it.
    async fn apply(&mut self, changes: &RevisionChanges) -> Result<(), ReplayError> {
        let revision = changes.revision;
        let mut ops = Vec::with_capacity(changes.events.len());
        for e in &changes.events {
            ops.push(match e.kind {
                EventKind::Delete => TxnOp::delete(e.key.clone(), None),
                EventKind::Put if e.lease == 0 => TxnOp::put(e.key.clone(), e.value.clone(), None),
                EventKind::Put => {
                    self.ensure_lease(e.lease, revision).await?;
                    TxnOp::put(e.key.clone(), e.value.clone(), Some(PutOptions::new().with_lease(e.lease)))
                }
            });
        }
        let resp = self
            .client
            .txn(Txn::new().and_then(ops))
            .await
            .map_err(|e| ReplayError::Apply { revision, message: e.to_string() })?;
        let found = resp.header().map(|h| h.revision()).unwrap_or_default();
        if found != revision {
            return Err(ReplayError::Drift { revision, found });
        }
        self.revision = revision;
        self.report.revisions_applied += 1;
        self.report.events_applied += changes.events.len() as u64;
        Ok(())
    }

    /// Grants `lease` for [`REPLAY_LEASE_TTL`] unless the etcd has it (from the base snapshot or
    /// an earlier grant).
    async fn ensure_lease(&mut self, lease: i64, revision: i64) -> Result<(), ReplayError> {
        if self.known_leases.contains(&lease) {
            return Ok(());
        }
        let failed = |e: etcd_client::Error| ReplayError::Lease { revision, lease, message: e.to_string() };
        let ttl = self.client.lease_time_to_live(lease, None).await.map_err(failed)?;
        if ttl.ttl() < 0 {
            let opts = LeaseGrantOptions::new().with_id(lease);
            self.client.lease_grant(REPLAY_LEASE_TTL, Some(opts)).await.map_err(failed)?;
            self.report.leases_granted += 1;
        }
        self.known_leases.insert(lease);
        Ok(())
    }
}

async fn revision_of(client: &mut Client) -> Result<i64, ReplayError> {
    let status = client.status().await.map_err(query)?;
    Ok(status.header().map(|h| h.revision()).unwrap_or_default())
}

fn query(e: etcd_client::Error) -> ReplayError {
    ReplayError::Query(e.to_string())
}
