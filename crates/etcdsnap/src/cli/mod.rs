//! The `etcdsnap` command line: parsing (flags, environment, `--config`), logging, and one
//! handler per command. Errors become a message on stderr and a non-zero exit.

mod agent;
mod args;
mod commands;
mod config_file;
mod docs;
mod drill;
mod kube_args;
mod kube_commands;
mod ls_deltas;
mod output;
mod presets;
mod progress;
mod restore;
mod restore_pitr;

use args::{Cli, Command, LogFormat};
use clap::{CommandFactory, Parser};
use std::ffi::OsString;
use std::process::ExitCode;

/// Exit code of a command whose work failed (usage errors exit with clap's 2).
pub const EXIT_FAILURE: u8 = 1;

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let args = match config_file::apply(Cli::command(), args) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(args);
    init_logging(cli.log_format, if cli.debug { "debug" } else { &cli.log_level });
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
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Save(a) => commands::save(a).await,
        Command::Ls(a) => commands::ls(a).await,
        Command::Delete(a) => commands::delete(a).await,
        Command::Prune(a) => commands::prune(a).await,
        Command::Verify(a) => commands::verify(a).await,
        Command::Agent(a) => agent::run(a).await,
        Command::Crd(a) => kube_commands::crd(a).await,
        Command::Reconcile(a) => kube_commands::reconcile(a).await,
        Command::Watch(a) => kube_commands::watch(a).await,
        Command::Restore(a) => restore::restore(*a).await,
        Command::Drill(a) => drill::drill(*a).await,
        Command::Completion(a) => docs::completion(a),
        Command::Man(a) => docs::man(a),
    }
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .or_else(|| tracing_subscriber::EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(progress::LogWriter).with_ansi(ansi);
    let result = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.with_target(false).try_init(),
    };
    if let Err(e) = result {
        eprintln!("warning: logging not initialised: {e}");
    }
}
