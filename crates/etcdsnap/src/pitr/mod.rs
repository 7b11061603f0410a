//! Point-in-time recovery, the moving parts (issue 16, second part): [`capture`] watches etcd
//! from a full snapshot's revision and writes delta segments with their records, and
//! [`replay`] restores the full snapshot into a private etcd and applies the captured revisions
//! up to a target, one transaction per revision, proving each against what the capture saw and
//! checking HashKV at the end.
//!
//! The stored formats and the plan of a replay are `etcdsnap_storage::pitr`.
//!
//! Leases: the capture records each put's lease ID and, the first time a segment holds a put
//! attached to a lease, the lease's granted and remaining TTL. A lease present in the base
//! snapshot is restored by etcdutl with it; a lease first seen in the captured changes is
//! granted by the replay, with that ID, for the time it had left at the target, just before the
//! first put attached to it. A lease's revocation or expiry reaches the capture as the delete
//! events of its keys, which the replay applies like any delete. Granting, renewing or letting a
//! lease lapse without keys creates no revision, so HashKV is unaffected.

pub mod capture;
pub mod history;
pub mod replay;
pub mod restore;
