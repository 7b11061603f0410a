//! Where a capture term starts: the chain's last durable revision when etcd still holds the
//! revisions after it, else the newest full snapshot.
//!
//! A restarted agent, and a new leader after a leader change, continue the newest unbroken
//! chain of the live cluster from the last revision durable anywhere: this node's records, or
//! the records in S3 (where every leader's segments meet). The newest snapshot does not decide:
//! the API server compacts etcd every five minutes, so after a scheduled snapshot a watch from
//! that snapshot's revision is soon refused, while the chain, continued at once, loses nothing.
//! Only when etcd compacted past the chain's last revision does the chain end there: its last
//! record is marked broken saying so, and capture starts a new chain from the newest snapshot
//! etcd can still continue, or from a new one.
//!
//! Only the live history's chains and snapshots count (`crate::pitr::history`): the agent
//! first checks which recorded history the live etcd is. When it is none of them (a restore, a
//! member rolled back in place, a legacy chain, a tip compacted away), the newest chain is
//! ended saying why ([`end_unmatched`]) and a new full snapshot starts a new history, so a
//! chain never goes on with another history's changes, nor starts from another history's
//! snapshot or one ahead of the live revision.

use etcd_client::{Client, GetOptions};
use etcdsnap_storage::SnapshotRecord;
use etcdsnap_storage::pitr::{Base, SegmentRecord, local, summarize};
use std::path::Path;

/// Where one capture term starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Start {
    /// The chain's base (the chain is named after it; a continued chain's base snapshot may be
    /// gone: only its name and revision matter).
    pub base: Base,
    /// The last revision durable anywhere: the capture watches from the next one.
    pub durable: i64,
}

/// A chain that could be continued: its base and its last durable revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Resumable {
    pub chain: String,
    /// Its history; None for the legacy one.
    pub history: Option<String>,
    pub base_revision: i64,
    pub durable: i64,
}

/// Whether etcd can still answer for a revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Held {
    Yes,
    /// etcd compacted past it.
    Compacted,
    /// etcd has not reached it: it is from another history (a restored or rolled-back member).
    Ahead,
}

/// The newest unbroken, gap-free chain of `cluster` among `records` (local ones, and the
/// newest record of each S3 chain), of `history` when given, else of any history.
pub(super) fn newest_chain(records: &[SegmentRecord], cluster: &str, history: Option<&str>) -> Option<Resumable> {
    let own: Vec<SegmentRecord> = records
        .iter()
        .filter(|r| r.cluster_id.as_deref() == Some(cluster))
        .filter(|r| history.is_none_or(|h| r.history.as_deref() == Some(h)))
        .cloned()
        .collect();
    summarize(&own)
        .into_iter()
        .filter(|c| c.broken.is_none() && c.gaps.is_empty() && c.reachable > c.base_revision)
        .max_by_key(|c| c.reachable)
        .map(|c| {
            let history = own.iter().find(|r| r.chain == c.chain).and_then(|r| r.history.clone());
            Resumable { chain: c.chain, history, base_revision: c.base_revision, durable: c.reachable }
        })
}

/// Asks etcd whether it still holds `revision` (a count-only range at it).
pub(super) async fn held(client: &mut Client, revision: i64) -> Result<Held, etcd_client::Error> {
    let opts = GetOptions::new().with_revision(revision).with_count_only().with_limit(1);
    match client.get(vec![0u8], Some(opts)).await {
        Ok(_) => Ok(Held::Yes),
        Err(e) if e.to_string().contains("required revision has been compacted") => Ok(Held::Compacted),
        Err(e) if e.to_string().contains("required revision is a future revision") => Ok(Held::Ahead),
        Err(e) => Err(e),
    }
}

/// Where a term starts, and the gap choosing it made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Choice {
    /// None: nothing can be continued, a new full snapshot must start a chain.
    pub start: Option<Start>,
    /// Set when etcd compacted past where capture stood (the chain's last revision, or the
    /// newest snapshot's when there was no chain): the revisions after it were never captured.
    pub compacted: Option<i64>,
}

/// Chooses where the term starts: `chain` (the newest resumable one) when etcd still holds its
/// last revision, else `snapshot` (the newest local one of the live cluster) when etcd still
/// holds its revision. A chain etcd compacted past is marked broken in `deltas_dir`, saying so.
pub(super) async fn choose(
    client: &mut Client,
    chain: Option<Resumable>,
    snapshot: Option<&SnapshotRecord>,
    deltas_dir: &Path,
) -> Result<Choice, String> {
    let snapshot = snapshot.and_then(local::base_of);
    let mut compacted = None;
    if let Some(c) = chain {
        match held(client, c.durable).await.map_err(|e| e.to_string())? {
            Held::Yes => {
                let base = Base { name: c.chain, revision: c.base_revision, taken_ms: 0, history: c.history };
                return Ok(Choice { start: Some(Start { base, durable: c.durable }), compacted: None });
            }
            Held::Compacted => {
                let reason = format!(
                    "etcd compacted past revision {} before capture resumed: the revisions after it were never captured",
                    c.durable
                );
                tracing::warn!(chain = %c.chain, durable = c.durable, "{reason}");
                crate::pitr::capture::mark_broken(deltas_dir, &c.chain, &reason).map_err(|e| e.to_string())?;
                compacted = Some(c.durable);
            }
            Held::Ahead => {
                tracing::warn!(chain = %c.chain, durable = c.durable,
                    "etcd's revision is behind the chain's last revision: not continued");
            }
        }
    }
    let Some(base) = snapshot else { return Ok(Choice { start: None, compacted }) };
    let start = match held(client, base.revision).await.map_err(|e| e.to_string())? {
        Held::Yes => Some(Start { durable: base.revision, base }),
        Held::Compacted => {
            compacted = compacted.or(Some(base.revision));
            None
        }
        Held::Ahead => None,
    };
    Ok(Choice { start, compacted })
}

/// Ends `chain` (the newest of the live cluster), which the live etcd is not known to continue
/// (no recorded history matched it): its last local record is marked broken, saying why, and
/// when etcd compacted past its last revision, that revision is returned (the revisions after
/// it were never captured). A new history begins with a new full snapshot.
pub(super) async fn end_unmatched(
    client: &mut Client,
    chain: &Resumable,
    deltas_dir: &Path,
) -> Result<Option<i64>, String> {
    let (reason, compacted) = match held(client, chain.durable).await.map_err(|e| e.to_string())? {
        Held::Compacted => (
            format!(
                "etcd compacted past revision {} before capture resumed: the revisions after it were never captured",
                chain.durable
            ),
            Some(chain.durable),
        ),
        Held::Ahead => (
            format!(
                "etcd's revision is behind revision {}: etcd is another history now (restored or rolled back)",
                chain.durable
            ),
            None,
        ),
        Held::Yes if chain.history.is_none() => {
            ("the chain was written before histories were recorded: capture starts a new history".to_string(), None)
        }
        Held::Yes => (
            format!(
                "etcd's revision {} is not the one this chain captured: etcd is another history now (restored or rolled back)",
                chain.durable
            ),
            None,
        ),
    };
    tracing::warn!(chain = %chain.chain, durable = chain.durable, "{reason}");
    crate::pitr::capture::mark_broken(deltas_dir, &chain.chain, &reason).map_err(|e| e.to_string())?;
    Ok(compacted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(chain: &str, base: i64, first: i64, last: i64, cluster: &str) -> SegmentRecord {
        SegmentRecord {
            format: etcdsnap_storage::pitr::record::RECORD_FORMAT,
            chain: chain.into(),
            base_revision: base,
            first_revision: first,
            last_revision: last,
            first_observed_ms: first,
            last_observed_ms: last,
            revisions: (last - first + 1) as u64,
            events: (last - first + 1) as u64,
            sha256: "0".repeat(64),
            stored_bytes: 1,
            cluster_id: Some(cluster.into()),
            chain_broken: None,
            history: None,
            fingerprint: None,
        }
    }

    #[test]
    fn the_newest_unbroken_chain_of_the_live_cluster_is_resumed() {
        let (a, b, c) = ("etcd-snapshot-n-1", "etcd-snapshot-n-2", "etcd-snapshot-n-3");
        let mut records = vec![
            record(a, 10, 11, 50, "c1"),
            record(a, 10, 51, 90, "c1"),
            // A newer chain, broken by compaction: not resumed.
            SegmentRecord { chain_broken: Some("compacted".into()), ..record(b, 60, 61, 120, "c1") },
            // Another cluster's chain reaching further.
            record(c, 5, 6, 500, "c2"),
        ];
        let r = newest_chain(&records, "c1", None).unwrap();
        assert_eq!(r, Resumable { chain: a.into(), history: None, base_revision: 10, durable: 90 });
        // A chain with a gap is not continued past it.
        records.push(record(a, 10, 95, 99, "c1"));
        assert_eq!(newest_chain(&records, "c1", None), None);
        assert_eq!(newest_chain(&records, "c3", None), None);
    }

    #[test]
    fn only_a_chain_of_the_live_history_is_resumed() {
        let (a, b) = ("etcd-snapshot-n-1", "etcd-snapshot-n-2");
        let with = |r: SegmentRecord, h: &str| SegmentRecord { history: Some(h.into()), ..r };
        // The old history reaches further (revisions reused after a rollback).
        let records = [with(record(a, 10, 11, 500, "c1"), "old"), with(record(b, 300, 301, 420, "c1"), "new")];
        let r = newest_chain(&records, "c1", Some("new")).unwrap();
        assert_eq!((r.chain.as_str(), r.history.as_deref(), r.durable), (b, Some("new"), 420));
        assert_eq!(newest_chain(&records, "c1", Some("other")), None);
        assert_eq!(newest_chain(&records, "c1", None).unwrap().chain, a);
    }
}
