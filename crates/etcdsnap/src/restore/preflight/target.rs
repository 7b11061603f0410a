//! The target data directory: absent, empty, holding etcd's data (moved aside), or unusable; in
//! use by a process; working directories an interrupted restore left beside it.

use super::super::swap::{Target, TargetState};
use super::report::{CheckStatus, PreflightReport};
use std::path::{Path, PathBuf};

pub(super) fn check_target(
    report: &mut PreflightReport,
    data_dir: &Path,
    source_path: Option<&Path>,
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
        let holders = super::super::holders::find(&target.path);
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
    let prefix = format!(".{}{}", target.name.to_string_lossy(), super::super::WORKSPACE_INFIX);
    let Ok(entries) = std::fs::read_dir(&target.parent) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> =
        entries.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(&prefix)).map(|e| e.path()).collect();
    found.sort();
    found
}
