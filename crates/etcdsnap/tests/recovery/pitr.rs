//! Point-in-time recovery end to end against a real etcd 3.7: a full snapshot taken while a
//! writer puts every 2 ms, the capture of a seeded random workload as delta segments (with the
//! revisions a real control plane makes: a range delete of 300 keys, a lease expiry deleting
//! 200, a 1.2 MB value), and replays to chosen revisions and times that equal the live member's
//! key space there, key by key, and its HashKV. Leases: one granted after the base comes back
//! with the time it had left at the target, and a 2-second lease of the base outlives the
//! replay. Then the refusals: a damaged segment, and a capture whose starting revision was
//! compacted.

use crate::common::keyspace::assert_same_key_space;
use crate::common::restore::{hash_kv, revision, serve_snapshot};
use crate::common::snapshot_files::{etcdctl_snapshot, mode};
use crate::common::{TestResult, files_in};
use etcd_client::{Client, DeleteOptions, LeaseGrantOptions, PutOptions, Txn, TxnOp};
use etcdsnap::pitr::capture::{CaptureError, CaptureReport, CaptureSettings, capture};
use etcdsnap::pitr::replay::{Replay, ReplayEngine, ReplayError, ReplayReport, last_observed_by, replay};
use etcdsnap_api::KvHash;
use etcdsnap_storage::pipeline::revision::RevisionScanner;
use etcdsnap_storage::pitr::{Base, EventKind, Segment, SegmentRecord, Target, plan};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use testenv::Etcd;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub(crate) const CHAIN: &str = "etcd-snapshot-node-a-1700000000";

pub(crate) fn now_ms() -> i64 {
    etcdsnap_storage::clock::now().as_millisecond()
}

/// A deterministic PRNG (xorshift64*): the same seed makes the same workload.
pub(crate) struct Rng(u64);

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
/// leased keys (one lease from before the base snapshot, one granted after it).
pub(crate) struct Workload {
    rng: Rng,
    keys: Vec<String>,
    next_key: usize,
    leases: Vec<i64>,
}

impl Workload {
    pub(crate) fn new(seed: u64, leases: Vec<i64>) -> Workload {
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
    pub(crate) async fn run_until(&mut self, client: &mut Client, until: i64) -> i64 {
        let mut rev = revision(client).await;
        while rev < until {
            self.step(client).await;
            rev = revision(client).await;
        }
        rev
    }
}

/// Puts a key every 2 ms and renews a lease every 200 ms (a control plane renewing its leases)
/// until stopped.
pub(crate) struct Writer {
    stop: CancellationToken,
    task: JoinHandle<u64>,
}

impl Writer {
    /// Starts it; with `lease`, that lease is renewed every 200 ms.
    pub(crate) async fn start(etcd: &Etcd, lease: Option<i64>) -> Writer {
        let mut client = etcd.client().await.unwrap();
        let mut renewal = match lease {
            Some(id) => Some(client.lease_keep_alive(id).await.unwrap()),
            None => None,
        };
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut writes = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(2));
            while !token.is_cancelled() {
                tick.tick().await;
                let key = format!("/registry/leases/kube-node-lease/node-{}", writes % 20);
                client.put(key, format!("{{\"renewTime\":{writes}}}"), None).await.unwrap();
                writes += 1;
                if let (Some((keeper, renewed)), 0) = (renewal.as_mut(), writes % 100) {
                    keeper.keep_alive().await.unwrap();
                    renewed.message().await.unwrap();
                }
            }
            writes
        });
        Writer { stop, task }
    }

    /// Stops it; returns how many writes it made.
    pub(crate) async fn stop(self) -> u64 {
        self.stop.cancel();
        self.task.await.unwrap()
    }
}

/// The revision a snapshot file holds, read from its own pages.
pub(crate) fn snapshot_revision(path: &Path) -> i64 {
    let mut scanner = RevisionScanner::new(0);
    scanner.feed(&std::fs::read(path).unwrap());
    scanner.finish().unwrap().revision
}

/// A member with some data and leased keys (one on a 2-second lease kept alive), its snapshot
/// file, taken while a writer puts every 2 ms (left running), and the base it is: its revision
/// is the one the file holds.
pub(crate) async fn base_snapshot(dir: &Path) -> (Etcd, Client, PathBuf, Base, i64, Writer) {
    let etcd = Etcd::single_version("3.7").await.unwrap();
    let mut client = etcd.client().await.unwrap();
    let old_lease = client.lease_grant(7200, Some(LeaseGrantOptions::new().with_id(0x1111))).await.unwrap().id();
    for i in 0..50 {
        client.put(format!("/registry/base/{i:03}"), format!("v{i}"), None).await.unwrap();
    }
    client.put("/registry/base/leased", "x", Some(PutOptions::new().with_lease(old_lease))).await.unwrap();
    // A 2-second lease kept alive (as a kube-apiserver keeps its own): a replay that takes longer
    // must renew it too, or it runs out and deletes its key in the middle.
    let short = client.lease_grant(2, Some(LeaseGrantOptions::new().with_id(0x3333))).await.unwrap().id();
    client.put("/registry/masterleases/10.0.0.1", "ip", Some(PutOptions::new().with_lease(short))).await.unwrap();
    let writer = Writer::start(&etcd, Some(short)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = revision(&mut client).await;
    let snapshot = dir.join("base.db");
    etcdctl_snapshot(&etcd, &snapshot).await.unwrap();
    let base = Base { name: CHAIN.into(), revision: snapshot_revision(&snapshot), taken_ms: now_ms(), history: None };
    assert!(base.revision >= before, "the snapshot holds revision {}, before {before}", base.revision);
    (etcd, client, snapshot, base, old_lease, writer)
}

pub(crate) fn start_capture(
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
pub(crate) fn records(out: &Path) -> Vec<SegmentRecord> {
    let dir = out.join(CHAIN);
    let mut names: Vec<String> = files_in(&dir).into_iter().filter(|n| n.ends_with(".json")).collect();
    names.sort();
    names.iter().map(|n| SegmentRecord::parse(n, &std::fs::read(dir.join(n)).unwrap()).unwrap()).collect()
}

/// Waits until records reach revision `rev`.
pub(crate) async fn wait_captured(out: &Path, rev: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while records(out).iter().map(|r| r.last_revision).max().unwrap_or(0) < rev {
        assert!(Instant::now() < deadline, "the capture did not reach revision {rev}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The direct engine: `etcdsnap-replay` from the testbins (`testbins/build.sh etcd`).
pub(crate) fn direct() -> ReplayEngine {
    ReplayEngine::Direct(testenv::testbin("etcdsnap-replay").unwrap())
}

/// Replays the capture in `out` onto `snapshot` up to `target` with the direct engine; with
/// `save_to`, the result is saved there as a snapshot file.
pub(crate) async fn replay_to(
    base: &Base,
    out: &Path,
    snapshot: &Path,
    target: Target,
    expected: Option<KvHash>,
    save_to: Option<&Path>,
) -> Result<ReplayReport, ReplayError> {
    replay_with(direct(), base, out, snapshot, target, expected, save_to).await
}

/// [`replay_to`] on `engine`.
pub(crate) async fn replay_with(
    engine: ReplayEngine,
    base: &Base,
    out: &Path,
    snapshot: &Path,
    target: Target,
    expected: Option<KvHash>,
    save_to: Option<&Path>,
) -> Result<ReplayReport, ReplayError> {
    let mut observed_by = |r: &SegmentRecord, ms: i64| last_observed_by(out, r, ms, None);
    let plan = plan(std::slice::from_ref(base), &records(out), target, &mut observed_by).unwrap();
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
        save_to,
        identity: None,
        compact: false,
        engine,
    };
    let report = replay(&r).await?;
    assert!(report.data_dir.join("member").is_dir(), "{}", report.data_dir.display());
    Ok(report)
}

/// Revisions of a real control plane that etcd's default transaction limits cannot replay: a
/// range delete of 300 keys of 16 KiB (4.8 MB of previous values in one watch response, which
/// etcd fragments), the expiry of a 2-second lease holding 200 keys, and a 1.2 MB value
/// written twice (one event carrying both). Returns the revision after them.
async fn heavy_revisions(client: &mut Client) -> i64 {
    let big = vec![b'e'; 16 * 1024];
    for i in 0..300 {
        client.put(format!("/registry/events/big/ev-{i:04}"), big.clone(), None).await.unwrap();
    }
    client.delete("/registry/events/big/", Some(DeleteOptions::new().with_prefix())).await.unwrap();
    let lease = client.lease_grant(2, None).await.unwrap().id();
    for i in 0..200 {
        let opts = PutOptions::new().with_lease(lease);
        client.put(format!("/registry/events/expiring/ev-{i:04}"), "x", Some(opts)).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let count = etcd_client::GetOptions::new().with_prefix().with_count_only();
    while client.get("/registry/events/expiring/", Some(count.clone())).await.unwrap().count() > 0 {
        assert!(Instant::now() < deadline, "the 2-second lease did not expire");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for fill in [b'a', b'b'] {
        client.put("/registry/configmaps/default/large", vec![fill; 1_200_000], None).await.unwrap();
    }
    revision(client).await
}

/// Every revision the capture in `out` holds, decoded.
fn captured(out: &Path) -> Vec<etcdsnap_storage::pitr::RevisionChanges> {
    let dir = out.join(CHAIN);
    let decode = |r: &SegmentRecord| {
        let stored = std::fs::read(dir.join(r.segment_name())).unwrap();
        Segment::from_stored(&r.segment_name(), &stored, 1 << 30, None).unwrap().revisions
    };
    records(out).iter().flat_map(decode).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_reaches_chosen_revisions_exactly() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (etcd, mut client, snapshot, base, old_lease, writer) = base_snapshot(dir.path()).await;
    let out = dir.path().join("deltas");
    let (stop, task) = start_capture(etcd.client().await?, &base, &out, Duration::from_millis(500));

    let new_lease = client.lease_grant(120, Some(LeaseGrantOptions::new().with_id(0x2222))).await?.id();
    let mut work = Workload::new(0x5eed_1234_abcd_0001, vec![old_lease, new_lease]);
    let started = Instant::now();
    work.run_until(&mut client, base.revision + 1000).await;
    let heavy = heavy_revisions(&mut client).await;
    let end = work.run_until(&mut client, heavy + 500).await;
    // What the lease granted after the base has left at the target (its observed time).
    let left = client.lease_time_to_live(new_lease, None).await?.ttl();
    let workload_time = started.elapsed();
    let (r1, r2) = (base.revision + 777, end);
    let (h1, h2) = (hash_kv(&mut client, r1).await, hash_kv(&mut client, r2).await);

    wait_captured(&out, end).await;
    let writes = writer.stop().await;
    stop.cancel();
    let report = task.await??;
    assert!(report.last_revision >= end && writes > 100, "{} {writes}", report.last_revision);
    assert!(report.segments.len() > 1, "flushes every 500 ms make several segments");
    assert!(report.segments.iter().all(|s| s.chain_broken.is_none()));
    let chain_dir = out.join(CHAIN);
    assert_eq!(mode(&chain_dir), 0o700);
    for name in files_in(&chain_dir) {
        assert!(!name.ends_with(".part"), "a temporary file was left: {name}");
        assert_eq!(mode(&chain_dir.join(&name)), 0o600, "{name}");
    }
    // Each heavy change is one revision of the capture.
    let revisions = captured(&out);
    let deletes = |n: usize| {
        revisions.iter().any(|r| r.events.len() == n && r.events.iter().all(|e| e.kind == EventKind::Delete))
    };
    assert!(deletes(300) && deletes(200), "the range delete and the lease expiry are single revisions");
    assert!(revisions.iter().flat_map(|r| &r.events).any(|e| e.value.len() == 1_200_000));

    // Both engines, the private etcd's to the end (past the heavy revisions).
    for (target, hash, engine) in [(r1, h1, direct()), (r2, h2, direct()), (r2, h2, ReplayEngine::Etcd)] {
        let started = Instant::now();
        let db = dir.path().join(format!("replayed-{target}-{}.db", matches!(engine, ReplayEngine::Etcd)));
        let (t, expect) = (Target::Revision(target), Some(hash));
        let replayed = replay_with(engine.clone(), &base, &out, &snapshot, t, expect, Some(&db)).await?;
        assert_eq!(replayed.revision, target);
        assert_eq!(replayed.hash, hash, "HashKV at revision {target}");
        assert!(replayed.hash_compared);
        assert_eq!(replayed.revisions_applied, (target - base.revision) as u64);
        assert!(replayed.notes.is_empty(), "{:?}", replayed.notes);
        assert_eq!(replayed.events_proven, replayed.events_applied, "every event proven against the capture");
        assert!(replayed.leases_granted >= 1, "the leases granted after the base are granted by the replay");
        let seconds = started.elapsed().as_secs_f64();
        let (_data, restored) = serve_snapshot(&db, "3.7").await;
        let restored = restored.client().await?;
        let keys = assert_same_key_space(&client, &restored, target).await;
        eprintln!(
            "{engine:?}: replayed {} revisions ({} events) to {target} in {seconds:.2}s, {keys} keys as live (workload of {} revisions took {:.2}s)",
            replayed.revisions_applied,
            replayed.events_applied,
            end - base.revision,
            workload_time.as_secs_f64()
        );
        if target == r2 {
            // Granted with the time it had left at the target, not an hour.
            let ttl = restored.clone().lease_time_to_live(new_lease, None).await?.granted_ttl();
            assert!((left - 2..=left + 2).contains(&ttl), "lease {new_lease:x}: granted {ttl} s, {left} s left live");
        }
    }
    // A wrong expectation is refused, naming the revision.
    let wrong = KvHash { hash: h1.hash ^ 1, ..h1 };
    let err = replay_to(&base, &out, &snapshot, Target::Revision(r1), Some(wrong), None).await.unwrap_err();
    assert!(matches!(err, ReplayError::HashMismatch { revision, .. } if revision == r1), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_time_target_lands_on_the_last_revision_observed_by_then() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (etcd, mut client, snapshot, base, old_lease, writer) = base_snapshot(dir.path()).await;
    writer.stop().await;
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

    let replayed = replay_to(&base, &out, &snapshot, Target::Time(at), Some(hash), None).await?;
    assert_eq!(replayed.revision, first, "the last revision observed by the time");
    assert_eq!(replayed.hash, hash);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_segment_is_refused_and_a_compacted_start_breaks_the_chain() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (etcd, mut client, snapshot, base, old_lease, writer) = base_snapshot(dir.path()).await;
    writer.stop().await;
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
    let err = replay_to(&base, &out, &snapshot, Target::Revision(end), None, None).await.unwrap_err();
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
