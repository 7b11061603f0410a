//! `--config FILE`: a YAML map of settings named like the long flags. A setting from the file
//! applies only where neither the command line nor the environment gave one, and a key that no
//! command knows is an error (a typo must not silently fall back to a default).

use clap::parser::ValueSource;
use clap::{ArgMatches, Command};
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
}

/// Returns `args` with the config file's settings appended as `--key=value` for every setting the
/// command line and environment left at its default. `args` are returned unchanged when they do
/// not parse (clap then reports the problem) or name no config file.
pub fn apply(command: Command, args: Vec<OsString>) -> Result<Vec<OsString>, ConfigFileError> {
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
        let takes_value = arg.get_num_args().is_none_or(|n| n.takes_values());
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
    let mut args = args;
    if !extra.is_empty() {
        // Keep everything after a `--` separator positional.
        let at = args.iter().position(|a| a == "--").unwrap_or(args.len());
        args.splice(at..at, extra);
    }
    Ok(args)
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
