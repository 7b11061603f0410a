//! Point-in-time recovery end to end against a real etcd 3.7: a full snapshot, the capture of
//! a seeded random workload as delta segments, and replays to chosen revisions and times whose
//! HashKV equals the live member's there (HashKV covers every key's create and mod revision,
//! version and lease, so equal hashes prove the replay exact). Then the refusals: a damaged
//! segment, and a capture whose starting revision was compacted.

use crate::common::restore::{hash_kv, revision};
use crate::common::snapshot_files::{etcdctl_snapshot, mode};
use crate::common::{TestResult, files_in};
use etcd_client::{Client, LeaseGrantOptions, PutOptions, Txn, TxnOp};
use etcdsnap::pitr::capture::{CaptureError, CaptureReport, CaptureSettings, capture};
use etcdsnap::pitr::replay::{Replay, ReplayError, ReplayReport, replay};
use etcdsnap_api::KvHash;
use etcdsnap_storage::pitr::{Base, SegmentRecord, Target, plan};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use testenv::Etcd;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const CHAIN: &str = "etcd-snapshot-node-a-1700000000";

fn now_ms() -> i64 {
    etcdsnap_storage::clock::now().as_millisecond()
}

/// A deterministic PRNG (xorshift64*): the same seed makes the same workload.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A random workload: puts of new and existing keys, deletes, multi-op transactions and
/// leased keys (one lease from before the base snapshot, one granted after it, one revoked
/// with its keys, a single revision of several deletes).
struct Workload {
    rng: Rng,
    keys: Vec<String>,
    next_key: usize,
    leases: Vec<i64>,
}

impl Workload {
    fn new(seed: u64, leases: Vec<i64>) -> Workload {
        Workload { rng: Rng(seed), keys: Vec::new(), next_key: 0, leases }
    }

    fn new_key(&mut self) -> String {
        self.next_key += 1;
        format!("/registry/things/ns-{}/item-{:05}", self.next_key % 7, self.next_key)
    }

    fn value(&mut self) -> Vec<u8> {
        let len = 1 + self.rng.below(200);
        (0..len).map(|_| (self.rng.next() & 0xff) as u8).collect()
    }

    /// One operation, which makes exactly one revision.
    async fn step(&mut self, client: &mut Client) {
        let roll = self.rng.below(100);
        if self.keys.len() < 5 || roll < 35 {
            let key = self.new_key();
            let value = self.value();
            client.put(key.clone(), value, None).await.unwrap();
            self.keys.push(key);
        } else if roll < 60 {
            let key = self.keys[self.rng.below(self.keys.len())].clone();
            let value = self.value();
            client.put(key, value, None).await.unwrap();
        } else if roll < 75 {
            let key = self.keys.swap_remove(self.rng.below(self.keys.len()));
            client.delete(key, None).await.unwrap();
        } else if roll < 92 {
            self.txn(client).await;
        } else {
            let lease = self.leases[self.rng.below(self.leases.len())];
            let key = self.new_key();
            let value = self.value();
            client.put(key.clone(), value, Some(PutOptions::new().with_lease(lease))).await.unwrap();
            self.keys.push(key);
        }
    }

    /// 2 to 4 operations on distinct keys in one transaction.
    async fn txn(&mut self, client: &mut Client) {
        let mut ops = Vec::new();
        let mut used = std::collections::HashSet::new();
        for _ in 0..2 + self.rng.below(3) {
            match self.rng.below(3) {
                0 => {
                    let key = self.new_key();
                    ops.push(TxnOp::put(key.clone(), self.value(), None));
                    self.keys.push(key.clone());
                    used.insert(key);
                }
                1 => {
                    let key = self.keys[self.rng.below(self.keys.len())].clone();
                    if used.insert(key.clone()) {
                        ops.push(TxnOp::put(key, self.value(), None));
                    }
                }
                _ => {
                    let i = self.rng.below(self.keys.len());
                    if used.insert(self.keys[i].clone()) {
                        ops.push(TxnOp::delete(self.keys.swap_remove(i), None));
                    }
                }
            }
        }
        client.txn(Txn::new().and_then(ops)).await.unwrap();
    }

    /// Runs until the member is at revision `until`; returns the revision reached.
    async fn run_until(&mut self, client: &mut Client, until: i64) -> i64 {
        let mut rev = revision(client).await;
        while rev < until {
            self.step(client).await;
            rev = revision(client).await;
        }
        rev
    }
}

/// A member with some data and a leased key, its snapshot file and the base it is.
async fn base_snapshot(dir: &Path) -> (Etcd, Client, PathBuf, Base, i64) {
    let etcd = Etcd::single_version("3.7").await.unwrap();
    let mut client = etcd.client().await.unwrap();
    let old_lease = client.lease_grant(7200, Some(LeaseGrantOptions::new().with_id(0x1111))).await.unwrap().id();
    for i in 0..50 {
        client.put(format!("/registry/base/{i:03}"), format!("v{i}"), None).await.unwrap();
    }
    client.put("/registry/base/leased", "x", Some(PutOptions::new().with_lease(old_lease))).await.unwrap();
    let r0 = revision(&mut client).await;
    let snapshot = dir.join("base.db");
    etcdctl_snapshot(&etcd, &snapshot).await.unwrap();
    assert_eq!(revision(&mut client).await, r0, "nothing wrote during the snapshot");
    let base = Base { name: CHAIN.into(), revision: r0, taken_ms: now_ms() };
    (etcd, client, snapshot, base, old_lease)
}

fn start_capture(
    client: Client,
    base: &Base,
    out: &Path,
    flush_interval: Duration,
) -> (CancellationToken, JoinHandle<Result<CaptureReport, CaptureError>>) {
    let stop = CancellationToken::new();
    let (base, out, token) = (base.clone(), out.to_path_buf(), stop.clone());
    let settings = CaptureSettings { flush_interval, ..CaptureSettings::default() };
    let task = tokio::spawn(async move {
        let mut client = client;
        capture(&mut client, &base, &out, settings, token).await
    });
    (stop, task)
}

/// The records written in `out/<chain>/`, read back from disk.
fn records(out: &Path) -> Vec<SegmentRecord> {
    let dir = out.join(CHAIN);
    let mut names: Vec<String> = files_in(&dir).into_iter().filter(|n| n.ends_with(".json")).collect();
    names.sort();
    names.iter().map(|n| SegmentRecord::parse(n, &std::fs::read(dir.join(n)).unwrap()).unwrap()).collect()
}

/// Waits until records reach revision `rev`.
async fn wait_captured(out: &Path, rev: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while records(out).iter().map(|r| r.last_revision).max().unwrap_or(0) < rev {
        assert!(Instant::now() < deadline, "the capture did not reach revision {rev}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn replay_to(
    base: &Base,
    out: &Path,
    snapshot: &Path,
    target: Target,
    expected: Option<KvHash>,
) -> Result<ReplayReport, ReplayError> {
    let plan = plan(std::slice::from_ref(base), &records(out), target).unwrap();
    let work = tempfile::tempdir().unwrap();
    let (etcdutl, etcd) =
        (testenv::testbin_version("etcdutl", "3.7").unwrap(), testenv::testbin_version("etcd", "3.7").unwrap());
    let r = Replay {
        plan: &plan,
        target,
        segments_dir: out,
        base_snapshot: snapshot,
        etcdutl: &etcdutl,
        etcd: &etcd,
        work: work.path(),
        expected_hash: expected,
        save_to: None,
        identity: None,
    };
    let report = replay(&r).await?;
    assert!(report.data_dir.join("member").is_dir(), "{}", report.data_dir.display());
    Ok(report)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_reaches_chosen_revisions_exactly() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (etcd, mut client, snapshot, base, old_lease) = base_snapshot(dir.path()).await;
    let out = dir.path().join("deltas");
    let (stop, task) = start_capture(etcd.client().await?, &base, &out, Duration::from_millis(500));

    let new_lease = client.lease_grant(7200, Some(LeaseGrantOptions::new().with_id(0x2222))).await?.id();
    let doomed = client.lease_grant(7200, None).await?.id();
    let mut work = Workload::new(0x5eed_1234_abcd_0001, vec![old_lease, new_lease, doomed]);
    let started = Instant::now();
    work.run_until(&mut client, base.revision + 1000).await;
    client.lease_revoke(doomed).await?; // one revision deleting every key of the lease
    work.leases.retain(|l| *l != doomed);
    let end = work.run_until(&mut client, base.revision + 2000).await;
    let workload_time = started.elapsed();
    let (r1, r2) = (base.revision + 777, end - 3);
    let (h1, h2) = (hash_kv(&mut client, r1).await, hash_kv(&mut client, r2).await);

    wait_captured(&out, end).await;
    stop.cancel();
    let report = task.await??;
    assert_eq!(report.last_revision, end);
    assert!(report.segments.len() > 1, "flushes every 500 ms make several segments");
    assert!(report.segments.iter().all(|s| s.chain_broken.is_none()));
    let chain_dir = out.join(CHAIN);
    assert_eq!(mode(&chain_dir), 0o700);
    for name in files_in(&chain_dir) {
        assert!(!name.ends_with(".part"), "a temporary file was left: {name}");
        assert_eq!(mode(&chain_dir.join(&name)), 0o600, "{name}");
    }

    for (target, hash) in [(r1, h1), (r2, h2)] {
        let started = Instant::now();
        let replayed = replay_to(&base, &out, &snapshot, Target::Revision(target), Some(hash)).await?;
        assert_eq!(replayed.revision, target);
        assert_eq!(replayed.hash, hash, "HashKV at revision {target}");
        assert_eq!(replayed.revisions_applied, (target - base.revision) as u64);
        assert!(replayed.notes.is_empty(), "{:?}", replayed.notes);
        assert!(replayed.leases_granted >= 1, "the leases granted after the base are granted by the replay");
        eprintln!(
            "replayed {} revisions ({} events) to {target} in {:.2}s (workload of {} revisions took {:.2}s)",
            replayed.revisions_applied,
            replayed.events_applied,
            started.elapsed().as_secs_f64(),
            end - base.revision,
            workload_time.as_secs_f64()
        );
    }
    // A wrong expectation is refused, naming the revision.
    let wrong = KvHash { hash: h1.hash ^ 1, ..h1 };
    let err = replay_to(&base, &out, &snapshot, Target::Revision(r1), Some(wrong)).await.unwrap_err();
    assert!(matches!(err, ReplayError::HashMismatch { revision, .. } if revision == r1), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_time_target_lands_on_the_last_revision_observed_by_then() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (etcd, mut client, snapshot, base, old_lease) = base_snapshot(dir.path()).await;
    let out = dir.path().join("deltas");
    // A long interval: both bursts land in one segment, so the segment's own times decide.
    let (stop, task) = start_capture(etcd.client().await?, &base, &out, Duration::from_secs(30));
    let mut work = Workload::new(0x7177_0002, vec![old_lease]);
    let first = work.run_until(&mut client, base.revision + 100).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let at = now_ms();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let end = work.run_until(&mut client, first + 100).await;
    let hash = hash_kv(&mut client, first).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let report = task.await??;
    assert_eq!((report.last_revision, report.segments.len()), (end, 1));

    let replayed = replay_to(&base, &out, &snapshot, Target::Time(at), Some(hash)).await?;
    assert_eq!(replayed.revision, first, "the last revision observed by the time");
    assert_eq!(replayed.hash, hash);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_segment_is_refused_and_a_compacted_start_breaks_the_chain() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (etcd, mut client, snapshot, base, old_lease) = base_snapshot(dir.path()).await;
    let out = dir.path().join("deltas");
    let (stop, task) = start_capture(etcd.client().await?, &base, &out, Duration::from_millis(200));
    let end = Workload::new(3, vec![old_lease]).run_until(&mut client, base.revision + 50).await;
    wait_captured(&out, end).await;
    stop.cancel();
    task.await??;

    let first = records(&out).remove(0);
    let path = out.join(CHAIN).join(first.segment_name());
    let mut bytes = std::fs::read(&path)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&path, bytes)?;
    let err = replay_to(&base, &out, &snapshot, Target::Revision(end), None).await.unwrap_err();
    assert!(matches!(err, ReplayError::Checksum { .. }), "{err}");
    assert!(err.to_string().contains(&first.segment_name()), "{err}");

    // Compacted past the base: the watch from base + 1 is cancelled, the chain is broken.
    client.compact(base.revision + 10, None).await?;
    let out2 = dir.path().join("deltas-2");
    let (_stop, task) = start_capture(etcd.client().await?, &base, &out2, Duration::from_millis(200));
    let err = tokio::time::timeout(Duration::from_secs(30), task).await??.unwrap_err();
    match &err {
        CaptureError::Broken { last_revision, reason, .. } => {
            assert_eq!(*last_revision, base.revision, "{err}");
            assert!(reason.contains("compact"), "{err}");
        }
        other => panic!("expected a broken chain, got {other}"),
    }
    assert!(records(&out2).is_empty(), "nothing was captured, so no segment claims to continue the chain");
    Ok(())
}
