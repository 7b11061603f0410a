//! Command-line arguments. Flag names follow K3s's `etcd-snapshot` command where one exists
//! (`--dir`/`--etcd-snapshot-dir`, `--name`, `--snapshot-retention`, ...); every flag can also be
//! set through an `ETCDSNAP_*` environment variable or a `--config` YAML file.

use super::kube_args::{CrdArgs, KubeArgs, ReconcileArgs, WatchArgs};
use clap::{Args, Parser, Subcommand, ValueEnum};
use etcdsnap_api::Compression;
use etcdsnap_storage::store::s3::{RawS3Settings, S3Key, SettingsOrigin};
use std::path::PathBuf;
use std::time::Duration;

/// Takes, stores, indexes, prunes, verifies and restores etcd snapshots of a Kubernetes control
/// plane, recorded as K3s/RKE2-compatible ETCDSnapshotFile resources.
#[derive(Debug, Parser)]
#[command(name = "etcdsnap", version, propagate_version = true, args_override_self = true, max_term_width = 100)]
pub struct Cli {
    /// YAML file of settings: keys are flag names (`dir: /x`, `s3-bucket: b`). Flags and
    /// environment variables take precedence over it.
    #[arg(long, global = true, env = "ETCDSNAP_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, env = "ETCDSNAP_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log level (error, warn, info, debug, trace) or a tracing filter; RUST_LOG wins when set.
    #[arg(long, global = true, env = "ETCDSNAP_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// K3s's `--debug`: the same as `--log-level debug`.
    #[arg(long, global = true, hide = true)]
    pub debug: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq, Default)]
pub enum OutputFormat {
    #[default]
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Take a snapshot now and store it locally and/or in S3.
    Save(SaveArgs),
    /// List stored snapshots.
    #[command(visible_aliases = ["list", "l"])]
    Ls(LsArgs),
    /// Delete snapshots (and their metadata documents) by name.
    Delete(DeleteArgs),
    /// Delete all but the newest snapshots of a name prefix, per node.
    Prune(PruneArgs),
    /// Re-read stored snapshots and check them against their recorded sha256 and etcd's
    /// integrity trailer. Exits non-zero if any check fails.
    Verify(VerifyArgs),
    /// Run beside an etcd member: scheduled snapshots, retention, metrics and health.
    Agent(AgentArgs),
    /// Print the ETCDSnapshotFile CRD as YAML (or install it with --install).
    Crd(CrdArgs),
    /// Bring the ETCDSnapshotFile resources in line with storage: this node's, and the leader's
    /// duties (S3, departed nodes, legacy ConfigMap) when the leader Lease can be taken.
    Reconcile(ReconcileArgs),
    /// Stream additions, changes and deletions of ETCDSnapshotFile resources as they happen.
    Watch(WatchArgs),
    /// Restore a snapshot (a name, a file, or from S3) into an etcd data directory with
    /// etcdutl, after a pre-flight report: integrity, token hash, versions, space and target.
    Restore(Box<super::restore::RestoreArgs>),
    /// Prove that snapshots restore to the key space they were taken from: re-hash the bytes,
    /// compare etcd's HashKV of the contents with the one recorded at save time, and with
    /// --drill-etcd boot a private etcd on a restored copy. Exits non-zero if any drill fails.
    Drill(Box<super::drill::DrillArgs>),
    /// Print a shell completion script: `etcdsnap completion bash > /etc/bash_completion.d/etcdsnap`.
    Completion(CompletionArgs),
    /// Write the manual pages (etcdsnap.1 and one etcdsnap-COMMAND.1 per command) into a
    /// directory, or print etcdsnap.1 on stdout.
    Man(ManArgs),
}

#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Directory to write every page into (created if missing); without it, etcdsnap.1 is
    /// printed.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// When to take snapshots: cron (5 fields, or 6 with leading seconds) or @hourly/@daily...,
    /// in the local time zone.
    #[arg(
        long,
        visible_alias = "etcd-snapshot-schedule-cron",
        env = "ETCDSNAP_SCHEDULE",
        default_value = "0 */12 * * *"
    )]
    pub schedule: String,
    /// Base name of scheduled snapshots.
    #[arg(long, visible_alias = "etcd-snapshot-name", env = "ETCDSNAP_SNAPSHOT_NAME", default_value = "etcd-snapshot")]
    pub snapshot_name: String,
    /// Scheduled snapshots to keep per node; 0 keeps all.
    #[arg(long, visible_aliases = ["snapshot-retention", "etcd-snapshot-retention"], env = "ETCDSNAP_RETENTION", default_value_t = 5)]
    pub retention: usize,
    /// How often the snapshot resources are reconciled with storage (jittered by 5%).
    #[arg(long, visible_alias = "etcd-snapshot-reconcile-interval", env = "ETCDSNAP_RECONCILE_INTERVAL", value_parser = parse_duration, default_value = "10m")]
    pub reconcile_interval: Duration,
    /// Take no scheduled snapshots (and run no periodic reconcile), like K3s's flag.
    #[arg(long, visible_alias = "etcd-disable-snapshots", env = "ETCDSNAP_DISABLE_SNAPSHOTS")]
    pub disable_snapshots: bool,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "ETCDSNAP_METRICS_ADDR", default_value = "127.0.0.1:9477")]
    pub metrics_addr: std::net::SocketAddr,
    /// Re-read each new local snapshot and check it after saving.
    #[arg(long, env = "ETCDSNAP_VERIFY_AFTER_SAVE", default_value_t = true, action = clap::ArgAction::Set)]
    pub verify_after_save: bool,
    /// Upper bound of the random delay before each scheduled run.
    #[arg(long, env = "ETCDSNAP_SCHEDULE_JITTER", value_parser = parse_duration, default_value = "5s", hide = true)]
    pub schedule_jitter: Duration,
    /// How long the leader Lease outlives its last renewal: a leader that dies is replaced after
    /// about this long (at once when it shuts down cleanly).
    #[arg(long, env = "ETCDSNAP_LEADER_LEASE_DURATION", value_parser = parse_duration, default_value = "30s")]
    pub leader_lease_duration: Duration,
    /// When to run restore drills (cron like --schedule); "" disables them. Each run drills the
    /// newest snapshot of each store and one older one in turn; the leader drills S3's.
    #[arg(long, env = "ETCDSNAP_DRILL_SCHEDULE", default_value = "@daily")]
    pub drill_schedule: String,
    #[command(flatten)]
    pub drill: DrillToolArgs,
    /// Point-in-time recovery: capture etcd's changes between snapshots (the leader only)
    /// into delta segments beside the snapshot directory, for `restore --to-revision|--to-time`.
    #[arg(long, env = "ETCDSNAP_DELTAS")]
    pub deltas: bool,
    /// With --deltas: the longest a captured change waits before its segment is written (the
    /// recovery point objective, roughly).
    #[arg(long, env = "ETCDSNAP_DELTA_INTERVAL", value_parser = parse_duration, default_value = "10s", requires = "deltas")]
    pub delta_interval: Duration,
    /// With --deltas: a segment is written once its changes reach this size (8MiB, 512KiB,
    /// 1000000).
    #[arg(long, env = "ETCDSNAP_DELTA_MAX_BYTES", value_parser = parse_byte_size, default_value = "8MiB", requires = "deltas")]
    pub delta_max_bytes: usize,
    #[command(flatten)]
    pub node: NodeFlags,
}

/// The tools and limits of restore drills (`drill` and the agent's scheduled drills).
#[derive(Debug, Clone, Args)]
pub struct DrillToolArgs {
    /// etcdutl for drills: 3.7 or later hashes snapshots of every etcd version; an older one
    /// needs --drill-etcd (its hashkv cannot read leased keys) [default: etcdutl from PATH]
    #[arg(long, env = "ETCDSNAP_ETCDUTL", value_name = "PATH")]
    pub etcdutl: Option<PathBuf>,
    /// An etcd binary: also restore each drilled snapshot and boot a private etcd on it on
    /// loopback (the boot level); at least as new as the snapshots' etcd.
    #[arg(long, env = "ETCDSNAP_DRILL_ETCD", value_name = "PATH")]
    pub drill_etcd: Option<PathBuf>,
    /// Where drills make their scratch directories; the free space is checked before each
    /// drill [default: the system's temporary directory]
    #[arg(long, env = "ETCDSNAP_DRILL_DIR", value_name = "DIR")]
    pub drill_dir: Option<PathBuf>,
    /// Longest a drill of one snapshot may take.
    #[arg(long, env = "ETCDSNAP_DRILL_TIMEOUT", value_parser = parse_duration, default_value = "30m")]
    pub drill_timeout: Duration,
}

impl DrillToolArgs {
    /// The drill options, with etcdutl found and asked for its version, the etcd binary
    /// checked, and how the contents will be hashed (refused when they cannot be).
    pub async fn options(&self) -> Result<etcdsnap::drill::DrillOptions, etcdsnap::drill::tools::ToolError> {
        etcdsnap::drill::tools::prepare(
            self.etcdutl.clone(),
            self.drill_etcd.clone(),
            self.drill_dir.clone().unwrap_or_else(std::env::temp_dir),
            self.drill_timeout,
        )
        .await
    }
}

/// This node: where its snapshots are kept (locally, in S3), how to reach etcd and Kubernetes,
/// the server token. The agent and every snapshot command take them.
#[derive(Debug, Clone, Args)]
pub struct NodeFlags {
    /// Snapshots to keep per node in S3 (this cluster's only) [default: --retention]
    #[arg(long, visible_alias = "etcd-s3-retention", env = "ETCDSNAP_S3_RETENTION")]
    pub s3_retention: Option<usize>,
    #[command(flatten)]
    pub storage: StorageArgs,
    #[command(flatten)]
    pub compress: CompressArgs,
    #[command(flatten)]
    pub etcd: EtcdArgs,
    #[command(flatten)]
    pub token: TokenArgs,
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// The flags every `k3s etcd-snapshot` subcommand takes, on every snapshot command, so K3s
/// scripts work unchanged: each command uses the ones it needs and ignores the others.
#[derive(Debug, Clone, Args)]
pub struct SnapshotFlags {
    /// Base name of snapshots: <name>-<node>-<unix time> for `save`, the name pruned by `prune`.
    #[arg(long, env = "ETCDSNAP_NAME", default_value = "on-demand")]
    pub name: String,
    /// Snapshots to keep per node when pruning; 0 keeps all. (`save` never prunes, like K3s.)
    #[arg(long, visible_aliases = ["snapshot-retention", "etcd-snapshot-retention"], env = "ETCDSNAP_RETENTION", default_value_t = 5)]
    pub retention: usize,
    /// K3s's supervisor address (`k3s etcd-snapshot --etcd-server`): accepted and ignored,
    /// etcdsnap talks to etcd itself.
    #[arg(long = "etcd-server", hide = true, value_name = "URL")]
    pub etcd_server: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub node: NodeFlags,
}

/// Where this node keeps snapshots.
#[derive(Debug, Clone, Args)]
pub struct StorageArgs {
    /// Name of this node, part of every snapshot name [default: $NODE_NAME, $K3S_NODE_NAME,
    /// $RKE2_NODE_NAME, the K3s/RKE2 config's node-name, else the host name]
    #[arg(long, env = "ETCDSNAP_NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,
    /// Data directory; the default snapshot directory is <data-dir>/snapshots. A K3s or RKE2
    /// data directory (/var/lib/rancher/k3s) means its own snapshot directory, token and etcd
    /// certificates, and on a K3s or RKE2 server those are the defaults. [default:
    /// /var/lib/etcdsnap]
    #[arg(long, env = "ETCDSNAP_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Snapshot directory; must exist unless it is the default [default: <data-dir>/snapshots]
    #[arg(long, visible_alias = "etcd-snapshot-dir", env = "ETCDSNAP_DIR", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Keep no local copy (S3 only).
    #[arg(long, env = "ETCDSNAP_NO_LOCAL")]
    pub no_local: bool,
    /// Cluster identity recorded with snapshots and used to scope S3 retention
    /// [default: the UID of the kube-system namespace, when Kubernetes is reachable]
    #[arg(long, env = "ETCDSNAP_CLUSTER_ID", value_name = "ID")]
    pub cluster_id: Option<String>,
    #[command(flatten)]
    pub s3: S3Args,
}

/// S3 storage, with K3s's flag names (`--s3-*`, or `--etcd-s3-*` as on a K3s server). Values are
/// kept as given and interpreted by the one S3 settings parser, exactly like the Secret's.
#[derive(Debug, Clone, Args)]
pub struct S3Args {
    /// Also keep snapshots in S3 (uploaded in the same pass as the local copy). With no other
    /// S3 flag, the settings come from --s3-config-secret.
    #[arg(long = "s3", visible_alias = "etcd-s3", env = "ETCDSNAP_S3")]
    pub enabled: bool,
    /// S3 endpoint, host[:port] without scheme [default: s3.amazonaws.com]
    #[arg(long = "s3-endpoint", visible_alias = "etcd-s3-endpoint", env = "ETCDSNAP_S3_ENDPOINT", value_name = "HOST")]
    pub endpoint: Option<String>,
    /// CA certificates for the endpoint: PEM file paths or base64-encoded PEM bundles, space-separated.
    #[arg(
        long = "s3-endpoint-ca",
        visible_alias = "etcd-s3-endpoint-ca",
        env = "ETCDSNAP_S3_ENDPOINT_CA",
        value_name = "CA"
    )]
    pub endpoint_ca: Option<String>,
    /// Do not verify the endpoint's TLS certificate.
    #[arg(long = "s3-skip-ssl-verify", visible_alias = "etcd-s3-skip-ssl-verify", env = "ETCDSNAP_S3_SKIP_SSL_VERIFY")]
    pub skip_ssl_verify: bool,
    /// Access key [env: AWS_ACCESS_KEY_ID]; without keys the AWS credential chain (web identity,
    /// ECS, instance profile) is used.
    #[arg(
        long = "s3-access-key",
        visible_alias = "etcd-s3-access-key",
        env = "AWS_ACCESS_KEY_ID",
        hide_env = true,
        hide_env_values = true
    )]
    pub access_key: Option<String>,
    /// Secret key [env: AWS_SECRET_ACCESS_KEY].
    #[arg(
        long = "s3-secret-key",
        visible_alias = "etcd-s3-secret-key",
        env = "AWS_SECRET_ACCESS_KEY",
        hide_env = true,
        hide_env_values = true
    )]
    pub secret_key: Option<String>,
    /// Session token for temporary credentials [env: AWS_SESSION_TOKEN].
    #[arg(
        long = "s3-session-token",
        visible_alias = "etcd-s3-session-token",
        env = "AWS_SESSION_TOKEN",
        hide_env = true,
        hide_env_values = true
    )]
    pub session_token: Option<String>,
    /// Bucket (must exist).
    #[arg(long = "s3-bucket", visible_alias = "etcd-s3-bucket", env = "ETCDSNAP_S3_BUCKET")]
    pub bucket: Option<String>,
    /// Region [default: us-east-1]
    #[arg(long = "s3-region", visible_alias = "etcd-s3-region", env = "ETCDSNAP_S3_REGION")]
    pub region: Option<String>,
    /// Folder (key prefix) inside the bucket.
    #[arg(long = "s3-folder", visible_alias = "etcd-s3-folder", env = "ETCDSNAP_S3_FOLDER")]
    pub folder: Option<String>,
    /// Use plain HTTP instead of HTTPS.
    #[arg(long = "s3-insecure", visible_alias = "etcd-s3-insecure", env = "ETCDSNAP_S3_INSECURE")]
    pub insecure: bool,
    /// Bucket addressing: auto, dns (virtual host) or path [default: auto]
    #[arg(
        long = "s3-bucket-lookup-type",
        visible_alias = "etcd-s3-bucket-lookup-type",
        env = "ETCDSNAP_S3_BUCKET_LOOKUP_TYPE"
    )]
    pub bucket_lookup: Option<String>,
    /// Timeout of each S3 request [default: 5m]
    #[arg(long = "s3-timeout", visible_alias = "etcd-s3-timeout", env = "ETCDSNAP_S3_TIMEOUT", value_parser = go_duration_text)]
    pub timeout: Option<String>,
    /// Proxy URL for S3, or `none` to ignore HTTP(S)_PROXY [default: from the environment]
    #[arg(long = "s3-proxy", visible_alias = "etcd-s3-proxy", env = "ETCDSNAP_S3_PROXY")]
    pub proxy: Option<String>,
    /// A multipart upload of this node left idle this long was left by a killed save: the next
    /// save aborts it (never sooner than --s3-timeout).
    #[arg(long = "s3-stale-upload-after", env = "ETCDSNAP_S3_STALE_UPLOAD_AFTER", value_parser = parse_duration, default_value = "10m", value_name = "DURATION")]
    pub stale_upload_after: Duration,
}

impl S3Args {
    /// The flags as raw settings for the S3 settings parser; `retention` is the command's
    /// `--s3-retention`, when it has one.
    pub fn raw(&self, retention: Option<usize>) -> RawS3Settings {
        let mut raw = RawS3Settings::new(SettingsOrigin::Flags);
        let flag = |b: bool| if b { "true".to_string() } else { String::new() };
        let values = [
            (S3Key::Endpoint, self.endpoint.clone()),
            (S3Key::EndpointCa, self.endpoint_ca.clone()),
            (S3Key::SkipSslVerify, Some(flag(self.skip_ssl_verify))),
            (S3Key::AccessKey, self.access_key.clone()),
            (S3Key::SecretKey, self.secret_key.clone()),
            (S3Key::SessionToken, self.session_token.clone()),
            (S3Key::Bucket, self.bucket.clone()),
            (S3Key::Region, self.region.clone()),
            (S3Key::Folder, self.folder.clone()),
            (S3Key::Insecure, Some(flag(self.insecure))),
            (S3Key::BucketLookupType, self.bucket_lookup.clone()),
            (S3Key::Timeout, self.timeout.clone()),
            (S3Key::Proxy, self.proxy.clone()),
            (S3Key::Retention, retention.map(|r| r.to_string())),
        ];
        for (key, value) in values {
            if let Some(v) = value {
                raw.set(key, v);
            }
        }
        raw
    }
}

/// How to reach etcd.
#[derive(Debug, Clone, Args)]
pub struct EtcdArgs {
    /// etcd client URLs, comma-separated; the snapshot comes from the first member that answers.
    #[arg(long, env = "ETCDSNAP_ENDPOINTS", value_delimiter = ',', default_value = "https://127.0.0.1:2379")]
    pub endpoints: Vec<String>,
    /// CA bundle for etcd's server certificates.
    #[arg(long, env = "ETCDSNAP_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Client certificate for etcd (mutual TLS).
    #[arg(long, env = "ETCDSNAP_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Client key for etcd (mutual TLS).
    #[arg(long, env = "ETCDSNAP_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Time allowed to connect to etcd.
    #[arg(long, env = "ETCDSNAP_DIAL_TIMEOUT", value_parser = parse_duration, default_value = "5s")]
    pub dial_timeout: Duration,
    /// Time allowed for a request; a snapshot stream may not go silent for longer than this.
    #[arg(long, env = "ETCDSNAP_COMMAND_TIMEOUT", value_parser = parse_duration, default_value = "1m")]
    pub command_timeout: Duration,
    /// After each save, ask the member for etcd's HashKV at the snapshot's revision and record
    /// it: restore drills compare the snapshot's contents with it. It reads the key space once
    /// (cost: bench/RESULTS.md).
    #[arg(long, env = "ETCDSNAP_RECORD_HASHKV", default_value_t = true, action = clap::ArgAction::Set)]
    pub record_hashkv: bool,
}

/// The server token, whose hash is recorded with each snapshot.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// Server token (K3s `K10...::server:<password>` or the bare password). Only its hash is kept.
    /// [default: $K3S_TOKEN, $RKE2_TOKEN, or the K3s/RKE2 server's token file]
    #[arg(
        long,
        visible_alias = "etcd-token",
        env = "ETCDSNAP_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,
    /// File holding the server token (e.g. /var/lib/rancher/k3s/server/token).
    #[arg(long, env = "ETCDSNAP_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: OutputFormat,
}

/// How stored snapshots are compressed.
#[derive(Debug, Clone, Args)]
pub struct CompressArgs {
    /// Compression of the stored snapshot: none, zstd (.zst) or zip (K3s's format).
    #[arg(long, env = "ETCDSNAP_COMPRESS", value_parser = parse_compression, default_value = "none")]
    pub compress: Compression,
    /// K3s's switch for zip compression (same as --compress zip).
    #[arg(long, visible_alias = "etcd-snapshot-compress", env = "ETCDSNAP_SNAPSHOT_COMPRESS")]
    pub snapshot_compress: bool,
    /// zstd compression level (1-19).
    #[arg(long, env = "ETCDSNAP_ZSTD_LEVEL", default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
    pub zstd_level: i32,
}

impl CompressArgs {
    pub fn compression(&self) -> Compression {
        if self.snapshot_compress { Compression::Zip } else { self.compress }
    }
}

#[derive(Debug, Args)]
pub struct SaveArgs {
    #[command(flatten)]
    pub flags: SnapshotFlags,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// List the ETCDSnapshotFile resources of every node (from the API server) instead of this
    /// node's storage.
    #[arg(long)]
    pub cluster: bool,
    /// List the delta chains of point-in-time recovery (`agent --deltas`) beside the snapshot
    /// directory: base, revisions and times covered, gaps.
    #[arg(long, conflicts_with = "cluster")]
    pub deltas: bool,
    #[command(flatten)]
    pub flags: SnapshotFlags,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Snapshot names (file names, as `ls` shows them).
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
    #[command(flatten)]
    pub flags: SnapshotFlags,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub flags: SnapshotFlags,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Snapshots to verify [default: all]
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
    #[command(flatten)]
    pub flags: SnapshotFlags,
}

/// Durations like `30s`, `5m`, `1h30m`, `250ms` (Go's style, as K3s takes them).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    etcdsnap_api::go::parse_duration(s)
}

/// A Go-style duration checked at parse time (a typo is a usage error) but kept as text for the
/// S3 settings parser.
fn go_duration_text(s: &str) -> Result<String, String> {
    parse_duration(s).map(|_| s.trim().to_string())
}

/// A size: a number of bytes with an optional unit, binary (KiB, MiB, GiB; also Ki, Mi, Gi as
/// Kubernetes writes them) or decimal (KB, MB, GB).
pub fn parse_byte_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: usize = digits.parse().map_err(|_| format!("{s:?} is not a size (e.g. 8MiB, 512KiB, 1000000)"))?;
    let factor: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "Ki" | "K" => 1 << 10,
        "MiB" | "Mi" | "M" => 1 << 20,
        "GiB" | "Gi" | "G" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => return Err(format!("unknown size unit {other:?} in {s:?} (B, KiB, MiB, GiB, KB, MB, GB)")),
    };
    match n.checked_mul(factor) {
        Some(0) => Err("a size must be above 0".into()),
        Some(bytes) => Ok(bytes),
        None => Err(format!("{s:?} is too large")),
    }
}

fn parse_compression(s: &str) -> Result<Compression, String> {
    s.parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_in_time_restores_take_a_target_instead_of_a_snapshot() {
        let base = ["etcdsnap", "restore", "--data-dir", "/d", "--name", "m0"];
        let with = |extra: &[&str]| Cli::try_parse_from(base.iter().chain(extra)).map(|_| ()).map_err(|e| e.kind());
        assert!(with(&["--to-revision", "42"]).is_ok());
        assert!(with(&["--to-time", "2026-12-03T07:04:00Z"]).is_ok());
        assert!(with(&["--to-time", "10m ago"]).is_ok());
        assert!(with(&["snap"]).is_ok());
        for bad in [
            &["snap", "--to-revision", "42"][..],
            &["--to-revision", "42", "--to-time", "10m ago"],
            &["--to-revision", "0"],
            &["--to-revision", "-5"],
            &["--to-time", "yesterday"],
            &[],
        ] {
            assert!(with(bad).is_err(), "{bad:?} accepted");
        }
        let agent = |extra: &[&str]| Cli::try_parse_from(["etcdsnap", "agent"].iter().chain(extra)).map(|_| ());
        assert!(agent(&["--deltas", "--delta-interval", "2s", "--delta-max-bytes", "1MiB"]).is_ok());
        assert!(agent(&["--delta-interval", "2s"]).is_err(), "--delta-interval without --deltas");
        assert!(agent(&["--deltas", "--delta-max-bytes", "lots"]).is_err());
    }

    #[test]
    fn sizes_take_binary_and_decimal_units_and_refuse_the_rest() {
        assert_eq!(parse_byte_size("8MiB"), Ok(8 * 1024 * 1024));
        assert_eq!(parse_byte_size("512Ki"), Ok(512 * 1024));
        assert_eq!(parse_byte_size("1000000"), Ok(1_000_000));
        assert_eq!(parse_byte_size("2 MB"), Ok(2_000_000));
        for bad in ["", "MiB", "8XB", "-1", "0", "99999999999999999999GiB"] {
            assert!(parse_byte_size(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn s3_flags_become_raw_settings() {
        let cli =
            Cli::parse_from(["etcdsnap", "save", "--s3", "--s3-bucket", "b", "--s3-insecure", "--s3-timeout", "30s"]);
        let Command::Save(save) = cli.command else { panic!("not save") };
        let raw = save.flags.node.storage.s3.raw(Some(3));
        assert_eq!(raw.get(S3Key::Bucket), Some("b"));
        assert_eq!(raw.get(S3Key::Insecure), Some("true"));
        assert_eq!(raw.get(S3Key::SkipSslVerify), None);
        assert_eq!(raw.get(S3Key::Retention), Some("3"));
        assert!(raw.names_a_location());
        let cli = Cli::parse_from(["etcdsnap", "save", "--s3"]);
        let Command::Save(save) = cli.command else { panic!("not save") };
        assert!(!save.flags.node.storage.s3.raw(None).names_a_location());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
