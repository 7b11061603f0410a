//! The direct replay engine: `etcdsnap-replay`, a small Go program built from etcd's own
//! storage packages (mvcc, backend, lease of the pinned etcd release), rolls the restored
//! base's database file forward itself. No etcd runs: no raft, no gRPC, no WAL.
//!
//! The captured revisions go to its stdin as frames (a little-endian u32 length, then a type
//! byte and the frame's fields; its source, `testbins/etcd-replay/main.go`, documents them):
//! a lease grant before the first put attached to a lease the replay has not asked for yet
//! (the helper grants it unless the database holds it, for the time it had left at the target,
//! see [`super::leases`]), then one frame per revision with every event in order, and an end
//! frame naming the target. The helper applies each revision as one mvcc write transaction and
//! proves it as it goes: the store was at the revision before; each key, just before its event,
//! was in the state the capture recorded; each put left its key with exactly the captured
//! create and mod revision, version and lease, and each delete removed exactly its key. At the
//! end it hashes the key space at the target with etcd's own HashKV code and closes the
//! database. Its answers are JSON lines on stdout (a few per replay, never one per revision),
//! mapped here to [`ReplayError`]s naming the revision; its stderr goes to `replay.log` in the
//! working directory.
//!
//! The helper's lessor never becomes primary, so no lease runs out during the replay: the
//! renewals the private-etcd engine needs are not needed here.

use super::leases::ttl_at_target;
use super::scan::{self, Scan};
use super::{ReplayError, show_key};
use etcdsnap_api::KvHash;
use etcdsnap_storage::pitr::{EventKind, PrevState, RevisionChanges, SegmentRecord};
use etcdsnap_storage::seal::Identity;
use std::collections::HashSet;
use std::io::{BufRead as _, BufReader, BufWriter, Read as _, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

/// The helper's file name.
pub const HELPER: &str = "etcdsnap-replay";
/// How much of the helper's log an error quotes.
const LOG_TAIL: usize = 2000;

/// What the direct engine needs, owned: it runs on a blocking thread.
pub(super) struct DirectJob {
    pub helper: PathBuf,
    /// The restored base's data directory.
    pub data_dir: PathBuf,
    pub base_name: String,
    pub base_revision: i64,
    pub segments: Vec<SegmentRecord>,
    pub segments_dir: PathBuf,
    pub identity: Option<Arc<Identity>>,
    pub scan: Scan,
    /// The helper's stderr.
    pub log: PathBuf,
}

/// What the helper reported.
#[derive(Debug, Clone)]
pub(super) struct Outcome {
    pub revision: i64,
    pub hash: KvHash,
    pub revisions: u64,
    pub events: u64,
    pub proven: u64,
    pub leases_granted: u64,
    pub leases_unobserved: u64,
}

/// One line of the helper's output.
#[derive(Debug, serde::Deserialize)]
struct Message {
    kind: String,
    #[serde(default)]
    error: String,
    #[serde(default)]
    revision: i64,
    #[serde(default)]
    key: String,
    #[serde(default)]
    expected: String,
    #[serde(default)]
    found: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    hash: u32,
    #[serde(default)]
    compact_revision: i64,
    #[serde(default)]
    revisions: u64,
    #[serde(default)]
    events: u64,
    #[serde(default)]
    proven: u64,
    #[serde(default)]
    leases_granted: u64,
    #[serde(default)]
    leases_unobserved: u64,
}

/// Runs the helper over the job's revisions, up to the target.
pub(super) fn run(job: &DirectJob) -> Result<Outcome, ReplayError> {
    let helper = job.helper.display().to_string();
    let db = job.data_dir.join("member").join("snap").join("db");
    let log = std::fs::File::create(&job.log)
        .map_err(|e| ReplayError::Query(format!("cannot create {}: {e}", job.log.display())))?;
    let mut child = Command::new(&job.helper)
        .arg("--db")
        .arg(&db)
        .arg("--base-revision")
        .arg(job.base_revision.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| ReplayError::Query(format!("cannot start {helper}: {e}")))?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        let _ = child.kill();
        return Err(ReplayError::Query(format!("{helper} has no pipes")));
    };
    // Read on a thread of its own, so that neither side ever waits on a full pipe.
    let reader = std::thread::spawn(move || BufReader::new(stdout).lines().map_while(Result::ok).collect::<Vec<_>>());
    let sent = send(job, BufWriter::with_capacity(1 << 20, stdin));
    if let Err(Sent::Replay(e)) = sent {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    let status = child.wait().map_err(|e| ReplayError::Query(format!("{helper}: {e}")))?;
    let lines = reader.join().unwrap_or_default();
    let last = lines.iter().rev().find_map(|l| serde_json::from_str::<Message>(l).ok());
    match last {
        Some(m) if m.kind == "done" && status.success() => Ok(Outcome {
            revision: m.revision,
            hash: KvHash { hash: m.hash, compact_revision: m.compact_revision },
            revisions: m.revisions,
            events: m.events,
            proven: m.proven,
            leases_granted: m.leases_granted,
            leases_unobserved: m.leases_unobserved,
        }),
        Some(m) if m.kind == "error" => Err(typed(job, m)),
        _ => {
            let wrote = match sent {
                Err(Sent::Pipe(e)) => format!(" (writing to it failed: {e})"),
                _ => String::new(),
            };
            Err(ReplayError::Query(format!("{helper} failed ({status}){wrote}: {}", log_tail(&job.log))))
        }
    }
}

/// Why sending stopped: the replay's own error (a segment), or the helper's pipe closed (it
/// stopped, and says why on stdout).
enum Sent {
    Replay(ReplayError),
    Pipe(std::io::Error),
}

impl From<ReplayError> for Sent {
    fn from(e: ReplayError) -> Sent {
        Sent::Replay(e)
    }
}

impl From<std::io::Error> for Sent {
    fn from(e: std::io::Error) -> Sent {
        Sent::Pipe(e)
    }
}

/// Reads the plan's segments again and sends every revision after the base up to the target.
fn send<W: Write>(job: &DirectJob, mut out: W) -> Result<(), Sent> {
    let stop_at = job.scan.stop_at;
    let mut asked: HashSet<i64> = HashSet::new();
    let mut frame = Vec::with_capacity(1 << 16);
    let mut next = job.base_revision + 1;
    for record in &job.segments {
        if next > stop_at {
            break;
        }
        let segment = scan::read_segment(&job.segments_dir, record, job.identity.as_deref())?;
        let first = next;
        for changes in segment.revisions.iter().filter(|c| c.revision >= first && c.revision <= stop_at) {
            if changes.revision != next {
                let name = format!("{}/{}", record.chain, record.segment_name());
                return Err(ReplayError::Sequence { name, revision: changes.revision, expected: next }.into());
            }
            next += 1;
            for lease in changes.events.iter().filter(|e| e.kind == EventKind::Put && e.lease != 0).map(|e| e.lease) {
                if asked.insert(lease) {
                    let observed = job.scan.leases.get(&lease);
                    frame.clear();
                    grant_frame(&mut frame, lease, ttl_at_target(observed, job.scan.target_ms), observed.is_some());
                    write_frame(&mut out, &frame)?;
                }
            }
            frame.clear();
            revision_frame(&mut frame, changes);
            write_frame(&mut out, &frame)?;
        }
    }
    if next - 1 < stop_at {
        return Err(ReplayError::Short { reached: next - 1, stop_at }.into());
    }
    frame.clear();
    frame.push(b'E');
    frame.extend_from_slice(&stop_at.to_le_bytes());
    write_frame(&mut out, &frame)?;
    out.flush()?;
    Ok(())
}

fn write_frame<W: Write>(out: &mut W, frame: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(frame.len()).map_err(|_| std::io::Error::other("a revision of more than 4 GiB"))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(frame)
}

fn grant_frame(frame: &mut Vec<u8>, lease: i64, ttl: i64, observed: bool) {
    frame.push(b'G');
    frame.extend_from_slice(&lease.to_le_bytes());
    frame.extend_from_slice(&ttl.to_le_bytes());
    frame.push(u8::from(observed));
}

/// One revision: its number, its events' count, then each event (see the module's comment).
fn revision_frame(frame: &mut Vec<u8>, changes: &RevisionChanges) {
    frame.push(b'R');
    frame.extend_from_slice(&changes.revision.to_le_bytes());
    frame.extend_from_slice(&(changes.events.len() as u32).to_le_bytes());
    for e in &changes.events {
        frame.push(match e.kind {
            EventKind::Put => 0,
            EventKind::Delete => 1,
        });
        for bytes in [&e.key, &e.value] {
            frame.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            frame.extend_from_slice(bytes);
        }
        for n in [e.create_revision, e.mod_revision, e.version, e.lease] {
            frame.extend_from_slice(&n.to_le_bytes());
        }
        match e.prev {
            PrevState::NotCaptured => frame.push(0),
            PrevState::Absent => frame.push(1),
            PrevState::Present(d) => {
                frame.push(2);
                frame.extend_from_slice(&d.0);
            }
        }
    }
}

/// The helper's error line as the replay's error.
fn typed(job: &DirectJob, m: Message) -> ReplayError {
    let key = || hex::decode(&m.key).map(|k| show_key(&k)).unwrap_or_else(|_| m.key.clone());
    let found: i64 = m.found.parse().unwrap_or_default();
    match m.error.as_str() {
        "base" => ReplayError::BaseRevision { chain: job.base_name.clone(), expected: job.base_revision, found },
        "diverged" => ReplayError::Diverged { revision: m.revision, key: key(), expected: m.expected, found: m.found },
        "result" => {
            let detail = match m.message.is_empty() {
                true => format!("the capture recorded it {}, the replay made it {}", m.expected, m.found),
                false => m.message,
            };
            ReplayError::Produced { revision: m.revision, key: key(), detail }
        }
        "drift" => ReplayError::Drift { revision: m.revision, found },
        "lease" => ReplayError::Lease {
            revision: m.revision,
            lease: i64::from_str_radix(&m.found, 16).unwrap_or_default(),
            message: m.message,
        },
        other => ReplayError::Apply { revision: m.revision, message: format!("{} ({other})", m.message) },
    }
}

/// The end of the helper's log, for an error.
fn log_tail(log: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(log) {
        let _ = f.read_to_string(&mut text);
    }
    let start = text.len().saturating_sub(LOG_TAIL);
    let start = (start..text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
    let tail = text[start..].trim();
    if tail.is_empty() { "it said nothing".into() } else { tail.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdsnap_storage::pitr::{PitrEvent, PrevDigest};

    #[test]
    fn a_revision_frame_holds_every_field_in_order() {
        let put = PitrEvent {
            kind: EventKind::Put,
            key: b"k".to_vec(),
            value: b"vv".to_vec(),
            create_revision: 3,
            mod_revision: 9,
            version: 2,
            lease: 0x22,
            prev: PrevState::Present(PrevDigest([7; 8])),
        };
        let delete = PitrEvent {
            kind: EventKind::Delete,
            key: b"d".to_vec(),
            value: Vec::new(),
            prev: PrevState::Absent,
            ..put.clone()
        };
        let mut frame = Vec::new();
        revision_frame(&mut frame, &RevisionChanges { revision: 9, observed_ms: 1, events: vec![put, delete] });
        let mut expected = vec![b'R'];
        expected.extend(9i64.to_le_bytes());
        expected.extend(2u32.to_le_bytes());
        expected.push(0);
        expected.extend(1u32.to_le_bytes());
        expected.push(b'k');
        expected.extend(2u32.to_le_bytes());
        expected.extend(b"vv");
        for n in [3i64, 9, 2, 0x22] {
            expected.extend(n.to_le_bytes());
        }
        expected.push(2);
        expected.extend([7; 8]);
        expected.push(1);
        expected.extend(1u32.to_le_bytes());
        expected.push(b'd');
        expected.extend(0u32.to_le_bytes());
        for n in [3i64, 9, 2, 0x22] {
            expected.extend(n.to_le_bytes());
        }
        expected.push(1);
        assert_eq!(frame, expected);
        let mut out = Vec::new();
        write_frame(&mut out, &frame).unwrap();
        assert_eq!(out[..4], (expected.len() as u32).to_le_bytes());
    }
}
