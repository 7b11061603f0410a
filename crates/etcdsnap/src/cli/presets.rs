//! K3s and RKE2 servers, as etcdsnap finds them: where they keep snapshots, the server token,
//! etcd's client certificates, the node name and the server's own configuration
//! ([`ServerConfig`]: `config.yaml` and its drop-ins), so that `etcdsnap save` on such a server
//! needs no flags, and a script that passes K3s's `--data-dir /var/lib/rancher/k3s` means the
//! same. The preset also says which program's names etcdsnap writes (`k3s` or `rke2`).
//!
//! Paths are looked up under `$ETCDSNAP_PRESET_ROOT` when it is set (a chroot, or a test's
//! fake server), else under `/`; `$K3S_CONFIG_FILE` / `$RKE2_CONFIG_FILE` name the config file
//! as given, as they do for the server.

use super::server_config::{ServerConfig, ServerConfigError};
use etcdsnap_api::Program;
use std::path::{Path, PathBuf};

/// A K3s or RKE2 data directory (`/var/lib/rancher/k3s`) and its server's configuration.
#[derive(Debug, Clone)]
pub struct Preset {
    pub program: Program,
    pub data_dir: PathBuf,
    pub config: ServerConfig,
}

fn root() -> PathBuf {
    std::env::var_os("ETCDSNAP_PRESET_ROOT").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"))
}

/// `path` of the host, under the preset root.
fn host_path(path: &Path) -> PathBuf {
    root().join(path.strip_prefix("/").unwrap_or(path))
}

/// The server's config file: `$<PROGRAM>_CONFIG_FILE`, else `/etc/rancher/<program>/config.yaml`.
pub fn config_file(program: Program) -> PathBuf {
    match std::env::var_os(program.config_file_env()).filter(|v| !v.is_empty()) {
        Some(file) => PathBuf::from(file),
        None => root().join(program.config_file()),
    }
}

impl Preset {
    /// The server these flags are about, if any: `--data-dir` naming a K3s or RKE2 data
    /// directory, or with neither `--data-dir` nor `--dir` (`dir_given`), this machine's own.
    /// `program` is `--program`, when given.
    pub fn find(
        data_dir: Option<&Path>,
        dir_given: bool,
        program: Option<Program>,
    ) -> Result<Option<Preset>, ServerConfigError> {
        match (data_dir, dir_given) {
            (Some(dd), _) => Preset::at(dd, program),
            (None, false) => Preset::detect(program),
            (None, true) => Ok(None),
        }
    }

    /// The preset of a data directory given on the command line, when it is a K3s or RKE2 one
    /// (it has `server/db`): `program`'s, else RKE2's when its path says `rke2`, else K3s's.
    pub fn at(data_dir: &Path, program: Option<Program>) -> Result<Option<Preset>, ServerConfigError> {
        if !data_dir.join("server/db").is_dir() {
            return Ok(None);
        }
        let guessed = if data_dir.to_string_lossy().contains("rke2") { Program::Rke2 } else { Program::K3s };
        let program = program.unwrap_or(guessed);
        let config = ServerConfig::load(&config_file(program))?;
        Ok(Some(Preset { program, data_dir: data_dir.to_path_buf(), config }))
    }

    /// The K3s or RKE2 server with embedded etcd this machine is, if it is one: its data
    /// directory (the config's `data-dir`, else the default) holds `server/db/etcd`. `program`
    /// (`--program`) is looked for first.
    pub fn detect(program: Option<Program>) -> Result<Option<Preset>, ServerConfigError> {
        let order = match program {
            Some(p) => [p, p.other()],
            None => Program::ALL,
        };
        for program in order {
            let config = ServerConfig::load(&config_file(program))?;
            let data_dir = match config.text("data-dir")? {
                Some((dd, _)) => host_path(Path::new(&dd)),
                None => root().join(program.data_dir()),
            };
            if data_dir.join("server/db/etcd").is_dir() {
                return Ok(Some(Preset { program, data_dir, config }));
            }
        }
        Ok(None)
    }

    /// The server's snapshot directory (`etcd-snapshot-dir`, else `server/db/snapshots`), and
    /// whether it is the default one (only that one is created when missing).
    pub fn snapshot_dir(&self) -> Result<(PathBuf, bool), ServerConfigError> {
        Ok(match self.config.text("etcd-snapshot-dir")? {
            Some((dir, _)) => (host_path(Path::new(&dir)), false),
            None => (self.data_dir.join("server/db/snapshots"), true),
        })
    }

    /// Where etcdsnap keeps its own state (the S3 listing cache) on such a server: in its
    /// private directory beside the snapshot directory.
    pub fn state_dir(&self) -> PathBuf {
        self.data_dir.join("server/db").join(etcdsnap_api::consts::PRIVATE_DIR)
    }

    pub fn token_file(&self) -> PathBuf {
        self.data_dir.join("server/token")
    }

    /// etcd's CA, client certificate and client key, when all three exist.
    pub fn etcd_tls(&self) -> Option<(PathBuf, PathBuf, PathBuf)> {
        let dir = self.data_dir.join("server/tls/etcd");
        let files = (dir.join("server-ca.crt"), dir.join("client.crt"), dir.join("client.key"));
        (files.0.is_file() && files.1.is_file() && files.2.is_file()).then_some(files)
    }

    /// `node-name` from the server's configuration, with the file that set it.
    pub fn config_node_name(&self) -> Result<Option<(String, PathBuf)>, ServerConfigError> {
        Ok(self.config.text("node-name")?.map(|(n, f)| (n, f.to_path_buf())))
    }
}

/// K3s's defaults for the server's own scheduled snapshots.
const SERVER_SCHEDULE: &str = "0 */12 * * *";
const SERVER_SNAPSHOT_NAME: &str = "etcd-snapshot";
const SERVER_RETENTION: &str = "5";

impl Preset {
    /// What to warn about when the server's own scheduled snapshots are on (K3s's default) beside
    /// etcdsnap's agent, whose scheduled snapshots are named `base`: the server prunes by name
    /// prefix over the whole snapshot directory, and in S3 over the whole folder, whoever wrote
    /// the files. None when `etcd-disable-snapshots` is set.
    pub fn scheduled_snapshots_warning(&self, base: &str) -> Result<Option<String>, ServerConfigError> {
        if let Some((true, _)) = self.config.boolean("etcd-disable-snapshots")? {
            return Ok(None);
        }
        let from = |setting: Option<(String, &Path)>, default: &str| match setting {
            Some((v, file)) => format!("{v} ({})", file.display()),
            None => format!("{default} (default)"),
        };
        let server = self.program.display_name();
        let name = self.config.text("etcd-snapshot-name")?.map(|(n, _)| n).unwrap_or(SERVER_SNAPSHOT_NAME.into());
        let mut text = format!(
            "the {server} server's own scheduled snapshots are on: etcd-disable-snapshots is not set in its configuration ({}); etcd-snapshot-schedule-cron {}, etcd-snapshot-name {}, etcd-snapshot-retention {}. Its retention counts every file in the snapshot directory whose name starts with {name:?}, whoever wrote it",
            match self.config.files.is_empty() {
                true => config_file(self.program).display().to_string(),
                false => self.config.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "),
            },
            from(self.config.text("etcd-snapshot-schedule-cron")?, SERVER_SCHEDULE),
            from(self.config.text("etcd-snapshot-name")?, SERVER_SNAPSHOT_NAME),
            from(self.config.text("etcd-snapshot-retention")?, SERVER_RETENTION),
        );
        if base.starts_with(name.as_str()) || name.starts_with(base) {
            text.push_str(&format!(
                ": this agent's snapshots (--snapshot-name {base}) match, so the server deletes them beyond its retention, and this agent's retention counts the server's"
            ));
        }
        if let Some((true, file)) = self.config.boolean("etcd-s3")? {
            let folder = self.config.text("etcd-s3-folder")?.map(|(f, _)| f).unwrap_or_default();
            text.push_str(&format!(
                ". With etcd-s3 ({}) its S3 retention counts every object under {folder:?}/{name}* in its bucket, of every node and cluster",
                file.display()
            ));
        }
        text.push_str(&format!(
            ". Set etcd-disable-snapshots: true in the server's configuration to leave scheduled snapshots to etcdsnap, or name etcdsnap's so that {name:?} is not a prefix of them"
        ));
        Ok(Some(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preset(program: Program, data_dir: &str, config: &str) -> Preset {
        let mut c = ServerConfig::default();
        c.merge(Path::new("/etc/rancher/x/config.yaml"), config).unwrap();
        Preset { program, data_dir: PathBuf::from(data_dir), config: c }
    }

    #[test]
    fn k3s_paths() {
        let p = preset(Program::K3s, "/var/lib/rancher/k3s", "");
        assert_eq!(p.snapshot_dir().unwrap(), (PathBuf::from("/var/lib/rancher/k3s/server/db/snapshots"), true));
        assert_eq!(p.token_file(), Path::new("/var/lib/rancher/k3s/server/token"));
        assert_eq!(p.state_dir(), Path::new("/var/lib/rancher/k3s/server/db/.etcdsnap"));
    }

    #[test]
    fn the_server_s_snapshot_dir_and_node_name_come_from_its_config() {
        let p = preset(Program::Rke2, "/var/lib/rancher/rke2", "etcd-snapshot-dir: /backups/etcd\nnode-name: cp-1\n");
        let (dir, is_default) = p.snapshot_dir().unwrap();
        assert!(dir.ends_with("backups/etcd") && !is_default, "{}", dir.display());
        let (node, file) = p.config_node_name().unwrap().unwrap();
        assert_eq!((node.as_str(), file), ("cp-1", PathBuf::from("/etc/rancher/x/config.yaml")));
        assert_eq!(preset(Program::K3s, "/d", "write-kubeconfig-mode: \"0644\"\n").config_node_name().unwrap(), None);
    }

    #[test]
    fn a_data_dir_is_a_preset_only_when_it_looks_like_one() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Preset::at(dir.path(), None).unwrap().is_none());
        let rke2 = dir.path().join("rke2");
        std::fs::create_dir_all(rke2.join("server/db")).unwrap();
        assert_eq!(Preset::at(&rke2, None).unwrap().map(|p| p.program), Some(Program::Rke2));
        assert_eq!(Preset::at(&rke2, Some(Program::K3s)).unwrap().map(|p| p.program), Some(Program::K3s));
    }

    #[test]
    fn the_server_s_own_schedule_is_warned_about_with_its_file_and_keys() {
        let p = preset(
            Program::Rke2,
            "/var/lib/rancher/rke2",
            "etcd-snapshot-retention: 3\netcd-s3: true\netcd-s3-folder: f\n",
        );
        let w = p.scheduled_snapshots_warning("etcd-snapshot").unwrap().expect("a warning");
        assert!(w.contains("RKE2 server"), "{w}");
        assert!(w.contains("etcd-snapshot-retention 3 (/etc/rancher/x/config.yaml)"), "{w}");
        assert!(w.contains("etcd-snapshot-schedule-cron 0 */12 * * * (default)"), "{w}");
        assert!(w.contains("this agent's snapshots (--snapshot-name etcd-snapshot) match"), "{w}");
        assert!(w.contains("\"f\"/etcd-snapshot*"), "{w}");
        let w = p.scheduled_snapshots_warning("etcdsnap").unwrap().expect("a warning");
        assert!(!w.contains("match"), "{w}");
        let off = preset(Program::K3s, "/d", "etcd-disable-snapshots: true\n");
        assert_eq!(off.scheduled_snapshots_warning("etcd-snapshot").unwrap(), None);
        let bad = preset(Program::K3s, "/d", "etcd-disable-snapshots: sometimes\n");
        assert!(bad.scheduled_snapshots_warning("x").unwrap_err().to_string().contains("etcd-disable-snapshots"));
    }
}
