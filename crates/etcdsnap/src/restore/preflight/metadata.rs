//! What the snapshot's metadata says: where it comes from, its recorded size, its last drill.

use super::super::source::{SnapshotSource, SourceKind};
use super::report::{CheckStatus, PreflightReport};
use etcdsnap_storage::record::MetadataSource;

pub(super) fn metadata_label(m: &MetadataSource) -> &'static str {
    match m {
        MetadataSource::Document => "document",
        MetadataSource::K3sMap => "k3s-extra-metadata",
        MetadataSource::None => "none",
        MetadataSource::Rejected => "rejected",
        MetadataSource::Resource => "resource",
    }
}

pub(super) fn check_metadata(report: &mut PreflightReport, source: &SnapshotSource) {
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
pub(super) fn check_drill(report: &mut PreflightReport, source: &SnapshotSource) {
    let (status, detail) = match &source.record.drill {
        Some(d) if d.passed() => (CheckStatus::Pass, format!("passed a restore drill at {}", d.at)),
        Some(d) => (CheckStatus::Warn, format!("its last restore drill, at {}, {}", d.at, d.result)),
        None => (CheckStatus::Skipped, "never drilled (`etcdsnap drill` proves a snapshot restores)".to_string()),
    };
    report.push("drill", status, detail, None);
}

pub(super) fn check_size(report: &mut PreflightReport, source: &SnapshotSource) {
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
