//! The pre-flight report: everything that is checked before a restore touches anything, as a
//! plain structure (printed as a table by the CLI, or as JSON/YAML). Each check says what it
//! found and, when it failed, what to do.
//!
//! The cheap checks (metadata, size, token, target, free space, etcdutl, versions, member
//! settings) only look at metadata; the integrity checks (sha256, etcd trailer) come from the
//! one pass over the bytes and are added afterwards.

use super::etcdutl::{self, MemberSettings};
use super::source::{SnapshotSource, SourceKind};
use super::space::{self, SizeBasis};
use super::swap::{Target, TargetState};
use crate::units::human_bytes as human;
use etcdsnap_api::{Compression, TokenHash};
use etcdsnap_storage::pipeline::verify::StoredCheck;
use etcdsnap_storage::record::MetadataSource;
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
    pub space: SpaceSummary,
    pub integrity: IntegritySummary,
    pub checks: Vec<Check>,
    pub dry_run: bool,
    /// No check failed.
    pub ok: bool,
}

impl PreflightReport {
    fn push(&mut self, name: &str, status: CheckStatus, detail: impl Into<String>, fix: Option<String>) {
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

/// What the restore needs besides the report once the cheap checks are done.
pub(crate) struct Plan {
    pub report: PreflightReport,
    pub target: Option<Target>,
    pub etcdutl: Option<PathBuf>,
    /// The snapshot must be written out (decompressed or downloaded) before etcdutl can read it.
    pub materialise: bool,
}

/// Inputs of the pre-flight checks.
pub(crate) struct PlanInput<'a> {
    pub source: &'a SnapshotSource,
    pub data_dir: &'a std::path::Path,
    pub member: &'a MemberSettings,
    pub etcdutl: Option<&'a std::path::Path>,
    pub token: Option<&'a CurrentToken>,
    pub ignore_token_mismatch: bool,
    pub dry_run: bool,
    pub now_unix: i64,
}

/// Runs every check that neither reads the snapshot's bytes nor runs etcdutl (whose version is
/// asked for while the bytes are read; see [`add_etcdutl`]).
pub(crate) fn plan(input: PlanInput<'_>) -> Plan {
    let source = input.source;
    let record = &source.record;
    let materialise = source.compression != Compression::None || source.path().is_none();
    let mut report = PreflightReport {
        snapshot: SnapshotSummary {
            name: record.name.to_string(),
            source: source.kind,
            location: record.location.clone(),
            size: record.size,
            compression: source.compression,
            created_at: record.created_at,
            node_name: (!record.node_name.is_empty()).then(|| record.node_name.clone()),
            metadata: metadata_label(&record.metadata_source).into(),
            etcd_revision: record.etcd.as_ref().map(|e| e.revision),
            etcd_version: record.etcd.as_ref().map(|e| e.version.clone()).filter(|v| !v.is_empty()),
            notes: source.notes.clone(),
        },
        target: TargetSummary {
            data_dir: input.data_dir.to_path_buf(),
            state: TargetState::Absent,
            move_aside_to: None,
        },
        member: input.member.clone(),
        etcdutl: EtcdutlSummary { path: None, version: None },
        token: TokenSummary {
            recorded: record.token_hash.as_ref().map(|h| h.to_string()),
            current: input.token.map(|t| t.hash.to_string()),
            current_from: input.token.map(|t| t.from.clone()),
            result: TokenResult::Unknown,
        },
        space: SpaceSummary {
            path: PathBuf::new(),
            available_bytes: None,
            needed_bytes: 0,
            decompressed_bytes: 0,
            basis: SizeBasis::Estimate,
            temporary_copy: materialise,
        },
        integrity: IntegritySummary { recorded_sha256: record.sha256.clone(), ..Default::default() },
        checks: Vec::new(),
        dry_run: input.dry_run,
        ok: true,
    };

    check_metadata(&mut report, source);
    check_size(&mut report, source);
    check_token(&mut report, input.ignore_token_mismatch);
    check_drill(&mut report, source);
    let target = check_target(&mut report, input.data_dir, source.path(), input.now_unix);
    check_space(&mut report, source, target.as_ref(), materialise);
    check_member(&mut report);
    let etcdutl = locate_etcdutl(&mut report, input.etcdutl);
    Plan { report, target, etcdutl, materialise }
}

fn metadata_label(m: &MetadataSource) -> &'static str {
    match m {
        MetadataSource::Document => "document",
        MetadataSource::K3sMap => "k3s-extra-metadata",
        MetadataSource::None => "none",
        MetadataSource::Rejected => "rejected",
        MetadataSource::Resource => "resource",
    }
}

fn check_metadata(report: &mut PreflightReport, source: &SnapshotSource) {
    use CheckStatus::*;
    let (status, detail) = match (&source.record.metadata_source, source.kind) {
        (MetadataSource::Document, _) => (Pass, "etcdsnap metadata document".to_string()),
        (MetadataSource::Resource, _) => (Pass, "ETCDSnapshotFile resource".to_string()),
        (_, SourceKind::S3) if source.record.token_hash.is_some() => (
            Warn,
            "no metadata document; token hash from the S3 object metadata (a K3s snapshot?): no recorded sha256 or etcd version"
                .to_string(),
        ),
        (MetadataSource::Rejected, _) => (
            Warn,
            format!("metadata unusable ({}): checked with etcd's trailer only", source.notes.join("; ")),
        ),
        _ => (
            Warn,
            "no metadata document (a K3s snapshot?): no recorded sha256, token hash or etcd version; etcd's trailer is still checked"
                .to_string(),
        ),
    };
    report.push("metadata", status, detail, None);
}

/// When the snapshot last went through a restore drill. Information for the operator choosing
/// a snapshot, never a reason to refuse: a failed drill warns.
fn check_drill(report: &mut PreflightReport, source: &SnapshotSource) {
    let (status, detail) = match &source.record.drill {
        Some(d) if d.passed() => (CheckStatus::Pass, format!("passed a restore drill at {}", d.at)),
        Some(d) => (CheckStatus::Warn, format!("its last restore drill, at {}, {}", d.at, d.result)),
        None => (CheckStatus::Skipped, "never drilled (`etcdsnap drill` proves a snapshot restores)".to_string()),
    };
    report.push("drill", status, detail, None);
}

fn check_size(report: &mut PreflightReport, source: &SnapshotSource) {
    match source.recorded_size {
        Some(recorded) if recorded != source.record.size => report.push(
            "size",
            CheckStatus::Fail,
            format!(
                "{} bytes stored, but the metadata document records {recorded}: the snapshot is truncated or was replaced",
                source.record.size
            ),
            Some("restore another snapshot; `etcdsnap verify` checks them all".into()),
        ),
        Some(recorded) => report.push(
            "size",
            CheckStatus::Pass,
            format!("{recorded} bytes, as recorded"),
            None,
        ),
        None => report.push(
            "size",
            CheckStatus::Skipped,
            match source.record.sha256 {
                Some(_) => format!("{} bytes; the recorded sha256 (below) covers every byte", source.record.size),
                None => format!("{} bytes; no recorded size to compare", source.record.size),
            },
            None,
        ),
    }
}

/// Why a token mismatch matters, for the message that stops the restore.
pub const TOKEN_MISMATCH_FIX: &str = "K3s and RKE2 encrypt their bootstrap data (CA certificates and keys) in etcd with the server token, so a datastore restored from this snapshot can only be decrypted with the token that was current when it was taken. Pass that old token with --token or --token-file (and roll the server's token back to it before starting the cluster), or pass --ignore-token-mismatch if this datastore holds no K3s/RKE2 bootstrap data.";

fn check_token(report: &mut PreflightReport, ignore_mismatch: bool) {
    use CheckStatus::*;
    let t = &report.token;
    let (result, status, detail, fix) = match (&t.recorded, &t.current) {
        (Some(r), Some(c)) if r == c => (
            TokenResult::Match,
            Pass,
            format!("current token ({}) matches the recorded hash {r}", t.current_from.as_deref().unwrap_or("")),
            None,
        ),
        (Some(r), Some(c)) => (
            TokenResult::Mismatch,
            if ignore_mismatch { Warn } else { Fail },
            format!(
                "the snapshot was taken with token hash {r}, the current token ({}) hashes to {c}{}",
                t.current_from.as_deref().unwrap_or(""),
                if ignore_mismatch { "; ignored (--ignore-token-mismatch)" } else { "" }
            ),
            Some(TOKEN_MISMATCH_FIX.to_string()),
        ),
        (Some(r), None) => (
            TokenResult::Unknown,
            Warn,
            format!("recorded hash {r}; no --token or --token-file given to compare with"),
            Some("pass --token-file (e.g. /var/lib/rancher/k3s/server/token) to check it".into()),
        ),
        (None, _) => (
            TokenResult::Unknown,
            Warn,
            "the snapshot records no token hash (K3s records none for local snapshots)".to_string(),
            Some(
                "make sure the cluster will start with the server token that was in use when the snapshot was taken"
                    .into(),
            ),
        ),
    };
    report.token.result = result;
    report.push("token", status, detail, fix);
}

fn check_target(
    report: &mut PreflightReport,
    data_dir: &std::path::Path,
    source_path: Option<&std::path::Path>,
    now_unix: i64,
) -> Option<Target> {
    use CheckStatus::*;
    let target = match Target::new(data_dir) {
        Ok(t) => t,
        Err(e) => {
            report.push("target", Fail, e.to_string(), None);
            return None;
        }
    };
    report.target.data_dir = target.path.clone();
    let state = match target.inspect() {
        Ok(s) => s,
        Err(e) => {
            report.push("target", Fail, e.to_string(), None);
            return None;
        }
    };
    report.target.state = state;
    let shown = target.path.display();
    let (status, detail, fix) = match state {
        TargetState::Absent => (Pass, format!("{shown} does not exist; it will be created"), None),
        TargetState::Empty => (Pass, format!("{shown} is an empty directory; it will be replaced"), None),
        TargetState::Occupied if !target.path.join("member").is_dir() => (
            Fail,
            format!("{shown} holds files but is not an etcd data directory (it has no member/ directory)"),
            Some("check --data-dir; if this directory really is to be replaced, move it away yourself first".into()),
        ),
        TargetState::Occupied if source_path.is_some_and(|p| p.starts_with(&target.path)) => (
            Fail,
            format!("the snapshot is inside {shown}, which would be moved aside"),
            Some("copy or move the snapshot out of the data directory first".into()),
        ),
        TargetState::Occupied => {
            let aside = target.aside_path(now_unix);
            let detail = format!("{shown} holds data; it will be moved aside to {} (never deleted)", aside.display());
            report.target.move_aside_to = Some(aside);
            (Pass, detail, None)
        }
        TargetState::NotADirectory => (
            Fail,
            format!("{shown} exists and is not a directory"),
            Some("pass the path of an etcd data directory (existing or not), or move the file away".into()),
        ),
        TargetState::Symlink => (
            Fail,
            format!("{shown} is a symbolic link; the restore would replace the link, not the directory"),
            Some(match std::fs::canonicalize(&target.path) {
                Ok(real) => format!("pass the directory it points to: --data-dir {}", real.display()),
                Err(_) => "pass the real directory instead of the link".into(),
            }),
        ),
        TargetState::ParentMissing => (
            Fail,
            format!("the parent directory {} does not exist", target.parent.display()),
            Some(format!("create it first (mkdir -p -m 0700 {})", target.parent.display())),
        ),
    };
    let mut usable = state.is_usable() && status != Fail;
    report.push("target", status, detail, fix);
    if matches!(state, TargetState::Occupied | TargetState::Empty) {
        let holders = super::holders::find(&target.path);
        if holders.is_empty() {
            report.push("in use", Pass, format!("no process has anything open in {shown}"), None);
        } else {
            usable = false;
            report.push(
                "in use",
                Fail,
                format!("{shown} is in use: {}", holders.describe()),
                Some("stop etcd (and whatever else has it open) on this node first: for K3s `systemctl stop k3s`, for RKE2 `systemctl stop rke2-server`, for kubeadm move etcd's static pod manifest out of /etc/kubernetes/manifests".into()),
            );
        }
    }
    let leftovers = leftover_workspaces(&target);
    if !leftovers.is_empty() {
        let list: Vec<String> = leftovers.iter().map(|p| p.display().to_string()).collect();
        report.push(
            "leftovers",
            Warn,
            format!("working directories of an interrupted restore: {}", list.join(", ")),
            Some(format!("remove them once no restore is running: rm -rf {}", list.join(" "))),
        );
    }
    usable.then_some(target)
}

/// Working directories an interrupted restore (killed, power loss) left beside the target.
fn leftover_workspaces(target: &Target) -> Vec<PathBuf> {
    let prefix = format!(".{}{}", target.name.to_string_lossy(), super::WORKSPACE_INFIX);
    let Ok(entries) = std::fs::read_dir(&target.parent) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> =
        entries.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(&prefix)).map(|e| e.path()).collect();
    found.sort();
    found
}

fn check_space(report: &mut PreflightReport, source: &SnapshotSource, target: Option<&Target>, materialise: bool) {
    let (decompressed, basis) = space::decompressed_size(source, source.record.size);
    let needed =
        decompressed.saturating_add(space::WAL_RESERVE).saturating_add(if materialise { decompressed } else { 0 });
    report.space.decompressed_bytes = decompressed;
    report.space.basis = basis;
    report.space.needed_bytes = needed;
    let Some(target) = target else {
        report.push("space", CheckStatus::Skipped, "no usable target directory", None);
        return;
    };
    report.space.path = target.parent.clone();
    let available = match space::available_bytes(&target.parent) {
        Ok(n) => n,
        Err(e) => {
            report.push(
                "space",
                CheckStatus::Warn,
                format!("cannot tell the free space in {}: {e}", target.parent.display()),
                None,
            );
            return;
        }
    };
    report.space.available_bytes = Some(available);
    let what = format!(
        "{} free in {}, {} needed ({} decompressed: {}{}, plus the WAL)",
        human(available),
        target.parent.display(),
        human(needed),
        human(decompressed),
        basis.describe(),
        if materialise { "; twice, for the temporary decompressed copy" } else { "" }
    );
    if available >= needed {
        report.push("space", CheckStatus::Pass, what, None);
    } else {
        let fix = Some(format!(
            "free at least {} in {} or restore to a directory on another file system",
            human(needed - available),
            target.parent.display()
        ));
        let status = if basis.is_exact() { CheckStatus::Fail } else { CheckStatus::Warn };
        report.push("space", status, what, fix);
    }
}

/// Finds etcdutl; a missing one fails the `etcdutl` check now, a found one is checked by
/// [`add_etcdutl`] once its version is known.
fn locate_etcdutl(report: &mut PreflightReport, explicit: Option<&std::path::Path>) -> Option<PathBuf> {
    match etcdutl::locate(explicit) {
        Ok(bin) => {
            report.etcdutl.path = Some(bin.clone());
            Some(bin)
        }
        Err(e) => {
            report.push("etcdutl", CheckStatus::Fail, e.to_string(), None);
            report.push("versions", CheckStatus::Skipped, "no etcdutl", None);
            None
        }
    }
}

/// Adds what `etcdutl version` said (None: etcdutl was not found, already reported): the
/// `etcdutl` check and the comparison with the snapshot's etcd version.
pub(crate) fn add_etcdutl(report: &mut PreflightReport, version: Option<Result<String, etcdutl::EtcdutlError>>) {
    let Some(version) = version else { return };
    let bin = report.etcdutl.path.clone().unwrap_or_default();
    match version {
        Ok(v) => {
            report.push("etcdutl", CheckStatus::Pass, format!("{} (version {v})", bin.display()), None);
            report.etcdutl.version = Some(v);
        }
        Err(e) => report.push(
            "etcdutl",
            CheckStatus::Fail,
            e.to_string(),
            Some("pass a working etcdutl with --etcdutl PATH".into()),
        ),
    }
    check_versions(report);
}

fn check_versions(report: &mut PreflightReport) {
    let snap = report.snapshot.etcd_version.clone();
    let revision = report.snapshot.etcd_revision;
    let tool = report.etcdutl.version.clone();
    let bump = report.member.bump_revision.unwrap_or(0);
    let rev = match revision {
        Some(r) if bump > 0 => format!("revision {r}, {} after the bump", r.saturating_add(bump as i64)),
        Some(r) => format!("revision {r}"),
        None => "revision not recorded".into(),
    };
    let (status, detail, fix) = match (snap.as_deref(), tool.as_deref()) {
        (None, _) => (CheckStatus::Skipped, format!("etcd version not recorded; {rev}"), None),
        (Some(s), None) => (CheckStatus::Skipped, format!("taken from etcd {s}, {rev}"), None),
        (Some(s), Some(t)) => match (etcdutl::minor_version(s), etcdutl::minor_version(t)) {
            (Some(sv), Some(tv)) if tv < sv => (
                CheckStatus::Warn,
                format!("taken from etcd {s}, {rev}; etcdutl {t} is older"),
                Some(format!("use etcdutl {}.{} or newer", sv.0, sv.1)),
            ),
            _ => (CheckStatus::Pass, format!("taken from etcd {s}, {rev}; etcdutl {t}"), None),
        },
    };
    report.push("versions", status, detail, fix);
}

fn check_member(report: &mut PreflightReport) {
    let problems = report.member.problems();
    if problems.is_empty() {
        let detail = format!(
            "member {} of {}, cluster token {}",
            report.member.name, report.member.initial_cluster, report.member.initial_cluster_token
        );
        report.push("member", CheckStatus::Pass, detail, None);
    } else {
        report.push("member", CheckStatus::Fail, problems.join("; "), None);
    }
}

/// Adds the results of the pass over the bytes.
pub(crate) fn add_integrity(report: &mut PreflightReport, result: Result<StoredCheck, String>) {
    let check = match result {
        Ok(c) => c,
        Err(e) => {
            report.push(
                "sha256",
                CheckStatus::Fail,
                format!("cannot read the snapshot to its end: {e}"),
                Some("the snapshot is damaged, truncated or not an etcd snapshot: restore another one".into()),
            );
            report.push("trailer", CheckStatus::Skipped, "the snapshot could not be read", None);
            return;
        }
    };
    let i = &mut report.integrity;
    i.computed_sha256 = Some(check.stored_sha256.clone());
    i.bytes_read = Some(check.stored_size);
    i.decompressed_size = Some(check.raw_size);
    i.trailer_valid = Some(check.trailer.is_valid());
    i.zip_entry = check.zip_entry.clone();
    match report.integrity.recorded_sha256.clone() {
        Some(recorded) if recorded == check.stored_sha256 => {
            report.push("sha256", CheckStatus::Pass, format!("the bytes hash to {recorded}, as recorded"), None)
        }
        Some(recorded) => report.push(
            "sha256",
            CheckStatus::Fail,
            format!(
                "recorded {recorded}, but the bytes hash to {}: the snapshot changed after it was saved",
                check.stored_sha256
            ),
            Some("restore another snapshot".into()),
        ),
        None => report.push(
            "sha256",
            CheckStatus::Warn,
            format!("the bytes hash to {}; no recorded sha256 to compare", check.stored_sha256),
            None,
        ),
    }
    match check.trailer.problem() {
        None => report.push(
            "trailer",
            CheckStatus::Pass,
            format!("etcd's sha256 trailer matches ({} of etcd data)", human(check.raw_size)),
            None,
        ),
        Some(p) => report.push("trailer", CheckStatus::Fail, p, Some("restore another snapshot".into())),
    }
}
