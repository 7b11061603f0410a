//! The service layer's one entry point: a [`Session`] is built once from what the operator
//! configured (flags, config file, environment; see [`SessionConfig`]) and gives every operation
//! its [`Context`]: the stores, the node's identity, and what Kubernetes adds (cluster id, extra
//! metadata, S3 settings from the config Secret, read again each time). Every CLI command and the
//! agent go through it, so there is one place that decides which stores an operation uses and
//! one place that writes resources after an operation ([`Session::after_save`] for what follows
//! a save, in `session/after_save.rs`).
//!
//! The remote store is S3, or GCS or Azure (`--gcs-*`, `--azure-*`: then no S3 at all, the
//! config Secret's included). Which S3 settings apply (K3s's rule): S3 is used with `--s3`, or when a config Secret is
//! named. Flags that describe a location win; with `--s3` and no location flags the Secret
//! supplies the settings; `--s3-retention` always overrides the Secret's `etcd-s3-retention`.

mod after_save;

pub use after_save::{AfterSave, AfterSaveObserver, AfterSaveReport, CatchUp, replicate};

use crate::ops::Context;
use crate::ops::reconcile::{self as reconcile_job};
use etcdsnap_api::consts::SYSTEM_NAMESPACE;
use etcdsnap_api::{SnapshotName, StorageKind, TokenHash};
use etcdsnap_kube::lease::{heartbeat_interval, renew_heartbeat};
use etcdsnap_kube::{ConnectError, ConnectOptions, Kube, KubeSettings, crd, extra_metadata, publish, s3_secret};
use etcdsnap_storage::SnapshotRecord;
use etcdsnap_storage::etcd::EtcdConfig;
use etcdsnap_storage::store::cloud::CloudStore;
use etcdsnap_storage::store::local::LocalStore;
use etcdsnap_storage::store::replica::ReplicaStore;
use etcdsnap_storage::store::s3::{RawS3Settings, S3Config, S3Key, S3Store};
use etcdsnap_storage::store::{SnapshotStore, StoreError};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{Mutex, OnceCell};

/// The zstd level when none is configured.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// This node's snapshot directory.
#[derive(Debug, Clone)]
pub struct LocalSetting {
    pub dir: PathBuf,
    /// Only the default directory is created when missing (K3s's rule).
    pub is_default: bool,
    /// Whether snapshots are kept there (false with `--no-local`: S3 only, but saves still take
    /// the directory's lock, so that every save of the node excludes the others).
    pub keep: bool,
}

/// How the session treats Kubernetes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KubePolicy {
    /// A command: Kubernetes problems never fail the snapshot operation; after the first one the
    /// session stops trying and says once that `etcdsnap reconcile` will catch up.
    OneShot,
    /// The agent: a kubeconfig that cannot be used is an error at start, and every operation
    /// tries again.
    LongRunning,
}

/// Everything an operator configured for one command or the agent.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub node_name: String,
    /// etcdsnap's data directory (the default snapshot directory's parent, the S3 listing cache).
    pub data_dir: PathBuf,
    pub local: LocalSetting,
    /// Whether this command writes snapshots (a missing default directory is then created, and
    /// saves take the directory's lock even without a local copy).
    pub creates: bool,
    /// `--s3`.
    pub s3_enabled: bool,
    /// S3 settings given as flags (possibly none but the retention).
    pub s3_flags: RawS3Settings,
    /// How long an upload of this node must be idle before a save aborts it as abandoned.
    pub s3_stale_upload_after: Duration,
    /// The GCS or Azure primary store (`--gcs-*`, `--azure-*`), in place of S3.
    pub cloud: Option<etcdsnap_storage::store::replica::ReplicaConfig>,
    /// `--replica`s with their options.
    pub replicas: Vec<etcdsnap_storage::store::replica::ReplicaConfig>,
    /// `--replica-retention` (None: the local retention).
    pub replica_retention: Option<usize>,
    /// `--cluster-id`.
    pub cluster_id: Option<String>,
    pub etcd: EtcdConfig,
    pub token_hash: Option<TokenHash>,
    pub zstd_level: i32,
    /// Record etcd's HashKV with each save (`--record-hashkv`).
    pub record_hash_kv: bool,
    /// How new snapshots are sealed and signed (recipients from the S3 config Secret apply when
    /// none is configured here).
    pub sealing: crate::seal::Sealing,
    /// The keys that open and check stored snapshots.
    pub keys: etcdsnap_storage::seal::OpenKeys,
    pub kube: ConnectOptions,
    /// The Kubernetes duties' settings, and the program (`k3s` or `rke2`) whose names everything
    /// carries: resources, ConfigMaps, Node annotations and the S3 user metadata.
    pub kube_settings: KubeSettings,
    pub kube_policy: KubePolicy,
}

/// What an operation will do, which decides what the session prepares for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Reads storage only (ls, verify): Kubernetes only for S3 settings from the Secret.
    Read,
    /// Changes storage and resources (delete, prune, reconcile).
    Write,
    /// Saves a snapshot: also reads the extra metadata to record with it.
    Save,
}

/// Why a session cannot be opened. Each names the setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("Kubernetes: {0}")]
    Kube(#[from] ConnectError),
}

/// A configured node, ready to hand out operation contexts.
pub struct Session {
    config: SessionConfig,
    local: Option<LocalStore>,
    /// The default snapshot directory, kept and not there yet (a command that does not save).
    missing_local: Option<PathBuf>,
    /// The S3 store the flags describe, built (and validated) once.
    flag_s3: Option<Arc<S3Store>>,
    /// The GCS or Azure store the flags describe, built once (never with `flag_s3`).
    cloud: Option<Arc<CloudStore>>,
    /// The `--replica`s, built once.
    replicas: Vec<Arc<ReplicaStore>>,
    kube: Option<Kube>,
    /// Why Kubernetes is not used, said once when an operation would have used it.
    kube_absent: Option<String>,
    usable: AtomicBool,
    started: OnceCell<()>,
    cluster_id: Mutex<Option<String>>,
    /// Shared by every context of this session: see [`Context::removals`].
    removals: Arc<tokio::sync::RwLock<()>>,
}

impl Session {
    /// Validates the settings (a bad S3 flag fails here, before any work) and connects to
    /// Kubernetes when it is configured (no request is made yet).
    pub async fn open(config: SessionConfig) -> Result<Session, SessionError> {
        let local = open_local(&config)?;
        let missing_local = (config.local.keep && local.is_none()).then(|| config.local.dir.clone());
        let flag_s3 = match flag_s3_config(&config)? {
            Some(s3) => Some(S3Store::with_cache_in(s3, &config.data_dir)?),
            None => None,
        };
        let cloud = match &config.cloud {
            Some(c) => Some(CloudStore::with_cache_in(c.clone(), &config.data_dir)?),
            None => None,
        };
        if let (Some(cloud), Some(secret)) = (&cloud, &config.kube_settings.s3_config_secret) {
            tracing::warn!("ignoring the S3 config secret {secret}: the remote store is {}", cloud.url());
        }
        let (kube, kube_absent) = match Kube::connect(&config.kube, config.kube_settings.clone()).await {
            Ok(Some(kube)) => (Some(kube), None),
            Ok(None) => {
                let why = match config.kube.disabled {
                    true => "Kubernetes not used (--no-kube)",
                    false => "Kubernetes not configured (no kubeconfig found)",
                };
                (None, Some(why.to_string()))
            }
            Err(e) if config.kube_policy == KubePolicy::OneShot => (None, Some(format!("Kubernetes not usable ({e})"))),
            Err(e) => return Err(e.into()),
        };
        let cluster_id = Mutex::new(config.cluster_id.clone().filter(|c| !c.trim().is_empty()));
        let replicas = config
            .replicas
            .iter()
            .map(|c| ReplicaStore::new(c.clone()).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Session {
            replicas,
            config,
            local,
            missing_local,
            flag_s3,
            cloud,
            kube,
            kube_absent,
            usable: AtomicBool::new(true),
            removals: Arc::default(),
            started: OnceCell::new(),
            cluster_id,
        })
    }

    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    pub fn node_name(&self) -> &str {
        &self.config.node_name
    }

    /// The API server connection, when Kubernetes is configured.
    pub fn kube(&self) -> Option<&Kube> {
        self.kube.as_ref()
    }

    /// Whether this node's local snapshots are managed (false with `--no-local`).
    pub fn local_managed(&self) -> bool {
        self.config.local.keep
    }

    /// Whether S3 may come from the config Secret (a Secret is named and no flag describes a
    /// location of its own).
    fn s3_from_secret(&self) -> bool {
        self.config.kube_settings.s3_config_secret.is_some() && self.flag_s3.is_none() && self.cloud.is_none()
    }

    /// The context of one operation. Kubernetes failures never fail it: they are logged, and
    /// what Kubernetes would have added is missing (resources wait for the next reconcile).
    pub async fn context(&self, purpose: Purpose) -> Context {
        let mut ctx = self.base_context();
        if purpose == Purpose::Read && !self.s3_from_secret() {
            return ctx;
        }
        let Some(kube) = self.live_kube() else { return ctx };
        if purpose != Purpose::Read {
            self.start(kube).await;
        }
        if purpose == Purpose::Save {
            match extra_metadata::read(&kube.client, &kube.settings.extra_metadata_configmap).await {
                Ok(meta) => ctx.extra_metadata = meta,
                Err(e) => self.give_up("extra metadata", e),
            }
        }
        if purpose != Purpose::Read {
            ctx.cluster_id = self.cluster_id(kube).await;
        }
        if self.s3_from_secret() {
            self.use_s3_secret(kube, &mut ctx).await;
        }
        ctx
    }

    fn base_context(&self) -> Context {
        let lock_dir = self.config.creates.then(|| self.config.local.dir.clone());
        Context {
            node_name: self.config.node_name.clone(),
            etcd: self.config.etcd.clone(),
            local: self.local.clone(),
            missing_local: self.missing_local.clone(),
            remote_spec: self.flag_s3.as_ref().map(|s| s.spec()).or_else(|| self.cloud.as_ref().map(|c| c.spec())),
            remote: self
                .flag_s3
                .clone()
                .map(|s| s as Arc<dyn SnapshotStore>)
                .or_else(|| self.cloud.clone().map(|c| c as Arc<dyn SnapshotStore>)),
            replicas: self.replicas.clone(),
            replica_retention: self.config.replica_retention,
            s3_retention: self.flag_retention().or(self.flag_s3.as_ref().and_then(|s| s.config().retention)),
            stale_upload_after: self.config.s3_stale_upload_after,
            token_hash: self.config.token_hash.clone(),
            cluster_id: self.config.cluster_id.clone().filter(|c| !c.trim().is_empty()),
            extra_metadata: None,
            zstd_level: self.config.zstd_level,
            record_hash_kv: self.config.record_hash_kv,
            sealing: self.config.sealing.clone(),
            keys: self.config.keys.clone(),
            lock_dir,
            removals: self.removals.clone(),
        }
    }

    fn flag_retention(&self) -> Option<usize> {
        self.config.s3_flags.get(S3Key::Retention).and_then(|r| r.parse().ok())
    }

    /// Kubernetes, unless it is not configured or (for a command) gave up already.
    fn live_kube(&self) -> Option<&Kube> {
        match &self.kube {
            Some(kube) if self.usable.load(Ordering::Relaxed) => Some(kube),
            Some(_) => None,
            None => {
                if let Some(why) = &self.kube_absent
                    && self.usable.swap(false, Ordering::Relaxed)
                {
                    // Asked for with --no-kube: worth a line, not a warning.
                    match self.config.kube.disabled {
                        true => tracing::info!("{why}: ETCDSnapshotFile resources are skipped"),
                        false => tracing::warn!("{why}: ETCDSnapshotFile resources are skipped"),
                    }
                }
                None
            }
        }
    }

    /// A command stops using Kubernetes after its first failure (one warning); the agent only
    /// logs and tries again next time.
    fn give_up(&self, what: &str, e: impl std::fmt::Display) {
        match self.config.kube_policy {
            KubePolicy::LongRunning => tracing::warn!("Kubernetes: {what}: {e}"),
            KubePolicy::OneShot => {
                if self.usable.swap(false, Ordering::Relaxed) {
                    tracing::warn!(
                        "Kubernetes API not usable ({what}: {e}); the snapshot operation is not affected, and `etcdsnap reconcile` will create the missing ETCDSnapshotFile resources"
                    );
                }
            }
        }
    }

    /// The CRD and this node's heartbeat, before the first resource is written.
    async fn start(&self, kube: &Kube) {
        if self.config.kube_policy == KubePolicy::LongRunning {
            return; // the agent's duties loop does both, on its own schedule
        }
        self.started
            .get_or_init(|| async {
                if let Err(e) = crd::ensure_crd(&kube.client).await {
                    return self.give_up("CRD", e);
                }
                let s = &kube.settings;
                if let Err(e) =
                    renew_heartbeat(&kube.client, &s.node_name, s.orphan_ttl, heartbeat_interval(s.orphan_ttl)).await
                {
                    // Not fatal: the heartbeat only protects this node's resources from orphan cleanup.
                    tracing::warn!("heartbeat lease not renewed: {e}");
                }
            })
            .await;
    }

    /// The cluster id: `--cluster-id`, else the UID of kube-system (read once).
    async fn cluster_id(&self, kube: &Kube) -> Option<String> {
        let mut cached = self.cluster_id.lock().await;
        if cached.is_none() {
            match extra_metadata::cluster_id(&kube.client).await {
                Ok(id) => *cached = id,
                Err(e) => self.give_up("cluster id", e),
            }
        }
        cached.clone()
    }

    /// `--s3-config-secret`: read for every operation, so a rotated Secret applies at once. A
    /// Secret that cannot be read or used means "S3 unavailable" for this operation, said with
    /// the key at fault.
    async fn use_s3_secret(&self, kube: &Kube, ctx: &mut Context) {
        let Some(name) = kube.settings.s3_config_secret.clone() else { return };
        let config = match s3_secret::load(&kube.client, &name).await {
            Ok(raw) => {
                self.use_secret_recipients(kube, &raw, ctx);
                raw.parse().map(|c| c.for_program(self.config.kube_settings.program)).map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        let store = config.and_then(|c| S3Store::with_cache_in(c, &self.config.data_dir).map_err(|e| e.to_string()));
        match store {
            Ok(store) => {
                tracing::info!(secret = %name, store = %store.config().describe(), "S3 settings from the config secret");
                ctx.s3_retention = self.flag_retention().or(store.config().retention);
                ctx.remote_spec = Some(store.spec());
                ctx.remote = Some(store);
            }
            Err(e) => tracing::warn!("S3 unavailable: {e} (config secret {SYSTEM_NAMESPACE}/{name})"),
        }
    }

    /// The Secret's recipients (`etcdsnap-encrypt-to`) seal new snapshots when no recipient is
    /// configured otherwise. Recipients that cannot be used stop every save (an unsealed copy
    /// must not be taken for a sealed one).
    fn use_secret_recipients(&self, kube: &Kube, raw: &RawS3Settings, ctx: &mut Context) {
        let Some(given) = raw.recipients() else { return };
        if ctx.sealing.recipients.is_some() {
            return;
        }
        match etcdsnap_storage::seal::Recipients::parse([given]) {
            Ok(r) => ctx.sealing.recipients = Some(Arc::new(r)),
            Err(e) => {
                let name = kube.settings.s3_config_secret.as_deref().unwrap_or_default();
                let key = etcdsnap_api::seal::SECRET_RECIPIENTS_KEY;
                ctx.sealing.invalid = Some(format!("S3 config secret {SYSTEM_NAMESPACE}/{name}: key {key}: {e}"));
            }
        }
    }

    /// Writes the resource of every record of an operation (ready or failed) at once.
    pub async fn publish(&self, records: &[SnapshotRecord]) {
        if records.is_empty() {
            return;
        }
        let Some(kube) = self.live_kube() else { return };
        self.start(kube).await;
        let published = publish::publish_records(kube, records).await;
        match published.errors.first() {
            Some(e) => self.give_up("writing ETCDSnapshotFile resources", e),
            None => tracing::info!(
                created = published.created,
                updated = published.updated,
                "ETCDSnapshotFile resources written"
            ),
        }
    }

    /// After a delete or prune: the removed snapshots' resources go at once.
    pub async fn after_removal(&self, ctx: &Context, removed: &[(StorageKind, SnapshotName)]) {
        if removed.is_empty() {
            return;
        }
        let Some(kube) = self.live_kube() else { return };
        self.start(kube).await;
        match reconcile_job::after_removal(kube, ctx, removed, self.local_managed()).await {
            Ok(outcome) => {
                for e in &outcome.report.errors {
                    tracing::warn!("{e}");
                }
                tracing::info!(
                    deleted = outcome.report.deleted,
                    created = outcome.report.created,
                    "ETCDSnapshotFile resources reconciled"
                );
            }
            Err(e) => self.give_up("reconcile", e),
        }
    }
}

/// The snapshot directory, opened. A missing default directory means "no local snapshots yet"
/// for commands that do not write.
fn open_local(config: &SessionConfig) -> Result<Option<LocalStore>, StoreError> {
    let local = &config.local;
    if !local.keep {
        return Ok(None);
    }
    match LocalStore::open(&local.dir, config.creates && local.is_default, &config.node_name) {
        Ok(store) => Ok(Some(store)),
        Err(StoreError::MissingDir(_)) if local.is_default && !config.creates => Ok(None),
        Err(e) => Err(e),
    }
}

/// The flags' S3 settings, when they are the ones to use: `--s3` with a location of their own,
/// or `--s3` with no Secret to take one from (then the flags' defaults are checked, and a missing
/// bucket is reported by name).
fn flag_s3_config(config: &SessionConfig) -> Result<Option<S3Config>, StoreError> {
    if !config.s3_enabled {
        return Ok(None);
    }
    let secret = config.kube_settings.s3_config_secret.is_some() && !config.kube.disabled;
    if secret && !config.s3_flags.names_a_location() {
        return Ok(None);
    }
    if secret {
        tracing::warn!("ignoring the S3 config secret: S3 is configured by flags");
    }
    Ok(Some(config.s3_flags.parse()?.for_program(config.kube_settings.program)))
}
