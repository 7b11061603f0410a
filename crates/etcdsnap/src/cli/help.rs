//! What `--help` and the manual pages show of each command: only the flags it uses, under their
//! headings, and its examples.
//!
//! Every snapshot command accepts the same shared flags (`flags.rs`), as every `k3s
//! etcd-snapshot` subcommand does: one command line, environment or config file then serves
//! them all. A command hides those it ignores ([`unused`]), so its help lists only what it uses.
//! Examples are each command's `after_help`, an `Examples:` section; the manual pages render it
//! as EXAMPLES ([`examples_roff`]).

use super::flags::OutputFormat;
use clap::Arg;
use clap::builder::{PossibleValuesParser, TypedValueParser};

/// etcd's connection: only `save` and the agent talk to etcd.
pub const ETCD: &[&str] = &["endpoints", "cacert", "cert", "key", "dial_timeout", "command_timeout", "record_hashkv"];
/// The leader's duties and their limits: the agent's and `reconcile`'s.
pub const KUBE_DUTIES: &[&str] =
    &["orphan_ttl", "legacy_configmap", "legacy_configmap_max_bytes", "legacy_configmap_max_keys", "annotate_node"];
/// The server token, recorded by saves.
pub const TOKEN: &[&str] = &["token", "token_file"];
/// How new snapshots are compressed.
pub const COMPRESS: &[&str] = &["compress", "snapshot_compress", "zstd_level"];
/// Which snapshots are kept.
pub const RETENTION: &[&str] = &[
    "retention",
    "keep_hourly",
    "keep_daily",
    "keep_weekly",
    "keep_monthly",
    "keep_yearly",
    "keep_within",
    "s3_retention",
    "replica_retention",
];
/// What only a save writes: the extra metadata it records, the stale uploads it aborts.
pub const SAVE_ONLY: &[&str] = &["extra_metadata_configmap", "stale_upload_after"];
/// What a command that only reads stored snapshots (verify, drill, kit) never uses: etcd, the
/// token, how saves compress and what retention keeps, the leader's duties, a member's name.
pub const READER_UNUSED: &[&[&str]] =
    &[ETCD, TOKEN, COMPRESS, RETENTION, KUBE_DUTIES, SAVE_ONLY, &["name", "cluster_id"]];

/// Hides the flags in `groups`: accepted (a shared command line works everywhere) and ignored
/// by this command, so not in its help, manual page or completions.
pub fn unused(groups: &'static [&'static [&'static str]]) -> impl FnMut(Arg) -> Arg {
    move |arg| {
        if groups.iter().any(|g| g.contains(&arg.get_id().as_str())) { arg.hide(true) } else { arg }
    }
}

/// `-o` without `wide`, which only `ls` has.
pub fn no_wide(arg: Arg) -> Arg {
    if arg.get_id() != "output" {
        return arg;
    }
    let parser = PossibleValuesParser::new(["table", "json", "yaml"]).map(|v| match v.as_str() {
        "json" => OutputFormat::Json,
        "yaml" => OutputFormat::Yaml,
        _ => OutputFormat::Table,
    });
    arg.value_parser(parser).help("Output format: table, json or yaml").hide_possible_values(false)
}

/// The `Examples:` section of a command's help as a manual page's EXAMPLES section (roff), or
/// None when it has none.
pub fn examples_roff(after_help: &str) -> Option<String> {
    let body = after_help.strip_prefix("Examples:")?;
    let mut roff = String::from(".SH EXAMPLES\n.nf\n");
    for line in body.trim_matches('\n').lines() {
        let escaped = line.replace('\\', "\\e").replace('-', "\\-");
        let escaped = if escaped.starts_with(['.', '\'']) { format!("\\&{escaped}") } else { escaped };
        roff.push_str(&escaped);
        roff.push('\n');
    }
    roff.push_str(".fi\n");
    Some(roff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_become_a_preformatted_roff_section() {
        let roff = examples_roff("Examples:\n  # a comment\n  etcdsnap ls -o wide\n.dot\n").unwrap();
        assert_eq!(roff, ".SH EXAMPLES\n.nf\n  # a comment\n  etcdsnap ls \\-o wide\n\\&.dot\n.fi\n");
        assert_eq!(examples_roff("no examples"), None);
    }
}
