//! `make install`: the binary, a manual page per command and shell completions that work.

use std::path::{Path, PathBuf};
use std::process::Command;

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd.output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!("{cmd:?} failed: {text}{}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(text)
}

/// Installs the test build into a scratch DESTDIR, as `make install` does with the release build.
fn install() -> Result<(tempfile::TempDir, PathBuf)> {
    let dest = tempfile::tempdir()?;
    sh(Command::new("make")
        .arg("-C")
        .arg(root())
        .args(["--no-print-directory", "install-files", "PREFIX=/usr"])
        .arg(format!("ETCDSNAP={}", env!("CARGO_BIN_EXE_etcdsnap")))
        .arg(format!("DESTDIR={}", dest.path().display())))?;
    let usr = dest.path().join("usr");
    Ok((dest, usr))
}

#[test]
fn make_install_puts_binary_pages_and_completions_in_place() -> Result {
    let (_dest, usr) = install()?;
    let version = sh(Command::new(usr.join("bin/etcdsnap")).arg("--version"))?;
    assert!(version.starts_with("etcdsnap "), "{version}");
    for page in ["etcdsnap", "etcdsnap-save", "etcdsnap-restore", "etcdsnap-drill", "etcdsnap-agent"] {
        assert!(usr.join(format!("share/man/man1/{page}.1")).is_file(), "{page}.1 not installed");
    }
    for script in [
        "share/bash-completion/completions/etcdsnap",
        "share/zsh/site-functions/_etcdsnap",
        "share/fish/vendor_completions.d/etcdsnap.fish",
    ] {
        let text = std::fs::read_to_string(usr.join(script))?;
        assert!(
            text.contains("restore") && text.contains("s3-bucket"),
            "{script} does not complete commands and flags"
        );
    }
    Ok(())
}

/// `man` renders the page (no roff errors swallow a section) with the flags and the commands.
#[test]
fn the_manual_pages_render() -> Result {
    if Command::new("man").arg("--version").output().is_err() {
        return Err("man is not installed (scripts/install-deps.sh installs man-db)".into());
    }
    let (_dest, usr) = install()?;
    let page = |name: &str| -> Result<String> {
        let path = usr.join(format!("share/man/man1/{name}.1"));
        let out = Command::new("man")
            .env("MANWIDTH", "100")
            .env("MAN_KEEP_FORMATTING", "0")
            .arg("-l")
            .arg(&path)
            .env("MANPAGER", "cat")
            .env("PAGER", "cat")
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success() && stderr.trim().is_empty(), "man -l {}: {stderr}", path.display());
        Ok(without_overstrikes(&String::from_utf8_lossy(&out.stdout)))
    };
    let main = page("etcdsnap")?;
    assert!(main.contains("SUBCOMMANDS") && main.contains("etcdsnap-restore(1)"), "{main}");
    let save = page("etcdsnap-save")?;
    assert!(save.contains("--s3-bucket") || save.contains("-\u{2010}-s3-bucket"), "{save}");
    assert!(save.contains("EXAMPLES") && save.contains("etcdsnap save --name before-upgrade"), "{save}");
    Ok(())
}

/// man's bold and underline are `X\bX` and `_\bX`: keep the last character of each.
fn without_overstrikes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{8}' {
            out.pop();
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The bash script really completes: commands from a prefix, and a command's flags.
#[test]
fn bash_completes_commands_and_flags() -> Result {
    let (_dest, usr) = install()?;
    let script = usr.join("share/bash-completion/completions/etcdsnap");
    let complete = |words: &str| -> Result<Vec<String>> {
        let program = format!(
            "source '{}'; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); COMP_LINE='{words}'; \
             COMP_POINT=${{#COMP_LINE}}; _etcdsnap etcdsnap \"${{COMP_WORDS[-1]}}\" \"${{COMP_WORDS[-2]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        );
        Ok(sh(Command::new("bash").arg("--norc").arg("-c").arg(program))?.lines().map(String::from).collect())
    };
    assert_eq!(complete("etcdsnap res")?, ["restore", "restore-check"]);
    let flags = complete("etcdsnap prune --s3-ret")?;
    assert_eq!(flags, ["--s3-retention"]);
    Ok(())
}

#[test]
fn an_unknown_shell_is_a_usage_error() -> Result {
    let out = Command::new(env!("CARGO_BIN_EXE_etcdsnap")).args(["completion", "tcsh"]).output()?;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bash") && stderr.contains("zsh") && stderr.contains("fish"), "{stderr}");
    Ok(())
}
