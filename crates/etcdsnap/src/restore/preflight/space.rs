//! Free space on the target's file system against what the restore will write.

use super::super::source::SnapshotSource;
use super::super::space;
use super::super::swap::Target;
use super::report::{CheckStatus, PreflightReport};
use crate::units::human_bytes as human;

pub(super) fn check_space(
    report: &mut PreflightReport,
    source: &SnapshotSource,
    target: Option<&Target>,
    materialise: bool,
) {
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
