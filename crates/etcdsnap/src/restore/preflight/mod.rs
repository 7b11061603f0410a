//! The pre-flight report: everything that is checked before a restore touches anything, as a
//! plain structure (printed as a table by the CLI, or as JSON/YAML). Each check says what it
//! found and, when it failed, what to do.
//!
//! The cheap checks (metadata, size, token, target, free space, etcdutl, versions, member
//! settings) only look at metadata; the integrity checks (sha256, etcd trailer) come from the
//! one pass over the bytes and are added afterwards.
//!
//! One file per kind of check: `metadata.rs` (metadata, size, last drill), `token.rs`,
//! `target.rs` (the data directory, processes using it, leftovers), `space.rs`, `tools.rs`
//! (etcdutl, versions, member settings), `integrity.rs` (sha256, trailer); the report's types
//! in `report.rs`.

mod integrity;
mod metadata;
mod report;
mod seal;
mod space;
mod target;
mod token;
mod tools;

pub(crate) use integrity::add_integrity;
pub use report::{
    Check, CheckStatus, CurrentToken, EtcdutlSummary, IntegritySummary, PreflightReport, SealSummary, SnapshotSummary,
    SpaceSummary, TargetSummary, TokenResult, TokenSummary,
};
pub use seal::{FROM_KIT, SealFacts};
pub(crate) use seal::{gather as gather_sealing, sealing_checks};
pub use token::TOKEN_MISMATCH_FIX;
pub(crate) use tools::add_etcdutl;

use super::etcdutl::MemberSettings;
use super::source::SnapshotSource;
use super::space::SizeBasis;
use super::swap::{Target, TargetState};
use etcdsnap_api::Compression;
use std::path::PathBuf;

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
    pub keys: &'a etcdsnap_storage::seal::OpenKeys,
    pub sealing: &'a SealFacts,
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
    let materialise = source.compression != Compression::None || source.path().is_none() || source.sealed;
    let mut report = PreflightReport {
        snapshot: SnapshotSummary {
            name: record.name.to_string(),
            source: source.kind,
            location: record.location.clone(),
            size: record.size,
            compression: source.compression,
            created_at: record.created_at,
            node_name: (!record.node_name.is_empty()).then(|| record.node_name.clone()),
            metadata: metadata::metadata_label(&record.metadata_source).into(),
            etcd_revision: record.etcd.as_ref().map(|e| e.revision),
            etcd_version: record.etcd.as_ref().map(|e| e.version.clone()).filter(|v| !v.is_empty()),
            members: record.etcd.as_ref().and_then(|e| e.members.clone()),
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
            recoverable: false,
        },
        seal: SealSummary::default(),
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

    metadata::check_metadata(&mut report, source);
    seal::check_sealing(&mut report, source, input.keys, input.sealing);
    metadata::check_size(&mut report, source);
    seal::kit_token(&mut report, input.sealing);
    token::check_token(&mut report, input.ignore_token_mismatch);
    seal::check_encryption_config(&mut report, source, input.sealing);
    metadata::check_drill(&mut report, source);
    let target = target::check_target(&mut report, input.data_dir, source.path(), input.now_unix);
    space::check_space(&mut report, source, target.as_ref(), materialise);
    tools::check_member(&mut report);
    let etcdutl = tools::locate_etcdutl(&mut report, input.etcdutl);
    Plan { report, target, etcdutl, materialise }
}
