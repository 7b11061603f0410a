//! Finding the API server (`--kubeconfig`, `$KUBECONFIG`, `~/.kube/config`, in-cluster) and the
//! settings every Kubernetes duty shares.

use crate::leader::LeaderTerm;
use etcdsnap_api::Program;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How to reach the API server.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// Explicit kubeconfig; when None the usual places are searched.
    pub kubeconfig: Option<PathBuf>,
    /// `--no-kube`: never talk to Kubernetes.
    pub disabled: bool,
}

/// Limits of the legacy ConfigMap. Bounded before writing so the API server never rejects it.
#[derive(Debug, Clone)]
pub struct LegacySettings {
    pub enabled: bool,
    /// Largest serialized ConfigMap (JSON bytes of the whole object) etcdsnap writes.
    pub max_bytes: usize,
    /// Most entries etcdsnap writes.
    pub max_keys: usize,
}

impl Default for LegacySettings {
    fn default() -> Self {
        LegacySettings { enabled: true, max_bytes: 900_000, max_keys: 1_000 }
    }
}

/// Settings shared by every Kubernetes duty of one node.
#[derive(Debug, Clone)]
pub struct KubeSettings {
    pub node_name: String,
    /// Whose names the resources, ConfigMaps and Node annotations carry (`k3s` or `rke2`).
    pub program: Program,
    /// A node whose heartbeat Lease was not renewed for this long is gone; the leader removes the
    /// resources of its local snapshots (they cannot be restored anywhere).
    pub orphan_ttl: Duration,
    pub legacy: LegacySettings,
    /// Name of the extra-metadata ConfigMap in kube-system (the program's by default).
    pub extra_metadata_configmap: String,
    /// Name of the S3 config Secret in kube-system, if S3 settings come from one.
    pub s3_config_secret: Option<String>,
    /// Write K3s's reconciled-at annotations on this node's Node (see `node_annotations`).
    pub annotate_node: bool,
}

impl KubeSettings {
    /// K3s's names; [`KubeSettings::for_program`] for RKE2's.
    pub fn new(node_name: &str) -> KubeSettings {
        KubeSettings::for_program(node_name, Program::K3s)
    }

    /// The defaults of a node of a `program` cluster.
    pub fn for_program(node_name: &str, program: Program) -> KubeSettings {
        KubeSettings {
            node_name: node_name.to_string(),
            program,
            orphan_ttl: Duration::from_secs(24 * 3600),
            legacy: LegacySettings::default(),
            extra_metadata_configmap: program.extra_metadata_configmap().to_string(),
            s3_config_secret: None,
            annotate_node: false,
        }
    }
}

/// Why no client could be built although Kubernetes access was configured.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("kubeconfig {}: {message}", path.display())]
    Kubeconfig { path: PathBuf, message: String },
    #[error("Kubernetes client configuration: {0}")]
    Config(String),
}

/// A connection to the API server plus this node's settings. Cheap to clone.
#[derive(Clone)]
pub struct Kube {
    pub client: Client,
    pub settings: Arc<KubeSettings>,
    /// How `client` was built, to build fenced clients for leader terms ([`Kube::for_term`]).
    config: Option<Arc<Config>>,
}

impl std::fmt::Debug for Kube {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kube").field("settings", &self.settings).finish()
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Kube {
    /// A Kube around a client built elsewhere (tests, benchmarks). It has no configuration to
    /// build fenced clients from: [`Kube::for_term`] then fences before each request only.
    pub fn new(client: Client, settings: KubeSettings) -> Kube {
        Kube { client, settings: Arc::new(settings), config: None }
    }

    /// A Kube from a client configuration ([`crate::client`]); leader terms get fenced
    /// connections.
    pub fn from_config(config: Config, settings: KubeSettings) -> Result<Kube, ConnectError> {
        if let Some(proxy) = &config.proxy_url {
            // As kube's own client refuses it without its proxy features.
            return Err(ConnectError::Config(format!("proxy-url {proxy}: proxies are not supported")));
        }
        let client = crate::client::build(&config, None).map_err(|e| ConnectError::Config(e.to_string()))?;
        Ok(Kube { client, settings: Arc::new(settings), config: Some(Arc::new(config)) })
    }

    /// The Kube a leader's duties use during `term`: its connections write nothing once the
    /// term ends (see [`crate::fence`]), so a leader paused between its check of the term and
    /// the socket cannot send a stale write when it runs again. Build it once per term.
    pub fn for_term(&self, term: &LeaderTerm) -> Result<Kube, ConnectError> {
        let Some(config) = &self.config else { return Ok(self.clone()) };
        let client = crate::fence::fenced_client(config, term).map_err(|e| ConnectError::Config(e.to_string()))?;
        Ok(Kube { client, settings: self.settings.clone(), config: self.config.clone() })
    }

    /// Ok(None) when Kubernetes is disabled or no kubeconfig exists anywhere (not an error:
    /// everything but the resources works without it). A kubeconfig that exists but is broken
    /// is an error, because the user asked for Kubernetes.
    pub async fn connect(opts: &ConnectOptions, settings: KubeSettings) -> Result<Option<Kube>, ConnectError> {
        if opts.disabled {
            return Ok(None);
        }
        let config = match &opts.kubeconfig {
            Some(path) => {
                let kubeconfig = Kubeconfig::read_from(path)
                    .map_err(|e| ConnectError::Kubeconfig { path: path.clone(), message: e.to_string() })?;
                Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| ConnectError::Kubeconfig { path: path.clone(), message: e.to_string() })?
            }
            None if !any_kubeconfig_present() => return Ok(None),
            None => Config::infer().await.map_err(|e| ConnectError::Config(e.to_string()))?,
        };
        let mut config = config;
        config.connect_timeout = Some(CONNECT_TIMEOUT);
        Kube::from_config(config, settings).map(Some)
    }
}

impl Kube {
    /// The cheapest request that proves the API server answers and lets this identity in: a
    /// GET of the kube-system namespace (which the agent's role may read).
    pub async fn ping(&self) -> Result<(), crate::ApiError> {
        let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(self.client.clone());
        let ns = etcdsnap_api::consts::SYSTEM_NAMESPACE;
        api.get(ns).await.map(|_| ()).map_err(crate::ApiError::new("get", format!("namespace {ns}")))
    }
}

/// Whether any of the places `Config::infer` looks at exists.
fn any_kubeconfig_present() -> bool {
    if let Some(paths) = std::env::var_os("KUBECONFIG")
        && std::env::split_paths(&paths).any(|p| p.exists())
    {
        return true;
    }
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        return true;
    }
    std::env::var_os("HOME").is_some_and(|home| PathBuf::from(home).join(".kube/config").exists())
}
