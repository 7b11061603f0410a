//! Parsed flags become settings here, in one place: the program whose names are written (`k3s`
//! or `rke2`), the node's name, the server token's hash, etcd's endpoints and certificates, the
//! S3 and Kubernetes settings, the session of a command, the tools of drills, a restore's member
//! and snapshot directory. A K3s or RKE2 server on the machine (or named by `--data-dir`)
//! supplies the defaults it knows ([`Preset`]).
//!
//! Commands call these and never read a flag's meaning from elsewhere; what to do with the
//! settings is the service layer's (`etcdsnap::session`, `etcdsnap::restore`, `etcdsnap::drill`).

use super::commands::restore::MemberArgs;
use super::flags::{
    CompressArgs, DrillToolArgs, EtcdArgs, KubeArgs, NodeFlags, S3Args, SnapshotFlags, StorageArgs, TokenArgs,
};
use super::presets::Preset;
use anyhow::{Context as _, bail};
use etcdsnap::drill::DrillOptions;
use etcdsnap::drill::tools::ToolError;
use etcdsnap::restore::{CurrentToken, MemberSettings};
use etcdsnap::session::{KubePolicy, LocalSetting, Session, SessionConfig};
use etcdsnap_api::Program;
use etcdsnap_api::{Compression, SnapshotName, TokenHash, validate_node_name};
use etcdsnap_kube::{ConnectOptions, Kube, KubeSettings, LegacySettings};
use etcdsnap_storage::etcd::EtcdConfig;
use etcdsnap_storage::store::replica::ReplicaConfig;
use etcdsnap_storage::store::s3::{RawS3Settings, S3Key, SettingsOrigin};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// etcdsnap's data directory when none is given.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/etcdsnap";

/// `--program` (a global flag), set once by `main` before any command runs.
static PROGRAM_FLAG: OnceLock<Option<Program>> = OnceLock::new();

/// Records `--program` for the commands to resolve (once; later calls change nothing).
pub fn set_program_flag(program: Option<Program>) {
    let _ = PROGRAM_FLAG.set(program);
}

/// `--program`, when given.
pub fn program_flag() -> Option<Program> {
    PROGRAM_FLAG.get().copied().flatten()
}

/// The program this run's session resolved (K3s's before one is), for output that shows
/// resources the way the session writes them.
static PROGRAM_IN_USE: OnceLock<Program> = OnceLock::new();

pub fn program_in_use() -> Program {
    PROGRAM_IN_USE.get().copied().unwrap_or_default()
}

/// The K3s or RKE2 server these flags are about, if any: `--data-dir` naming one, or with no
/// `--data-dir` and no `--dir`, the machine's own.
pub fn preset(storage: &StorageArgs) -> anyhow::Result<Option<Preset>> {
    Ok(Preset::find(storage.data_dir.as_deref(), storage.dir.is_some(), program_flag())?)
}

/// Whose names etcdsnap writes and reads: `--program`, else the server's (a K3s or RKE2
/// server on the machine or named by `--data-dir`), else K3s's. `--program` naming the other
/// program than the server's is refused: that server's own cleanup would delete every
/// resource etcdsnap writes.
pub fn program(preset: Option<&Preset>) -> anyhow::Result<Program> {
    match (program_flag(), preset) {
        (Some(flag), Some(p)) if flag != p.program => bail!(
            "--program {flag}, but the server here is {}'s ({}): its cleanup deletes resources named for {flag}; drop --program or pass --program {}",
            p.program.display_name(),
            p.data_dir.display(),
            p.program
        ),
        (Some(flag), _) => Ok(flag),
        (None, Some(p)) => Ok(p.program),
        (None, None) => Ok(Program::K3s),
    }
}

/// The program of a command that has no node flags (`watch`, `crd`, `ls --cluster`, `restore`):
/// `--program`, else this machine's server's, else K3s's.
pub fn machine_program() -> anyhow::Result<Program> {
    program(Preset::detect(program_flag())?.as_ref())
}

/// This node's name: the flag (or `$ETCDSNAP_NODE_NAME`), else the first of `$NODE_NAME` (what
/// K3s sets for itself), `$K3S_NODE_NAME`, `$RKE2_NODE_NAME` and the K3s/RKE2 server's
/// `node-name` (its `config.yaml` or a drop-in, such as Rancher's `50-rancher.yaml`), else the
/// host name in lower case. Any name K3s accepts is accepted, unless Kubernetes would refuse the
/// objects named after it.
pub fn node_name(args: &StorageArgs, preset: Option<&Preset>) -> anyhow::Result<String> {
    let from_env = ["NODE_NAME", "K3S_NODE_NAME", "RKE2_NODE_NAME"]
        .into_iter()
        .find_map(|v| std::env::var(v).ok().filter(|n| !n.trim().is_empty()));
    let from_config = match (&args.node_name, &from_env, preset) {
        (None, None, Some(p)) => p.config_node_name()?,
        _ => None,
    };
    let name = match (&args.node_name, from_env, from_config) {
        (Some(n), _, _) => n.clone(),
        (None, Some(n), _) => n,
        (None, None, Some((n, file))) => {
            tracing::info!(file = %file.display(), "node name {n:?} from the server's node-name");
            n
        }
        (None, None, None) => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .context("cannot determine the node name: pass --node-name")?
            .trim()
            .to_lowercase(),
    };
    let name = name.trim().to_string();
    validate_node_name(&name).map_err(|e| anyhow::anyhow!("--node-name: {e}"))?;
    Ok(name)
}

/// The server token's hash: `--token` (or `$ETCDSNAP_TOKEN`), `--token-file`, then K3s's and
/// RKE2's own variables (`$K3S_TOKEN`, `$K3S_TOKEN_FILE`, `$RKE2_TOKEN`, `$RKE2_TOKEN_FILE`), then
/// the server's token file. None when there is no token anywhere (the hash is then not
/// recorded). Where it came from is logged, never the token.
pub fn token_hash(args: &TokenArgs, preset: Option<&Preset>) -> anyhow::Result<Option<TokenHash>> {
    match server_token(args, preset)? {
        Some((token, from)) => Ok(Some(TokenHash::of_token(&token).with_context(|| from)?)),
        None => Ok(None),
    }
}

/// The server token itself, from the sources [`token_hash`] reads in its order, with where it
/// came from: only a sealed restore kit ever stores it.
pub fn server_token(args: &TokenArgs, preset: Option<&Preset>) -> anyhow::Result<Option<(String, String)>> {
    let from_file = |path: &Path, from: &str| -> anyhow::Result<(String, String)> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {from} {}", path.display()))?;
        Ok((text, format!("{from} {}", path.display())))
    };
    if let Some(token) = &args.token {
        return Ok(Some((token.clone(), "--token".into())));
    }
    if let Some(path) = &args.token_file {
        return Ok(Some(from_file(path, "--token-file")?));
    }
    for distro in ["K3S", "RKE2"] {
        if let Ok(token) = std::env::var(format!("{distro}_TOKEN"))
            && !token.trim().is_empty()
        {
            tracing::info!("server token from ${distro}_TOKEN");
            return Ok(Some((token, format!("${distro}_TOKEN"))));
        }
        if let Some(path) = std::env::var_os(format!("{distro}_TOKEN_FILE")) {
            tracing::info!("server token from ${distro}_TOKEN_FILE");
            return Ok(Some(from_file(Path::new(&path), &format!("${distro}_TOKEN_FILE"))?));
        }
    }
    if let Some(p) = preset
        && p.token_file().is_file()
    {
        tracing::info!(file = %p.token_file().display(), "server token from the {} server", p.program.display_name());
        return Ok(Some(from_file(&p.token_file(), "the server token file")?));
    }
    Ok(None)
}

/// Warns once when the K3s/RKE2 server's own scheduled snapshots are on beside the agent's,
/// whose snapshots are named `base` (see [`Preset::scheduled_snapshots_warning`]).
pub fn warn_about_server_snapshots(node: &NodeFlags, base: &str) -> anyhow::Result<()> {
    if let Some(p) = preset(&node.storage)?
        && let Some(warning) = p.scheduled_snapshots_warning(base)?
    {
        tracing::warn!("{warning}");
    }
    Ok(())
}

/// The token of a node's flags, for the commands that record it (`save`, the agent).
pub fn node_token_hash(node: &NodeFlags) -> anyhow::Result<Option<TokenHash>> {
    token_hash(&node.token, preset(&node.storage)?.as_ref())
}

/// The current server token's hash for a restore to compare with the recorded one, with where
/// it came from (a restore runs on the machine's own server, if any).
pub fn current_token(args: &TokenArgs) -> anyhow::Result<Option<CurrentToken>> {
    Ok(token_hash(args, Preset::detect(program_flag())?.as_ref())?.map(|hash| CurrentToken {
        hash,
        // --token and --token-file exclude each other.
        from: match (&args.token, &args.token_file) {
            (None, Some(p)) => format!("--token-file {}", p.display()),
            _ => "--token".into(),
        },
    }))
}

/// etcd's endpoints and certificates: the flags, else a K3s/RKE2 server's client certificate.
pub fn etcd_config(args: &EtcdArgs, preset: Option<&Preset>) -> EtcdConfig {
    let mut config = EtcdConfig {
        endpoints: args.endpoints.iter().map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect(),
        ca_file: args.cacert.clone(),
        cert_file: args.cert.clone(),
        key_file: args.key.clone(),
        dial_timeout: args.dial_timeout,
        command_timeout: args.command_timeout,
        stream_idle_timeout: args.command_timeout,
    };
    let no_tls_flags = args.cacert.is_none() && args.cert.is_none() && args.key.is_none();
    if no_tls_flags && let Some((ca, cert, key)) = preset.and_then(Preset::etcd_tls) {
        tracing::info!(cert = %cert.display(), "etcd client certificate of the {} server", preset.map(|p| p.program.display_name()).unwrap_or_default());
        (config.ca_file, config.cert_file, config.key_file) = (Some(ca), Some(cert), Some(key));
    }
    config
}

/// The S3 flags as raw settings for the one S3 settings parser (which reads the config
/// Secret's `etcd-s3-*` keys the same way); `retention` is `--s3-retention`, when given.
pub fn s3_settings(args: &S3Args, retention: Option<usize>) -> RawS3Settings {
    let mut raw = RawS3Settings::new(SettingsOrigin::Flags);
    let flag = |b: bool| if b { "true".to_string() } else { String::new() };
    let values = [
        (S3Key::Endpoint, args.endpoint.clone()),
        (S3Key::EndpointCa, args.endpoint_ca.clone()),
        (S3Key::SkipSslVerify, Some(flag(args.skip_ssl_verify))),
        (S3Key::AccessKey, args.access_key.clone()),
        (S3Key::SecretKey, args.secret_key.clone()),
        (S3Key::SessionToken, args.session_token.clone()),
        (S3Key::Bucket, args.bucket.clone()),
        (S3Key::Region, args.region.clone()),
        (S3Key::Folder, args.folder.clone()),
        (S3Key::Insecure, Some(flag(args.insecure))),
        (S3Key::BucketLookupType, args.bucket_lookup.clone()),
        (S3Key::Timeout, args.timeout.clone()),
        (S3Key::Proxy, args.proxy.clone()),
        (S3Key::Retention, retention.map(|r| r.to_string())),
        (S3Key::LockRetention, args.lock_retention.clone()),
        (S3Key::LockMode, args.lock_mode.clone()),
    ];
    for (key, value) in values {
        if let Some(v) = value {
            raw.set(key, v);
        }
    }
    raw
}

/// How to reach the API server (`--kubeconfig`, `--no-kube`).
pub fn kube_connect(args: &KubeArgs) -> ConnectOptions {
    ConnectOptions { kubeconfig: args.kubeconfig.clone(), disabled: args.no_kube }
}

/// What this node does in the cluster: its duties' limits, the objects it reads, and whose
/// names they carry.
pub fn kube_settings(args: &KubeArgs, node_name: &str, program: Program) -> KubeSettings {
    KubeSettings {
        node_name: node_name.to_string(),
        program,
        orphan_ttl: args.orphan_ttl,
        legacy: LegacySettings {
            enabled: args.legacy_configmap,
            max_bytes: args.legacy_configmap_max_bytes,
            max_keys: args.legacy_configmap_max_keys,
        },
        extra_metadata_configmap: args
            .extra_metadata_configmap
            .clone()
            .unwrap_or_else(|| program.extra_metadata_configmap().to_string()),
        s3_config_secret: args.s3_config_secret.clone(),
        annotate_node: args.annotate_node,
    }
}

/// A connection for the commands that read or write resources only (no storage); `what` names
/// the command in the error when there is none.
pub async fn kube_only(args: &KubeArgs, what: &str) -> anyhow::Result<Kube> {
    match Kube::connect(&kube_connect(args), kube_settings(args, "", machine_program()?)).await? {
        Some(kube) => Ok(kube),
        None => bail!("{what} needs Kubernetes access: no kubeconfig found (or --no-kube)"),
    }
}

/// The compression of new snapshots: `--snapshot-compress` (K3s's switch) means zip.
pub fn compression(args: &CompressArgs) -> Compression {
    if args.snapshot_compress { Compression::Zip } else { args.compress }
}

/// What a command's node flags configure. `creates`: the command writes snapshots (the default
/// directory is created, saves take its lock). `s3_retention`: `--s3-retention`, when given.
pub fn session_config(
    node: &NodeFlags,
    s3_retention: Option<usize>,
    creates: bool,
    policy: KubePolicy,
) -> anyhow::Result<SessionConfig> {
    let storage = &node.storage;
    let preset = preset(storage)?;
    let program = program(preset.as_ref())?;
    let _ = PROGRAM_IN_USE.set(program);
    let name = node_name(storage, preset.as_ref())?;
    let data_dir = match (&preset, &storage.data_dir) {
        (Some(p), _) => p.state_dir(),
        (None, Some(dd)) => dd.clone(),
        (None, None) => PathBuf::from(DEFAULT_DATA_DIR),
    };
    let (dir, is_default) = match (&storage.dir, &preset) {
        (Some(dir), _) => (dir.clone(), false),
        (None, Some(p)) => p.snapshot_dir()?,
        (None, None) => (data_dir.join("snapshots"), true),
    };
    if let Some(p) = &preset {
        tracing::info!(data_dir = %p.data_dir.display(), snapshots = %dir.display(), "{} server: using its paths and names", p.program.display_name());
    }
    if creates && compression(&node.compress) == Compression::Zstd && (preset.is_some() || program_flag().is_some()) {
        tracing::warn!(
            "zstd snapshots (.zst) cannot be restored by {} or Rancher, which take plain and .zip files only: restore them with `etcdsnap restore`, or prepare a plain file with `etcdsnap restore NAME --prepare-for {program}`; --snapshot-compress writes .zip",
            program.display_name()
        );
    }
    Ok(SessionConfig {
        kube: kube_connect(&node.kube),
        kube_settings: kube_settings(&node.kube, &name, program),
        kube_policy: policy,
        node_name: name,
        data_dir,
        local: LocalSetting { dir, is_default, keep: !storage.no_local },
        creates,
        s3_enabled: storage.s3.enabled,
        s3_flags: s3_settings(&storage.s3, s3_retention),
        s3_stale_upload_after: storage.s3.stale_upload_after,
        cloud: cloud_config(storage)?,
        replicas: storage.replicas.configs()?,
        replica_retention: storage.replicas.replica_retention,
        cluster_id: storage.cluster_id.clone(),
        etcd: etcd_config(&node.etcd, preset.as_ref()),
        token_hash: None,
        zstd_level: node.compress.zstd_level.unwrap_or(etcdsnap::session::DEFAULT_ZSTD_LEVEL),
        record_hash_kv: node.etcd.record_hashkv,
        sealing: Default::default(),
        keys: Default::default(),
    })
}

/// The GCS or Azure primary store (`--gcs-*`, `--azure-*`), which takes the place of S3:
/// `--s3` and the S3 Object Lock flags with it are refused.
fn cloud_config(storage: &StorageArgs) -> anyhow::Result<Option<ReplicaConfig>> {
    let Some(config) = storage.cloud.config()? else { return Ok(None) };
    if storage.s3.enabled {
        bail!("--s3 and {}: give one remote store, S3 or GCS or Azure, not two", config.url);
    }
    if storage.s3.lock_retention.is_some() || storage.s3.lock_mode.is_some() {
        bail!("--s3-lock-retention and --s3-lock-mode lock S3 objects: {} is not S3", config.url);
    }
    Ok(Some(config))
}

/// The session of a snapshot command (the token is read only by the commands that record or
/// check it).
pub async fn command_session(flags: &SnapshotFlags, creates: bool) -> anyhow::Result<Session> {
    let config = session_config(&flags.node, flags.retention.s3_retention, creates, KubePolicy::OneShot)?;
    Ok(Session::open(config).await?)
}

/// Snapshot names as given; every one that is not a valid name is reported at once.
pub fn snapshot_names(names: &[String]) -> anyhow::Result<Vec<SnapshotName>> {
    let mut parsed = Vec::new();
    let mut bad = Vec::new();
    for n in names {
        match SnapshotName::parse(n) {
            Ok(name) => parsed.push(name),
            Err(e) => bad.push(e.to_string()),
        }
    }
    if !bad.is_empty() {
        bail!("{}", bad.join("; "));
    }
    Ok(parsed)
}

/// The drill options, with etcdutl found and asked for its version, the etcd binary checked,
/// and how the contents will be hashed (refused when they cannot be).
pub async fn drill_options(args: &DrillToolArgs) -> Result<DrillOptions, ToolError> {
    etcdsnap::drill::tools::prepare(
        args.etcdutl.clone(),
        args.drill_etcd.clone(),
        args.drill_dir.clone().unwrap_or_else(std::env::temp_dir),
        args.drill_timeout,
    )
    .await
}

/// The restored member's settings: the initial cluster defaults to `<name>=<first peer URL>`.
pub fn member_settings(args: &MemberArgs) -> MemberSettings {
    let first_peer = args.initial_advertise_peer_urls.split(',').next().unwrap_or_default().trim().to_string();
    // clap requires --member-name unless --prepare-for, which restores no member.
    let name = args.member_name.clone().unwrap_or_default();
    MemberSettings {
        initial_cluster: args.initial_cluster.clone().unwrap_or_else(|| format!("{name}={first_peer}")),
        name,
        initial_advertise_peer_urls: args.initial_advertise_peer_urls.clone(),
        initial_cluster_token: args.initial_cluster_token.clone(),
        bump_revision: args.bump_revision,
        mark_compacted: args.mark_compacted,
    }
}

/// The snapshot directory a restore looks names up in: `--dir`, else `$ETCDSNAP_DATA_DIR`'s
/// (a K3s/RKE2 data directory means its own), a K3s/RKE2 server's, or the default.
pub fn restore_snapshot_dir(dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    let preset = match (dir, std::env::var_os("ETCDSNAP_DATA_DIR")) {
        (Some(dir), _) => return Ok(dir.to_path_buf()),
        (None, Some(data_dir)) => match Preset::at(Path::new(&data_dir), program_flag())? {
            Some(p) => p,
            None => return Ok(PathBuf::from(data_dir).join("snapshots")),
        },
        (None, None) => match Preset::detect(program_flag())? {
            Some(p) => p,
            None => return Ok(PathBuf::from(DEFAULT_DATA_DIR).join("snapshots")),
        },
    };
    Ok(preset.snapshot_dir()?.0)
}
