//! `etcdsnap restore`: arguments, source resolution, and printing the pre-flight report.

use super::args::S3Args;
use super::args::{OutputArgs, OutputFormat, TokenArgs};
use super::commands::{DEFAULT_DATA_DIR, token_hash};
use super::output::{self, human_bytes, rfc3339};
use super::presets::Preset;
use super::progress::ProgressLine;
use anyhow::{Context as _, bail};
use clap::Args;
use etcdsnap::restore::{
    self, CheckStatus, CurrentToken, MemberSettings, PreflightReport, RestoreOutcome, RestoreRequest, SnapshotSource,
};
use etcdsnap_api::SnapshotName;
use etcdsnap_storage::store::StoreError;
use etcdsnap_storage::store::local::LocalStore;
use etcdsnap_storage::store::s3::{RawS3Settings, S3Store};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Snapshot to restore: a snapshot name as `ls` shows it, looked up in the snapshot
    /// directory, or a file path (anything containing a `/`, e.g. ./snap.db). Not given with
    /// --to-revision or --to-time, which choose the snapshot themselves.
    #[arg(value_name = "NAME|PATH", required_unless_present_any = ["to_revision", "to_time"], conflicts_with_all = ["to_revision", "to_time"])]
    pub snapshot: Option<String>,
    /// Point-in-time recovery: the newest snapshot at or below revision N, rolled forward to N
    /// through the changes `agent --deltas` captured, then restored like any snapshot.
    #[arg(long, value_name = "N", conflicts_with = "to_time", value_parser = clap::value_parser!(i64).range(1..))]
    pub to_revision: Option<i64>,
    /// Point-in-time recovery to the newest revision observed at or before a time: RFC 3339
    /// (2026-12-03T07:04:00Z) or how long ago ("4m ago").
    #[arg(long, value_name = "TIME", value_parser = super::restore_pitr::parse_time)]
    pub to_time: Option<jiff::Timestamp>,
    /// With --to-revision/--to-time: the etcd binary the changes are replayed in (a private
    /// member on loopback), at least as new as the snapshot's etcd [default: etcd from PATH]
    #[arg(long, env = "ETCDSNAP_ETCD", value_name = "PATH")]
    pub etcd: Option<PathBuf>,
    /// With --to-revision/--to-time: the etcd cluster ID (as `ls -o wide` shows it) whose
    /// snapshots to use, when the snapshot directory holds several clusters'.
    #[arg(long, value_name = "ID")]
    pub cluster_id: Option<String>,
    /// etcd data directory to restore into. If it holds data, that is moved aside to
    /// <dir>-old-<unix time>, never deleted. (Unlike other commands' --data-dir, this is
    /// never taken from the environment or a config file.)
    #[arg(long, value_name = "DIR", required = true)]
    pub data_dir: PathBuf,
    /// Name of the restored etcd member (etcd's --name; etcd must later start with it).
    #[arg(long, value_name = "NAME", required = true)]
    pub name: String,
    /// Initial cluster of the restored member [default: <name>=<first peer URL>]
    #[arg(long, value_name = "NAME=URL,...")]
    pub initial_cluster: Option<String>,
    /// Peer URLs of the restored member.
    #[arg(long, value_name = "URLS", default_value = "http://localhost:2380")]
    pub initial_advertise_peer_urls: String,
    /// Cluster token of the restored cluster (etcd's, not the K3s server token).
    #[arg(long, value_name = "TOKEN", default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// Add N to the restored revision, so that Kubernetes watchers never see revisions go
    /// backwards (needs --mark-compacted).
    #[arg(long, value_name = "N", requires = "mark_compacted")]
    pub bump_revision: Option<u64>,
    /// Mark the bumped revision compacted, so that watchers re-list (needs --bump-revision).
    #[arg(long, requires = "bump_revision")]
    pub mark_compacted: bool,
    /// etcdutl binary [default: etcdutl from PATH]
    #[arg(long, env = "ETCDSNAP_ETCDUTL", value_name = "PATH")]
    pub etcdutl: Option<PathBuf>,
    /// Snapshot directory in which NAME is looked up [default: $ETCDSNAP_DATA_DIR/snapshots, a
    /// K3s/RKE2 server's snapshot directory, else /var/lib/etcdsnap/snapshots]
    #[arg(long, visible_alias = "etcd-snapshot-dir", env = "ETCDSNAP_DIR", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    #[command(flatten)]
    pub token: TokenArgs,
    /// Restore even if the snapshot's recorded token hash differs from the current token's.
    #[arg(long)]
    pub ignore_token_mismatch: bool,
    /// Print the pre-flight report (all checks, bytes included) and stop; nothing is written.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub output: OutputArgs,
    /// With `--s3`, NAME is a snapshot in the S3 folder (streamed, never kept locally).
    #[command(flatten)]
    pub s3: S3Args,
}

/// What `-o json|yaml` prints: the report, plus the outcome.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Printed<'a> {
    #[serde(flatten)]
    report: &'a PreflightReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    restored: Option<Restored>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Where a restore put the data, for `-o json|yaml`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Restored {
    pub(super) data_dir: PathBuf,
    pub(super) moved_aside_to: Option<PathBuf>,
    pub(super) seconds: f64,
}

pub async fn restore(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let Some(snapshot) = args.snapshot.clone() else {
        return super::restore_pitr::restore_to_point(args).await;
    };
    let source = match args.s3.enabled {
        true => resolve_s3(&snapshot, args.s3.raw(None)).await?,
        false => resolve(&args, &snapshot)?,
    };
    let request = RestoreRequest {
        source,
        data_dir: args.data_dir.clone(),
        member: member_settings(&args),
        etcdutl: args.etcdutl.clone(),
        token: current_token(&args)?,
        ignore_token_mismatch: args.ignore_token_mismatch,
        dry_run: args.dry_run,
    };
    let format = args.output.output;
    let mut progress = Some(ProgressLine::start(&format!("Checking {}", request.source.record.name)));
    let counter = progress.as_ref().map(ProgressLine::counter);
    let mut shown: Option<PreflightReport> = None;
    let run = restore::restore(&request, counter, |report| {
        if let Some(p) = progress.take() {
            p.finish();
        }
        if format == OutputFormat::Table {
            print_report(report);
        }
        shown = Some(report.clone());
    });
    // The swap is a few renames inside one poll of `run`: an interrupt can stop the restore
    // before or after it, never half-way. Dropping `run` stops etcdutl and removes the working
    // directory.
    let result = tokio::select! {
        r = run => r,
        _ = tokio::signal::ctrl_c() => bail!("interrupted before the restored data was put in place: the data directory was not changed"),
    };
    if let Some(p) = progress.take() {
        p.finish();
    }

    match result {
        Ok(RestoreOutcome::Restored { report, installed, duration }) => {
            let restored = Restored {
                data_dir: installed.data_dir.clone(),
                moved_aside_to: installed.moved_aside.clone(),
                seconds: duration.as_secs_f64(),
            };
            if format == OutputFormat::Table {
                println!(
                    "Restored {} into {} in {:.1}s.",
                    report.snapshot.name,
                    installed.data_dir.display(),
                    restored.seconds
                );
                if let Some(aside) = &installed.moved_aside {
                    println!("The previous data directory was moved to {}.", aside.display());
                }
                let m = &report.member;
                println!(
                    "Start etcd on it with: --data-dir {} --name {} --initial-cluster {} --initial-advertise-peer-urls {}",
                    installed.data_dir.display(),
                    m.name,
                    m.initial_cluster,
                    m.initial_advertise_peer_urls
                );
            } else {
                print_structured(&report, Some(restored), None, format)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Ok(RestoreOutcome::DryRun(report)) => {
            if format == OutputFormat::Table {
                println!("Dry run: nothing was changed.");
            } else {
                print_structured(&report, None, None, format)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Ok(RestoreOutcome::Refused(report)) => {
            if format != OutputFormat::Table {
                print_structured(&report, None, None, format)?;
            }
            let failed: Vec<&str> = report.failures().map(|c| c.name.as_str()).collect();
            eprintln!("error: restore refused: {} failed (see the report); nothing was touched", failed.join(", "));
            Ok(ExitCode::from(super::EXIT_FAILURE))
        }
        Err(e) => {
            if format != OutputFormat::Table
                && let Some(report) = &shown
            {
                print_structured(report, None, Some(format!("{e}")), format)?;
            }
            Err(e.into())
        }
    }
}

/// The current server token's hash, with where it came from.
pub(super) fn current_token(args: &RestoreArgs) -> anyhow::Result<Option<CurrentToken>> {
    Ok(token_hash(&args.token, Preset::detect().as_ref())?.map(|hash| CurrentToken {
        hash,
        // --token and --token-file exclude each other.
        from: match (&args.token.token, &args.token.token_file) {
            (None, Some(p)) => format!("--token-file {}", p.display()),
            _ => "--token".into(),
        },
    }))
}

/// The restored member, from the flags.
pub(super) fn member_settings(args: &RestoreArgs) -> MemberSettings {
    let first_peer = args.initial_advertise_peer_urls.split(',').next().unwrap_or_default().trim().to_string();
    MemberSettings {
        initial_cluster: args.initial_cluster.clone().unwrap_or_else(|| format!("{}={first_peer}", args.name)),
        name: args.name.clone(),
        initial_advertise_peer_urls: args.initial_advertise_peer_urls.clone(),
        initial_cluster_token: args.initial_cluster_token.clone(),
        bump_revision: args.bump_revision,
        mark_compacted: args.mark_compacted,
    }
}

/// With `--s3`: a bare snapshot name in the configured bucket folder (like K3s's
/// `--etcd-s3 --cluster-reset-restore-path=<name>`).
async fn resolve_s3(given: &str, settings: RawS3Settings) -> anyhow::Result<SnapshotSource> {
    if given.starts_with("s3://") || given.contains('/') {
        bail!(
            "with --s3 give the snapshot's name ({:?}), and the bucket and folder with --s3-bucket and --s3-folder",
            given.rsplit('/').next().unwrap_or(given)
        );
    }
    let name = SnapshotName::parse(given).with_context(|| format!("{given:?} is not a snapshot name"))?;
    let store = S3Store::new(settings.parse()?, None)?;
    Ok(SnapshotSource::from_store(store, &name).await?)
}

/// A path (anything with a `/`) is a file; anything else is a snapshot name in the snapshot
/// directory.
fn resolve(args: &RestoreArgs, given: &str) -> anyhow::Result<SnapshotSource> {
    if given.contains('/') {
        return Ok(SnapshotSource::from_path(Path::new(given))?);
    }
    let name =
        SnapshotName::parse(given).with_context(|| format!("{given:?} is neither a path nor a snapshot name"))?;
    let store = open_snapshot_dir(args, &format!("snapshot {name} not found"), name.as_ref())?;
    Ok(SnapshotSource::from_local_store(&store, &name)?)
}

/// The snapshot directory: --dir, else $ETCDSNAP_DATA_DIR's, a K3s/RKE2 server's, or the
/// default. `what` and `example` word the error when it does not exist.
pub(super) fn open_snapshot_dir(args: &RestoreArgs, what: &str, example: &str) -> anyhow::Result<LocalStore> {
    let dir = match (&args.dir, std::env::var_os("ETCDSNAP_DATA_DIR")) {
        (Some(dir), _) => dir.clone(),
        (None, Some(data_dir)) => match Preset::at(Path::new(&data_dir)) {
            Some(p) => p.snapshot_dir(),
            None => PathBuf::from(data_dir).join("snapshots"),
        },
        (None, None) => match Preset::detect() {
            Some(p) => p.snapshot_dir(),
            None => PathBuf::from(DEFAULT_DATA_DIR).join("snapshots"),
        },
    };
    match LocalStore::open(&dir, false, "") {
        Ok(store) => Ok(store),
        Err(StoreError::MissingDir(_)) => bail!(
            "{what}: the snapshot directory {} does not exist (pass --dir, or give a path, e.g. ./{example})",
            dir.display()
        ),
        Err(e) => Err(e.into()),
    }
}

fn print_structured(
    report: &PreflightReport,
    restored: Option<Restored>,
    error: Option<String>,
    format: OutputFormat,
) -> std::io::Result<()> {
    output::print_structured(&Printed { report, restored, error }, format)
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
    let cells = output::Cells::for_stdout();
    match cells.created(t) {
        ago if ago.ends_with(" ago") => format!("{} ({ago})", rfc3339(t)),
        exact => exact,
    }
}

/// The report as text: what will happen, then one line per check, then what to do.
pub(super) fn print_report(r: &PreflightReport) {
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
    for line in output::table(&about).lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
    for note in &s.notes {
        out.push_str(&format!("  note: {note}\n"));
    }
    out.push('\n');
    let mut rows = vec![vec!["CHECK".to_string(), "RESULT".into(), "DETAIL".into()]];
    for c in &r.checks {
        rows.push(vec![c.name.clone(), status_word(c.status).into(), c.detail.clone()]);
    }
    for line in output::table(&rows).lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
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
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
}

fn source_word(r: &PreflightReport) -> &'static str {
    match r.snapshot.source {
        etcdsnap::restore::SourceKind::File => "file",
        etcdsnap::restore::SourceKind::Local => "local snapshot directory",
        etcdsnap::restore::SourceKind::S3 => "S3",
    }
}
