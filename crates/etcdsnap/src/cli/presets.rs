//! K3s and RKE2 servers, as etcdsnap finds them: where they keep snapshots, the server token,
//! etcd's client certificates and the node name, so that `etcdsnap save` on such a server needs
//! no flags, and a script that passes K3s's `--data-dir /var/lib/rancher/k3s` means the same.
//!
//! Paths are looked up under `$ETCDSNAP_PRESET_ROOT` when it is set (a chroot, or a test's
//! fake server), else under `/`.

use std::path::{Path, PathBuf};

/// The distribution a preset belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distro {
    K3s,
    Rke2,
}

impl Distro {
    pub fn name(self) -> &'static str {
        match self {
            Distro::K3s => "K3s",
            Distro::Rke2 => "RKE2",
        }
    }

    fn id(self) -> &'static str {
        match self {
            Distro::K3s => "k3s",
            Distro::Rke2 => "rke2",
        }
    }
}

/// A K3s or RKE2 data directory (`/var/lib/rancher/k3s`).
#[derive(Debug, Clone)]
pub struct Preset {
    pub distro: Distro,
    pub data_dir: PathBuf,
}

fn root() -> PathBuf {
    std::env::var_os("ETCDSNAP_PRESET_ROOT").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"))
}

impl Preset {
    /// The preset of a data directory given on the command line, when it is a K3s or RKE2 one
    /// (it has `server/db`).
    pub fn at(data_dir: &Path) -> Option<Preset> {
        if !data_dir.join("server/db").is_dir() {
            return None;
        }
        let distro = if data_dir.to_string_lossy().contains("rke2") { Distro::Rke2 } else { Distro::K3s };
        Some(Preset { distro, data_dir: data_dir.to_path_buf() })
    }

    /// The K3s or RKE2 server with embedded etcd this machine is, if it is one.
    pub fn detect() -> Option<Preset> {
        [Distro::K3s, Distro::Rke2].into_iter().find_map(|distro| {
            let data_dir = root().join("var/lib/rancher").join(distro.id());
            data_dir.join("server/db/etcd").is_dir().then_some(Preset { distro, data_dir })
        })
    }

    pub fn snapshot_dir(&self) -> PathBuf {
        self.data_dir.join("server/db/snapshots")
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

    /// `node-name` from the distribution's config file, when it sets one.
    pub fn config_node_name(&self) -> Option<String> {
        let path = root().join("etc/rancher").join(self.distro.id()).join("config.yaml");
        let text = std::fs::read_to_string(path).ok()?;
        node_name_in_config(&text)
    }
}

/// The `node-name` of a K3s/RKE2 config file (YAML, flags as keys).
fn node_name_in_config(text: &str) -> Option<String> {
    let value: serde_norway::Value = serde_norway::from_str(text).ok()?;
    value.get("node-name")?.as_str().map(str::trim).filter(|n| !n.is_empty()).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k3s_paths() {
        let p = Preset { distro: Distro::K3s, data_dir: PathBuf::from("/var/lib/rancher/k3s") };
        assert_eq!(p.snapshot_dir(), Path::new("/var/lib/rancher/k3s/server/db/snapshots"));
        assert_eq!(p.token_file(), Path::new("/var/lib/rancher/k3s/server/token"));
        assert_eq!(p.state_dir(), Path::new("/var/lib/rancher/k3s/server/db/.etcdsnap"));
    }

    #[test]
    fn a_data_dir_is_a_preset_only_when_it_looks_like_one() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Preset::at(dir.path()).is_none());
        let rke2 = dir.path().join("rke2");
        std::fs::create_dir_all(rke2.join("server/db")).unwrap();
        assert_eq!(Preset::at(&rke2).map(|p| p.distro), Some(Distro::Rke2));
    }

    #[test]
    fn node_names_from_config_files() {
        assert_eq!(node_name_in_config("node-name: Server-1\ntoken: x\n").as_deref(), Some("Server-1"));
        assert_eq!(node_name_in_config("write-kubeconfig-mode: \"0644\"\n"), None);
        assert_eq!(node_name_in_config("not: [yaml"), None);
    }
}
