//! `etcdsnap man`: the manual pages, generated from the same clap definitions as `--help`, so
//! the two can never disagree.

use crate::cli::args::Cli;
use crate::cli::help;
use anyhow::Context;
use clap::{Args, CommandFactory};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct ManArgs {
    /// Directory to write every page into (created if missing); without it, etcdsnap.1 is
    /// printed.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

const EXAMPLES: &str = "Examples:
  # Every page, where man finds them
  etcdsnap man --dir /usr/local/share/man/man1

  # The main page, read now
  etcdsnap man | man -l -
";

pub fn run(args: ManArgs) -> anyhow::Result<ExitCode> {
    match args.dir {
        Some(dir) => {
            let pages = write_pages(&dir)?;
            crate::cli::output::emit(&format!("{pages} manual pages written to {}.\n", dir.display()))?;
        }
        None => {
            let mut out = std::io::stdout().lock();
            render(&Cli::command(), &mut out).context("writing etcdsnap.1")?;
            out.flush().context("writing etcdsnap.1")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// etcdsnap.1 and etcdsnap-COMMAND.1 for every command, as `git help` and `cargo help` lay
/// them out; returns how many pages were written.
fn write_pages(dir: &Path) -> anyhow::Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = Cli::command();
    // Subcommands inherit the binary's name and version only once the tree is built.
    cmd.build();
    let mut pages = vec![cmd.clone()];
    // clap's generated `help` command has no page of its own: `man etcdsnap` is that.
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        let name = format!("etcdsnap-{}", sub.get_name());
        pages.push(sub.clone().name(name.clone()).bin_name(name));
    }
    for page in &pages {
        let path = dir.join(format!("{}.1", page.get_name()));
        let mut file = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        render(page, &mut file).with_context(|| format!("writing {}", path.display()))?;
        file.sync_all().with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(pages.len())
}

/// One page: clap_mangen's sections, with the command's examples as EXAMPLES.
fn render(page: &clap::Command, w: &mut dyn Write) -> std::io::Result<()> {
    let man = clap_mangen::Man::new(page.clone());
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    if page.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(w)?;
    }
    if page.has_subcommands() {
        man.render_subcommands_section(w)?;
    }
    if let Some(roff) = page.get_after_help().and_then(|h| help::examples_roff(&h.to_string())) {
        w.write_all(roff.as_bytes())?;
    }
    man.render_version_section(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `--help` fits an 100-column terminal (clap wraps to at most that; what it cannot
    /// wrap, a long default or a long value list, has to be fixed in the definition).
    #[test]
    fn help_texts_fit_the_width() {
        let mut cmd = Cli::command().term_width(100);
        cmd.build();
        let mut offenders = Vec::new();
        let mut check = |name: &str, text: String| {
            for line in text.lines().filter(|l| l.chars().count() > 100) {
                offenders.push(format!("{name}: {line}"));
            }
        };
        check("etcdsnap", cmd.render_long_help().to_string());
        check("etcdsnap -h", cmd.render_help().to_string());
        for sub in cmd.get_subcommands_mut() {
            let name = sub.get_name().to_string();
            check(&name, sub.render_long_help().to_string());
            check(&format!("{name} -h"), sub.render_help().to_string());
        }
        assert!(offenders.is_empty(), "help lines wider than 100 columns:\n{}", offenders.join("\n"));
    }

    #[test]
    fn every_visible_command_gets_a_page() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_pages(dir.path()).unwrap();
        let commands = Cli::command().get_subcommands().filter(|s| !s.is_hide_set()).count();
        assert_eq!(written, commands + 1);
        let save = std::fs::read_to_string(dir.path().join("etcdsnap-save.1")).unwrap();
        assert!(save.contains(".TH etcdsnap-save 1"), "{save}");
        assert!(save.contains("\\-\\-s3\\-bucket"), "{save}");
        assert!(!save.contains("\\-\\-orphan\\-ttl"), "save does not use it: {save}");
        assert!(save.contains(".SH EXAMPLES") && !save.contains(".SH EXTRA"), "{save}");
        let main = std::fs::read_to_string(dir.path().join("etcdsnap.1")).unwrap();
        assert!(main.contains("etcdsnap\\-restore(1)"), "{main}");
    }
}
