//! A replay proves itself, against a real etcd 3.7: each key's previous state in the replay
//! must be the one the capture saw. A replay onto another history with the same revisions is
//! refused at the first key that differs, naming the revision and the key, and saves nothing.
//! Segments of the previous release, which hold no previous states, still replay to the live
//! key space, and the report says the replay is unproven.

use crate::common::TestResult;
use crate::common::keyspace::assert_same_key_space;
use crate::common::restore::{hash_kv, revision, serve_snapshot};
use crate::common::snapshot_files::etcdctl_snapshot;
use crate::pitr::{
    CHAIN, Workload, direct, now_ms, records, replay_to, replay_with, snapshot_revision, start_capture, wait_captured,
};
use etcd_client::Client;
use etcdsnap::pitr::replay::{ReplayEngine, ReplayError};
use etcdsnap_storage::pitr::{Base, EventKind, Segment, SegmentRecord, Target};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::Duration;
use testenv::Etcd;

/// 20 ConfigMaps whose values say `tag`: two etcds loaded with different tags have the same
/// revisions and different contents.
async fn history(tag: &str) -> (Etcd, Client) {
    let etcd = Etcd::single_version("3.7").await.unwrap();
    let mut client = etcd.client().await.unwrap();
    for i in 0..20 {
        client.put(format!("/registry/configmaps/default/cm-{i:02}"), format!("{tag}-{i}"), None).await.unwrap();
    }
    (etcd, client)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_onto_another_history_fails_naming_the_revision_and_key() -> TestResult {
    let dir = tempfile::tempdir()?;
    let ((live, mut client), (other, _other_client)) = (history("live").await, history("other").await);
    let (right, wrong) = (dir.path().join("right.db"), dir.path().join("wrong.db"));
    etcdctl_snapshot(&live, &right).await?;
    etcdctl_snapshot(&other, &wrong).await?;
    let base = Base { name: CHAIN.into(), revision: snapshot_revision(&right), taken_ms: now_ms(), history: None };
    assert_eq!(snapshot_revision(&wrong), base.revision, "both histories are at the same revision");

    let out = dir.path().join("deltas");
    let (stop, task) = start_capture(live.client().await?, &base, &out, Duration::from_millis(200));
    client.put("/registry/configmaps/default/cm-07", "changed", None).await?;
    let lease = client.lease_grant(600, None).await?.id();
    let end = Workload::new(0xd1ff, vec![lease]).run_until(&mut client, base.revision + 30).await;
    wait_captured(&out, end).await;
    stop.cancel();
    task.await??;

    for engine in [direct(), ReplayEngine::Etcd] {
        // The right base replays, proven.
        let replayed = replay_with(engine.clone(), &base, &out, &right, Target::Revision(end), None, None).await?;
        assert_eq!(replayed.events_proven, replayed.events_applied);
        // The wrong one: its cm-07 was not the one the capture saw changed at base + 1.
        let saved = dir.path().join("never.db");
        let err = replay_with(engine.clone(), &base, &out, &wrong, Target::Revision(end), None, Some(&saved))
            .await
            .unwrap_err();
        match &err {
            ReplayError::Diverged { revision, key, .. } => {
                let expected = (base.revision + 1, "/registry/configmaps/default/cm-07");
                assert_eq!((*revision, key.as_str()), expected, "{engine:?}: {err}");
            }
            other => panic!("{engine:?}: expected a divergence, got {other}"),
        }
        assert!(err.to_string().contains("nothing was installed"), "{err}");
        assert!(!saved.exists(), "a diverged replay saved its result");
    }
    Ok(())
}

/// The encoding of the previous release (format 1): the revisions and their events, without
/// previous states or lease observations.
fn format_1(segment: &Segment) -> Vec<u8> {
    let bytes = |out: &mut Vec<u8>, b: &[u8]| {
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(b);
    };
    let mut out = b"ESDSEG1\n".to_vec();
    for r in &segment.revisions {
        out.push(1);
        out.extend_from_slice(&r.revision.to_le_bytes());
        out.extend_from_slice(&r.observed_ms.to_le_bytes());
        out.extend_from_slice(&(r.events.len() as u32).to_le_bytes());
        for e in &r.events {
            out.push(if e.kind == EventKind::Put { 0 } else { 1 });
            bytes(&mut out, &e.key);
            bytes(&mut out, &e.value);
            for n in [e.create_revision, e.mod_revision, e.version, e.lease] {
                out.extend_from_slice(&n.to_le_bytes());
            }
        }
    }
    out.push(0xFF);
    out.extend_from_slice(&(segment.revisions.len() as u64).to_le_bytes());
    out
}

/// Rewrites every segment in `out` as the previous release wrote it, records included.
fn downgrade(out: &Path) {
    let dir = out.join(CHAIN);
    for record in records(out) {
        let path = dir.join(record.segment_name());
        let segment = Segment::from_stored("s", &std::fs::read(&path).unwrap(), 1 << 30, None).unwrap();
        let stored = zstd::encode_all(format_1(&segment).as_slice(), 3).unwrap();
        std::fs::write(&path, &stored).unwrap();
        let old = SegmentRecord {
            format: 1,
            sha256: hex::encode(Sha256::digest(&stored)),
            stored_bytes: stored.len() as u64,
            ..record.clone()
        };
        std::fs::write(dir.join(record.record_name()), old.to_json()).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn segments_of_the_previous_release_replay_and_are_reported_unproven() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (live, mut client) = history("live").await;
    let snapshot = dir.path().join("base.db");
    etcdctl_snapshot(&live, &snapshot).await?;
    let base = Base { name: CHAIN.into(), revision: snapshot_revision(&snapshot), taken_ms: now_ms(), history: None };
    let out = dir.path().join("deltas");
    let (stop, task) = start_capture(live.client().await?, &base, &out, Duration::from_millis(200));
    let lease = client.lease_grant(600, None).await?.id();
    let end = Workload::new(0x01d, vec![lease]).run_until(&mut client, base.revision + 300).await;
    wait_captured(&out, end).await;
    stop.cancel();
    task.await??;
    downgrade(&out);

    let db = dir.path().join("replayed.db");
    let hash = hash_kv(&mut client, end).await;
    let replayed = replay_to(&base, &out, &snapshot, Target::Revision(end), Some(hash), Some(&db)).await?;
    assert_eq!((replayed.revision, replayed.events_proven), (end, 0));
    assert!(replayed.notes.iter().any(|n| n.starts_with("unproven")), "{:?}", replayed.notes);
    let (_data, restored) = serve_snapshot(&db, "3.7").await;
    let mut restored = restored.client().await?;
    assert_eq!(revision(&mut restored).await, end);
    assert_same_key_space(&client, &restored, end).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_put_whose_result_differs_from_the_capture_fails_the_direct_replay() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (live, mut client) = history("live").await;
    let snapshot = dir.path().join("base.db");
    etcdctl_snapshot(&live, &snapshot).await?;
    let base = Base { name: CHAIN.into(), revision: snapshot_revision(&snapshot), taken_ms: now_ms(), history: None };
    let out = dir.path().join("deltas");
    let (stop, task) = start_capture(live.client().await?, &base, &out, Duration::from_millis(200));
    client.put("/registry/configmaps/default/cm-03", "changed", None).await?;
    let lease = client.lease_grant(600, None).await?.id();
    let end = Workload::new(0x7e57, vec![lease]).run_until(&mut client, base.revision + 20).await;
    wait_captured(&out, end).await;
    stop.cancel();
    task.await??;

    // The capture says the put at base + 1 made version 3 of cm-03; etcd makes version 2 (its
    // previous state, which the capture also recorded, is left as it was).
    let chain = out.join(CHAIN);
    let record = records(&out).into_iter().find(|r| r.first_revision == base.revision + 1).unwrap();
    let path = chain.join(record.segment_name());
    let mut segment = Segment::from_stored("s", &std::fs::read(&path)?, 1 << 30, None)?;
    let event = &mut segment.revisions[0].events[0];
    assert_eq!((event.key.as_slice(), event.version), (b"/registry/configmaps/default/cm-03".as_slice(), 2));
    event.version = 3;
    let stored = segment.to_stored(3, None)?;
    std::fs::write(&path, &stored)?;
    let tampered = SegmentRecord {
        sha256: hex::encode(Sha256::digest(&stored)),
        stored_bytes: stored.len() as u64,
        ..record.clone()
    };
    std::fs::write(chain.join(record.record_name()), tampered.to_json())?;

    let saved = dir.path().join("never.db");
    let err = replay_to(&base, &out, &snapshot, Target::Revision(end), None, Some(&saved)).await.unwrap_err();
    match &err {
        ReplayError::Produced { revision, key, detail } => {
            assert_eq!((*revision, key.as_str()), (base.revision + 1, "/registry/configmaps/default/cm-03"), "{err}");
            assert!(detail.contains("version 3") && detail.contains("version 2"), "{err}");
        }
        other => panic!("expected a result that differs, got {other}"),
    }
    assert!(!saved.exists(), "a diverged replay saved its result");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_direct_engine_replays_every_etcd_minor_to_the_live_key_space() -> TestResult {
    for minor in ["3.5", "3.6"] {
        let dir = tempfile::tempdir()?;
        let live = Etcd::single_version(minor).await?;
        let mut client = live.client().await?;
        for i in 0..20 {
            client.put(format!("/registry/configmaps/default/cm-{i:02}"), format!("v-{i}"), None).await?;
        }
        let snapshot = dir.path().join("base.db");
        etcdctl_snapshot(&live, &snapshot).await?;
        let at = snapshot_revision(&snapshot);
        let base = Base { name: CHAIN.into(), revision: at, taken_ms: now_ms(), history: None };
        let out = dir.path().join("deltas");
        let (stop, task) = start_capture(live.client().await?, &base, &out, Duration::from_millis(200));
        let lease = client.lease_grant(600, None).await?.id();
        let end = Workload::new(0x35_36, vec![lease]).run_until(&mut client, base.revision + 300).await;
        wait_captured(&out, end).await;
        stop.cancel();
        task.await??;

        let db = dir.path().join("replayed.db");
        let hash = hash_kv(&mut client, end).await;
        let replayed = replay_to(&base, &out, &snapshot, Target::Revision(end), Some(hash), Some(&db)).await?;
        assert!(replayed.hash_compared && replayed.events_proven == replayed.events_applied, "etcd {minor}");
        let (_data, restored) = serve_snapshot(&db, minor).await;
        let mut restored = restored.client().await?;
        assert_eq!(revision(&mut restored).await, end, "etcd {minor}");
        assert_same_key_space(&client, &restored, end).await;
    }
    Ok(())
}
