//! The flag groups that several commands share, each under its own help heading: where
//! snapshots are kept (storage, S3), how they are compressed, how etcd and Kubernetes are
//! reached, the server token, retention, output, and the tools of restore drills. A command's
//! own flags live in its file under `commands/`; what the flags mean once parsed (node name,
//! token hash, session settings) is `resolve.rs`'s.
//!
//! Flag names follow K3s's `etcd-snapshot` command where one exists (`--dir`/
//! `--etcd-snapshot-dir`, `--name`, `--snapshot-retention`, ...); every flag can also be set
//! through an `ETCDSNAP_*` environment variable or a `--config` YAML file.
//!
//! A group's heading applies to its own flags; a command declares its own flags before the
//! groups it flattens, so they stay under "Options".

use super::args::{go_duration_text, parse_compression, parse_duration};
use clap::{ArgAction, Args, ValueEnum};
use etcdsnap_api::Compression;
use etcdsnap_storage::store::keep::{CalendarSpan, KeepPolicy, parse_count};
use std::path::PathBuf;
use std::time::Duration;

/// The help headings, one per kind of setting.
pub mod heading {
    pub const STORAGE: &str = "Storage";
    pub const S3: &str = "S3";
    pub const ETCD: &str = "etcd";
    pub const KUBERNETES: &str = "Kubernetes";
    pub const TOKEN: &str = "Token";
    pub const COMPRESSION: &str = "Compression";
    pub const RETENTION: &str = "Retention";
    pub const OUTPUT: &str = "Output";
    pub const DRILLS: &str = "Restore drills";
    pub const SCHEDULE: &str = "Schedule";
    pub const PITR: &str = "Point-in-time recovery";
    pub const MEMBER: &str = "Restored member";
    pub const GLOBAL: &str = "Global options";
}

/// The flags every `k3s etcd-snapshot` subcommand takes, on every snapshot command, so K3s
/// scripts work unchanged and one command line, environment or config file serves every
/// command: each command uses the ones it needs, and its help shows only those
/// ([`super::help::unused`] hides the others).
#[derive(Debug, Clone, Args)]
pub struct SnapshotFlags {
    /// Base name of snapshots: `save` names them <name>-<node>-<unix time>, `prune` keeps the
    /// newest of this name.
    #[arg(long, env = "ETCDSNAP_NAME", default_value = "on-demand")]
    pub name: String,
    /// K3s's supervisor address (`k3s etcd-snapshot --etcd-server`, `-s`): accepted and ignored,
    /// etcdsnap talks to etcd itself.
    #[arg(long = "etcd-server", short = 's', hide = true, value_name = "URL")]
    pub etcd_server: Option<String>,
    #[command(flatten)]
    pub node: NodeFlags,
    #[command(flatten)]
    pub retention: RetentionArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// This node: where its snapshots are kept (locally, in S3), how to reach etcd and Kubernetes,
/// the server token. The agent and every snapshot command take them.
#[derive(Debug, Clone, Args)]
pub struct NodeFlags {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    #[command(flatten)]
    pub storage: StorageArgs,
    #[command(flatten)]
    pub kube: KubeArgs,
    #[command(flatten)]
    pub token: TokenArgs,
    #[command(flatten)]
    pub compress: CompressArgs,
}

/// Which snapshots are kept, per node: restic's `forget` rules (docs/retention.md).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = heading::RETENTION)]
pub struct RetentionArgs {
    /// Snapshots of --name to keep per node, newest first: the agent prunes after each scheduled
    /// snapshot, `prune` when run; 0 keeps all [default: 5 when no other --keep-* is given]
    #[arg(long, visible_aliases = ["keep-last", "snapshot-retention", "etcd-snapshot-retention"], env = "ETCDSNAP_RETENTION", value_name = "N", value_parser = parse_count)]
    pub retention: Option<usize>,
    /// Keep the newest snapshot of each of the last N hours that have one (UTC); N or unlimited
    #[arg(long, env = "ETCDSNAP_KEEP_HOURLY", value_name = "N", value_parser = parse_count)]
    pub keep_hourly: Option<usize>,
    /// Keep the newest snapshot of each of the last N days that have one (UTC)
    #[arg(long, env = "ETCDSNAP_KEEP_DAILY", value_name = "N", value_parser = parse_count)]
    pub keep_daily: Option<usize>,
    /// Keep the newest snapshot of each of the last N ISO weeks (Monday to Sunday, UTC) that
    /// have one
    #[arg(long, env = "ETCDSNAP_KEEP_WEEKLY", value_name = "N", value_parser = parse_count)]
    pub keep_weekly: Option<usize>,
    /// Keep the newest snapshot of each of the last N months that have one (UTC)
    #[arg(long, env = "ETCDSNAP_KEEP_MONTHLY", value_name = "N", value_parser = parse_count)]
    pub keep_monthly: Option<usize>,
    /// Keep the newest snapshot of each of the last N years that have one (UTC)
    #[arg(long, env = "ETCDSNAP_KEEP_YEARLY", value_name = "N", value_parser = parse_count)]
    pub keep_yearly: Option<usize>,
    /// Keep every snapshot newer than the newest one minus DURATION (restic's 1y5m7d2h: years,
    /// months, days, hours)
    #[arg(long, env = "ETCDSNAP_KEEP_WITHIN", value_name = "DURATION", value_parser = CalendarSpan::parse)]
    pub keep_within: Option<CalendarSpan>,
    /// Snapshots to keep per node in S3, GCS or Azure (this cluster's only), in place of
    /// --retention there; the --keep-* age rules apply there too [default: --retention]
    #[arg(long, visible_alias = "etcd-s3-retention", env = "ETCDSNAP_S3_RETENTION")]
    pub s3_retention: Option<usize>,
}

/// What `--retention` keeps when no rule is given (K3s's default).
pub const DEFAULT_RETENTION: usize = 5;

impl RetentionArgs {
    /// The local rules: the --keep-* flags, with --retention as `last`; only `last 5` when no
    /// rule is given at all.
    pub fn policy(&self) -> KeepPolicy {
        let ages = [self.keep_hourly, self.keep_daily, self.keep_weekly, self.keep_monthly, self.keep_yearly];
        let any_age = ages.iter().any(Option::is_some) || self.keep_within.is_some();
        let default_last = if any_age { 0 } else { DEFAULT_RETENTION };
        KeepPolicy {
            last: self.retention.unwrap_or(default_last),
            hourly: self.keep_hourly.unwrap_or(0),
            daily: self.keep_daily.unwrap_or(0),
            weekly: self.keep_weekly.unwrap_or(0),
            monthly: self.keep_monthly.unwrap_or(0),
            yearly: self.keep_yearly.unwrap_or(0),
            within: self.keep_within,
        }
    }

    /// The S3 rules: the local ones, with the S3 count (`--s3-retention` or the Secret's
    /// `etcd-s3-retention`, resolved into `s3_retention`) as `last` when one is set.
    pub fn s3_policy(&self, s3_retention: Option<usize>) -> KeepPolicy {
        self.policy().with_last(s3_retention)
    }
}

/// Where this node keeps snapshots.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = heading::STORAGE)]
pub struct StorageArgs {
    /// Name of this node, part of every snapshot name [default: $NODE_NAME, $K3S_NODE_NAME,
    /// $RKE2_NODE_NAME, the K3s/RKE2 config's node-name, else the host name]
    #[arg(long, env = "ETCDSNAP_NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,
    /// Data directory; the default snapshot directory is <data-dir>/snapshots. A K3s or RKE2
    /// data directory (/var/lib/rancher/k3s) means its own snapshot directory, token and etcd
    /// certificates, and on a K3s or RKE2 server those are the defaults. [default:
    /// /var/lib/etcdsnap]
    #[arg(long, short = 'd', env = "ETCDSNAP_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Snapshot directory; must exist unless it is the default [default: <data-dir>/snapshots]
    #[arg(long, visible_alias = "etcd-snapshot-dir", env = "ETCDSNAP_DIR", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Keep no local copy (the remote store only: S3, GCS or Azure).
    #[arg(long, env = "ETCDSNAP_NO_LOCAL")]
    pub no_local: bool,
    /// K3s's cluster id, recorded with snapshots and scoping S3 retention: the UID of the
    /// kube-system namespace [default: read from Kubernetes, when it is reachable]
    #[arg(long, env = "ETCDSNAP_CLUSTER_ID", value_name = "ID")]
    pub cluster_id: Option<String>,
    #[command(flatten)]
    pub s3: S3Args,
    #[command(flatten)]
    pub cloud: super::cloud::CloudArgs,
    #[command(flatten)]
    pub replicas: super::replica::ReplicaArgs,
}

/// S3 storage, with K3s's flag names (`--s3-*`, or `--etcd-s3-*` as on a K3s server). Values are
/// kept as given and interpreted by the one S3 settings parser, exactly like the Secret's.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = heading::S3)]
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
    /// Lock each object written (snapshot and records) with S3 Object Lock for this long after
    /// its upload (2h, 720h, 30d); the bucket must have Object Lock enabled. Retention keeps a
    /// locked snapshot until its date and removes it afterwards
    #[arg(long = "s3-lock-retention", env = "ETCDSNAP_S3_LOCK_RETENTION", value_name = "DURATION")]
    pub lock_retention: Option<String>,
    /// Object Lock mode of --s3-lock-retention: governance (privileged users may still remove
    /// the lock) or compliance (nobody can) [default: governance]
    #[arg(long = "s3-lock-mode", env = "ETCDSNAP_S3_LOCK_MODE", value_name = "MODE", value_parser = ["governance", "compliance"])]
    pub lock_mode: Option<String>,
}

/// How stored snapshots are compressed.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = heading::COMPRESSION)]
pub struct CompressArgs {
    /// Compression of the stored snapshot: none, zstd (.zst) or zip (K3s's format).
    #[arg(long, env = "ETCDSNAP_COMPRESS", value_parser = parse_compression, default_value = "none")]
    pub compress: Compression,
    /// K3s's switch for zip compression: --compress zip.
    #[arg(
        long,
        visible_alias = "etcd-snapshot-compress",
        env = "ETCDSNAP_SNAPSHOT_COMPRESS",
        conflicts_with = "compress"
    )]
    pub snapshot_compress: bool,
    /// zstd compression level (1-19), with --compress zstd [default: 3]
    #[arg(long, env = "ETCDSNAP_ZSTD_LEVEL", value_name = "LEVEL", value_parser = clap::value_parser!(i32).range(1..=19))]
    pub zstd_level: Option<i32>,
}

impl CompressArgs {
    /// What clap cannot check by itself: a zstd level is only for zstd.
    pub fn conflict(&self) -> Option<String> {
        let zstd = !self.snapshot_compress && self.compress == Compression::Zstd;
        (self.zstd_level.is_some() && !zstd).then(|| {
            format!(
                "--zstd-level is for --compress zstd, and the compression is {}",
                if self.snapshot_compress {
                    "zip (--snapshot-compress)".to_string()
                } else {
                    self.compress.to_string()
                }
            )
        })
    }
}

/// How to reach etcd.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = heading::ETCD)]
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
#[command(next_help_heading = heading::TOKEN)]
pub struct TokenArgs {
    /// Server token (K3s `K10...::server:<password>` or the bare password). Only its hash is kept.
    /// [default: $K3S_TOKEN, $RKE2_TOKEN, or the K3s/RKE2 server's token file]
    #[arg(
        long,
        short = 't',
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
#[command(next_help_heading = heading::KUBERNETES)]
pub struct KubeArgs {
    /// Kubeconfig of the cluster whose ETCDSnapshotFile resources etcdsnap maintains
    /// [default: $KUBECONFIG, ~/.kube/config, or the in-cluster service account]
    #[arg(long, env = "ETCDSNAP_KUBECONFIG", value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Do not talk to Kubernetes: no resources, events, ConfigMaps or Leases.
    #[arg(long, env = "ETCDSNAP_NO_KUBE")]
    pub no_kube: bool,
    /// A node whose heartbeat Lease was not renewed for this long is gone; the leader deletes
    /// the resources of its local snapshots.
    #[arg(long, env = "ETCDSNAP_ORPHAN_TTL", value_parser = parse_duration, default_value = "24h", value_name = "DURATION")]
    pub orphan_ttl: Duration,
    /// Maintain the legacy ConfigMap kube-system/k3s-etcd-snapshots (rke2-etcd-snapshots with
    /// --program rke2; leader only).
    #[arg(long, env = "ETCDSNAP_LEGACY_CONFIGMAP", action = ArgAction::Set, default_value_t = true, value_name = "BOOL")]
    pub legacy_configmap: bool,
    /// Largest serialized legacy ConfigMap, in bytes; oldest entries are left out to stay under it.
    #[arg(long, env = "ETCDSNAP_LEGACY_CONFIGMAP_MAX_BYTES", default_value_t = 900_000, value_name = "BYTES")]
    pub legacy_configmap_max_bytes: usize,
    /// Most entries in the legacy ConfigMap; oldest entries are left out beyond it.
    #[arg(long, env = "ETCDSNAP_LEGACY_CONFIGMAP_MAX_KEYS", default_value_t = 1_000, value_name = "N")]
    pub legacy_configmap_max_keys: usize,
    /// ConfigMap in kube-system whose data is copied into every new snapshot's metadata
    /// [default: k3s-etcd-snapshot-extra-metadata, or rke2-... with --program rke2]
    #[arg(long, env = "ETCDSNAP_EXTRA_METADATA_CONFIGMAP", value_name = "NAME")]
    pub extra_metadata_configmap: Option<String>,
    /// Secret in kube-system holding S3 settings under K3s's etcd-s3-* keys; used when no S3 flag
    /// is set, and read again on every operation.
    #[arg(long, visible_alias = "etcd-s3-config-secret", env = "ETCDSNAP_S3_CONFIG_SECRET", value_name = "NAME")]
    pub s3_config_secret: Option<String>,
    /// After each reconcile, mark this node's Node with K3s's reconciled-at annotations (needs
    /// deploy/rbac-node-annotations.yaml); for clusters where K3s servers keep the legacy ConfigMap.
    #[arg(long, env = "ETCDSNAP_ANNOTATE_NODE")]
    pub annotate_node: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// For people: columns that fit the terminal.
    #[default]
    Table,
    /// The table with more columns (ls only).
    Wide,
    /// For programs: the typed view, exact bytes and times.
    Json,
    Yaml,
}

impl OutputFormat {
    /// A table (plain or wide) rather than structured output.
    pub fn is_table(self) -> bool {
        matches!(self, OutputFormat::Table | OutputFormat::Wide)
    }
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = heading::OUTPUT)]
pub struct OutputArgs {
    /// Output format: table, json or yaml (`ls` also takes wide).
    #[arg(short = 'o', long = "output", value_enum, default_value = "table", hide_possible_values = true)]
    pub output: OutputFormat,
}

/// The tools and limits of restore drills (`drill` and the agent's scheduled drills).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = heading::DRILLS)]
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
