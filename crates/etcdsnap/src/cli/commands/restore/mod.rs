//! `etcdsnap restore NAME|PATH`: the snapshot resolved (a path, a name in the snapshot
//! directory, or with `--s3` a name in the bucket), checked, and installed by
//! `etcdsnap::restore`; with `--to-revision|--to-time`, a point-in-time restore ([`pitr`]); with
//! `--prepare-for k3s|rke2`, a plain file for the server's own restore ([`prepare`]).

pub mod members;
pub mod pitr;
pub mod prepare;

use crate::cli::args::{parse_program, parse_time};
use crate::cli::flags::{OutputArgs, S3Args, TokenArgs, heading};
use crate::cli::output::restore::{self as view, RestoreView, Restored};
use crate::cli::output::{emit, print_structured};
use crate::cli::progress::ProgressLine;
use crate::cli::seal::{EncryptionConfigArg, UnsealArgs};
use crate::cli::{EXIT_FAILURE, help, resolve};
use anyhow::{Context as _, bail};
use clap::Args;
use etcdsnap::restore::{self, PreflightReport, RestoreOutcome, RestoreRequest, SnapshotSource};
use etcdsnap_api::{Program, SnapshotName};
use etcdsnap_storage::store::cloud::CloudStore;
use etcdsnap_storage::store::local::LocalStore;
use etcdsnap_storage::store::replica::ReplicaConfig;
use etcdsnap_storage::store::s3::{RawS3Settings, S3Store};
use etcdsnap_storage::store::{SnapshotStore, StoreError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Debug, Args)]
#[command(
    after_help = EXAMPLES,
    mut_arg("enabled", |a| a.help("NAME is a snapshot in the S3 folder the other S3 flags name: streamed from it, never kept locally")),
    mut_arg("gcs_bucket", |a| a.help("NAME is a snapshot in this GCS bucket, in --gcs-folder: streamed from it, never kept locally")),
    mut_arg("azure_container", |a| a.help("NAME is a snapshot in this Azure container, in --azure-folder: streamed from it, never kept locally")),
    mut_args(help::unused(&[&["stale_upload_after"]])),
    mut_args(help::no_wide)
)]
pub struct RestoreArgs {
    /// Snapshot to restore: a snapshot name as `ls` shows it, looked up in the snapshot
    /// directory, or a file path (anything containing a `/`, e.g. ./snap.db). Not given with
    /// --to-revision or --to-time, which choose the snapshot themselves.
    #[arg(value_name = "NAME|PATH", required_unless_present_any = ["to_revision", "to_time"], conflicts_with_all = ["to_revision", "to_time"])]
    pub snapshot: Option<String>,
    /// etcdutl binary [default: etcdutl from PATH]
    #[arg(long, env = "ETCDSNAP_ETCDUTL", value_name = "PATH")]
    pub etcdutl: Option<PathBuf>,
    /// Restore even if the snapshot's recorded token hash differs from the current token's.
    #[arg(long)]
    pub ignore_token_mismatch: bool,
    /// Print the pre-flight report (all checks, bytes included) and stop; nothing is written.
    #[arg(long)]
    pub dry_run: bool,
    /// etcd data directory to restore into. If it holds data, that is moved aside to
    /// <dir>-old-<unix time>, never deleted. (Unlike other commands' --data-dir, this is
    /// never taken from the environment or a config file.)
    #[arg(long, value_name = "DIR", required_unless_present = "prepare_for", help_heading = heading::MEMBER)]
    pub data_dir: Option<PathBuf>,
    /// Instead of restoring: write the snapshot as a plain etcd snapshot file that K3s or RKE2
    /// restores itself (`--cluster-reset-restore-path`; neither reads .zst), checked on the
    /// way, and print the commands that restore it.
    #[arg(long, value_name = "PROGRAM", value_parser = parse_program, conflicts_with_all = ["data_dir", "to_revision", "to_time", "dry_run"])]
    pub prepare_for: Option<Program>,
    /// With --prepare-for: where the plain file is written [default: the directory holding the
    /// snapshot directory, server/db on a K3s or RKE2 server]
    #[arg(long, value_name = "DIR", requires = "prepare_for")]
    pub prepare_dir: Option<PathBuf>,
    #[command(flatten)]
    pub member: MemberArgs,
    #[command(flatten)]
    pub cluster: members::ClusterArgs,
    /// Snapshot directory in which NAME is looked up [default: $ETCDSNAP_DATA_DIR/snapshots, a
    /// K3s/RKE2 server's snapshot directory, else /var/lib/etcdsnap/snapshots]
    #[arg(long, visible_alias = "etcd-snapshot-dir", env = "ETCDSNAP_DIR", value_name = "DIR", help_heading = heading::STORAGE)]
    pub dir: Option<PathBuf>,
    #[command(flatten)]
    pub s3: S3Args,
    /// `--gcs-*` or `--azure-*`: NAME is a snapshot in that bucket or container folder.
    #[command(flatten)]
    pub cloud: crate::cli::cloud::CloudArgs,
    #[command(flatten)]
    pub from_replica: crate::cli::replica::FromReplicaArgs,
    /// Point-in-time recovery: the newest snapshot at or below revision N, rolled forward to N
    /// through the changes `agent --deltas` captured, then restored like any snapshot.
    #[arg(long, value_name = "N", conflicts_with = "to_time", value_parser = clap::value_parser!(i64).range(1..), help_heading = heading::PITR)]
    pub to_revision: Option<i64>,
    /// Point-in-time recovery to the newest revision observed at or before a time: RFC 3339
    /// (2026-12-03T07:04:00Z) or how long ago ("4m ago").
    #[arg(long, value_name = "TIME", value_parser = parse_time, help_heading = heading::PITR)]
    pub to_time: Option<jiff::Timestamp>,
    /// With --to-revision/--to-time: the etcd binary the changes are replayed in (a private
    /// member on loopback), at least as new as the snapshot's etcd [default: etcd from PATH]
    #[arg(long, env = "ETCDSNAP_ETCD", value_name = "PATH", help_heading = heading::PITR)]
    pub etcd: Option<PathBuf>,
    /// With --to-revision/--to-time: how the changes are replayed. `direct`: etcdsnap-replay
    /// (etcd's own storage code, found beside etcdsnap, etcdutl or etcd, or in PATH) applies them
    /// to the database file, no etcd binary needed; `etcd`: in a private etcd (slower); `auto`:
    /// direct when etcdsnap-replay is found, else etcd
    #[arg(long, env = "ETCDSNAP_REPLAY_ENGINE", value_name = "ENGINE", default_value = "auto", value_parser = ["auto", "direct", "etcd"], help_heading = heading::PITR)]
    pub replay_engine: String,
    /// With --to-revision/--to-time: the etcd cluster ID (as `ls -o wide` shows it) whose
    /// snapshots to use, when the snapshot directory holds several etcd clusters'.
    #[arg(long, value_name = "ID", help_heading = heading::PITR)]
    pub etcd_cluster_id: Option<String>,
    /// With --to-revision/--to-time: the history (as `ls -o wide` shows it: an ID, or
    /// `legacy`) whose snapshots and changes to use, when etcd reused the target's revisions
    /// after a restore or a rollback and several histories hold it.
    #[arg(long, value_name = "ID", help_heading = heading::PITR)]
    pub history: Option<String>,
    /// Restore never talks to Kubernetes; accepted, like on every other command.
    #[arg(long, env = "ETCDSNAP_NO_KUBE", help_heading = heading::KUBERNETES)]
    pub no_kube: bool,
    #[command(flatten)]
    pub token: TokenArgs,
    #[command(flatten)]
    pub unseal: UnsealArgs,
    #[command(flatten)]
    pub encryption: EncryptionConfigArg,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// The restored etcd member.
#[derive(Debug, Args)]
#[command(next_help_heading = heading::MEMBER)]
pub struct MemberArgs {
    /// Name of the restored etcd member (etcd's --name; etcd must later start with it).
    #[arg(long, value_name = "NAME", required_unless_present = "prepare_for")]
    pub member_name: Option<String>,
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
}

const EXAMPLES: &str = "Examples:
  # What a restore would do (every check, the bytes included), changing nothing
  etcdsnap restore on-demand-node-1-1700000000.zst --data-dir /var/lib/etcd --member-name node-1 --dry-run

  # A file by path into a new data directory; an existing one is moved aside, never deleted
  etcdsnap restore ./snap.db --data-dir /var/lib/etcd --member-name node-1 \\
    --initial-advertise-peer-urls https://10.0.0.5:2380

  # A snapshot streamed from S3
  etcdsnap restore etcd-snapshot-node-1-1700000000 --s3 --s3-bucket backups --data-dir /var/lib/etcd --member-name node-1

  # A sealed snapshot, opened with an age identity, its record's signature checked first
  etcdsnap restore on-demand-node-1-1700000000.zst.age --decrypt-identity /root/etcd.agekey \\
    --verify-key /etc/etcdsnap/sign.pub --data-dir /var/lib/etcd --member-name node-1

  # Point-in-time: the state of 4 minutes ago, replayed from the agent's delta segments
  etcdsnap restore --to-time \"4m ago\" --data-dir /var/lib/etcd --member-name node-1 --etcd /usr/local/bin/etcd

  # The same from a replica alone (the node's disk and the S3 bucket both lost)
  etcdsnap restore --to-revision 123456 --from-replica gs://backups/k3s --data-dir /var/lib/etcd --member-name node-1
";

pub async fn run(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let cloud = args.cloud.config()?;
    let Some(snapshot) = args.snapshot.clone() else {
        if let Some(config) = &cloud {
            bail!(
                "--to-revision and --to-time read delta segments from S3 or the snapshot directory, not {}",
                config.url
            );
        }
        return pitr::run(args).await;
    };
    if let Some(config) = cloud.as_ref().filter(|_| args.s3.enabled) {
        bail!("--s3 and {}: give one store to restore from", config.url);
    }
    let source = match (args.from_replica.source(&snapshot).await?, args.s3.enabled, cloud) {
        (Some(source), _, _) => source,
        (None, true, _) => resolve_s3(&snapshot, resolve::s3_settings(&args.s3, None)).await?,
        (None, false, Some(config)) => resolve_cloud(&snapshot, config).await?,
        (None, false, None) => resolve(&args, &snapshot)?,
    };
    if let Some(program) = args.prepare_for {
        return prepare::run(&args, source, program).await;
    }
    let mut member = resolve::member_settings(&args.member);
    let mut cluster = None;
    if args.cluster.all_members {
        let (settings, set) = members::settings(&args, &source.record, None)?;
        if let Some(program) = members::server_program() {
            let code = prepare::run(&args, source, program).await?;
            eprint!("{}", members::k3s_note(program));
            return Ok(code);
        }
        (member, cluster) = (settings, Some(set));
    }
    let request = RestoreRequest {
        source,
        data_dir: target_dir(&args)?,
        member,
        etcdutl: args.etcdutl.clone(),
        token: resolve::current_token(&args.token)?,
        ignore_token_mismatch: args.ignore_token_mismatch,
        dry_run: args.dry_run,
        keys: crate::cli::seal::open_keys(&args.unseal)?,
        encryption_config: encryption_config(&args),
    };
    let format = args.output.output;
    let mut progress = Some(ProgressLine::start(&format!("Checking {}", request.source.record.name)));
    let counter = progress.as_ref().map(ProgressLine::counter);
    let mut shown: Option<PreflightReport> = None;
    let run = restore::restore(&request, counter, |report| {
        if let Some(p) = progress.take() {
            p.finish();
        }
        if format.is_table() {
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

    let structured = |report: &PreflightReport, restored: Option<Restored>, error: Option<String>| {
        let cluster = cluster.as_ref().map(|set| members::ClusterView::new(set, &report.member.name, None));
        print_structured(&RestoreView { report, restored, error, cluster }, format)
    };
    match result {
        Ok(RestoreOutcome::Restored { report, installed, duration }) => {
            if format.is_table() {
                emit(&format!(
                    "Restored {} into {} in {:.1}s.\n{}",
                    report.snapshot.name,
                    installed.data_dir.display(),
                    duration.as_secs_f64(),
                    view::installed_text(&installed, &report.member)
                ))?;
                if let Some(set) = &cluster {
                    emit(&members::report_text(set, &report.member.name, None))?;
                }
            } else {
                structured(&report, Some(Restored::new(&installed, duration)), None)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Ok(RestoreOutcome::DryRun(report)) => {
            if format.is_table() {
                if let Some(set) = &cluster {
                    emit(&members::report_text(set, &report.member.name, None))?;
                }
                emit("Dry run: nothing was changed.\n")?;
            } else {
                structured(&report, None, None)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Ok(RestoreOutcome::Refused(report)) => {
            if !format.is_table() {
                structured(&report, None, None)?;
            }
            eprintln!("{}", view::refused_text(&report));
            Ok(ExitCode::from(EXIT_FAILURE))
        }
        Err(e) => {
            if !format.is_table()
                && let Some(report) = &shown
            {
                structured(report, None, Some(format!("{e}")))?;
            }
            Err(e.into())
        }
    }
}

/// This host's EncryptionConfiguration: the flag, else the K3s/RKE2 server's own (none, said,
/// when the server's configuration cannot be read: the restore does not depend on it).
pub(super) fn encryption_config(args: &RestoreArgs) -> Option<PathBuf> {
    let preset = crate::cli::presets::Preset::detect(resolve::program_flag()).unwrap_or_else(|e| {
        tracing::warn!("cannot read the server's configuration for its EncryptionConfiguration: {e}");
        None
    });
    args.encryption.resolve(preset.as_ref())
}

/// `--data-dir`, which clap requires unless `--prepare-for` is given.
pub(super) fn target_dir(args: &RestoreArgs) -> anyhow::Result<PathBuf> {
    args.data_dir.clone().context("--data-dir is required")
}

/// The pre-flight report as text on stdout.
pub(super) fn print_report(report: &PreflightReport) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(view::report_text(report).as_bytes());
    let _ = stdout.flush();
}

/// With `--s3`: a bare snapshot name in the configured bucket folder (like K3s's
/// `--etcd-s3 --cluster-reset-restore-path=<name>`).
pub(crate) async fn resolve_s3(given: &str, settings: RawS3Settings) -> anyhow::Result<SnapshotSource> {
    if given.starts_with("s3://") || given.contains('/') {
        bail!(
            "with --s3 give the snapshot's name ({:?}), and the bucket and folder with --s3-bucket and --s3-folder",
            given.rsplit('/').next().unwrap_or(given)
        );
    }
    let name = SnapshotName::parse(given).with_context(|| format!("{given:?} is not a snapshot name"))?;
    let store = S3Store::new(settings.parse()?.for_program(resolve::machine_program()?), None)?;
    Ok(SnapshotSource::from_store(store, &name).await?)
}

/// With `--gcs-bucket` or `--azure-container`: a bare snapshot name in that folder.
pub(crate) async fn resolve_cloud(given: &str, config: ReplicaConfig) -> anyhow::Result<SnapshotSource> {
    let name = SnapshotName::parse(given)
        .with_context(|| format!("{given:?} is not a snapshot name (the folder is {})", config.url))?;
    let store: Arc<dyn SnapshotStore> = Arc::new(CloudStore::new(config, None)?);
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
    let store = open_snapshot_dir(args.dir.as_deref(), &format!("snapshot {name} not found"), name.as_ref())?;
    Ok(SnapshotSource::from_local_store(&store, &name)?)
}

/// The snapshot directory ([`resolve::restore_snapshot_dir`]). `what` and `example` word the
/// error when it does not exist.
pub(crate) fn open_snapshot_dir(dir: Option<&Path>, what: &str, example: &str) -> anyhow::Result<LocalStore> {
    let dir = resolve::restore_snapshot_dir(dir)?;
    match LocalStore::open(&dir, false, "") {
        Ok(store) => Ok(store),
        Err(StoreError::MissingDir(_)) => bail!(
            "{what}: the snapshot directory {} does not exist (pass --dir, or give a path, e.g. ./{example})",
            dir.display()
        ),
        Err(e) => Err(e.into()),
    }
}
