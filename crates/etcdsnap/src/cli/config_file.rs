//! `--config FILE`: a YAML map of settings named like the long flags. A setting from the file
//! applies only where neither the command line nor the environment gave one, and a key that no
//! command knows is an error (a typo must not silently fall back to a default).
//!
//! Then, on a K3s or RKE2 server (see `presets.rs`), the server's own configuration supplies the
//! snapshot settings it shares with `k3s etcd-snapshot` ([`SERVER_KEYS`]: `etcd-s3*`,
//! `etcd-snapshot-compress`, `etcd-snapshot-retention`) where nothing above gave them. Its other
//! keys are the server's business and are skipped, as the server skips keys a command does not
//! know; the node name and the snapshot directory are read by the preset itself. A bad value is
//! refused naming its file and key.

use super::presets::Preset;
use super::server_config::ServerConfigError;
use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{ArgMatches, Command};
use etcdsnap_api::Program;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {} is not valid YAML: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("config file {} must be a map of settings (`flag-name: value`)", .0.display())]
    NotAMap(PathBuf),
    #[error("config file {}: unknown setting {key:?} (settings are named like the long flags, e.g. `dir`, `s3-bucket`)", path.display())]
    UnknownKey { path: PathBuf, key: String },
    #[error("config file {}: setting {key:?} has a value that is not a string, number, boolean or list of those", path.display())]
    BadValue { path: PathBuf, key: String },
    #[error(transparent)]
    Server(#[from] ServerConfigError),
}

/// Settings a server's configuration shares with its `etcd-snapshot` command, which etcdsnap's
/// flags take under the same names (as aliases): every `etcd-s3*` key and these.
pub const SERVER_KEYS: [&str; 2] = ["etcd-snapshot-compress", "etcd-snapshot-retention"];

/// The arguments with the settings added, and which of the server's settings came from which
/// file (to log once logging runs).
pub type Applied = (Vec<OsString>, Vec<(String, PathBuf)>);

fn is_server_key(key: &str) -> bool {
    key == "etcd-s3" || key.starts_with("etcd-s3-") || SERVER_KEYS.contains(&key)
}

/// `--config`'s settings, then the K3s/RKE2 server's (each a flag the command line, the
/// environment and `--config` left unset). Returns the arguments and which settings came from
/// which of the server's files, to log once logging runs.
pub fn apply(command: Command, args: Vec<OsString>) -> Result<Applied, ConfigFileError> {
    let args = apply_config_file(command.clone(), args)?;
    apply_server_config(command, args)
}

/// Returns `args` with the config file's settings appended as `--key=value` for every setting the
/// command line and environment left at its default. `args` are returned unchanged when they do
/// not parse (clap then reports the problem) or name no config file.
fn apply_config_file(command: Command, args: Vec<OsString>) -> Result<Vec<OsString>, ConfigFileError> {
    let Ok(matches) = command.clone().try_get_matches_from(&args) else {
        return Ok(args);
    };
    let Some(path) = matches.get_one::<PathBuf>("config").cloned() else {
        return Ok(args);
    };
    let settings = load(&path)?;
    let Some((sub_name, sub_matches)) = matches.subcommand() else {
        return Ok(args);
    };
    let Some(sub) = command.find_subcommand(sub_name) else {
        return Ok(args);
    };
    let mut extra = Vec::new();
    for (key, value) in settings {
        let Some(key) = key.as_str().map(str::to_string) else {
            return Err(ConfigFileError::UnknownKey { path, key: format!("{key:?}") });
        };
        if key == "config" {
            continue;
        }
        let Some(arg) = find_arg(sub, &key).or_else(|| find_arg(&command, &key)) else {
            if command.get_subcommands().any(|c| find_arg(c, &key).is_some()) {
                continue; // a setting of another command (the file is shared)
            }
            return Err(ConfigFileError::UnknownKey { path, key });
        };
        if given_explicitly(sub_matches, arg.get_id().as_str()) || given_explicitly(&matches, arg.get_id().as_str()) {
            continue;
        }
        let long = arg.get_long().unwrap_or(arg.get_id().as_str()).to_string();
        let takes_value = arg.get_action().takes_values();
        let values =
            scalar_values(&value).ok_or_else(|| ConfigFileError::BadValue { path: path.clone(), key: key.clone() })?;
        for v in values {
            if takes_value {
                extra.push(OsString::from(format!("--{long}={v}")));
            } else if v == "true" {
                extra.push(OsString::from(format!("--{long}")));
            }
        }
    }
    Ok(insert(args, extra))
}

/// `args` with `extra` before a `--` separator (everything after it stays positional).
fn insert(mut args: Vec<OsString>, extra: Vec<OsString>) -> Vec<OsString> {
    let at = args.iter().position(|a| a == "--").unwrap_or(args.len());
    args.splice(at..at, extra);
    args
}

/// The server's snapshot settings for a command with node flags, on a K3s or RKE2 server.
fn apply_server_config(command: Command, args: Vec<OsString>) -> Result<Applied, ConfigFileError> {
    let Ok(matches) = command.clone().try_get_matches_from(&args) else {
        return Ok((args, Vec::new()));
    };
    let Some((sub_name, sub_matches)) = matches.subcommand() else {
        return Ok((args, Vec::new()));
    };
    let Some(sub) = command.find_subcommand(sub_name) else {
        return Ok((args, Vec::new()));
    };
    if !sub.get_arguments().any(|a| a.get_id() == "node_name") {
        return Ok((args, Vec::new())); // no node flags: not a command of a server's node
    }
    let path = |id: &str| sub_matches.try_get_one::<PathBuf>(id).ok().flatten().cloned();
    let (data_dir, dir_given) = (path("data_dir"), path("dir").is_some());
    let program = [sub_matches, &matches].into_iter().find_map(|m| m.try_get_one::<Program>("program").ok().flatten());
    let program = program.copied();
    let Some(preset) = Preset::find(data_dir.as_deref(), dir_given, program)? else {
        return Ok((args, Vec::new()));
    };
    let mut accepted: Vec<OsString> = Vec::new();
    let mut notes = Vec::new();
    for (key, _) in preset.config.iter().filter(|(k, _)| is_server_key(k)) {
        let Some(arg) = find_arg(sub, key) else { continue };
        if given_explicitly(sub_matches, arg.get_id().as_str()) {
            continue;
        }
        let long = arg.get_long().unwrap_or(arg.get_id().as_str()).to_string();
        let takes_value = arg.get_action().takes_values();
        let (candidate, file) = if takes_value {
            let Some((values, file)) = preset.config.values(key)? else { continue };
            (values.iter().map(|v| OsString::from(format!("--{long}={v}"))).collect::<Vec<_>>(), file.to_path_buf())
        } else {
            let Some((on, file)) = preset.config.boolean(key)? else { continue };
            (if on { vec![OsString::from(format!("--{long}"))] } else { Vec::new() }, file.to_path_buf())
        };
        if candidate.is_empty() {
            continue;
        }
        let trial = insert(args.clone(), [accepted.clone(), candidate.clone()].concat());
        match command.clone().try_get_matches_from(&trial) {
            Ok(_) => {
                accepted.extend(candidate);
                notes.push((key.to_string(), file));
            }
            // The command line chose otherwise (`--compress zstd` against the server's zip).
            Err(e) if e.kind() == ErrorKind::ArgumentConflict => continue,
            Err(e) => {
                let message = e.to_string();
                let message = message.lines().next().unwrap_or_default().trim_start_matches("error: ").to_string();
                return Err(ServerConfigError::BadValue { path: file, key: key.to_string(), message }.into());
            }
        }
    }
    Ok((insert(args, accepted), notes))
}

fn load(path: &Path) -> Result<serde_norway::Mapping, ConfigFileError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read { path: path.to_path_buf(), source })?;
    let value: serde_norway::Value = serde_norway::from_str(&text)
        .map_err(|e| ConfigFileError::Parse { path: path.to_path_buf(), message: e.to_string() })?;
    match value {
        serde_norway::Value::Mapping(m) => Ok(m),
        serde_norway::Value::Null => Ok(serde_norway::Mapping::new()),
        _ => Err(ConfigFileError::NotAMap(path.to_path_buf())),
    }
}

fn find_arg<'a>(command: &'a Command, key: &str) -> Option<&'a clap::Arg> {
    command
        .get_arguments()
        .find(|a| a.get_long() == Some(key) || a.get_all_aliases().is_some_and(|aliases| aliases.contains(&key)))
}

fn given_explicitly(matches: &ArgMatches, id: &str) -> bool {
    matches.try_contains_id(id).is_ok()
        && matches!(matches.value_source(id), Some(ValueSource::CommandLine | ValueSource::EnvVariable))
}

fn scalar_values(value: &serde_norway::Value) -> Option<Vec<String>> {
    use serde_norway::Value;
    match value {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Bool(b) => Some(vec![b.to_string()]),
        Value::Number(n) => Some(vec![n.to_string()]),
        Value::Sequence(items) => items.iter().map(|i| scalar_values(i).and_then(|v| v.into_iter().next())).collect(),
        _ => None,
    }
}
