//! The `etcdsnap` command line: parsing (flags, environment, `--config`), logging, and one
//! handler per command. Errors become a message on stderr and a non-zero exit.
//!
//! - `args.rs`: the global options, the list of commands, the parsers of flag values;
//! - `flags.rs`: the flag groups several commands share, each under its help heading;
//! - `resolve.rs`: parsed flags turned into settings (node name, token hash, session, ...);
//! - `commands/`: one file per command, its own flags and the function that runs it;
//! - `output/`: one file per printed thing, its typed view and its table;
//! - `seal.rs`: the sealing flags (age, minisign, the restore kit) and what they mean;
//! - `help.rs`: which shared flags each command's help shows, and the examples' manual section;
//! - `config_file.rs` (`--config`, and the settings a K3s/RKE2 server's own configuration
//!   supplies), `server_config.rs` (that configuration, merged as the server merges it),
//!   `presets.rs` (K3s/RKE2 servers' paths and names), `progress.rs`.

// Everything on stdout goes through `output::emit` (or `output::print`), whose errors say when
// the reader went away: `println!` would panic instead.
#![deny(clippy::print_stdout)]

mod args;
mod cloud;
mod commands;
mod config_file;
mod flags;
mod help;
mod output;
mod presets;
mod progress;
mod replica;
mod resolve;
mod seal;
mod server_config;

use anyhow::Context as _;
use args::{Cli, Command, LogFormat};
use clap::{CommandFactory, Parser};
use std::ffi::OsString;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::ExitCode;

/// Exit code of a command whose work failed (usage errors exit with clap's 2).
pub const EXIT_FAILURE: u8 = 1;

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let (args, from_server) = match config_file::apply(Cli::command(), args) {
        Ok(applied) => applied,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(args);
    if let Some((command, message)) = cli.command.conflict() {
        // What clap cannot declare, refused the way clap refuses the rest (usage, exit 2).
        let mut cmd = Cli::command();
        cmd.build();
        let sub = cmd.find_subcommand_mut(command).unwrap_or_else(|| unreachable!("{command} is a command"));
        sub.error(clap::error::ErrorKind::ArgumentConflict, message).exit();
    }
    let level = if cli.debug { "debug" } else { &cli.log_level };
    if let Err(e) = init_logging(cli.log_format, level, cli.log.as_deref(), cli.alsologtostderr) {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_FAILURE);
    }
    resolve::set_program_flag(cli.program);
    for (key, file) in from_server {
        // Never the value: it may be a credential.
        tracing::info!(file = %file.display(), "{key} from the server's configuration");
    }
    // One async thread: the gRPC connection and the stream reader then share it instead of
    // waking each other across threads for every frame. CPU-heavy work (hashing, compression,
    // file writes) runs on blocking threads anyway.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        // The reader of stdout went away (`etcdsnap ls | head`): what it wanted it has.
        Err(e) if reader_gone(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Save(a) => commands::save::run(a).await,
        Command::Ls(a) => commands::ls::run(a).await,
        Command::Delete(a) => commands::delete::run(a).await,
        Command::Prune(a) => commands::prune::run(a).await,
        Command::Verify(a) => commands::verify::run(a).await,
        Command::Agent(a) => commands::agent::run(*a).await,
        Command::Crd(a) => commands::crd::run(a).await,
        Command::Reconcile(a) => commands::reconcile::run(a).await,
        Command::Watch(a) => commands::watch::run(a).await,
        Command::Restore(a) => commands::restore::run(*a).await,
        Command::RestoreCheck(a) => commands::restore_check::run(*a).await,
        Command::Recover(a) => commands::recover::run(*a).await,
        Command::Drill(a) => commands::drill::run(*a).await,
        Command::Kit(a) => commands::kit::run(*a).await,
        Command::Completion(a) => commands::completion::run(a),
        Command::Man(a) => commands::man::run(a),
    }
}

/// Whether `e` is, or was caused by, a write to a pipe nobody reads any more.
fn reader_gone(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

/// The exit code of a command whose work succeeded (`ok`) or failed.
fn exit(ok: bool) -> ExitCode {
    if ok { ExitCode::SUCCESS } else { ExitCode::from(EXIT_FAILURE) }
}

/// Logs to stderr, or with `log_file` (K3s's `--log`) to that file, appended, and to stderr too
/// with `also_stderr`.
fn init_logging(format: LogFormat, level: &str, log_file: Option<&Path>, also_stderr: bool) -> anyhow::Result<()> {
    use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt};
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .or_else(|| tracing_subscriber::EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let (writer, ansi) = match log_file {
        None => (BoxMakeWriter::new(progress::LogWriter), std::io::IsTerminal::is_terminal(&std::io::stderr())),
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("--log {}", path.display()))?;
            let file = std::sync::Mutex::new(file);
            match also_stderr {
                true => (BoxMakeWriter::new(file.and(progress::LogWriter)), false),
                false => (BoxMakeWriter::new(file), false),
            }
        }
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_ansi(ansi);
    let result = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.with_target(false).try_init(),
    };
    if let Err(e) = result {
        eprintln!("warning: logging not initialised: {e}");
    }
    Ok(())
}
