//! Naming rules: snapshot file names, timestamps in names, CR object names, ConfigMap keys.

use crate::consts::{PART_SUFFIX, RECORD_SUFFIX, S3_STORAGE_NODE};
use sha2::{Digest, Sha256};
use std::fmt;

/// Longest snapshot name accepted (a Linux file name limit).
pub const MAX_NAME_LEN: usize = 255;

/// How a snapshot's bytes are compressed, known from its name's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Plain etcd snapshot (K3s's default).
    #[default]
    None,
    /// zstd frame, extension `.zst` (etcdsnap's own).
    Zstd,
    /// ZIP archive with one Deflate entry, extension `.zip` (K3s's `--etcd-snapshot-compress`).
    Zip,
}

impl Compression {
    /// File name extension including the dot; empty for [`Compression::None`].
    pub fn extension(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Zstd => ".zst",
            Compression::Zip => ".zip",
        }
    }

    /// Compression implied by a snapshot file name (under the `.age` of a sealed one).
    pub fn from_name(name: &str) -> Compression {
        let name = name.strip_suffix(crate::seal::SEALED_EXTENSION).unwrap_or(name);
        if name.ends_with(".zip") {
            Compression::Zip
        } else if name.ends_with(".zst") {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd => "zstd",
            Compression::Zip => "zip",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" | "" => Ok(Compression::None),
            "zstd" | "zst" => Ok(Compression::Zstd),
            "zip" => Ok(Compression::Zip),
            other => Err(format!("unknown compression {other:?} (expected none, zstd or zip)")),
        }
    }
}

/// Why a string is not acceptable as a snapshot name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("snapshot name is empty")]
    Empty,
    #[error("snapshot name {0:?} is longer than {MAX_NAME_LEN} bytes")]
    TooLong(String),
    #[error("snapshot name {0:?} is not a plain file name (path traversal is not allowed)")]
    NotABasename(String),
    #[error("snapshot name {0:?} contains a control character")]
    ControlCharacter(String),
    #[error("snapshot name {0:?} is hidden or reserved (starts with '.')")]
    Hidden(String),
    #[error("snapshot name {0:?} ends in {PART_SUFFIX}, which marks incomplete files")]
    Partial(String),
    #[error("snapshot name {0:?} ends in {RECORD_SUFFIX}, which is reserved for etcdsnap's records")]
    Reserved(String),
}

/// A validated snapshot name: a plain file name (no directory part, no `..`, no control
/// characters, not hidden, not a `.part` file). Every name that reaches the file system or an S3
/// key goes through this type, which is what makes path traversal impossible.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotName(String);

impl SnapshotName {
    pub fn parse(name: &str) -> Result<SnapshotName, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong(truncate_for_display(name)));
        }
        if name.contains('/') || name.contains('\\') || name == "." || name == ".." {
            return Err(NameError::NotABasename(name.to_string()));
        }
        if name.chars().any(char::is_control) {
            return Err(NameError::ControlCharacter(name.escape_debug().to_string()));
        }
        if name.starts_with('.') {
            return Err(NameError::Hidden(name.to_string()));
        }
        if name.ends_with(PART_SUFFIX) {
            return Err(NameError::Partial(name.to_string()));
        }
        if name.ends_with(RECORD_SUFFIX) {
            return Err(NameError::Reserved(name.to_string()));
        }
        Ok(SnapshotName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Compression implied by the extension.
    pub fn compression(&self) -> Compression {
        Compression::from_name(&self.0)
    }

    /// Unix seconds embedded in the name (see [`timestamp_from_name`]).
    pub fn timestamp(&self) -> Option<i64> {
        timestamp_from_name(&self.0)
    }

    /// File name of etcdsnap's record of this snapshot in the metadata directory.
    pub fn record_file_name(&self) -> String {
        format!("{}{RECORD_SUFFIX}", self.0)
    }

    /// The snapshot whose record `file_name` is, if it is one.
    pub fn of_record_file(file_name: &str) -> Option<SnapshotName> {
        SnapshotName::parse(file_name.strip_suffix(RECORD_SUFFIX)?).ok()
    }

    /// Whether the stored bytes are sealed: an age file, named `<name>[.zst|.zip].age`.
    pub fn is_sealed(&self) -> bool {
        self.0.ends_with(crate::seal::SEALED_EXTENSION)
    }

    /// The name without its compression and sealing extensions (the name of the entry inside
    /// a K3s zip).
    pub fn without_compression_extension(&self) -> &str {
        strip_compression_extension(&self.0)
    }
}

impl fmt::Display for SnapshotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for SnapshotName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

fn truncate_for_display(s: &str) -> String {
    let mut end = 64.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn strip_compression_extension(name: &str) -> &str {
    let name = name.strip_suffix(crate::seal::SEALED_EXTENSION).unwrap_or(name);
    name.strip_suffix(".zip").or_else(|| name.strip_suffix(".zst")).unwrap_or(name)
}

/// `<base>-<node>-<unix>` plus the compression extension: the K3s file name scheme.
pub fn snapshot_file_name(base: &str, node: &str, unix_seconds: i64, compression: Compression) -> String {
    format!("{base}-{node}-{unix_seconds}{}", compression.extension())
}

/// Rounds a time to the nearest whole second, as K3s does for snapshot names (`Round`, not
/// `Truncate`): 12.5 s becomes 13 s.
pub fn round_to_second(unix_nanos: i128) -> i64 {
    let secs = unix_nanos.div_euclid(1_000_000_000);
    let rem = unix_nanos.rem_euclid(1_000_000_000);
    (if rem >= 500_000_000 { secs + 1 } else { secs }) as i64
}

/// The Unix timestamp K3s embeds in a snapshot name: the text after the last `-`, once a
/// compression extension is removed. None when it does not parse (callers fall back to the
/// file's mtime or the object's LastModified).
pub fn timestamp_from_name(name: &str) -> Option<i64> {
    let stem = strip_compression_extension(name);
    let (_, ts) = stem.rsplit_once('-')?;
    ts.parse::<i64>().ok()
}

/// Whether `s` is a valid DNS-1123 subdomain (Kubernetes object names): lowercase alphanumerics,
/// `-` and `.`, starting and ending with an alphanumeric, at most 253 characters.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    if s.is_empty() || s.len() > 253 {
        return false;
    }
    s.split('.').all(|label| {
        let b = label.as_bytes();
        !b.is_empty()
            && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    })
}

/// Why a node name cannot be used. K3s accepts any node name; these are the ones that would
/// break a Kubernetes object etcdsnap writes for the node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeNameError {
    #[error("the node name is empty")]
    Empty,
    #[error(
        "node name {0:?} has more than 63 characters: it is the value of the storage-node label of its ETCDSnapshotFile resources, which Kubernetes limits to 63"
    )]
    TooLong(String),
    #[error(
        "node name {0:?} may only hold letters, digits, '-' and '.': it is part of the names of its ETCDSnapshotFile resources, and Kubernetes refuses object names with other characters"
    )]
    BadCharacter(String),
    #[error(
        "node name {0:?} must begin and end with a letter or digit, as Kubernetes label values and object names do"
    )]
    BadEdge(String),
}

/// Accepts every node name whose snapshots can be recorded: upper case included (it is
/// lowercased only in object names, as K3s does), at most 63 characters (the storage-node label),
/// letters, digits, `-` and `.`, beginning and ending with a letter or digit.
pub fn validate_node_name(name: &str) -> Result<(), NodeNameError> {
    if name.is_empty() {
        return Err(NodeNameError::Empty);
    }
    if name.len() > 63 {
        return Err(NodeNameError::TooLong(name.to_string()));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
        return Err(NodeNameError::BadCharacter(name.to_string()));
    }
    let edge = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    if !edge(name.bytes().next()) || !edge(name.bytes().last()) {
        return Err(NodeNameError::BadEdge(name.to_string()));
    }
    Ok(())
}

/// Where a snapshot record lives, for naming purposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageKind {
    Local,
    S3,
}

impl StorageKind {
    pub fn prefix(self) -> &'static str {
        match self {
            StorageKind::Local => "local-",
            StorageKind::S3 => "s3-",
        }
    }
}

/// Inputs of K3s's CR naming rule.
#[derive(Debug, Clone, Copy)]
pub struct CrNameInput<'a> {
    /// Snapshot file name.
    pub name: &'a str,
    pub storage: StorageKind,
    /// Node that took the snapshot; for S3 records the uploading node if known, else empty.
    pub node_name: &'a str,
    /// `file://...` or `s3://bucket/key`; empty for failed saves.
    pub location: &'a str,
    /// Unix seconds the snapshot was taken (used only by the fallback name).
    pub created_unix: i64,
}

/// The `ETCDSnapshotFile` object name K3s gives a snapshot:
/// `local-|s3-` + lowercased file name + `-` + first 6 hex of sha256(node + location).
/// For S3 records without a known uploader the node is the literal `s3`. If the lowercased name is
/// not a valid DNS-1123 subdomain or would make the object name too long, the name part becomes
/// `etcd-snapshot-<node up to its first '.'>-<unix>` (plus `.zip` when compressed).
pub fn cr_name(input: CrNameInput<'_>) -> String {
    let node = if input.node_name.is_empty() {
        match input.storage {
            StorageKind::S3 => S3_STORAGE_NODE,
            StorageKind::Local => "",
        }
    } else {
        input.node_name
    };
    let digest = Sha256::digest(format!("{node}{}", input.location).as_bytes());
    let digest6 = &hex::encode(digest)[..6];
    let mut name = input.name.to_lowercase();
    if !is_dns1123_subdomain(&name) || name.len() + 13 > 253 {
        // K3s keeps the node's case here, which the API server refuses for upper-case node
        // names; lower case is the only name such a resource can have.
        let short_node = node.split('.').next().unwrap_or(node).to_lowercase();
        name = format!("etcd-snapshot-{short_node}-{}", input.created_unix);
        if input.name.ends_with(".zip") {
            name.push_str(".zip");
        }
    }
    format!("{}{name}-{digest6}", input.storage.prefix())
}

/// K3s's legacy ConfigMap key (also its identity for matching files to CRs): `local-|s3-` + the
/// file name with every character outside `[-._a-zA-Z0-9]` replaced by `_`.
pub fn configmap_key(name: &str, storage: StorageKind) -> String {
    let sanitized: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') { c } else { '_' }).collect();
    format!("{}{sanitized}", storage.prefix())
}

/// Longest ConfigMap data key the API server accepts.
pub const MAX_CONFIGMAP_KEY_LEN: usize = 253;

/// Whether the API server accepts `key` as a ConfigMap data key: 1 to 253 characters of
/// `[-._a-zA-Z0-9]`, and not `.`, `..` or starting with `..`. K3s's keys of very long snapshot
/// names are not.
pub fn is_valid_configmap_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_CONFIGMAP_KEY_LEN
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        && key != "."
        && !key.starts_with("..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_k3s_accepts_are_accepted_unless_kubernetes_would_refuse_them() {
        for ok in ["node-1", "Node-B", "cp1.example.com", "K3S-SERVER-1", "a"] {
            assert_eq!(validate_node_name(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_node_name(""), Err(NodeNameError::Empty));
        assert!(matches!(validate_node_name(&"n".repeat(64)), Err(NodeNameError::TooLong(_))));
        assert!(matches!(validate_node_name("node_b"), Err(NodeNameError::BadCharacter(_))));
        assert!(matches!(validate_node_name("node b"), Err(NodeNameError::BadCharacter(_))));
        assert!(matches!(validate_node_name("-node"), Err(NodeNameError::BadEdge(_))));
        assert!(validate_node_name("node-").unwrap_err().to_string().contains("begin and end"));
    }

    #[test]
    fn upper_case_nodes_get_k3s_names_in_lower_case() {
        let input = |name: &'static str| CrNameInput {
            name,
            storage: StorageKind::Local,
            node_name: "Node-B",
            location: "file:///s/x",
            created_unix: 1_700_000_000,
        };
        let cr = cr_name(input("on-demand-Node-B-1700000000"));
        assert!(cr.starts_with("local-on-demand-node-b-1700000000-"), "{cr}");
        assert!(is_dns1123_subdomain(&cr));
        // The digest is over the node as given, as K3s computes it.
        assert_ne!(cr, cr_name(CrNameInput { node_name: "node-b", ..input("on-demand-Node-B-1700000000") }));
        let fallback = cr_name(input("Bad_Name-Node-B-1700000000"));
        assert!(fallback.starts_with("local-etcd-snapshot-node-b-1700000000-") && is_dns1123_subdomain(&fallback));
    }

    #[test]
    fn configmap_keys_the_api_server_accepts() {
        assert!(is_valid_configmap_key(&configmap_key("on-demand-n1-1700000000", StorageKind::Local)));
        assert!(is_valid_configmap_key(&configmap_key("weird name!", StorageKind::S3)));
        let long = "x".repeat(248);
        assert!(!is_valid_configmap_key(&configmap_key(&long, StorageKind::Local)), "254 characters");
        assert!(is_valid_configmap_key(&configmap_key(&long[..247], StorageKind::Local)));
        assert!(!is_valid_configmap_key("") && !is_valid_configmap_key(".") && !is_valid_configmap_key("..x"));
    }

    #[test]
    fn cr_name_matches_k3s_docs_for_local_snapshots() {
        let name = cr_name(CrNameInput {
            name: "on-demand-k3s-server-1-1730308816",
            storage: StorageKind::Local,
            node_name: "k3s-server-1",
            location: "file:///var/lib/rancher/k3s/server/db/snapshots/on-demand-k3s-server-1-1730308816",
            created_unix: 1730308816,
        });
        assert_eq!(name, "local-on-demand-k3s-server-1-1730308816-3e9290");
    }

    #[test]
    fn cr_name_matches_k3s_docs_for_s3_without_uploader() {
        let name = cr_name(CrNameInput {
            name: "on-demand-k3s-server-1-1730308816",
            storage: StorageKind::S3,
            node_name: "",
            location: "s3://etcd/k3s-test/on-demand-k3s-server-1-1730308816",
            created_unix: 1730308816,
        });
        assert_eq!(name, "s3-on-demand-k3s-server-1-1730308816-79b15c");
    }

    #[test]
    fn cr_name_for_s3_with_uploader_hashes_the_uploader() {
        let name = cr_name(CrNameInput {
            name: "on-demand-k3s-server-1-1730308816",
            storage: StorageKind::S3,
            node_name: "k3s-server-1",
            location: "s3://etcd/k3s-test/on-demand-k3s-server-1-1730308816",
            created_unix: 1730308816,
        });
        assert_eq!(name, "s3-on-demand-k3s-server-1-1730308816-3b38ed");
    }

    #[test]
    fn cr_name_falls_back_for_invalid_names() {
        let name = cr_name(CrNameInput {
            name: "PRUNE_TEST-server1-1700000000",
            storage: StorageKind::Local,
            node_name: "server1",
            location: "file:///var/lib/rancher/k3s/server/db/snapshots/PRUNE_TEST-server1-1700000000",
            created_unix: 1700000000,
        });
        assert!(name.starts_with("local-etcd-snapshot-server1-1700000000-"), "{name}");
        assert_eq!(name, "local-etcd-snapshot-server1-1700000000-02dd00");
    }

    #[test]
    fn cr_name_for_compressed_and_failed_snapshots() {
        let zip = cr_name(CrNameInput {
            name: "etcd-snapshot-server1-1700000000.zip",
            storage: StorageKind::Local,
            node_name: "server1",
            location: "file:///var/lib/rancher/k3s/server/db/snapshots/etcd-snapshot-server1-1700000000.zip",
            created_unix: 1700000000,
        });
        assert_eq!(zip, "local-etcd-snapshot-server1-1700000000.zip-d3176f");
        let failed = cr_name(CrNameInput {
            name: "etcd-snapshot-server1-1700000000",
            storage: StorageKind::Local,
            node_name: "server1",
            location: "",
            created_unix: 1700000000,
        });
        assert_eq!(failed, "local-etcd-snapshot-server1-1700000000-7f409b");
    }

    #[test]
    fn cr_name_fallback_uses_node_up_to_first_dot_and_keeps_zip() {
        let name = cr_name(CrNameInput {
            name: "Bad_Name.zip",
            storage: StorageKind::Local,
            node_name: "node1.example.com",
            location: "file:///x/Bad_Name.zip",
            created_unix: 42,
        });
        assert!(name.starts_with("local-etcd-snapshot-node1-42.zip-"), "{name}");
    }

    #[test]
    fn cr_name_fallback_when_too_long() {
        let long = format!("a{}", "b".repeat(240));
        let name = cr_name(CrNameInput {
            name: &long,
            storage: StorageKind::S3,
            node_name: "n",
            location: "s3://b/k",
            created_unix: 7,
        });
        assert!(name.starts_with("s3-etcd-snapshot-n-7-"), "{name}");
        assert!(is_dns1123_subdomain(&name));
        // 240 characters fit: 240 + 13 = 253.
        let fits = "c".repeat(240);
        let name = cr_name(CrNameInput {
            name: &fits,
            storage: StorageKind::Local,
            node_name: "n",
            location: "",
            created_unix: 7,
        });
        assert_eq!(name.len(), 253);
    }

    #[test]
    fn configmap_keys_replace_invalid_characters_and_keep_case() {
        assert_eq!(configmap_key("on-demand-n1-1700000000", StorageKind::Local), "local-on-demand-n1-1700000000");
        assert_eq!(configmap_key("PRUNE_TEST-x:y z-1", StorageKind::S3), "s3-PRUNE_TEST-x_y_z-1");
        assert_eq!(configmap_key("a.zip", StorageKind::Local), "local-a.zip");
        assert_eq!(configmap_key("é", StorageKind::Local), "local-_");
    }

    #[test]
    fn timestamps_come_from_the_last_dash() {
        assert_eq!(timestamp_from_name("etcd-snapshot-node-1-1700000000"), Some(1700000000));
        assert_eq!(timestamp_from_name("etcd-snapshot-node-1-1700000000.zip"), Some(1700000000));
        assert_eq!(timestamp_from_name("etcd-snapshot-node-1-1700000000.zst.age"), Some(1700000000));
        assert_eq!(timestamp_from_name("etcd-snapshot-node-1-1700000000.age"), Some(1700000000));
        assert_eq!(timestamp_from_name("etcd-snapshot-node-1-1700000000.zst"), Some(1700000000));
        assert_eq!(timestamp_from_name("no-timestamp-here"), None);
        assert_eq!(timestamp_from_name("nodash"), None);
        assert_eq!(timestamp_from_name("x-"), None);
    }

    #[test]
    fn file_names_follow_k3s() {
        assert_eq!(
            snapshot_file_name("on-demand", "node1", 1700000000, Compression::None),
            "on-demand-node1-1700000000"
        );
        assert_eq!(snapshot_file_name("etcd-snapshot", "n", 5, Compression::Zip), "etcd-snapshot-n-5.zip");
        assert_eq!(snapshot_file_name("etcd-snapshot", "n", 5, Compression::Zstd), "etcd-snapshot-n-5.zst");
    }

    #[test]
    fn rounding_is_to_the_nearest_second() {
        assert_eq!(round_to_second(12_499_999_999), 12);
        assert_eq!(round_to_second(12_500_000_000), 13);
        assert_eq!(round_to_second(0), 0);
    }

    #[test]
    fn dns1123() {
        assert!(is_dns1123_subdomain("local-a.b-c"));
        assert!(!is_dns1123_subdomain("Upper"));
        assert!(!is_dns1123_subdomain("-lead"));
        assert!(!is_dns1123_subdomain("trail-"));
        assert!(!is_dns1123_subdomain("a..b"));
        assert!(!is_dns1123_subdomain("under_score"));
        assert!(!is_dns1123_subdomain(""));
        assert!(!is_dns1123_subdomain(&"a".repeat(254)));
    }

    #[test]
    fn snapshot_names_must_be_plain_file_names() {
        assert!(SnapshotName::parse("on-demand-n-1").is_ok());
        assert!(SnapshotName::parse("a.zip").is_ok());
        for bad in ["", "../etc/passwd", "a/b", "..", ".", ".metadata", "x.part", "a\\b", "a\nb", "a\0b"] {
            assert!(SnapshotName::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(matches!(SnapshotName::parse(&"x".repeat(256)), Err(NameError::TooLong(_))));
        assert!(matches!(SnapshotName::parse("../x"), Err(NameError::NotABasename(_))));
    }

    #[test]
    fn compression_from_names() {
        let n = SnapshotName::parse("etcd-snapshot-n-5.zip").unwrap();
        assert_eq!(n.compression(), Compression::Zip);
        assert_eq!(n.without_compression_extension(), "etcd-snapshot-n-5");
        assert_eq!(Compression::from_name("x.zst"), Compression::Zstd);
        assert_eq!(Compression::from_name("x"), Compression::None);
        let sealed = SnapshotName::parse("etcd-snapshot-n-5.zip.age").unwrap();
        assert!(sealed.is_sealed() && !n.is_sealed());
        assert_eq!(sealed.compression(), Compression::Zip);
        assert_eq!(sealed.without_compression_extension(), "etcd-snapshot-n-5");
        assert_eq!(Compression::from_name("x.age"), Compression::None);
        assert_eq!("zstd".parse::<Compression>(), Ok(Compression::Zstd));
        assert!("gzip".parse::<Compression>().is_err());
    }
}
