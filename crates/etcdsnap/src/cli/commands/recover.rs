//! `etcdsnap recover --data-dir D --member-name M`: what an ExecStartPre or an init container
//! runs before etcd. A data directory that holds a member's data is left alone. An empty or
//! missing one of a one-member cluster is restored from the newest snapshot, rolled forward
//! through the changes `agent --deltas` captured when there are any (so what is lost is at most
//! the delta interval). A member of a larger cluster is never restored alone: while its other
//! members answer, the remedy is to replace it (the steps are printed); with `--all-members` it
//! is restored like `restore --all-members`.

use super::restore::members::ClusterArgs;
use super::restore::{MemberArgs, RestoreArgs, open_snapshot_dir, resolve_cloud, resolve_s3};
use crate::cli::flags::{EtcdArgs, OutputArgs, S3Args, TokenArgs, heading};
use crate::cli::output::emit;
use crate::cli::seal::{EncryptionConfigArg, UnsealArgs};
use crate::cli::{EXIT_FAILURE, help, resolve};
use anyhow::{Context as _, anyhow, bail};
use clap::Args;
use etcdsnap::pitr::restore::{Choose, PitrError, plan_local, plan_s3};
use etcdsnap_api::ClusterMember;
use etcdsnap_storage::SnapshotRecord;
use etcdsnap_storage::etcd::EtcdConfig;
use etcdsnap_storage::pitr::history::LEGACY as LEGACY_HISTORY;
use etcdsnap_storage::pitr::{PlanError, Target};
use etcdsnap_storage::store::SnapshotStore;
use etcdsnap_storage::store::cloud::CloudStore;
use etcdsnap_storage::store::s3::S3Store;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Debug, Args)]
#[command(after_help = EXAMPLES, mut_args(help::unused(&[&["endpoints", "record_hashkv"]])))]
pub struct RecoverArgs {
    /// etcd data directory: left alone when it holds a member's data, restored when it is
    /// missing or empty.
    #[arg(long, value_name = "DIR", help_heading = heading::MEMBER)]
    pub data_dir: PathBuf,
    /// Name of this etcd member (etcd's --name).
    #[arg(long, visible_alias = "name", value_name = "NAME", help_heading = heading::MEMBER)]
    pub member_name: String,
    /// Initial cluster of a restored one-member cluster [default: <name>=<first peer URL>]
    #[arg(long, value_name = "NAME=URL,...", help_heading = heading::MEMBER)]
    pub initial_cluster: Option<String>,
    /// Peer URLs of the restored member.
    #[arg(long, value_name = "URLS", default_value = "http://localhost:2380", help_heading = heading::MEMBER)]
    pub initial_advertise_peer_urls: String,
    /// Cluster token of a restored one-member cluster.
    #[arg(long, value_name = "TOKEN", default_value = "etcd-cluster", help_heading = heading::MEMBER)]
    pub initial_cluster_token: String,
    /// A member of a larger cluster: restore it as one member of the whole recorded cluster
    /// (run on every member's node), as `restore --all-members` does.
    #[arg(long, conflicts_with_all = ["initial_cluster"], help_heading = heading::MEMBER)]
    pub all_members: bool,
    /// With --all-members: a recorded member at a new peer URL (NAME=PEER_URL, repeatable).
    #[arg(long = "member", value_name = "NAME=PEER_URL", requires = "all_members", help_heading = heading::MEMBER)]
    pub members: Vec<String>,
    /// etcdutl binary [default: etcdutl from PATH]
    #[arg(long, env = "ETCDSNAP_ETCDUTL", value_name = "PATH")]
    pub etcdutl: Option<PathBuf>,
    /// The etcd binary the captured changes are replayed in by the etcd engine [default: etcd
    /// from PATH]
    #[arg(long, env = "ETCDSNAP_ETCD", value_name = "PATH", help_heading = heading::PITR)]
    pub etcd: Option<PathBuf>,
    /// How the captured changes are replayed, as for restore: direct (etcdsnap-replay), etcd (a
    /// private etcd) or auto (direct when etcdsnap-replay is found)
    #[arg(long, env = "ETCDSNAP_REPLAY_ENGINE", value_name = "ENGINE", default_value = "auto", value_parser = ["auto", "direct", "etcd"], help_heading = heading::PITR)]
    pub replay_engine: String,
    /// Snapshot directory [default: as for restore]
    #[arg(long, visible_alias = "etcd-snapshot-dir", env = "ETCDSNAP_DIR", value_name = "DIR", help_heading = heading::STORAGE)]
    pub dir: Option<PathBuf>,
    #[command(flatten)]
    pub s3: S3Args,
    /// `--gcs-*` or `--azure-*`: the newest snapshot in that folder (no captured changes are
    /// read from there: point-in-time recovery needs S3 or the snapshot directory).
    #[command(flatten)]
    pub cloud: crate::cli::cloud::CloudArgs,
    /// The certificates that reach the other members, to learn whether they answer.
    #[command(flatten)]
    pub etcd_client: EtcdArgs,
    #[command(flatten)]
    pub token: TokenArgs,
    #[command(flatten)]
    pub unseal: UnsealArgs,
    #[command(flatten)]
    pub encryption: EncryptionConfigArg,
    #[command(flatten)]
    pub output: OutputArgs,
}

const EXAMPLES: &str = "Examples:
  # Before etcd starts (systemd ExecStartPre=, or an init container)
  etcdsnap recover --data-dir /var/lib/etcd --member-name node-1 --etcdutl /usr/local/bin/etcdutl \\
    --etcd /usr/local/bin/etcd --initial-advertise-peer-urls https://10.0.0.5:2380
";

pub async fn run(args: RecoverArgs) -> anyhow::Result<ExitCode> {
    match data_state(&args.data_dir)? {
        DataState::Member => {
            emit(&format!(
                "{} holds a member's data: nothing to recover, nothing changed.\n",
                args.data_dir.display()
            ))?;
            return Ok(ExitCode::SUCCESS);
        }
        DataState::Other => bail!(
            "{} is not empty and holds no etcd member's data: refusing to recover over it (nothing was changed); move it away first",
            args.data_dir.display()
        ),
        DataState::Empty => {}
    }
    let (newest, origin) = newest_snapshot(&args).await?;
    // Said first: without it, the roll forward could not read the sealed segments either.
    if let Some(sealed) = &newest.sealed
        && args.unseal.decrypt_identity.is_none()
    {
        bail!(
            "the newest snapshot {} is sealed with age to {}: pass --decrypt-identity with the identity file of one of these recipients (nothing was changed)",
            newest.name,
            sealed.recipients.join(", ")
        );
    }
    let name = newest.name.to_string();
    let recorded: Vec<ClusterMember> = newest
        .etcd
        .as_ref()
        .and_then(|e| e.members.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|m| !m.is_learner)
        .collect();
    if recorded.is_empty() {
        bail!(
            "the newest snapshot {name} records no cluster members (taken by K3s, RKE2 or an earlier etcdsnap): recover cannot tell a one-member cluster; restore it with `etcdsnap restore {name}` (nothing was changed)"
        );
    }
    if recorded.len() > 1 && !args.all_members {
        eprint!("{}", refusal(&args, &name, &recorded).await);
        return Ok(ExitCode::from(EXIT_FAILURE));
    }
    // The captured changes reach past the snapshot: roll forward to the newest of them.
    let reach = rolls_forward(&args, origin, &newest).await.map_err(|e| {
        anyhow!(
            "{e:#}\nNothing was changed. To restore snapshot {name} without the captured changes, run `etcdsnap restore {name}`; to stop at a revision of your choice, `etcdsnap restore --to-revision REV`"
        )
    })?;
    if reach.is_none() {
        emit(&format!("No captured changes past snapshot {name}: restoring it as it is.\n"))?;
    }
    let history = reach.and(newest_history(&newest)).map(str::to_string);
    let restore = restore_args(args, reach.is_none().then_some(name), reach, history);
    match restore.snapshot.is_some() {
        true => super::restore::run(restore).await,
        false => super::restore::pitr::run(restore).await,
    }
}

enum DataState {
    /// Missing or empty.
    Empty,
    /// Holds an etcd member's data (`member/snap/db` or a WAL).
    Member,
    Other,
}

fn data_state(dir: &Path) -> anyhow::Result<DataState> {
    let member = dir.join("member");
    if member.join("snap/db").is_file() || member.join("wal").is_dir() {
        return Ok(DataState::Member);
    }
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(if entries.next().is_some() { DataState::Other } else { DataState::Empty }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DataState::Empty),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", dir.display())),
    }
}

/// Where the newest snapshot was found, and so where its captured changes are read.
enum Origin {
    /// The snapshot directory, with the delta chains beside it.
    Local,
    /// The S3 folder, with its delta objects.
    S3(Arc<dyn SnapshotStore>),
    /// A GCS or Azure folder: it holds no captured changes.
    Cloud,
}

/// The newest ready snapshot in the snapshot directory (or with `--s3` the bucket folder, with
/// `--gcs-*`/`--azure-*` that folder), and where it was found.
async fn newest_snapshot(args: &RecoverArgs) -> anyhow::Result<(SnapshotRecord, Origin)> {
    let cloud = args.cloud.config()?;
    if let Some(config) = cloud.as_ref().filter(|_| args.s3.enabled) {
        bail!("--s3 and {}: give one store to recover from (nothing was changed)", config.url);
    }
    let (listing, origin) = match (&cloud, args.s3.enabled) {
        (Some(config), _) => {
            let store = CloudStore::new(config.clone(), None)?;
            (store.list().await?, Origin::Cloud)
        }
        (None, true) => {
            let settings = resolve::s3_settings(&args.s3, None).parse()?.for_program(resolve::machine_program()?);
            let store: Arc<dyn SnapshotStore> = S3Store::new(settings, None)?;
            (store.list().await?, Origin::S3(store))
        }
        (None, false) => {
            let store = open_snapshot_dir(args.dir.as_deref(), "nothing to recover from", "snap.db")?;
            (store.list().await?, Origin::Local)
        }
    };
    let newest = listing.records.into_iter().filter(|r| r.is_ready()).max_by_key(|r| r.created_at);
    let newest = newest.context("no snapshot to recover from (nothing was changed)")?;
    // A listing may not read every record's document; the restore's own lookup does.
    let source = match (cloud, &origin) {
        (Some(config), _) => resolve_cloud(newest.name.as_str(), config).await?,
        (None, Origin::S3(_)) => resolve_s3(newest.name.as_str(), resolve::s3_settings(&args.s3, None)).await?,
        (None, _) => {
            let store = open_snapshot_dir(args.dir.as_deref(), "nothing to recover from", "snap.db")?;
            etcdsnap::restore::SnapshotSource::from_local_store(&store, &newest.name)?
        }
    };
    Ok((source.record, origin))
}

/// The newest revision the captured changes reach past `newest`, or None when they reach no
/// further than it. Fails when the captured changes cannot be planned (the store cannot be
/// read, several clusters or histories could continue the snapshot) or when a record found
/// beside them cannot be used: a roll forward that silently stopped early would lose the
/// very writes recover is for.
async fn rolls_forward(args: &RecoverArgs, origin: Origin, newest: &SnapshotRecord) -> anyhow::Result<Option<i64>> {
    let keys = crate::cli::seal::open_keys(&args.unseal)?;
    let identity = keys.identity.as_deref();
    let etcd = newest.etcd.as_ref();
    // The newest snapshot's cluster and history: after a rollback, older histories hold the
    // same revisions, and another cluster's snapshots may share the folder.
    let choose = || Choose { cluster: etcd.map(|e| e.cluster_id.as_str()), history: newest_history(newest) };
    let source = match origin {
        Origin::S3(store) => Source::S3(store),
        Origin::Local => Source::Local(open_snapshot_dir(args.dir.as_deref(), "nothing to recover from", "snap.db")?),
        Origin::Cloud => return Ok(None),
    };
    let plan = async |target: Target| match &source {
        Source::S3(store) => plan_s3(store, target, choose(), identity).await,
        Source::Local(local) => plan_local(local, target, choose(), identity).await,
    };
    // Planned to a revision no chain reaches, the plan answers with the newest one reached.
    let (reach, gap) = match plan(Target::Revision(i64::MAX)).await {
        Ok(plan) => (plan.replay.stop_at, None),
        Err(PitrError::Plan(PlanError::NotCaptured { newest, .. })) => (newest, None),
        Err(PitrError::Plan(PlanError::AcrossGap { gap, .. })) => (gap.after, Some(gap)),
        Err(e) => return Err(RollForwardError::Plan(e).into()),
    };
    let base = etcd.map(|e| e.revision).unwrap_or_default();
    // Planned again to where it stops: what that plan could not read is a reason to stop.
    let plan = plan(Target::Revision(reach.max(base))).await.map_err(RollForwardError::Plan)?;
    if !plan.warnings.is_empty() {
        return Err(RollForwardError::Unusable(plan.warnings).into());
    }
    if let Some(gap) = gap {
        tracing::warn!(
            after = gap.after,
            resumes_at = gap.resumes_at,
            "the captured changes have a gap: rolling forward only to the revision before it"
        );
    }
    Ok((reach > base).then_some(reach))
}

/// Where the captured changes are read.
enum Source {
    S3(Arc<dyn SnapshotStore>),
    Local(etcdsnap_storage::store::local::LocalStore),
}

/// Why recover does not roll forward.
#[derive(Debug, thiserror::Error)]
enum RollForwardError {
    #[error("cannot plan the roll forward through the captured changes: {0}")]
    Plan(#[source] PitrError),
    #[error(
        "some snapshot or delta records could not be used, so the captured changes may reach further than recover can see:\n  {}",
        .0.join("\n  ")
    )]
    Unusable(Vec<String>),
}

/// Why a lost member of a cluster is not restored alone, and how to replace it.
async fn refusal(args: &RecoverArgs, name: &str, recorded: &[ClusterMember]) -> String {
    let me = &args.member_name;
    let others: Vec<&ClusterMember> = recorded.iter().filter(|m| &m.name != me).collect();
    let mut answering = None;
    for m in &others {
        for url in &m.client_urls {
            let config = EtcdConfig { endpoints: vec![url.clone()], ..resolve::etcd_config(&args.etcd_client, None) };
            if let Ok((mut member, _)) = config.connect_member().await {
                answering = Some((url.clone(), member.members().await.unwrap_or_default()));
                break;
            }
        }
        if answering.is_some() {
            break;
        }
    }
    let Some((url, live)) = answering else {
        return format!(
            "error: snapshot {name} records a {}-member cluster and none of the other members answers. If the whole cluster is lost, run on every member's node: etcdsnap recover --all-members --data-dir {} --member-name <member> (the same source flags). Nothing was changed.\n",
            recorded.len(),
            args.data_dir.display()
        );
    };
    let mine = live.iter().find(|m| &m.name == me).or_else(|| recorded.iter().find(|m| &m.name == me));
    let id = mine.map(|m| m.id.clone()).unwrap_or_else(|| "<member id from member list>".into());
    let peer =
        mine.and_then(|m| m.peer_urls.first().cloned()).unwrap_or_else(|| args.initial_advertise_peer_urls.clone());
    let cluster: Vec<String> = live
        .iter()
        .filter(|m| &m.name != me && !m.name.is_empty())
        .flat_map(|m| m.peer_urls.iter().map(move |u| format!("{}={u}", m.name)))
        .collect();
    format!(
        "error: member {me} lost its data, but its cluster answers at {url}: restoring it from a snapshot would fork the cluster. Replace the member instead (nothing was changed):\n\
         \x20 1. etcdctl --endpoints {url} member remove {id}\n\
         \x20 2. etcdctl --endpoints {url} member add {me} --peer-urls={peer}\n\
         \x20 3. start etcd on the empty {dir} with --name {me} --initial-advertise-peer-urls {peer} --initial-cluster {cluster},{me}={peer} --initial-cluster-state existing\n",
        dir = args.data_dir.display(),
        cluster = cluster.join(","),
    )
}

/// The history the newest snapshot belongs to (`legacy` for one saved before histories were
/// recorded): the one recover rolls forward in.
fn newest_history(newest: &SnapshotRecord) -> Option<&str> {
    Some(newest.etcd.as_ref().and_then(|e| e.history.as_deref()).unwrap_or(LEGACY_HISTORY))
}

/// The restore recover delegates to: `snapshot` as it is, or rolled forward to `to_revision` in
/// `history`.
fn restore_args(
    args: RecoverArgs,
    snapshot: Option<String>,
    to_revision: Option<i64>,
    history: Option<String>,
) -> RestoreArgs {
    RestoreArgs {
        history,
        snapshot,
        etcdutl: args.etcdutl,
        ignore_token_mismatch: false,
        dry_run: false,
        data_dir: Some(args.data_dir),
        prepare_for: None,
        prepare_dir: None,
        member: MemberArgs {
            member_name: Some(args.member_name),
            initial_cluster: args.initial_cluster,
            initial_advertise_peer_urls: args.initial_advertise_peer_urls,
            initial_cluster_token: args.initial_cluster_token,
            bump_revision: None,
            mark_compacted: false,
        },
        cluster: ClusterArgs { all_members: args.all_members, members: args.members },
        dir: args.dir,
        s3: args.s3,
        cloud: args.cloud,
        from_replica: Default::default(),
        to_revision,
        to_time: None,
        replay_engine: args.replay_engine,
        etcd: args.etcd,
        etcd_cluster_id: None,
        no_kube: true,
        token: args.token,
        unseal: args.unseal,
        encryption: args.encryption,
        output: args.output,
    }
}
