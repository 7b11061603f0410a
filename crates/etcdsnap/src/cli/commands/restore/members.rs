//! `etcdsnap restore NAME --all-members --member-name M`: one member of the whole cluster that
//! the snapshot recorded, run on every member's node with the same NAME. The initial cluster is
//! every voting member recorded (`--member NAME=PEER_URL` moves one), and the cluster token is
//! derived from the snapshot and that member set, so every node computes the same settings
//! without talking to the others, and no member of the old cluster can join the new one.
//!
//! On a K3s or RKE2 server the server restores itself: the snapshot is prepared for its
//! `--cluster-reset-restore-path` instead ([`super::prepare`]).

use super::RestoreArgs;
use crate::cli::flags::heading;
use crate::cli::output::table;
use crate::cli::presets::Preset;
use crate::cli::resolve;
use clap::Args;
use etcdsnap::restore::MemberSettings;
use etcdsnap_api::{MemberOverride, MemberSet, Program};
use etcdsnap_storage::SnapshotRecord;
use serde::Serialize;
use std::collections::BTreeMap;
use std::ffi::OsString;

/// Restoring every member of the recorded cluster.
#[derive(Debug, Args)]
#[command(next_help_heading = heading::MEMBER)]
pub struct ClusterArgs {
    /// Restore this node's member (--member-name) of the whole cluster the snapshot recorded:
    /// its initial cluster is every voting member recorded, its cluster token derived from the
    /// snapshot and the members (the same on every node). Run the same command on each
    /// member's node; the report prints each one.
    #[arg(long, conflicts_with_all = ["initial_cluster", "initial_advertise_peer_urls", "initial_cluster_token", "prepare_for"])]
    pub all_members: bool,
    /// With --all-members: restore the recorded member NAME at a new peer URL (a new host).
    /// Repeatable; give the same ones on every node.
    #[arg(long = "member", value_name = "NAME=PEER_URL", requires = "all_members")]
    pub members: Vec<String>,
}

/// The settings of this node's member, and the whole set, for a restore of `record` (rolled
/// forward to `revision` when that differs from its own). Bad input is an error before
/// anything is read or written.
pub fn settings(
    args: &RestoreArgs,
    record: &SnapshotRecord,
    revision: Option<i64>,
) -> anyhow::Result<(MemberSettings, MemberSet)> {
    let overrides = args.cluster.members.iter().map(|m| MemberOverride::parse(m)).collect::<Result<Vec<_>, _>>()?;
    let etcd = record.etcd.as_ref();
    let revision = revision.or(etcd.map(|e| e.revision)).unwrap_or_default();
    // What identifies the restored data: the stored bytes (their sha256, else the name) and
    // the revision they are restored at.
    let seed = format!("{}@{revision}", record.sha256.clone().unwrap_or_else(|| record.name.to_string()));
    let name = record.name.to_string();
    let set = MemberSet::build(&name, etcd.and_then(|e| e.members.as_deref()), &overrides, &seed)?;
    let mut member = resolve::member_settings(&args.member);
    set.require(&name, &member.name)?;
    member.initial_cluster = set.initial_cluster();
    member.initial_advertise_peer_urls = set.peer_urls(&member.name);
    member.initial_cluster_token = set.token.clone();
    Ok((member, set))
}

/// The program of the K3s or RKE2 server on this machine, when there is one: such a server
/// restores its whole cluster itself.
pub fn server_program() -> Option<Program> {
    Preset::detect(resolve::program_flag()).ok().flatten().map(|p| p.program)
}

/// Why a K3s or RKE2 server is restored its own way, after the prepared file's steps.
pub fn k3s_note(program: Program) -> String {
    format!(
        "This is a {name} server: its whole cluster is restored by {name} itself (the steps above: \
         --cluster-reset --cluster-reset-restore-path on one server, the others rejoin). etcdsnap does \
         not build the members' data directories here because {name} keeps its bootstrap data (server \
         certificates, the token-encrypted cluster secrets) in etcd and reconciles it during its own \
         cluster reset; data directories built beside it would hold bootstrap data {name} never checked.\n",
        name = program.display_name()
    )
}

/// The member set and each other node's command, for `-o json|yaml`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterView {
    #[serde(flatten)]
    pub set: MemberSet,
    /// The command to run on each other member's node, by member name.
    pub commands: BTreeMap<String, String>,
}

impl ClusterView {
    pub fn new(set: &MemberSet, this: &str, revision: Option<i64>) -> ClusterView {
        let args: Vec<OsString> = std::env::args_os().skip(1).collect();
        let others = set.members.keys().filter(|n| *n != this);
        let commands = others.map(|n| (n.clone(), command_for(&args, n, revision))).collect();
        ClusterView { set: set.clone(), commands }
    }
}

/// The member table, the token, and the command to run on each other member's node.
pub fn report_text(set: &MemberSet, this: &str, revision: Option<i64>) -> String {
    let mut rows = vec![vec!["MEMBER".to_string(), "PEER URLS".into(), "".into()]];
    for (name, urls) in &set.members {
        let mut note = Vec::new();
        if name == this {
            note.push("this node");
        }
        if set.moved.contains(name) {
            note.push("moved");
        }
        rows.push(vec![name.clone(), urls.join(","), note.join(", ")]);
    }
    let mut out = format!(
        "Whole cluster: {} members, cluster token {} (the same on every node).\n",
        set.members.len(),
        set.token
    );
    for line in table(&rows).lines() {
        out.push_str(&format!("  {}\n", line.trim_end()));
    }
    let view = ClusterView::new(set, this, revision);
    if !view.commands.is_empty() {
        out.push_str("Run on each other member's node (then start every member):\n");
        for (name, command) in &view.commands {
            out.push_str(&format!("  {name}: {command}\n"));
        }
    }
    out
}

/// This command line with `--member-name` set to `name`, and a `--to-time` replaced by the
/// revision it resolved to (a relative time would mean another revision on another node).
fn command_for(args: &[OsString], name: &str, revision: Option<i64>) -> String {
    let mut out = vec!["etcdsnap".to_string()];
    let mut it = args.iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--member-name" | "--to-time" | "--to-revision" => {
                it.next();
            }
            a if a.starts_with("--member-name=") || a.starts_with("--to-time=") || a.starts_with("--to-revision=") => {}
            _ => out.push(arg),
        }
    }
    out.extend(["--member-name".to_string(), name.to_string()]);
    // `recover` finds the newest revision itself, the same on every node.
    let recovering = args.first().is_some_and(|a| a == "recover");
    if let Some(rev) = revision.filter(|_| !recovering) {
        out.extend(["--to-revision".to_string(), rev.to_string()]);
    }
    out.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ")
}

/// `arg` quoted for a POSIX shell when it needs it.
fn quote(arg: &str) -> String {
    let plain = !arg.is_empty() && arg.chars().all(|c| c.is_ascii_alphanumeric() || "-_=./:,@+%".contains(c));
    match plain {
        true => arg.to_string(),
        false => format!("'{}'", arg.replace('\'', r"'\''")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_other_nodes_command_names_their_member_and_a_fixed_revision() {
        let args: Vec<OsString> =
            ["restore", "--to-time", "4m ago", "--all-members", "--member-name=m0", "--data-dir", "/var/lib/etcd"]
                .iter()
                .map(OsString::from)
                .collect();
        assert_eq!(
            command_for(&args, "m1", Some(42)),
            "etcdsnap restore --all-members --data-dir /var/lib/etcd --member-name m1 --to-revision 42"
        );
        let args: Vec<OsString> = ["restore", "snap", "--member-name", "m0", "--member", "m1=http://h:1"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(command_for(&args, "m1", None), "etcdsnap restore snap --member m1=http://h:1 --member-name m1");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
