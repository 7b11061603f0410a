//! The report's types: one [`Check`] per line, and what was found about the snapshot, the
//! token, the target, the space and etcdutl.

use super::super::etcdutl::MemberSettings;
use super::super::source::SourceKind;
use super::super::space::SizeBasis;
use super::super::swap::TargetState;
use etcdsnap_api::{Compression, TokenHash};
use serde::Serialize;
use std::path::PathBuf;

/// Result of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Pass,
    /// Could not be fully checked, or passed with a caveat; does not stop the restore.
    Warn,
    /// Stops the restore.
    Fail,
    /// Not run (an earlier failure, or nothing to compare).
    Skipped,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    pub name: String,
    pub status: CheckStatus,
    pub detail: String,
    /// What to do about a failure or warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// The snapshot as found.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSummary {
    pub name: String,
    pub source: SourceKind,
    pub location: String,
    /// Stored bytes.
    pub size: u64,
    pub compression: Compression,
    pub created_at: jiff::Timestamp,
    /// Node that took it, when recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Where the details come from: `document`, `k3s-extra-metadata`, `none`, `rejected`,
    /// `resource`.
    pub metadata: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_revision: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_version: Option<String>,
    /// The cluster's members when the snapshot was taken, when recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<etcdsnap_api::ClusterMember>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// The pass over the bytes.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IntegritySummary {
    pub recorded_sha256: Option<String>,
    pub computed_sha256: Option<String>,
    pub bytes_read: Option<u64>,
    pub decompressed_size: Option<u64>,
    pub trailer_valid: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zip_entry: Option<String>,
}

/// Token comparison outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenResult {
    Match,
    Mismatch,
    Unknown,
}

/// The server token in use now (only its hash; the token itself never leaves the CLI).
#[derive(Debug, Clone)]
pub struct CurrentToken {
    pub hash: TokenHash,
    /// `--token` or `--token-file <path>`, for the report.
    pub from: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenSummary {
    pub recorded: Option<String>,
    pub current: Option<String>,
    pub current_from: Option<String>,
    pub result: TokenResult,
    /// The server token is in the snapshot's restore kit (and hashes as recorded when
    /// `result` is match): `etcdsnap kit` gives it back.
    pub recoverable: bool,
}

/// Sealing and signature, as found.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SealSummary {
    pub sealed: bool,
    /// The age recipients the snapshot is sealed to (public keys).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
    /// What the restore kit holds, by path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kit: Option<Vec<String>>,
    /// The minisign key id the record's signature verified with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption_config_recorded: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption_config_host: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SpaceSummary {
    /// The directory whose file system receives the restored data.
    pub path: PathBuf,
    pub available_bytes: Option<u64>,
    pub needed_bytes: u64,
    pub decompressed_bytes: u64,
    pub basis: SizeBasis,
    /// Whether the snapshot is first written decompressed beside the target.
    pub temporary_copy: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetSummary {
    pub data_dir: PathBuf,
    pub state: TargetState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub move_aside_to: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EtcdutlSummary {
    pub path: Option<PathBuf>,
    pub version: Option<String>,
}

/// Everything known before the restore touches anything.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PreflightReport {
    pub snapshot: SnapshotSummary,
    pub target: TargetSummary,
    pub member: MemberSettings,
    pub etcdutl: EtcdutlSummary,
    pub token: TokenSummary,
    pub seal: SealSummary,
    pub space: SpaceSummary,
    pub integrity: IntegritySummary,
    pub checks: Vec<Check>,
    pub dry_run: bool,
    /// No check failed.
    pub ok: bool,
}

impl PreflightReport {
    pub(super) fn push(&mut self, name: &str, status: CheckStatus, detail: impl Into<String>, fix: Option<String>) {
        if status == CheckStatus::Fail {
            self.ok = false;
        }
        self.checks.push(Check { name: name.into(), status, detail: detail.into(), fix });
    }

    /// The failed checks.
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.status == CheckStatus::Fail)
    }

    /// Marks the byte checks as not run.
    pub(crate) fn skip_integrity(&mut self, why: &str) {
        self.push("sha256", CheckStatus::Skipped, why, None);
        self.push("trailer", CheckStatus::Skipped, why, None);
    }
}
