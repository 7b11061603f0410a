//! `etcdsnap completion SHELL`: a shell completion script, generated from the same clap
//! definitions as `--help`, so the two can never disagree.

use crate::cli::args::Cli;
use anyhow::Context;
use clap::{Args, CommandFactory};
use std::io::Write;
use std::process::ExitCode;

#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct CompletionArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

const EXAMPLES: &str = "Examples:
  etcdsnap completion bash > /etc/bash_completion.d/etcdsnap
  etcdsnap completion zsh > \"${fpath[1]}/_etcdsnap\"
  etcdsnap completion fish > ~/.config/fish/completions/etcdsnap.fish
";

pub fn run(args: CompletionArgs) -> anyhow::Result<ExitCode> {
    let mut cmd = Cli::command();
    // Into memory first: clap_complete panics when its writer fails (a closed pipe).
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "etcdsnap", &mut script);
    let mut out = std::io::stdout().lock();
    out.write_all(&script).and_then(|()| out.flush()).context("writing the completion script")?;
    Ok(ExitCode::SUCCESS)
}
