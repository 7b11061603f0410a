//! The tools a drill runs, checked once before the first drill: which etcdutl, and whether its
//! `hashkv` can hash a real cluster's snapshot.
//!
//! `etcdutl hashkv` before 3.7.0 panics ("no lessor to attach lease", etcd issue #21105) on a
//! snapshot holding a key attached to a lease, and every kube-apiserver writes such keys
//! (Events, the master leases): with etcdutl 3.6 the hash level fails on every Kubernetes
//! snapshot. etcdutl 3.5 has no `hashkv` at all. With either, a drill can still prove the
//! contents when it has an etcd binary: the booted etcd has a lessor and computes the HashKV
//! itself. Without one, the drill is refused here, before anything runs, with what to do.

use super::{DrillOptions, HashBy};
use crate::restore::etcdutl::{self, EtcdutlError};
use std::path::PathBuf;
use std::time::Duration;

/// The first etcdutl whose `hashkv` reads snapshots holding leased keys.
pub const LEASE_SAFE_HASHKV: (u32, u32) = (3, 7);

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error(transparent)]
    Etcdutl(#[from] EtcdutlError),
    #[error("--drill-etcd {}: no such file", .0.display())]
    NoEtcd(PathBuf),
    #[error(
        "{} is etcdutl {version}, which cannot hash a Kubernetes cluster's snapshot: {reason}. Pass --etcdutl with etcdutl 3.7 or later (it reads snapshots of every etcd version), or --drill-etcd with an etcd binary so that the restored etcd computes the hash",
        bin.display()
    )]
    NoHash { bin: PathBuf, version: String, reason: &'static str },
}

/// How the hash level can be done with etcdutl `version`, given whether an etcd binary boots
/// the restored copy.
pub fn hash_by(version: &str, have_etcd: bool) -> Result<HashBy, &'static str> {
    match etcdutl::minor_version(version) {
        Some(v) if v >= LEASE_SAFE_HASHKV => Ok(HashBy::Etcdutl),
        _ if have_etcd => Ok(HashBy::BootedEtcd),
        Some(v) if v >= (3, 6) => Err(
            "its hashkv panics on keys attached to leases, which every kube-apiserver writes (etcd issue #21105, fixed in etcdutl 3.7.0)",
        ),
        _ => Err("it has no hashkv command (etcdutl 3.7 or later has one that reads leased keys)"),
    }
}

/// The drill options: etcdutl found and asked for its version, the etcd binary checked, and
/// how the contents will be hashed.
pub async fn prepare(
    etcdutl: Option<PathBuf>,
    etcd: Option<PathBuf>,
    scratch_parent: PathBuf,
    timeout: Duration,
) -> Result<DrillOptions, ToolError> {
    let bin = etcdutl::locate(etcdutl.as_deref())?;
    if let Some(etcd) = etcd.as_ref().filter(|e| !e.is_file()) {
        return Err(ToolError::NoEtcd(etcd.clone()));
    }
    let version = etcdutl::version(&bin).await?;
    let hash_by = hash_by(&version, etcd.is_some()).map_err(|reason| ToolError::NoHash {
        bin: bin.clone(),
        version: version.clone(),
        reason,
    })?;
    if hash_by == HashBy::BootedEtcd {
        tracing::info!(etcdutl = %bin.display(), %version, "drills hash each snapshot's contents with the booted etcd: this etcdutl's hashkv cannot read leased keys");
    }
    Ok(DrillOptions {
        etcdutl: bin,
        etcdutl_version: version,
        hash_by,
        etcd,
        scratch_parent,
        timeout,
        keys: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcdutl_3_7_and_later_hash_offline() {
        for v in ["3.7.0", "3.7.3", "3.8.1", "4.0.0"] {
            assert_eq!(hash_by(v, false), Ok(HashBy::Etcdutl), "{v}");
            assert_eq!(hash_by(v, true), Ok(HashBy::Etcdutl), "{v}");
        }
    }

    #[test]
    fn older_etcdutl_hashes_through_the_booted_etcd_or_is_refused() {
        for v in ["3.6.16", "3.6.0", "3.5.35", "garbage"] {
            assert_eq!(hash_by(v, true), Ok(HashBy::BootedEtcd), "{v}");
            assert!(hash_by(v, false).is_err(), "{v}");
        }
        assert!(hash_by("3.6.16", false).unwrap_err().contains("lease"));
        assert!(hash_by("3.5.35", false).unwrap_err().contains("no hashkv"));
    }
}
