//! Point-in-time recovery, the moving parts (issue 16, second part): [`capture`] watches etcd
//! from a full snapshot's revision and writes delta segments with their records, and
//! [`replay`] restores the full snapshot into a private etcd and applies the captured revisions
//! up to a target, one transaction per revision, checking HashKV at the end.
//!
//! The stored formats and the plan of a replay are `etcdsnap_storage::deltas`.
//!
//! Leases: the capture records each put's lease ID (in the segment), not the lease's TTL. A
//! lease present in the base snapshot is restored by etcdutl with it; a lease first seen in the
//! captured changes is granted by the replay, with that ID, for [`replay::REPLAY_LEASE_TTL`]
//! seconds, just before the first put attached to it. A lease's revocation or expiry reaches the
//! capture as the delete events of its keys, which the replay applies like any delete (the
//! lease itself stays in the replayed etcd, without keys, until its TTL runs out; granting a
//! lease or letting it lapse without keys creates no revision, so HashKV is unaffected).

pub mod capture;
pub mod replay;

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Creates `dir` (and its parents) with mode 0700 where missing, and makes the new entry
/// durable in its parent: a segment in a directory a crash forgot would be lost with it.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    match dir.parent() {
        Some(parent) => std::fs::File::open(parent)?.sync_all(),
        None => Ok(()),
    }
}

/// Writes `bytes` to `dir/name` crash-safely: a `.tmp-` file in the same directory (mode
/// 0600), fsync, rename into place, fsync of the directory. A crash leaves either the old file
/// or the new one, and at worst a `.tmp-` file that the next write of the name replaces.
fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".tmp-{name}"));
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}
