//! `etcdsnap restore --to-revision N | --to-time T`: the plan (base, segments, gaps), the base's
//! pre-flight report, the replay in a private etcd, then the ordinary restore of its result.

use super::{RestoreArgs, open_snapshot_dir, print_report};
use crate::cli::flags::OutputFormat;
use crate::cli::output::pitr::{self as view, PitrView};
use crate::cli::output::restore::{Restored, refused_text};
use crate::cli::output::{emit, print_structured};
use crate::cli::{EXIT_FAILURE, resolve};
use anyhow::{Context as _, bail};
use etcdsnap::pitr::replay::{EngineChoice, ReplayEngine, choose_engine};
use etcdsnap::pitr::restore::{Choose, PitrPlan, RollForward, fetch_segments, plan_local, plan_s3, roll_forward};
use etcdsnap::restore::{self, CurrentToken, MemberSettings, RestoreOutcome, RestoreRequest, SnapshotSource};
use etcdsnap_api::SnapshotName;
use etcdsnap_storage::pitr::Target;
use etcdsnap_storage::seal::{Identity, OpenKeys};
use etcdsnap_storage::store::SnapshotStore;
use etcdsnap_storage::store::s3::S3Store;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

pub async fn run(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let target = match (args.to_revision, args.to_time) {
        (Some(rev), _) => Target::Revision(rev),
        (None, Some(t)) => Target::Time(t.as_millisecond()),
        (None, None) => bail!("give a snapshot, --to-revision or --to-time"),
    };
    let format = args.output.output;
    let keys = crate::cli::seal::open_keys(&args.unseal)?;
    let identity = keys.identity.as_deref();
    let (mut plan, base) = match (args.from_replica.store()?, args.s3.enabled) {
        (Some(replica), _) => plan_in_store(replica, &args, target, identity).await?,
        (None, true) => plan_in_s3(&args, target, identity).await?,
        (None, false) => plan_in_dir(&args, target, identity).await?,
    };
    // With --all-members every node rolls forward to the same revision and restores the same
    // member set; a time target is printed for the other nodes as the revision it resolved to.
    let cluster = match args.cluster.all_members {
        true => Some(super::members::settings(&args, &plan.base, Some(plan.replay.stop_at))?),
        false => None,
    };
    let member = cluster.as_ref().map(|c| c.0.clone()).unwrap_or_else(|| resolve::member_settings(&args.member));
    let mut printed = PitrView::new(&plan, args.dry_run);
    if let Some((_, set)) = &cluster {
        printed.cluster(super::members::ClusterView::new(set, &member.name, Some(plan.replay.stop_at)));
    }
    if format.is_table() {
        emit(&view::plan_text(&plan))?;
    }
    if !check_base(&args, &member, &keys, &base).await? {
        return Ok(ExitCode::from(EXIT_FAILURE));
    }
    if args.dry_run {
        return finish(&printed, format, "Dry run: nothing was replayed or changed.");
    }

    let etcdutl = restore::etcdutl::locate(args.etcdutl.as_deref())?;
    let etcd = locate_etcd(args.etcd.as_deref())?;
    let choice: EngineChoice = args.replay_engine.parse().map_err(anyhow::Error::msg)?;
    let engine = choose_engine(choice, &etcdutl, etcd.as_deref().unwrap_or(Path::new("")))?;
    let etcd = match (&engine, etcd) {
        (_, Some(etcd)) => etcd,
        // The direct engine runs no etcd.
        (ReplayEngine::Direct(_), None) => PathBuf::new(),
        (ReplayEngine::Etcd, None) => {
            bail!("no etcd binary to replay the changes in: pass --etcd PATH (at least as new as the snapshot's etcd)")
        }
    };
    let work = work_dir(&super::target_dir(&args)?)?;
    if let Some(store) = base.store().filter(|_| args.s3.enabled || args.from_replica.from_replica.is_some()) {
        fetch_segments(store, &mut plan, &work.path().join("deltas")).await?;
    }
    if format.is_table() {
        let how = match &engine {
            ReplayEngine::Direct(_) => "with etcd's storage code (etcdsnap-replay)",
            ReplayEngine::Etcd => "in a private etcd",
        };
        eprintln!("Replaying revisions {}..={} {how}...", plan.replay.base.revision + 1, plan.replay.stop_at);
    }
    let roll = RollForward {
        plan: &plan,
        target,
        base: &base,
        identity: keys.identity.clone(),
        etcdutl: &etcdutl,
        etcd: &etcd,
        work: work.path(),
        // Every member of an --all-members restore must get the same bytes.
        compact: args.cluster.all_members,
        engine,
    };
    let rolled = tokio::select! {
        r = roll_forward(&roll) => r?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted during the replay: the data directory was not changed"),
    };
    printed.replayed(&rolled, plan.expected_hash.is_some());
    if format.is_table() {
        emit(&format!("{}\n", view::replayed_text(&rolled)))?;
    }

    // The token was checked against the base above; the rolled file carries no metadata.
    // The rolled-forward file is a new, clear snapshot in a private directory: no key applies.
    let rolled_source = SnapshotSource::from_path(&rolled.snapshot)?;
    let install = request(&args, &member, &OpenKeys::default(), rolled_source, false, None);
    let result = tokio::select! {
        r = restore::restore(&install, None, |r| if !r.ok { print_report(r) }) => r?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted before the restored data was put in place: the data directory was not changed"),
    };
    let RestoreOutcome::Restored { installed, duration, report } = result else {
        bail!("the rolled-forward snapshot {} did not pass its checks; nothing was touched", rolled.snapshot.display());
    };
    printed.restored(Restored::new(&installed, duration));
    let mut done = view::done_text(&plan, &rolled, &installed, &report.member);
    if let Some((_, set)) = &cluster {
        done.push_str(&super::members::report_text(set, &member.name, Some(plan.replay.stop_at)));
    }
    finish(&printed, format, &done)
}

/// The cluster and history the operator chose, if any.
fn choose(args: &RestoreArgs) -> Choose<'_> {
    Choose { cluster: args.etcd_cluster_id.as_deref(), history: args.history.as_deref() }
}

/// The snapshots and chains of the snapshot directory.
async fn plan_in_dir(
    args: &RestoreArgs,
    target: Target,
    identity: Option<&Identity>,
) -> anyhow::Result<(PitrPlan, SnapshotSource)> {
    let store = open_snapshot_dir(args.dir.as_deref(), "nothing to roll forward", "snap.db")?;
    let plan = plan_local(&store, target, choose(args), identity).await?;
    let name = SnapshotName::parse(&plan.replay.base.name).context("the plan's base snapshot")?;
    let base = SnapshotSource::from_local_store(&store, &name)?;
    Ok((plan, base))
}

/// With --s3: the snapshots and chains of the S3 folder.
async fn plan_in_s3(
    args: &RestoreArgs,
    target: Target,
    identity: Option<&Identity>,
) -> anyhow::Result<(PitrPlan, SnapshotSource)> {
    let settings = resolve::s3_settings(&args.s3, None).parse()?.for_program(resolve::machine_program()?);
    let store: Arc<dyn SnapshotStore> = S3Store::new(settings, None)?;
    plan_in_store(store, args, target, identity).await
}

/// The snapshots and chains of S3 or, with --from-replica, of that replica alone.
async fn plan_in_store(
    store: Arc<dyn SnapshotStore>,
    args: &RestoreArgs,
    target: Target,
    identity: Option<&Identity>,
) -> anyhow::Result<(PitrPlan, SnapshotSource)> {
    let plan = plan_s3(&store, target, choose(args), identity).await?;
    let base = SnapshotSource::from_listed(store, plan.base.clone(), Vec::new())?;
    Ok((plan, base))
}

/// The base's pre-flight report (token, target, space, etcdutl, and its bytes), before any
/// work; false, said, when a check failed.
async fn check_base(
    args: &RestoreArgs,
    member: &MemberSettings,
    keys: &OpenKeys,
    base: &SnapshotSource,
) -> anyhow::Result<bool> {
    let check = request(args, member, keys, base.clone(), true, resolve::current_token(&args.token)?);
    let outcome = restore::restore(&check, None, |r| {
        if args.output.output.is_table() {
            // Checked like a dry run; headed as what the command will do.
            let mut shown = r.clone();
            shown.dry_run = args.dry_run;
            print_report(&shown)
        }
    })
    .await?;
    if let RestoreOutcome::Refused(report) = outcome {
        eprintln!("{}", refused_text(&report));
        return Ok(false);
    }
    Ok(true)
}

/// The base's or the rolled-forward snapshot's restore request: `token` None skips the token
/// check (it was made against the base).
fn request(
    args: &RestoreArgs,
    member: &MemberSettings,
    keys: &OpenKeys,
    source: SnapshotSource,
    dry_run: bool,
    token: Option<CurrentToken>,
) -> RestoreRequest {
    RestoreRequest {
        source,
        // Present: --prepare-for, which alone makes it optional, excludes --to-revision/--to-time.
        data_dir: args.data_dir.clone().unwrap_or_default(),
        member: member.clone(),
        etcdutl: args.etcdutl.clone(),
        ignore_token_mismatch: args.ignore_token_mismatch || token.is_none(),
        token,
        dry_run,
        keys: keys.clone(),
        encryption_config: super::encryption_config(args),
    }
}

/// Prints `text` for a table, or the view as JSON or YAML; success.
fn finish(printed: &PitrView, format: OutputFormat, text: &str) -> anyhow::Result<ExitCode> {
    match format {
        OutputFormat::Table | OutputFormat::Wide => emit(&format!("{text}\n"))?,
        _ => print_structured(printed, format)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `--etcd`, else `etcd` from PATH, if any.
fn locate_etcd(explicit: Option<&Path>) -> anyhow::Result<Option<PathBuf>> {
    let usable =
        |p: &Path| std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false);
    if let Some(p) = explicit {
        anyhow::ensure!(usable(p), "--etcd {}: not an executable file", p.display());
        return Ok(Some(p.to_path_buf()));
    }
    let search = std::env::var_os("PATH").unwrap_or_default();
    Ok(std::env::split_paths(&search).map(|dir| dir.join("etcd")).find(|p| usable(p)))
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
