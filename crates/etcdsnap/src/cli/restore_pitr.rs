//! `etcdsnap restore --to-revision N | --to-time T`: the plan (base, segments, gaps), the base's
//! pre-flight report, the replay in a private etcd, then the ordinary restore of its result.

use super::args::OutputFormat;
use super::output::{self, human_bytes, rfc3339};
use super::restore::{RestoreArgs, Restored, current_token, member_settings, open_snapshot_dir, print_report};
use anyhow::{Context as _, bail};
use etcdsnap::pitr::restore::{
    PitrPlan, RollForward, RolledForward, fetch_segments, plan_local, plan_s3, roll_forward,
};
use etcdsnap::restore::{self, RestoreOutcome, RestoreRequest, SnapshotSource};
use etcdsnap_api::SnapshotName;
use etcdsnap_storage::pitr::Target;
use etcdsnap_storage::store::SnapshotStore;
use etcdsnap_storage::store::s3::S3Store;
use serde::Serialize;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// `--to-time`: RFC 3339, or a duration and " ago" ("4m ago", "1h30m ago").
pub fn parse_time(s: &str) -> Result<jiff::Timestamp, String> {
    let s = s.trim();
    if let Some(ago) = s.strip_suffix("ago") {
        let d = etcdsnap_api::go::parse_duration(ago.trim())?;
        let d = jiff::SignedDuration::try_from(d).map_err(|e| e.to_string())?;
        return etcdsnap_storage::clock::now().checked_sub(d).map_err(|e| e.to_string());
    }
    s.parse()
        .map_err(|e| format!("{s:?} is neither an RFC 3339 time (2026-12-03T07:04:00Z) nor \"<duration> ago\": {e}"))
}

/// What `-o json|yaml` prints.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Printed {
    base: String,
    base_revision: i64,
    target_revision: i64,
    segments: Vec<String>,
    chains: Vec<ChainPrinted>,
    warnings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    replayed: Option<Replayed>,
    #[serde(skip_serializing_if = "Option::is_none")]
    restored: Option<Restored>,
    dry_run: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ChainPrinted {
    chain: String,
    base_revision: i64,
    reachable: i64,
    gaps: Vec<String>,
    broken: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Replayed {
    revision: i64,
    revisions: u64,
    events: u64,
    leases_granted: u64,
    hash_kv: u32,
    hash_checked: bool,
    notes: Vec<String>,
    seconds: f64,
}

pub async fn restore_to_point(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let target = match (args.to_revision, args.to_time) {
        (Some(rev), _) => Target::Revision(rev),
        (None, Some(t)) => Target::Time(t.as_millisecond()),
        (None, None) => bail!("give a snapshot, --to-revision or --to-time"),
    };
    let format = args.output.output;
    let (mut plan, base) = match args.s3.enabled {
        true => plan_in_s3(&args, target).await?,
        false => plan_in_dir(&args, target).await?,
    };
    let mut printed = printed_plan(&plan, args.dry_run);
    if format == OutputFormat::Table {
        print_plan(&plan);
    }
    if !check_base(&args, &base).await? {
        return Ok(ExitCode::from(super::EXIT_FAILURE));
    }
    if args.dry_run {
        return finish(&printed, format, "Dry run: nothing was replayed or changed.");
    }

    let etcdutl = restore::etcdutl::locate(args.etcdutl.as_deref())?;
    let etcd = locate_etcd(args.etcd.as_deref())?;
    let work = work_dir(&args.data_dir)?;
    if let Some(store) = base.store().filter(|_| args.s3.enabled) {
        fetch_segments(store, &mut plan, &work.path().join("deltas")).await?;
    }
    if format == OutputFormat::Table {
        eprintln!(
            "Replaying revisions {}..={} in a private etcd...",
            plan.replay.base.revision + 1,
            plan.replay.stop_at
        );
    }
    let roll = RollForward { plan: &plan, target, base: &base, etcdutl: &etcdutl, etcd: &etcd, work: work.path() };
    let rolled = tokio::select! {
        r = roll_forward(&roll) => r?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted during the replay: the data directory was not changed"),
    };
    printed.target_revision = rolled.report.revision;
    printed.replayed = Some(replayed(&rolled, plan.expected_hash.is_some()));
    if format == OutputFormat::Table {
        print_replayed(&plan, &rolled);
    }

    // The token was checked against the base above; the rolled file carries no metadata.
    let install = request(&args, SnapshotSource::from_path(&rolled.snapshot)?, false, None);
    let result = tokio::select! {
        r = restore::restore(&install, None, |r| if !r.ok { print_report(r) }) => r?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted before the restored data was put in place: the data directory was not changed"),
    };
    let RestoreOutcome::Restored { installed, duration, report } = result else {
        bail!("the rolled-forward snapshot {} did not pass its checks; nothing was touched", rolled.snapshot.display());
    };
    printed.restored = Some(Restored {
        data_dir: installed.data_dir.clone(),
        moved_aside_to: installed.moved_aside.clone(),
        seconds: duration.as_secs_f64(),
    });
    finish(&printed, format, &done_text(&plan, &rolled, &installed, &report.member))
}

/// The snapshots and chains of the snapshot directory.
async fn plan_in_dir(args: &RestoreArgs, target: Target) -> anyhow::Result<(PitrPlan, SnapshotSource)> {
    let store = open_snapshot_dir(args, "nothing to roll forward", "snap.db")?;
    let plan = plan_local(&store, target, args.cluster_id.as_deref()).await?;
    let name = SnapshotName::parse(&plan.replay.base.name).context("the plan's base snapshot")?;
    let base = SnapshotSource::from_local_store(&store, &name)?;
    Ok((plan, base))
}

/// The base's pre-flight report (token, target, space, etcdutl, and its bytes), before any
/// work; false, said, when a check failed.
async fn check_base(args: &RestoreArgs, base: &SnapshotSource) -> anyhow::Result<bool> {
    let check = request(args, base.clone(), true, current_token(args)?);
    let outcome = restore::restore(&check, None, |r| {
        if args.output.output == OutputFormat::Table {
            // Checked like a dry run; headed as what the command will do.
            let mut shown = r.clone();
            shown.dry_run = args.dry_run;
            print_report(&shown)
        }
    })
    .await?;
    if let RestoreOutcome::Refused(report) = outcome {
        let failed: Vec<&str> = report.failures().map(|c| c.name.as_str()).collect();
        eprintln!("error: restore refused: {} failed (see the report); nothing was touched", failed.join(", "));
        return Ok(false);
    }
    Ok(true)
}

/// What was done and how to start etcd on it.
fn done_text(
    plan: &PitrPlan,
    rolled: &RolledForward,
    installed: &restore::Installed,
    m: &restore::MemberSettings,
) -> String {
    let mut done = format!(
        "Restored {} rolled forward to revision {} into {}.",
        plan.base.name,
        rolled.report.revision,
        installed.data_dir.display()
    );
    if let Some(aside) = &installed.moved_aside {
        done.push_str(&format!("\nThe previous data directory was moved to {}.", aside.display()));
    }
    done.push_str(&format!(
        "\nStart etcd on it with: --data-dir {} --name {} --initial-cluster {} --initial-advertise-peer-urls {}",
        installed.data_dir.display(),
        m.name,
        m.initial_cluster,
        m.initial_advertise_peer_urls
    ));
    done
}

/// With --s3: the snapshots and chains of the S3 folder.
async fn plan_in_s3(args: &RestoreArgs, target: Target) -> anyhow::Result<(PitrPlan, SnapshotSource)> {
    let store: Arc<dyn SnapshotStore> = S3Store::new(args.s3.raw(None).parse()?, None)?;
    let plan = plan_s3(&store, target, args.cluster_id.as_deref()).await?;
    let base = SnapshotSource::from_listed(store, plan.base.clone(), Vec::new())?;
    Ok((plan, base))
}

fn request(
    args: &RestoreArgs,
    source: SnapshotSource,
    dry_run: bool,
    token: Option<restore::CurrentToken>,
) -> RestoreRequest {
    RestoreRequest {
        source,
        data_dir: args.data_dir.clone(),
        member: member_settings(args),
        etcdutl: args.etcdutl.clone(),
        ignore_token_mismatch: args.ignore_token_mismatch || token.is_none(),
        token,
        dry_run,
    }
}

fn finish(printed: &Printed, format: OutputFormat, text: &str) -> anyhow::Result<ExitCode> {
    match format {
        OutputFormat::Table => println!("{text}"),
        _ => output::print_structured(printed, format)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `--etcd`, else `etcd` from PATH.
fn locate_etcd(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let usable =
        |p: &Path| std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false);
    if let Some(p) = explicit {
        anyhow::ensure!(usable(p), "--etcd {}: not an executable file", p.display());
        return Ok(p.to_path_buf());
    }
    let search = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&search)
        .map(|dir| dir.join("etcd"))
        .find(|p| usable(p))
        .context("no etcd binary to replay the changes in: pass --etcd PATH (at least as new as the snapshot's etcd)")
}

/// A private directory beside the data directory (the result is large and ends up there).
fn work_dir(data_dir: &Path) -> anyhow::Result<tempfile::TempDir> {
    let absolute = std::path::absolute(data_dir).with_context(|| format!("--data-dir {}", data_dir.display()))?;
    let parent = absolute.parent().unwrap_or(Path::new("/"));
    let name = absolute.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    tempfile::Builder::new()
        .prefix(&format!(".{name}.etcdsnap-pitr-"))
        .tempdir_in(parent)
        .with_context(|| format!("cannot create a working directory in {}; nothing was touched", parent.display()))
}

fn printed_plan(plan: &PitrPlan, dry_run: bool) -> Printed {
    Printed {
        base: plan.base.name.to_string(),
        base_revision: plan.replay.base.revision,
        target_revision: plan.replay.stop_at,
        segments: plan.replay.segments.iter().map(|s| format!("{}/{}", s.chain, s.segment_name())).collect(),
        chains: plan
            .chains
            .iter()
            .map(|c| ChainPrinted {
                chain: c.chain.clone(),
                base_revision: c.base_revision,
                reachable: c.reachable,
                gaps: c.gaps.iter().map(|g| format!("{}..{}", g.after + 1, g.resumes_at - 1)).collect(),
                broken: c.broken.clone(),
            })
            .collect(),
        warnings: plan.warnings.clone(),
        replayed: None,
        restored: None,
        dry_run,
    }
}

fn replayed(rolled: &RolledForward, hash_checked: bool) -> Replayed {
    let r = &rolled.report;
    Replayed {
        revision: r.revision,
        revisions: r.revisions_applied,
        events: r.events_applied,
        leases_granted: r.leases_granted,
        hash_kv: r.hash.hash,
        hash_checked: hash_checked && r.notes.is_empty(),
        notes: r.notes.clone(),
        seconds: r.duration.as_secs_f64(),
    }
}

fn ms_time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map(rfc3339).unwrap_or_else(|_| ms.to_string())
}

/// The chain it will replay: base, segments, and each chain's gaps.
fn print_plan(plan: &PitrPlan) {
    let p = &plan.replay;
    let segments = &p.segments;
    let mut rows = vec![
        vec![
            "Base".to_string(),
            format!("{} (revision {}, taken {})", p.base.name, p.base.revision, ms_time(p.base.taken_ms)),
        ],
        vec!["Target".into(), format!("revision {}", p.stop_at)],
        vec![
            "Replay".into(),
            match (segments.first(), segments.last()) {
                (Some(first), Some(last)) => format!(
                    "{} revisions in {} segment{}, observed {} to {}, {}",
                    p.stop_at - p.base.revision,
                    segments.len(),
                    if segments.len() == 1 { "" } else { "s" },
                    ms_time(first.first_observed_ms),
                    ms_time(last.last_observed_ms),
                    human_bytes(segments.iter().map(|s| s.stored_bytes).sum())
                ),
                _ => "nothing: the snapshot is at the target".into(),
            },
        ],
    ];
    for c in &plan.chains {
        let gaps: Vec<String> = c.gaps.iter().map(|g| format!("{}..{}", g.after + 1, g.resumes_at - 1)).collect();
        let state = match (&c.broken, gaps.is_empty()) {
            (Some(why), _) => format!("broken after {}: {why}", c.last_revision),
            (None, true) => "no gaps".into(),
            (None, false) => format!("gaps {}", gaps.join(", ")),
        };
        rows.push(vec![
            "Chain".into(),
            format!("{} (from {}, reaches {}; {state})", c.chain, c.base_revision, c.reachable),
        ]);
    }
    println!("Point-in-time restore to revision {}\n", p.stop_at);
    for line in output::table(&rows).lines() {
        println!("  {line}");
    }
    for w in &plan.warnings {
        println!("  warning: {w}");
    }
    println!();
}

fn print_replayed(plan: &PitrPlan, rolled: &RolledForward) {
    let r = &rolled.report;
    let hash = match (plan.expected_hash, r.notes.first()) {
        (Some(_), None) => format!("HashKV {} matches the live cluster's at that revision", r.hash.hash),
        (_, Some(note)) => format!("HashKV {} ({note})", r.hash.hash),
        (None, None) => format!("HashKV {}", r.hash.hash),
    };
    println!(
        "Replayed {} revisions ({} events, {} leases granted) to revision {} in {:.1}s; {hash}.",
        r.revisions_applied,
        r.events_applied,
        r.leases_granted,
        r.revision,
        r.duration.as_secs_f64()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_a_duration_ago() {
        assert_eq!(parse_time("2026-12-03T07:04:00Z").unwrap().as_second(), 1_796_281_440);
        let ago = parse_time("4m ago").unwrap();
        let expected = etcdsnap_storage::clock::now().as_second() - 240;
        assert!((ago.as_second() - expected).abs() <= 2);
        for bad in ["yesterday", "4 parsecs ago", "2026-13-03T07:04:00Z", ""] {
            assert!(parse_time(bad).is_err(), "{bad:?} accepted");
        }
    }
}
