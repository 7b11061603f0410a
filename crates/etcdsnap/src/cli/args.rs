//! The command line as clap sees it: the global options and one subcommand per command, whose
//! flags are declared in its own file under `commands/` (with the shared groups of `flags.rs`),
//! and the parsers of flag values.

use super::commands::{
    agent::AgentArgs, completion::CompletionArgs, crd::CrdArgs, delete::DeleteArgs, drill::DrillArgs, kit::KitArgs,
    ls::LsArgs, man::ManArgs, prune::PruneArgs, reconcile::ReconcileArgs, recover::RecoverArgs, restore::RestoreArgs,
    save::SaveArgs, verify::VerifyArgs, watch::WatchArgs,
};
use super::flags::heading;
use clap::{Parser, Subcommand, ValueEnum};
use etcdsnap_api::{Compression, Program};
use std::path::PathBuf;
use std::time::Duration;

/// Takes, stores, indexes, prunes, verifies and restores etcd snapshots of a Kubernetes control
/// plane, recorded as K3s/RKE2-compatible ETCDSnapshotFile resources.
#[derive(Debug, Parser)]
#[command(name = "etcdsnap", version, propagate_version = true, args_override_self = true, max_term_width = 100)]
pub struct Cli {
    /// YAML file of settings: keys are flag names (`dir: /x`, `s3-bucket: b`). Flags and
    /// environment variables take precedence over it. (A K3s or RKE2 server's own config.yaml
    /// is read by itself.)
    #[arg(long, short = 'c', global = true, env = "ETCDSNAP_CONFIG", value_name = "FILE", help_heading = heading::GLOBAL)]
    pub config: Option<PathBuf>,
    /// Whose names to write and read: k3s or rke2 (labels etcd.<program>.cattle.io/..., the
    /// <program>-etcd-snapshots ConfigMaps, <program>-* S3 metadata) [default: the server's on
    /// a K3s or RKE2 server, else k3s]
    #[arg(long, global = true, env = "ETCDSNAP_PROGRAM", value_name = "PROGRAM", value_parser = parse_program, help_heading = heading::GLOBAL)]
    pub program: Option<Program>,
    /// K3s's `--log`: write the log to this file (appended) instead of stderr.
    #[arg(long, short = 'l', global = true, env = "ETCDSNAP_LOG_FILE", value_name = "FILE", help_heading = heading::GLOBAL)]
    pub log: Option<PathBuf>,
    /// K3s's `--alsologtostderr`: with --log, log to stderr as well.
    #[arg(long, global = true, requires = "log", help_heading = heading::GLOBAL)]
    pub alsologtostderr: bool,
    /// Log format on stderr.
    #[arg(long, global = true, env = "ETCDSNAP_LOG_FORMAT", value_enum, default_value = "text", help_heading = heading::GLOBAL)]
    pub log_format: LogFormat,
    /// Log level (error, warn, info, debug, trace) or a tracing filter; RUST_LOG wins when set.
    #[arg(long, global = true, env = "ETCDSNAP_LOG_LEVEL", default_value = "info", help_heading = heading::GLOBAL)]
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
    Agent(Box<AgentArgs>),
    /// Print the ETCDSnapshotFile CRD as YAML (or install it with --install).
    Crd(CrdArgs),
    /// Bring the ETCDSnapshotFile resources in line with storage: this node's, and the leader's
    /// duties (S3, departed nodes, legacy ConfigMap) when the leader Lease can be taken.
    Reconcile(ReconcileArgs),
    /// Stream additions, changes and deletions of ETCDSnapshotFile resources as they happen.
    Watch(WatchArgs),
    /// Restore a snapshot (a name, a file, or from S3) into an etcd data directory with
    /// etcdutl, after a pre-flight report: integrity, token hash, versions, space and target.
    Restore(Box<RestoreArgs>),
    /// After a restore: wait for every recorded member, then check one leader, one revision,
    /// one HashKV and the snapshot's key space. Exits non-zero when the cluster is not the
    /// snapshot's.
    RestoreCheck(Box<super::commands::restore_check::RestoreCheckArgs>),
    /// For an ExecStartPre or init container: leave a member's data alone; restore an empty
    /// one-member data directory from the newest snapshot and the captured changes; refuse a
    /// lost member of a cluster whose other members answer, printing how to replace it.
    Recover(Box<RecoverArgs>),
    /// Prove that snapshots restore to the key space they were taken from: re-hash the bytes,
    /// compare etcd's HashKV of the contents with the one recorded at save time, and with
    /// --drill-etcd boot a private etcd on a restored copy. Exits non-zero if any drill fails.
    Drill(Box<DrillArgs>),
    /// Open a sealed snapshot's restore kit and write it into a directory: the server token and
    /// the files kept with the snapshot (certificates, EncryptionConfiguration), with their modes.
    Kit(Box<KitArgs>),
    /// Print a shell completion script: `etcdsnap completion bash > /etc/bash_completion.d/etcdsnap`.
    Completion(CompletionArgs),
    /// Write the manual pages (etcdsnap.1 and one etcdsnap-COMMAND.1 per command) into a
    /// directory, or print etcdsnap.1 on stdout.
    Man(ManArgs),
}

impl Command {
    /// A combination of flags that clap cannot refuse by itself: the command's name and why.
    pub fn conflict(&self) -> Option<(&'static str, String)> {
        match self {
            Command::Save(a) => a.flags.node.compress.conflict().map(|m| ("save", m)),
            Command::Agent(a) => a.node.compress.conflict().map(|m| ("agent", m)),
            _ => None,
        }
    }
}

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

/// Durations like `30s`, `5m`, `1h30m`, `250ms` (Go's style, as K3s takes them).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    etcdsnap_api::go::parse_duration(s)
}

/// A Go-style duration checked at parse time (a typo is a usage error) but kept as text for the
/// S3 settings parser.
pub fn go_duration_text(s: &str) -> Result<String, String> {
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

pub fn parse_compression(s: &str) -> Result<Compression, String> {
    s.parse()
}

pub fn parse_program(s: &str) -> Result<Program, String> {
    s.parse()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::resolve;
    use etcdsnap_storage::store::s3::S3Key;

    #[test]
    fn point_in_time_restores_take_a_target_instead_of_a_snapshot() {
        let base = ["etcdsnap", "restore", "--data-dir", "/d", "--member-name", "m0"];
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
        let raw = resolve::s3_settings(&save.flags.node.storage.s3, Some(3));
        assert_eq!(raw.get(S3Key::Bucket), Some("b"));
        assert_eq!(raw.get(S3Key::Insecure), Some("true"));
        assert_eq!(raw.get(S3Key::SkipSslVerify), None);
        assert_eq!(raw.get(S3Key::Retention), Some("3"));
        assert!(raw.names_a_location());
        let cli = Cli::parse_from(["etcdsnap", "save", "--s3"]);
        let Command::Save(save) = cli.command else { panic!("not save") };
        assert!(!resolve::s3_settings(&save.flags.node.storage.s3, None).names_a_location());
    }

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

    #[test]
    fn k3s_s_short_flags_and_log_flags_are_taken() {
        let cli = Cli::parse_from([
            "etcdsnap",
            "save",
            "-t",
            "tok",
            "-s",
            "https://127.0.0.1:6443",
            "-d",
            "/var/lib/rancher/rke2",
            "-c",
            "/etc/x.yaml",
            "-l",
            "/var/log/x.log",
            "--alsologtostderr",
            "--program",
            "rke2",
        ]);
        assert_eq!(cli.config.as_deref(), Some(std::path::Path::new("/etc/x.yaml")));
        assert_eq!(cli.log.as_deref(), Some(std::path::Path::new("/var/log/x.log")));
        assert!(cli.alsologtostderr);
        assert_eq!(cli.program, Some(Program::Rke2));
        let Command::Save(save) = cli.command else { panic!("not save") };
        assert_eq!(save.flags.node.token.token.as_deref(), Some("tok"));
        assert_eq!(save.flags.etcd_server.as_deref(), Some("https://127.0.0.1:6443"));
        assert_eq!(save.flags.node.storage.data_dir.as_deref(), Some(std::path::Path::new("/var/lib/rancher/rke2")));
        assert!(Cli::try_parse_from(["etcdsnap", "save", "--alsologtostderr"]).is_err(), "needs --log");
        assert!(Cli::try_parse_from(["etcdsnap", "save", "--program", "rke1"]).is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
