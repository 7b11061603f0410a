//! `etcdsnap restore NAME|PATH --prepare-for k3s|rke2`: K3s, RKE2 and Rancher restore plain and
//! `.zip` snapshots only, so a `.zst` one (or any other) is written as a checked plain file
//! (`etcdsnap::restore::prepare`), and the server's own restore is printed step by step: the
//! cluster reset with `--cluster-reset-restore-path` on the first server, then the others
//! rejoin with an empty `server/db`.

use super::RestoreArgs;
use crate::cli::output::{self, human_bytes};
use crate::cli::presets::Preset;
use crate::cli::progress::ProgressLine;
use crate::cli::resolve;
use anyhow::Context as _;
use etcdsnap::restore::SnapshotSource;
use etcdsnap::restore::prepare::{Prepared, prepare_plain};
use etcdsnap_api::Program;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// What was prepared and how the server restores it (`-o json|yaml`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PreparedView {
    program: Program,
    snapshot: String,
    path: PathBuf,
    size: u64,
    sha256: String,
    sha256_recorded: bool,
    /// The steps, in order, each a command and where it runs.
    steps: Vec<Step>,
    warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Step {
    on: &'static str,
    run: String,
}

pub async fn run(args: &RestoreArgs, mut source: SnapshotSource, program: Program) -> anyhow::Result<ExitCode> {
    let dir = match &args.prepare_dir {
        Some(dir) => dir.clone(),
        None => {
            let snapshots = resolve::restore_snapshot_dir(args.dir.as_deref())?;
            snapshots.parent().map(Path::to_path_buf).unwrap_or(snapshots)
        }
    };
    let dir = std::path::absolute(&dir).with_context(|| format!("--prepare-dir {}", dir.display()))?;
    // Every flag is read before anything is written.
    let keys = crate::cli::seal::open_keys(&args.unseal)?;
    let current = resolve::current_token(&args.token)?;
    let progress = ProgressLine::start(&format!("Preparing {}", source.record.name));
    let prepared = prepare_plain(&mut source, &dir, &keys, Some(progress.counter())).await;
    progress.finish();
    let prepared = prepared?;
    // After the signature check: the signed record is the one to compare with.
    let mut warnings = Vec::new();
    if let (Some(recorded), Some(current)) = (&source.record.token_hash, current)
        && *recorded != current.hash
    {
        warnings.push(format!(
            "the snapshot was taken with another server token (hash {recorded}, the current one's is {}): the server must be reset with that token (--token), or it cannot decrypt its bootstrap data",
            current.hash
        ));
    }
    let data_dir = server_data_dir(program)?;
    let view = PreparedView {
        program,
        snapshot: source.record.name.to_string(),
        path: prepared.path.clone(),
        size: prepared.size,
        sha256: prepared.stored_sha256.clone(),
        sha256_recorded: prepared.sha256_recorded,
        steps: steps(program, &prepared, &data_dir, !warnings.is_empty()),
        warnings,
    };
    if args.output.output.is_table() {
        for w in &view.warnings {
            eprintln!("warning: {w}");
        }
    }
    output::print(args.output.output, || &view, |_| text(&view))?;
    Ok(ExitCode::SUCCESS)
}

/// The server's data directory, for the step on the other servers: this machine's server's,
/// else the program's default.
fn server_data_dir(program: Program) -> anyhow::Result<PathBuf> {
    Ok(match Preset::detect(Some(program))? {
        Some(p) if p.program == program => p.data_dir,
        _ => Path::new("/").join(program.data_dir()),
    })
}

/// The server's own restore of `prepared`, as its documentation orders it.
fn steps(program: Program, prepared: &Prepared, data_dir: &Path, other_token: bool) -> Vec<Step> {
    let unit = program.server_unit();
    let token = if other_token { " --token=<the token the snapshot was taken with>" } else { "" };
    let db = data_dir.join("server/db");
    vec![
        Step { on: "every server", run: format!("systemctl stop {unit}") },
        Step {
            on: "the first server",
            run: format!(
                "{} --cluster-reset --cluster-reset-restore-path={}{token}",
                program.server_command(),
                prepared.path.display()
            ),
        },
        Step { on: "the first server, once that has exited", run: format!("systemctl start {unit}") },
        Step {
            on: "each other server",
            run: format!("mv {} {}-old-$(date +%s) && systemctl start {unit}", db.display(), db.display()),
        },
    ]
}

fn text(view: &PreparedView) -> String {
    let checked = match view.sha256_recorded {
        true => "sha256 as recorded, etcd's trailer valid",
        false => "etcd's trailer valid; no recorded sha256 to compare",
    };
    let mut out = format!(
        "Prepared {} from {} ({}; {checked}).\nTo restore it with {}:\n",
        view.path.display(),
        view.snapshot,
        human_bytes(view.size),
        view.program.display_name()
    );
    for (i, step) in view.steps.iter().enumerate() {
        out.push_str(&format!("  {}. On {}:\n       {}\n", i + 1, step.on, step.run));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_steps_name_the_server_s_own_command_unit_and_directory() {
        let prepared = Prepared {
            path: PathBuf::from("/var/lib/rancher/rke2/server/db/on-demand-n1-1700000000"),
            size: 1,
            stored_sha256: String::new(),
            sha256_recorded: true,
        };
        let rke2 = steps(Program::Rke2, &prepared, Path::new("/var/lib/rancher/rke2"), false);
        let runs: Vec<&str> = rke2.iter().map(|s| s.run.as_str()).collect();
        assert_eq!(runs[0], "systemctl stop rke2-server");
        assert_eq!(
            runs[1],
            "rke2 server --cluster-reset --cluster-reset-restore-path=/var/lib/rancher/rke2/server/db/on-demand-n1-1700000000"
        );
        assert!(runs[3].starts_with("mv /var/lib/rancher/rke2/server/db /var/lib/rancher/rke2/server/db-old-"));
        let k3s = steps(Program::K3s, &prepared, Path::new("/var/lib/rancher/k3s"), true);
        assert!(k3s[1].run.starts_with("k3s server --cluster-reset --cluster-reset-restore-path="));
        assert!(k3s[1].run.ends_with("--token=<the token the snapshot was taken with>"));
        assert_eq!(k3s[2].run, "systemctl start k3s");
    }
}
