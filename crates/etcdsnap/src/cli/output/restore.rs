//! A restore (`restore NAME|PATH`): the pre-flight report as text (what will happen, one line
//! per check, what to do), where the data went; or [`RestoreView`], the report as it is plus
//! the outcome.

use super::{Cells, human_bytes, rfc3339, table};
use etcdsnap::restore::{CheckStatus, Installed, MemberSettings, PreflightReport, SourceKind};
use serde::Serialize;
use std::path::PathBuf;

/// What `-o json|yaml` prints: the report, plus the outcome.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreView<'a> {
    #[serde(flatten)]
    pub report: &'a PreflightReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restored: Option<Restored>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// With --all-members: the whole cluster's members, token and each other node's command.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::cli::commands::restore::members::ClusterView>,
}

/// Where a restore put the data.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Restored {
    pub data_dir: PathBuf,
    pub moved_aside_to: Option<PathBuf>,
    pub seconds: f64,
}

impl Restored {
    pub fn new(installed: &Installed, took: std::time::Duration) -> Restored {
        Restored {
            data_dir: installed.data_dir.clone(),
            moved_aside_to: installed.moved_aside.clone(),
            seconds: took.as_secs_f64(),
        }
    }
}

/// Where the previous data went, and how to start etcd on the restored directory.
pub fn installed_text(installed: &Installed, m: &MemberSettings) -> String {
    let mut text = String::new();
    if let Some(aside) = &installed.moved_aside {
        text.push_str(&format!("The previous data directory was moved to {}.\n", aside.display()));
    }
    text.push_str(&format!(
        "Start etcd on it with: --data-dir {} --name {} --initial-cluster {} --initial-advertise-peer-urls {}\n",
        installed.data_dir.display(),
        m.name,
        m.initial_cluster,
        m.initial_advertise_peer_urls
    ));
    text
}

fn status_word(s: CheckStatus) -> &'static str {
    match s {
        CheckStatus::Pass => "ok",
        CheckStatus::Warn => "WARN",
        CheckStatus::Fail => "FAIL",
        CheckStatus::Skipped => "-",
    }
}

/// The exact time, and on a terminal how long ago that was: the first question before a restore.
fn created(t: jiff::Timestamp) -> String {
    let cells = Cells::for_stdout();
    match cells.created(t) {
        ago if ago.ends_with(" ago") => format!("{} ({ago})", rfc3339(t)),
        exact => exact,
    }
}

fn source_word(r: &PreflightReport) -> &'static str {
    match r.snapshot.source {
        SourceKind::File => "file",
        SourceKind::Local => "local snapshot directory",
        SourceKind::S3 => "S3",
    }
}

/// Lines of a table, indented under a heading.
fn indented(rows: &[Vec<String>], out: &mut String) {
    for line in table(rows).lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
}

/// The report as text: what will happen, then one line per check, then what to do.
pub fn report_text(r: &PreflightReport) -> String {
    let s = &r.snapshot;
    let mut out = String::new();
    let verb = if r.dry_run { "Dry run" } else { "Restore" };
    out.push_str(&format!("{verb}: {} into {}\n\n", s.name, r.target.data_dir.display()));
    let mut about = vec![
        vec![
            "Snapshot".to_string(),
            format!("{} ({}, {}, {})", s.name, source_word(r), s.compression, human_bytes(s.size)),
        ],
        vec!["Location".into(), s.location.clone()],
        vec![
            "Created".into(),
            match &s.node_name {
                Some(n) => format!("{} on node {n}", created(s.created_at)),
                None => format!("{} (node not recorded)", created(s.created_at)),
            },
        ],
        vec![
            "etcd".into(),
            match (s.etcd_revision, &s.etcd_version) {
                (Some(rev), Some(v)) => format!("revision {rev}, version {v}"),
                (Some(rev), None) => format!("revision {rev}"),
                _ => "revision and version not recorded".into(),
            },
        ],
        vec![
            "Token hash".into(),
            format!(
                "recorded {}, current {}: {}",
                r.token.recorded.as_deref().unwrap_or("none"),
                r.token.current.as_deref().unwrap_or("not given"),
                format!("{:?}", r.token.result).to_lowercase()
            ),
        ],
        vec![
            "Target".into(),
            match &r.target.move_aside_to {
                Some(aside) => {
                    format!("{} (holds data: will be moved aside to {})", r.target.data_dir.display(), aside.display())
                }
                None => format!("{} ({})", r.target.data_dir.display(), format!("{:?}", r.target.state).to_lowercase()),
            },
        ],
        vec![
            "Member".into(),
            format!(
                "{}, peer URLs {}, initial cluster {}",
                r.member.name, r.member.initial_advertise_peer_urls, r.member.initial_cluster
            ),
        ],
    ];
    if let Some(p) = &r.etcdutl.path {
        about
            .push(vec!["etcdutl".into(), format!("{} ({})", p.display(), r.etcdutl.version.as_deref().unwrap_or("?"))]);
    }
    if let Some(members) = &s.members {
        about.push(vec!["Recorded members".into(), members_line(members)]);
    }
    indented(&about, &mut out);
    for note in &s.notes {
        out.push_str(&format!("  note: {note}\n"));
    }
    out.push('\n');
    let mut rows = vec![vec!["CHECK".to_string(), "RESULT".into(), "DETAIL".into()]];
    for c in &r.checks {
        rows.push(vec![c.name.clone(), status_word(c.status).into(), c.detail.clone()]);
    }
    indented(&rows, &mut out);
    let advice: Vec<_> = r
        .checks
        .iter()
        .filter(|c| matches!(c.status, CheckStatus::Fail | CheckStatus::Warn))
        .filter_map(|c| c.fix.as_ref().map(|f| (c, f)))
        .collect();
    if !advice.is_empty() {
        out.push('\n');
        for (c, fix) in advice {
            out.push_str(&format!("  {} ({}): {fix}\n", c.name, status_word(c.status)));
        }
    }
    out.push('\n');
    if r.ok {
        out.push_str("All checks passed.\n");
    } else {
        let n = r.failures().count();
        out.push_str(&format!("{n} check{} failed: nothing was touched.\n", if n == 1 { "" } else { "s" }));
    }
    out
}

/// The recorded members in one cell: `m0 (https://10.0.0.5:2380), m1 (...) learner`.
fn members_line(members: &[etcdsnap_api::ClusterMember]) -> String {
    let one = |m: &etcdsnap_api::ClusterMember| {
        let name = if m.name.is_empty() { "(unstarted)" } else { &m.name };
        let learner = if m.is_learner { " learner" } else { "" };
        format!("{name} ({}){learner}", m.peer_urls.join(" "))
    };
    members.iter().map(one).collect::<Vec<_>>().join(", ")
}

/// Why a restore was refused, for stderr.
pub fn refused_text(report: &PreflightReport) -> String {
    let failed: Vec<&str> = report.failures().map(|c| c.name.as_str()).collect();
    format!("error: restore refused: {} failed (see the report); nothing was touched", failed.join(", "))
}
