//! Histories: which snapshots and delta segments describe the same sequence of etcd revisions.
//!
//! etcd numbers every change of its key space, but the numbers are not unique over time: a
//! member restored from a snapshot, or rolled back in place with the same name, peer URL and
//! token (so the cluster ID stays), numbers its next changes from the restored revision again,
//! with other contents. Each such run of revisions is a history. Every snapshot record
//! (`EtcdInfo::history`) and every segment record ([`SegmentRecord::history`]) names the
//! history it belongs to by a random ID; records written before histories were recorded have
//! none and count as one legacy history per cluster ID ([`LEGACY`]).
//!
//! A live etcd is known to be a history only by checking it: the history's *tip* (its newest
//! snapshot or segment) carries a [`fingerprint`] of the puts etcd made at the tip's revision,
//! and the live etcd must hold that revision (neither compacted nor in its future) with the
//! same puts. The rule a save and a capture follow ([`candidates`], then a check against etcd
//! by the caller): the newest tip that the live etcd matches names its history; when none
//! does (a restore, a rollback, a tip compacted away, a legacy history), a new history begins
//! with a new ID, and only a new full snapshot can start its chain. A new ID where one history
//! could have gone on costs nothing but a full snapshot: two IDs never share a revision range
//! unless etcd really reused the numbers.
//!
//! The check compares the puts of one revision. A revision made only of deletes fingerprints
//! as empty, so it tells two histories apart only where one of them put something there; two
//! histories that put exactly the same keys, values and metadata at the tip's revision are
//! taken as one. Kubernetes' objects carry their resource version and timestamps in their
//! values, so in practice the puts of two histories differ.

use super::record::SegmentRecord;
use super::segment::{EventKind, PrevDigest, RevisionChanges};
use crate::SnapshotRecord;
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// How the history of records without one (saved before histories were recorded) is named.
pub const LEGACY: &str = "legacy";

/// A new history ID: 16 random hex digits.
pub fn new_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Whether `id` can be a history ID (a record naming anything else is refused): 1 to 64
/// lower-case letters, digits or dashes, and not [`LEGACY`].
pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id != LEGACY
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// How a history is shown and chosen (`--history`): its ID, or [`LEGACY`].
pub fn label(history: Option<&str>) -> &str {
    history.unwrap_or(LEGACY)
}

/// One put etcd made at a revision, as the fingerprint takes it.
#[derive(Debug, Clone, Copy)]
pub struct Put<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

/// The fingerprint of `revision`: a digest of every put etcd made at it, whatever their order
/// (hex, 32 digits). The capture computes it from the revision's put events; a check computes
/// it from a Range at the revision of the keys whose mod revision is the revision, which are
/// the same puts (a transaction puts a key at most once).
pub fn fingerprint<'a>(revision: i64, puts: impl IntoIterator<Item = Put<'a>>) -> String {
    let mut puts: Vec<Put<'a>> = puts.into_iter().collect();
    puts.sort_by(|a, b| a.key.cmp(b.key));
    let mut h = Sha256::new();
    h.update(b"etcdsnap revision fingerprint 1\n");
    h.update(revision.to_le_bytes());
    for p in puts {
        h.update((p.key.len() as u64).to_le_bytes());
        h.update(p.key);
        h.update(PrevDigest::of(p.value, p.create_revision, p.mod_revision, p.version, p.lease).0);
    }
    hex::encode(&h.finalize()[..16])
}

/// The fingerprint of the puts a captured revision made.
pub fn fingerprint_of_revision(changes: &RevisionChanges) -> String {
    let puts = changes.events.iter().filter(|e| e.kind == EventKind::Put).map(|e| Put {
        key: &e.key,
        value: &e.value,
        create_revision: e.create_revision,
        mod_revision: e.mod_revision,
        version: e.version,
        lease: e.lease,
    });
    fingerprint(changes.revision, puts)
}

/// A history's newest snapshot or segment: what a live etcd must match to be that history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tip {
    pub history: String,
    pub revision: i64,
    /// None: the tip cannot be checked (its fingerprint could not be taken), so the live etcd
    /// is never taken for this history.
    pub fingerprint: Option<String>,
    /// Whether the history has captured changes (a segment record) within reach.
    pub captured: bool,
}

/// Which of the histories the live etcd matched (their tips, newest first) it is taken for:
/// one with captured changes (the capturing leader's, which every agent should name its
/// snapshots after) before one of snapshots only (a history an agent named on its own while
/// the leader's chain was not within its reach), else the newest. Two matching histories agree
/// with the live etcd each at its tip, so either is right; preferring the captured one keeps
/// the snapshots of one real history under one ID wherever the chain can be seen.
pub fn preferred<'a>(matched: &[&'a Tip]) -> Option<&'a Tip> {
    matched.iter().find(|t| t.captured).or(matched.first()).copied()
}

/// The tips of cluster `cluster`'s histories among `snapshots` and `segments`, newest first:
/// the order in which a live etcd is checked against them. Legacy records have no tip (they
/// carry no fingerprint): a legacy history is never continued.
pub fn candidates(snapshots: &[SnapshotRecord], segments: &[SegmentRecord], cluster: &str) -> Vec<Tip> {
    let mut tips: BTreeMap<&str, (i64, Option<&str>)> = BTreeMap::new();
    let mut captured: BTreeSet<&str> = BTreeSet::new();
    let snapshot_items = snapshots.iter().filter(|r| r.is_ready()).filter_map(|r| r.etcd.as_ref()).filter_map(|e| {
        let history = e.history.as_deref().filter(|_| e.cluster_id == cluster)?;
        Some((history, e.revision, e.fingerprint.as_deref()))
    });
    let segment_items = segments
        .iter()
        .filter(|r| r.cluster_id.as_deref() == Some(cluster))
        .filter_map(|r| Some((r.history.as_deref()?, r.last_revision, r.fingerprint.as_deref())));
    let segment_items = segment_items.inspect(|(history, ..)| {
        captured.insert(history);
    });
    for (history, revision, fingerprint) in snapshot_items.chain(segment_items) {
        let tip = tips.entry(history).or_insert((revision, fingerprint));
        if revision > tip.0 || revision == tip.0 && tip.1.is_none() {
            *tip = (revision, fingerprint);
        }
    }
    let mut tips: Vec<Tip> = tips
        .into_iter()
        .map(|(history, (revision, fingerprint))| Tip {
            history: history.to_string(),
            revision,
            fingerprint: fingerprint.map(str::to_string),
            captured: captured.contains(history),
        })
        .collect();
    tips.sort_by(|a, b| b.revision.cmp(&a.revision).then_with(|| a.history.cmp(&b.history)));
    tips
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pitr::record::tests::record;
    use etcdsnap_api::{EtcdInfo, SnapshotName, StorageKind};

    fn put<'a>(key: &'a [u8], value: &'a [u8], revision: i64) -> Put<'a> {
        Put { key, value, create_revision: revision, mod_revision: revision, version: 1, lease: 0 }
    }

    fn snap(unix: i64, revision: i64, history: Option<&str>, fingerprint: Option<&str>) -> SnapshotRecord {
        let name = SnapshotName::parse(&format!("etcd-snapshot-node-a-{unix}")).unwrap();
        let at = jiff::Timestamp::from_second(unix).unwrap();
        let mut r = SnapshotRecord::stored(name, StorageKind::Local, "node-a", "file:///x", at, 1);
        r.etcd = Some(EtcdInfo {
            revision,
            cluster_id: "c1".into(),
            history: history.map(str::to_string),
            fingerprint: fingerprint.map(str::to_string),
            ..Default::default()
        });
        r
    }

    #[test]
    fn a_fingerprint_takes_every_put_in_any_order_and_nothing_else() {
        let a = fingerprint(7, [put(b"/a", b"1", 7), put(b"/b", b"2", 7)]);
        assert_eq!(a, fingerprint(7, [put(b"/b", b"2", 7), put(b"/a", b"1", 7)]), "order does not matter");
        assert_eq!(a.len(), 32);
        assert_ne!(a, fingerprint(7, [put(b"/a", b"1", 7)]), "a put missing");
        assert_ne!(a, fingerprint(7, [put(b"/a", b"1", 7), put(b"/b", b"3", 7)]), "another value");
        assert_ne!(a, fingerprint(8, [put(b"/a", b"1", 7), put(b"/b", b"2", 7)]), "another revision");
        let older = Put { version: 2, create_revision: 3, ..put(b"/a", b"1", 7) };
        assert_ne!(fingerprint(7, [older]), fingerprint(7, [put(b"/a", b"1", 7)]), "other metadata");
        // Key and value boundaries count: "/ab"+"c" is not "/a"+"bc".
        assert_ne!(fingerprint(7, [put(b"/ab", b"c", 7)]), fingerprint(7, [put(b"/a", b"bc", 7)]));
    }

    #[test]
    fn ids_are_new_each_time_and_legacy_is_never_one() {
        let (a, b) = (new_id(), new_id());
        assert!(valid_id(&a) && valid_id(&b) && a != b);
        for bad in ["", LEGACY, "../x", "ABC", &"a".repeat(65)] {
            assert!(!valid_id(bad), "{bad}");
        }
        assert_eq!(label(None), LEGACY);
        assert_eq!(label(Some("h1")), "h1");
    }

    #[test]
    fn each_histories_newest_record_is_its_tip_newest_first() {
        let snapshots = [
            snap(100, 50, Some("h1"), Some("f50")),
            snap(200, 400, Some("h2"), Some("f400")),
            // Legacy and failed snapshots have no tip.
            snap(300, 900, None, None),
            SnapshotRecord {
                outcome: crate::record::Outcome::Failed { message: "x".into() },
                ..snap(400, 950, Some("h3"), Some("f"))
            },
        ];
        let mut s1 = record("etcd-snapshot-node-a-100", 50, 51, 300, 1, 2);
        (s1.cluster_id, s1.history, s1.fingerprint) = (Some("c1".into()), Some("h1".into()), Some("f300".into()));
        // Another cluster's segment of a history with the same ID does not count.
        let mut other = s1.clone();
        (other.cluster_id, other.last_revision) = (Some("c2".into()), 5000);
        let tips = candidates(&snapshots, &[s1, other], "c1");
        let got: Vec<(&str, i64, Option<&str>)> =
            tips.iter().map(|t| (t.history.as_str(), t.revision, t.fingerprint.as_deref())).collect();
        assert_eq!(got, [("h2", 400, Some("f400")), ("h1", 300, Some("f300"))]);
        assert_eq!(tips.iter().map(|t| t.captured).collect::<Vec<_>>(), [false, true]);
        // Both matched: the captured history is preferred; alone, the snapshots' is taken.
        assert_eq!(preferred(&[&tips[0], &tips[1]]).map(|t| t.history.as_str()), Some("h1"));
        assert_eq!(preferred(&[&tips[0]]).map(|t| t.history.as_str()), Some("h2"));
        assert_eq!(preferred(&[]), None);
        assert!(candidates(&snapshots, &[], "c9").is_empty());
    }
}
