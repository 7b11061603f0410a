//! Restore drills: proof that a stored snapshot restores to exactly the key space it was taken
//! from, not only that its bytes are unchanged (`verify` proves that much).
//!
//! 1. One pass over the stored bytes (local or S3, decompressed on the fly) checks the sha256
//!    and etcd's trailer as `verify` does, and writes the database into a private scratch
//!    directory: etcdutl opens that copy, never the stored file.
//! 2. Hash level: `etcdutl hashkv` of the copy at the recorded revision must equal the HashKV
//!    the live member gave at save time (when recorded, and over the same compact revision).
//!    etcdutl before 3.7 cannot hash a snapshot holding leased keys ([`tools`]): with such an
//!    etcdutl the booted etcd of the next level computes the hash instead.
//! 3. Boot level (with an etcd binary): the copy restored with etcdutl, a private etcd started
//!    on it on loopback, whose revision and HashKV must match as well.
//!
//! Bounded: a free-space check before anything is written, child processes at low CPU and I/O
//! priority, a timeout per drill, and the scratch directory removed whatever happens (a drill
//! killed outright leaves one behind, which the next drill removes).

pub mod boot;
pub mod hashkv;
mod scratch;
pub mod tools;

use crate::restore::SnapshotSource;
use crate::restore::space;
use etcdsnap_api::{DrillResult, KvHash};
use etcdsnap_kube::leader::LeaderTerm;
use etcdsnap_storage::pipeline::Progress;
use etcdsnap_storage::pipeline::revision::{RevisionError, SnapshotRevision};
use etcdsnap_storage::record::SnapshotRecord;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use scratch::Scratch;

/// How drills run: built by [`tools::prepare`], which checks the tools once.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    /// Restores the boot level's copy; hashes the contents when `hash_by` says so.
    pub etcdutl: PathBuf,
    pub etcdutl_version: String,
    pub hash_by: HashBy,
    /// An etcd binary for the boot level; hash level only when None.
    pub etcd: Option<PathBuf>,
    /// Where scratch directories are made.
    pub scratch_parent: PathBuf,
    pub timeout: Duration,
    /// Opens sealed snapshots; with a verify key, only signed records are drilled.
    pub keys: etcdsnap_storage::seal::OpenKeys,
}

/// What computes the HashKV of a snapshot's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum HashBy {
    /// `etcdutl hashkv` of the copy (etcdutl 3.7 or later).
    Etcdutl,
    /// The etcd booted on the restored copy (an older etcdutl, with an etcd binary).
    BootedEtcd,
}

/// How far a drill went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Hash,
    Boot,
}

/// The result of one drill.
#[derive(Debug, Clone)]
pub struct DrillReport {
    pub record: SnapshotRecord,
    pub level: Level,
    /// Empty when the drill passed.
    pub problems: Vec<String>,
    /// Things worth knowing that are not failures.
    pub notes: Vec<String>,
    /// Why the contents were hashed but not compared with what the live member had (no HashKV
    /// recorded, a compaction in between): such a drill did not fail, and did not pass either.
    pub not_compared: Option<String>,
    /// The revision drilled at (the recorded one, else the snapshot's latest).
    pub revision: Option<i64>,
    pub recorded: Option<KvHash>,
    /// The HashKV of the snapshot's contents, computed as `hashed_by` says.
    pub computed: Option<KvHash>,
    pub hashed_by: HashBy,
    pub booted: Option<boot::Booted>,
    pub duration: Duration,
}

impl DrillReport {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }

    /// Passed, failed with the first problem found, or not compared (and why).
    pub fn verdict(&self) -> Verdict {
        match (self.problems.first(), &self.not_compared) {
            (Some(p), _) => Verdict::Failed { problem: p.clone() },
            (None, Some(why)) => Verdict::NotCompared { why: why.clone() },
            (None, None) => Verdict::Passed,
        }
    }
}

/// How a drill ended. Its text, `passed`, `not compared: <why>` or `failed: <problem>`, is the
/// `etcdsnap.io/drill` annotation's value and the result kept in the snapshot's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every check passed, the contents' HashKV equal to the live member's.
    Passed,
    /// Nothing failed, but the contents could not be compared with the live member's: the bytes,
    /// the trailer and the revision were checked and the contents hashed, no more.
    NotCompared {
        why: String,
    },
    Failed {
        problem: String,
    },
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Passed => f.write_str("passed"),
            Verdict::NotCompared { why } => write!(f, "{NOT_COMPARED}: {why}"),
            Verdict::Failed { problem } => write!(f, "failed: {problem}"),
        }
    }
}

/// How the text of a drill that was not compared begins.
pub const NOT_COMPARED: &str = "not compared";

impl serde::Serialize for Verdict {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Drills one snapshot. Never fails as a whole: whatever went wrong is a problem in the report.
pub async fn drill(source: &SnapshotSource, opts: &DrillOptions, progress: Option<Progress>) -> DrillReport {
    let started = Instant::now();
    let mut report = DrillReport {
        record: source.record.clone(),
        level: if opts.etcd.is_some() { Level::Boot } else { Level::Hash },
        problems: Vec::new(),
        notes: source.notes.clone(),
        not_compared: None,
        revision: source.record.etcd.as_ref().map(|e| e.revision).filter(|r| *r > 0),
        recorded: source.record.etcd.as_ref().and_then(|e| e.hash_kv),
        computed: None,
        hashed_by: opts.hash_by,
        booted: None,
        duration: Duration::ZERO,
    };
    if tokio::time::timeout(opts.timeout, run(source, opts, progress, &mut report)).await.is_err() {
        report.problems.push(format!("the drill did not finish within {}s", opts.timeout.as_secs()));
    }
    report.duration = started.elapsed();
    report
}

async fn run(source: &SnapshotSource, opts: &DrillOptions, progress: Option<Progress>, report: &mut DrillReport) {
    let mut source = source.clone();
    if let Err(problem) = check_seal(&mut source, &opts.keys).await {
        return report.problems.push(problem);
    }
    report.record = source.record.clone();
    let source = &source;
    let needed = needed_space(source, report.level);
    let scratch = match Scratch::create(&opts.scratch_parent, needed) {
        Ok(s) => s,
        Err(e) => return report.problems.push(e.to_string()),
    };
    let db = scratch.path().join("snapshot.db");
    match crate::restore::verify_pass(source, opts.keys.identity.clone(), Some(db.clone()), progress).await {
        Ok(check) => {
            report.problems.extend(crate::ops::check_problems(&source.record, &check));
            report.problems.extend(revision_problem(report.revision, check.revision.as_ref()));
        }
        Err(e) => report.problems.push(format!("cannot read the snapshot to its end: {e}")),
    }
    if !report.problems.is_empty() {
        return;
    }
    // etcdutl hashkv changes the file it opens: the boot level restores from it first.
    let restored = match &opts.etcd {
        Some(_) => match boot::restore(&opts.etcdutl, &db, scratch.path()).await {
            Ok(r) => Some(r),
            Err(e) => return report.problems.push(e.to_string()),
        },
        None => None,
    };
    if opts.hash_by == HashBy::Etcdutl {
        match hashkv::hash_file(&opts.etcdutl, &db, report.revision).await {
            Ok(h) => {
                report.revision = Some(h.revision);
                report.computed = Some(h.hash);
                compare(report, "the snapshot", h.hash);
            }
            Err(e) => return report.problems.push(e.to_string()),
        }
    }
    if report.recorded.is_none() {
        report.not_compared = Some(
            "no HashKV was recorded at save time; the bytes, trailer and revision were checked and the contents hashed"
                .into(),
        );
    }
    let (Some(etcd), Some(restored)) = (&opts.etcd, restored) else { return };
    match boot::boot(&restored, etcd, report.revision).await {
        Ok(booted) => {
            match report.computed {
                None => {
                    report.computed = Some(booted.hash);
                    compare(report, "the restored etcd", booted.hash);
                }
                Some(c) if c != booted.hash => report.problems.push(format!(
                    "the restored etcd hashes to {}, the snapshot file to {}",
                    booted.hash.to_annotation(),
                    c.to_annotation()
                )),
                Some(_) => {}
            }
            let recorded_keys = report.record.etcd.as_ref().and_then(|e| e.kubernetes_keys);
            if let Some(recorded) = recorded_keys.filter(|k| *k != booted.kubernetes_keys) {
                report.problems.push(format!(
                    "the restored etcd holds {} Kubernetes objects at revision {}, the live member counted {recorded}",
                    booted.kubernetes_keys,
                    report.revision.unwrap_or_default()
                ));
            }
            if let Some(r) = report.revision.filter(|r| booted.revision != *r) {
                report.problems.push(format!(
                    "the restored etcd is at revision {}, the snapshot's record says {r}: it is not the snapshot the record describes",
                    booted.revision
                ));
            }
            report.revision.get_or_insert(booted.revision);
            report.booted = Some(booted);
        }
        Err(e) => report.problems.push(e.to_string()),
    }
}

/// Before anything is written: with a verify key, the record's signature (the signed record is
/// the one drilled); a sealed snapshot needs an identity that opens it.
async fn check_seal(source: &mut SnapshotSource, keys: &etcdsnap_storage::seal::OpenKeys) -> Result<(), String> {
    if keys.verify_key.is_some() {
        let store = source.companions().map_err(|e| format!("signature: {e}"))?;
        match crate::seal::check_signature(keys, store.as_ref(), &source.record.name).await {
            Ok(Some(doc)) => source.record.apply_document(doc),
            Ok(None) => {}
            Err(e) => return Err(format!("signature: {e}")),
        }
    }
    if !source.sealed {
        return Ok(());
    }
    let recipients = source.record.sealed.as_ref().map(|s| s.recipients.join(", ")).unwrap_or_default();
    match &keys.identity {
        None => Err(format!("sealed with age to {recipients}: no --decrypt-identity to open it")),
        Some(id)
            if !recipients.is_empty() && !id.opens(&source.record.sealed.clone().unwrap_or_default().recipients) =>
        {
            Err(format!("sealed with age to {recipients}; the identity given is for {}", id.recipients().join(", ")))
        }
        Some(_) => Ok(()),
    }
}

/// Keeps a drill's result where the snapshot's other facts are: in its record in storage (so a
/// rebuilt resource keeps it, signed again when `signer` is given) and on its resource with an
/// Event. A file given by path has neither. Returns what could not be kept, for the caller to
/// report.
///
/// The record is read again right before it is rewritten, so that only the drill's result
/// changes in it (the copy listed before the drill may be minutes old). With a leader's `term`
/// (an S3 snapshot drilled by the agent), the term is checked before each write, the record's
/// write is cut off if the term ends meanwhile, and nothing is written once it ended; `kube` is
/// then the term's fenced connection.
pub async fn keep_result(
    source: &SnapshotSource,
    report: &DrillReport,
    kube: Option<&etcdsnap_kube::Kube>,
    node: &str,
    term: Option<&LeaderTerm>,
    signer: Option<&etcdsnap_storage::seal::SigningKey>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(store) = source.store() else { return problems };
    let fence = || term.map_or(Ok(()), LeaderTerm::check);
    let at = etcdsnap_storage::clock::now();
    let verdict = report.verdict().to_string();
    let name = &source.record.name;
    let current = match fence() {
        Err(lost) => return vec![format!("the drill's result is not kept: {lost}")],
        Ok(()) => store.list().await.map(|l| l.records.into_iter().find(|r| &r.name == name)),
    };
    let mut record = match current {
        Ok(Some(record)) => record,
        Ok(None) => return vec![format!("the drill's result is not kept: {name} is gone from {}", store.describe())],
        Err(e) => return vec![format!("the drill's result is not kept: {} cannot be listed: {e}", store.describe())],
    };
    record.drill = Some(DrillResult { at, result: verdict.clone() });
    if let Err(lost) = fence() {
        return vec![format!("the drill's result is not kept: {lost}")];
    }
    let signature = match signer {
        Some(key) => sign_again(store.as_ref(), &record, key).await.unwrap_or_else(|e| {
            problems.push(format!("the drill's result is not signed: {e}"));
            None
        }),
        None => None,
    };
    if let Err(lost) = fence() {
        return vec![format!("the drill's result is not kept: {lost}")];
    }
    let updated = match term {
        Some(term) => term.during(store.update_record(&record, signature.as_deref())).await,
        None => Ok(store.update_record(&record, signature.as_deref()).await),
    };
    match updated {
        Ok(Ok(())) => {}
        Ok(Err(e)) => problems.push(format!("the drill's result is not in {}: {e}", store.describe())),
        Err(lost) => return vec![format!("the drill's result is not kept: {lost}")],
    }
    if let Some(kube) = kube {
        let written = match fence() {
            Err(lost) => Err(lost.to_string()),
            Ok(()) => etcdsnap_kube::drills::record_drill(&kube.client, &record, at, &verdict, node)
                .await
                .map_err(|e| e.to_string()),
        };
        if let Err(e) = written {
            problems.push(format!("the drill's result is not on the resource: {e}"));
        }
    }
    problems
}

/// The signature of a drilled record, made only when the stored record's signature verifies
/// with this key: a record someone else wrote is never vouched for by a drill.
async fn sign_again(
    store: &dyn etcdsnap_storage::store::SnapshotStore,
    record: &etcdsnap_storage::SnapshotRecord,
    key: &etcdsnap_storage::seal::SigningKey,
) -> Result<Option<String>, String> {
    let own =
        etcdsnap_storage::seal::OpenKeys { identity: None, verify_key: Some(std::sync::Arc::new(key.verify_key())) };
    match crate::seal::check_signature(&own, store, &record.name).await {
        Ok(_) => key.sign(record.name.as_str(), &record.to_document().to_json()).map(Some).map_err(|e| e.to_string()),
        Err(e) => Err(format!("its record's signature does not verify with this node's key ({e})")),
    }
}

/// Whether the snapshot holds exactly the revision its record says (read from its pages in the
/// pass over its bytes). A later snapshot of the same etcd in an earlier one's place hashes
/// alike at the recorded revision: only its own revision tells them apart.
fn revision_problem(recorded: Option<i64>, read: Option<&Result<SnapshotRevision, RevisionError>>) -> Option<String> {
    let recorded = recorded?;
    match read? {
        Ok(found) if found.revision == recorded => None,
        Ok(found) => Some(format!(
            "the snapshot holds revision {}, its record says {recorded}: it is not the snapshot the record describes",
            found.revision
        )),
        Err(RevisionError::BeforeFloor { .. }) => Some(format!(
            "the snapshot's contents end before revision {recorded}, the revision its record says it holds"
        )),
        Err(e) => Some(format!("cannot read the revision the snapshot holds: {e}")),
    }
}

/// Compares a hash of the snapshot's contents with the one recorded from the live member.
fn compare(report: &mut DrillReport, what: &str, computed: KvHash) {
    let Some(recorded) = report.recorded else { return };
    let revision = report.revision.unwrap_or_default();
    if recorded.compact_revision != computed.compact_revision {
        report.not_compared = Some(format!(
            "etcd compacted between the snapshot and its HashKV (compact revision {} recorded, {} in the snapshot)",
            recorded.compact_revision, computed.compact_revision
        ));
    } else if recorded.hash != computed.hash {
        report.problems.push(format!(
            "HashKV mismatch at revision {revision}: the live member hashed to {}, {what} hashes to {}: its contents are not the key space it was taken from",
            recorded.hash, computed.hash
        ));
    }
}

/// Bytes the scratch directory needs: the decompressed database, and for the boot level the
/// restored data directory too (about as large again).
fn needed_space(source: &SnapshotSource, level: Level) -> u64 {
    let stored = source.recorded_size.unwrap_or(source.record.size);
    let (db, _) = space::decompressed_size(source, stored);
    match level {
        Level::Hash => db,
        Level::Boot => db.saturating_mul(2),
    }
}

/// A command for a drill's child process (etcdutl, etcd), at low CPU priority and idle I/O
/// priority through `nice` and `ionice` when the system has them (both exec the program, so
/// killing the child kills it), so a drill never competes with the live etcd.
fn low_priority_command(program: &std::path::Path) -> tokio::process::Command {
    let (nice, ionice) = (on_path("nice"), on_path("ionice"));
    let mut cmd = match (&nice, &ionice) {
        (Some(nice), Some(ionice)) => {
            let mut c = tokio::process::Command::new(nice);
            c.args(["-n", "10"]).arg(ionice).args(["-c", "3"]).arg(program);
            c
        }
        (Some(nice), None) => {
            let mut c = tokio::process::Command::new(nice);
            c.args(["-n", "10"]).arg(program);
            c
        }
        _ => tokio::process::Command::new(program),
    };
    cmd.kill_on_drop(true);
    die_with_parent(&mut cmd);
    cmd
}

/// The child gets SIGKILL when this process dies, however it dies: a drill killed outright
/// leaves no etcd running (its scratch directory is removed by the next drill).
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut tokio::process::Command) {
    // SAFETY: the closure runs in the child between fork and exec; it makes one prctl system
    // call (async-signal-safe), allocates nothing and touches no lock. The parent-death signal
    // survives the exec of nice, ionice and the program, and fires when the thread that forked
    // exits: drills spawn from the runtime's worker threads, which live as long as the process.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(program)).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(revision: i64) -> Result<SnapshotRevision, RevisionError> {
        Ok(SnapshotRevision { revision, newest_key: revision, compacted: 0 })
    }

    #[test]
    fn a_snapshot_passes_only_at_exactly_its_recorded_revision() {
        assert_eq!(revision_problem(Some(7), Some(&read(7))), None);
        let later = revision_problem(Some(7), Some(&read(9))).unwrap();
        assert!(later.contains("holds revision 9, its record says 7"), "{later}");
        let short = revision_problem(Some(7), Some(&Err(RevisionError::BeforeFloor { found: 0, floor: 7 }))).unwrap();
        assert!(short.contains("end before revision 7"), "{short}");
        let unreadable = revision_problem(Some(7), Some(&Err(RevisionError::NotBolt("x".into())))).unwrap();
        assert!(unreadable.contains("cannot read the revision"), "{unreadable}");
        // Nothing recorded, or nothing read (a record without a revision): nothing to compare.
        assert_eq!(revision_problem(None, Some(&read(9))), None);
        assert_eq!(revision_problem(Some(7), None), None);
    }
}
