//! A K3s or RKE2 server's own configuration, read the way the server reads it: the file
//! (`/etc/rancher/<program>/config.yaml`, or `$K3S_CONFIG_FILE` / `$RKE2_CONFIG_FILE`), then every
//! drop-in of `<file>.d/` whose name ends in `.yaml` or `.yml` (any case), in name order. A later
//! file's key replaces an earlier one's value; a key ending in `+` appends to it instead. The
//! file may be missing when drop-ins exist. Rancher writes the node name into
//! `config.yaml.d/50-rancher.yaml`, so the drop-ins matter.
//!
//! Keys are the server's flags; etcdsnap uses a few (the node name, the data and snapshot
//! directories, the `etcd-s3-*` and `etcd-snapshot-*` settings) and skips the rest, as the server
//! skips keys a command does not know. Every value remembers the file it came from, so a bad
//! value is refused naming its file and key, and the log can say where a setting came from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ServerConfigError {
    #[error("cannot read the server's config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the server's config file {} is not valid YAML: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("the server's config file {} must be a map of settings (`flag-name: value`)", .0.display())]
    NotAMap(PathBuf),
    #[error("the server's config file {}: {key}: {message}", path.display())]
    BadValue { path: PathBuf, key: String, message: String },
}

/// One setting after merging: its value (a sequence once appended to) and the file that last
/// set it.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    pub value: serde_norway::Value,
    pub file: PathBuf,
}

/// The merged settings of a server's config file and its drop-ins.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerConfig {
    /// The files read, in order.
    pub files: Vec<PathBuf>,
    settings: BTreeMap<String, Setting>,
}

impl ServerConfig {
    /// Reads `main` and `<main>.d/*.yaml|*.yml`. Neither existing is an empty configuration.
    pub fn load(main: &Path) -> Result<ServerConfig, ServerConfigError> {
        let mut files = Vec::new();
        if main.is_file() {
            files.push(main.to_path_buf());
        }
        files.extend(drop_ins(main)?);
        let mut config = ServerConfig::default();
        for file in files {
            let text = std::fs::read_to_string(&file)
                .map_err(|source| ServerConfigError::Read { path: file.clone(), source })?;
            config.merge(&file, &text)?;
            config.files.push(file);
        }
        Ok(config)
    }

    /// Merges one file's text over what was read before (the server's rules: replace, or append
    /// for `key+`).
    pub fn merge(&mut self, file: &Path, text: &str) -> Result<(), ServerConfigError> {
        let value: serde_norway::Value = serde_norway::from_str(text)
            .map_err(|e| ServerConfigError::Parse { path: file.to_path_buf(), message: e.to_string() })?;
        let map = match value {
            serde_norway::Value::Mapping(m) => m,
            serde_norway::Value::Null => return Ok(()),
            _ => return Err(ServerConfigError::NotAMap(file.to_path_buf())),
        };
        for (key, value) in map {
            let key = scalar_text(&key).unwrap_or_default();
            let (key, append) = match key.strip_suffix('+') {
                Some(k) => (k.to_string(), true),
                None => (key, false),
            };
            let merged = match self.settings.get(&key) {
                Some(old) if append => {
                    let mut items = as_items(&old.value);
                    items.extend(as_items(&value));
                    serde_norway::Value::Sequence(items)
                }
                _ => value,
            };
            self.settings.insert(key, Setting { value: merged, file: file.to_path_buf() });
        }
        Ok(())
    }

    /// Every key set, with its setting.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Setting)> {
        self.settings.iter().map(|(k, s)| (k.as_str(), s))
    }

    /// A setting's values as the server's flags receive them: one per item of a sequence, else
    /// one. A map is refused naming the file and key.
    pub fn values(&self, key: &str) -> Result<Option<(Vec<String>, &Path)>, ServerConfigError> {
        let Some(setting) = self.settings.get(key) else { return Ok(None) };
        let bad = || ServerConfigError::BadValue {
            path: setting.file.clone(),
            key: key.to_string(),
            message: "must be a string, number, boolean or list of those".into(),
        };
        let values = match &setting.value {
            serde_norway::Value::Sequence(items) => {
                items.iter().map(scalar_text).collect::<Option<Vec<_>>>().ok_or_else(bad)?
            }
            other => vec![scalar_text(other).ok_or_else(bad)?],
        };
        Ok(Some((values, &setting.file)))
    }

    /// A single-valued setting (the last of a list, as a repeated flag ends up), and its file.
    pub fn string(&self, key: &str) -> Result<Option<(String, &Path)>, ServerConfigError> {
        Ok(self.values(key)?.and_then(|(values, file)| values.into_iter().next_back().map(|v| (v, file))))
    }

    /// A non-empty single-valued setting, trimmed.
    pub fn text(&self, key: &str) -> Result<Option<(String, &Path)>, ServerConfigError> {
        Ok(self.string(key)?.map(|(v, f)| (v.trim().to_string(), f)).filter(|(v, _)| !v.is_empty()))
    }

    /// A boolean setting: Go's spellings (`true`, `1`, `f`, ...) and the YAML 1.1 words the
    /// server's YAML reader takes for booleans (`yes`, `on`, `no`, `off`).
    pub fn boolean(&self, key: &str) -> Result<Option<(bool, &Path)>, ServerConfigError> {
        let Some((value, file)) = self.string(key)? else { return Ok(None) };
        match parse_bool(&value) {
            Some(b) => Ok(Some((b, file))),
            None => Err(ServerConfigError::BadValue {
                path: file.to_path_buf(),
                key: key.to_string(),
                message: format!("{value:?} is not a boolean (true or false)"),
            }),
        }
    }
}

/// Go's `strconv.ParseBool`, plus YAML 1.1's boolean words.
pub fn parse_bool(s: &str) -> Option<bool> {
    etcdsnap_api::go::parse_bool(s.trim()).or(match s.trim() {
        "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => Some(true),
        "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => Some(false),
        _ => None,
    })
}

/// The drop-ins of `main`, sorted by name: regular files (or links to them) named `*.yaml` or
/// `*.yml` in any case.
fn drop_ins(main: &Path) -> Result<Vec<PathBuf>, ServerConfigError> {
    let mut dir = main.as_os_str().to_owned();
    dir.push(".d");
    let dir = PathBuf::from(dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ServerConfigError::Read { path: dir, source }),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ServerConfigError::Read { path: dir.clone(), source })?;
        let name = entry.file_name().to_string_lossy().to_lowercase();
        if !(name.ends_with(".yaml") || name.ends_with(".yml")) || entry.path().is_dir() {
            continue;
        }
        files.push(entry.path());
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

/// A YAML scalar as the server's flags receive it; None for maps.
fn scalar_text(value: &serde_norway::Value) -> Option<String> {
    use serde_norway::Value;
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Null => Some(String::new()),
        Value::Tagged(t) => scalar_text(&t.value),
        Value::Sequence(_) | Value::Mapping(_) => None,
    }
}

/// What an appended value contributes: a list's items, or the value itself (an empty scalar
/// contributes nothing).
fn as_items(value: &serde_norway::Value) -> Vec<serde_norway::Value> {
    match value {
        serde_norway::Value::Sequence(items) => items.clone(),
        other if scalar_text(other).is_some_and(|t| t.trim().is_empty()) => Vec::new(),
        other => vec![other.clone()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn drop_ins_override_the_file_in_name_order_and_only_yaml_counts() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(dir.path(), "config.yaml", "node-name: from-main\netcd-s3-bucket: b1\ntls-san: [a]\n");
        write(dir.path(), "config.yaml.d/50-rancher.yaml", "node-name: from-rancher\n");
        write(dir.path(), "config.yaml.d/10-early.YML", "node-name: early\netcd-s3-folder: f\n");
        write(dir.path(), "config.yaml.d/90-notes.txt", "node-name: ignored\n");
        write(dir.path(), "config.yaml.d/95-sub.yaml/x.yaml", "node-name: in-a-directory\n");
        let c = ServerConfig::load(&main).unwrap();
        let (node, file) = c.text("node-name").unwrap().unwrap();
        assert_eq!(node, "from-rancher");
        assert!(file.ends_with("config.yaml.d/50-rancher.yaml"), "{}", file.display());
        assert_eq!(c.text("etcd-s3-folder").unwrap().unwrap().0, "f");
        assert!(c.text("etcd-s3-bucket").unwrap().unwrap().1.ends_with("config.yaml"));
        assert_eq!(c.files.len(), 3);
    }

    #[test]
    fn appending_keys_extend_lists_and_a_missing_main_file_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("config.yaml");
        write(dir.path(), "config.yaml.d/1.yaml", "tls-san: a\nnode-label: [x=1]\n");
        write(dir.path(), "config.yaml.d/2.yaml", "tls-san+: [b, c]\nnode-label: [y=2]\n");
        let c = ServerConfig::load(&main).unwrap();
        assert_eq!(c.values("tls-san").unwrap().unwrap().0, ["a", "b", "c"]);
        assert_eq!(c.values("node-label").unwrap().unwrap().0, ["y=2"], "without + the list is replaced");
        assert_eq!(ServerConfig::load(&dir.path().join("nothing.yaml")).unwrap(), ServerConfig::default());
    }

    #[test]
    fn values_are_the_server_s_strings_and_bad_ones_name_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(
            dir.path(),
            "config.yaml",
            "etcd-snapshot-retention: 10\netcd-s3: yes\netcd-s3-insecure: \"false\"\netcd-s3-bucket: {a: b}\netcd-snapshot-compress: maybe\n",
        );
        let c = ServerConfig::load(&main).unwrap();
        assert_eq!(c.string("etcd-snapshot-retention").unwrap().unwrap().0, "10");
        assert!(c.boolean("etcd-s3").unwrap().unwrap().0);
        assert!(!c.boolean("etcd-s3-insecure").unwrap().unwrap().0);
        let e = c.string("etcd-s3-bucket").unwrap_err().to_string();
        assert!(e.contains("config.yaml") && e.contains("etcd-s3-bucket"), "{e}");
        let e = c.boolean("etcd-snapshot-compress").unwrap_err().to_string();
        assert!(e.contains("etcd-snapshot-compress") && e.contains("maybe"), "{e}");
        assert!(c.string("nothing").unwrap().is_none());
    }

    #[test]
    fn broken_files_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(dir.path(), "config.yaml", "node-name: a\n");
        write(dir.path(), "config.yaml.d/2.yaml", "node-name: [unclosed\n");
        let e = ServerConfig::load(&main).unwrap_err().to_string();
        assert!(e.contains("config.yaml.d/2.yaml"), "{e}");
        let list = write(dir.path(), "list.yaml", "- a\n- b\n");
        assert!(matches!(ServerConfig::load(&list), Err(ServerConfigError::NotAMap(_))));
        let empty = write(dir.path(), "empty.yaml", "");
        assert!(ServerConfig::load(&empty).unwrap().string("node-name").unwrap().is_none());
    }
}
