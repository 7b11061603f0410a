//! Point-in-time recovery's stored form: delta segments (etcd's changes between full
//! snapshots, [`segment`]), the record beside each and where both live ([`record`]), and the
//! chains they form with the replay a restore to a revision or time performs ([`chain`]).
//!
//! A chain starts at a full snapshot at revision R and holds revisions R+1, R+2, ... in
//! segments of consecutive revisions. Capture that cannot continue (compaction, a leader change,
//! a restart) ends the chain; a new full snapshot starts the next one. Chains on local disk are
//! read by [`local`]; their objects in S3 are `store::s3::pitr`; [`retention`] removes the
//! segments no kept snapshot can use, in both places. Nothing here talks to etcd: capture and
//! replay are the `etcdsnap` crate's `pitr`.

pub mod chain;
pub mod history;
pub mod local;
pub mod objects;
pub mod record;
pub mod retention;
pub mod segment;

pub use chain::{
    Base, ChainSummary, Gap, ObservedBy, PlanError, ReplayPlan, Target, plan, segments_spanning, summarize,
};
pub use record::{DELTAS_DIR, SEGMENT_LIMIT, SegmentRecord};
pub use segment::{
    EventKind, LeaseObservation, PitrEvent, PrevDigest, PrevState, RevisionChanges, Segment, SegmentError,
};

/// A chain is named after its base snapshot: a snapshot name is a safe path element.
pub fn valid_chain_name(name: &str) -> bool {
    etcdsnap_api::SnapshotName::parse(name).is_ok()
}
