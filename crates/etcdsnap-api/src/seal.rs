//! Sealed snapshots: the names and record fields of snapshots encrypted with age, their restore
//! kits and the minisign signatures of their records. No keys: only what may be stored.
//!
//! A sealed snapshot is stored as `<name>[.zst|.zip].age`, exactly what `age -d` opens (and
//! what it gives back is what an unsealed save would have stored). Beside its record, as the
//! record is kept (the snapshot directory's own records, or `<folder>/.metadata/` in S3), sit:
//!
//! - `<name>.etcdsnap-kit.age`: the restore kit, a tar of the server token and the files named
//!   at save time, sealed to the same recipients;
//! - `<name>.etcdsnap.json.minisig`: the minisign signature of the record's bytes.
//!
//! K3s never reads either: it matches `.metadata/` objects to snapshots by exact name.

use crate::consts::RECORD_SUFFIX;
use serde::{Deserialize, Serialize};

/// Extension of a sealed snapshot's name, after its compression's.
pub const SEALED_EXTENSION: &str = ".age";
/// Suffix of a snapshot's sealed restore kit, beside its record: `<name>.etcdsnap-kit.age`.
pub const KIT_SUFFIX: &str = ".etcdsnap-kit.age";
/// Suffix of a record's detached signature: `<name>.etcdsnap.json.minisig`.
pub const SIGNATURE_SUFFIX: &str = ".minisig";

/// The key of the S3 config Secret that lists the recipients new snapshots are sealed to
/// (comma- or newline-separated), beside K3s's `etcd-s3-*` keys.
pub const SECRET_RECIPIENTS_KEY: &str = "etcdsnap-encrypt-to";

/// The file name of a snapshot's record signature, `<name>.etcdsnap.json.minisig`.
pub fn signature_file_name(name: &str) -> String {
    format!("{name}{RECORD_SUFFIX}{SIGNATURE_SUFFIX}")
}

/// The file name of a snapshot's sealed restore kit, `<name>.etcdsnap-kit.age`.
pub fn kit_file_name(name: &str) -> String {
    format!("{name}{KIT_SUFFIX}")
}

/// The snapshot name whose companion (record, signature or kit) `file_name` is.
pub fn companion_of(file_name: &str) -> Option<&str> {
    let signature = format!("{RECORD_SUFFIX}{SIGNATURE_SUFFIX}");
    file_name
        .strip_suffix(signature.as_str())
        .or_else(|| file_name.strip_suffix(RECORD_SUFFIX))
        .or_else(|| file_name.strip_suffix(KIT_SUFFIX))
        .filter(|n| !n.is_empty())
}

/// What a record says about a sealed snapshot: to whom it is sealed, and its kit. Recipients
/// are public keys (`age1...`); no identity is ever recorded.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Sealed {
    /// The age recipients the snapshot (and its kit) was encrypted to.
    pub recipients: Vec<String>,
    /// The restore kit stored beside the record, when one was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kit: Option<KitRef>,
}

/// A restore kit, by digest: the sha256 and size of its stored (sealed) bytes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KitRef {
    pub sha256: String,
    pub size: u64,
    /// What the kit holds (`token`, and the paths of its files), never their contents.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entries: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn companions_name_their_snapshot() {
        assert_eq!(signature_file_name("s-n-1.zst.age"), "s-n-1.zst.age.etcdsnap.json.minisig");
        assert_eq!(kit_file_name("s-n-1.age"), "s-n-1.age.etcdsnap-kit.age");
        for file in [signature_file_name("s-n-1.age"), kit_file_name("s-n-1.age"), "s-n-1.age.etcdsnap.json".into()] {
            assert_eq!(companion_of(&file), Some("s-n-1.age"), "{file}");
        }
        assert_eq!(companion_of("s-n-1.age"), None);
        assert_eq!(companion_of(".etcdsnap.json"), None);
    }
}
