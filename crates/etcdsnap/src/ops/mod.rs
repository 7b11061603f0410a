//! The operations every front end shares (CLI commands, the agent's schedule): save, list,
//! delete, prune and verify over whichever stores the [`Context`] holds, the reconcile job
//! ([`reconcile`]) and the catch-up of failed uploads ([`catchup`]). They return reports; what to
//! print, which resources to write and which exit code to use is the caller's business.

pub mod catchup;
pub mod reconcile;

use etcdsnap_api::consts::KUBERNETES_PREFIX;
use etcdsnap_api::{Compression, ETCDSnapshotS3, EtcdInfo, SnapshotName, StorageKind, TokenHash, snapshot_file_name};
use etcdsnap_storage::etcd::{EtcdConfig, EtcdError, EtcdMember, MemberStatus};
use etcdsnap_storage::failpoint;
use etcdsnap_storage::pipeline::encode::EncodeSpec;
use etcdsnap_storage::pipeline::verify::{StoredCheck, verify_reader};
use etcdsnap_storage::pipeline::{self, PipelineError, PipelineOutput, Progress};
use etcdsnap_storage::record::{MetadataSource, Outcome, SnapshotRecord};
use etcdsnap_storage::store::local::{DirLock, LocalStore};
use etcdsnap_storage::store::locks::RemovalLock;
use etcdsnap_storage::store::{NewSnapshot, RetentionPolicy, SnapshotSink, SnapshotStore, StoreError, plan_retention};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The stores and identity one operation works with, from [`crate::session::Session::context`].
#[derive(Clone)]
pub struct Context {
    pub node_name: String,
    pub etcd: EtcdConfig,
    /// The node's snapshot directory, if snapshots are kept locally.
    pub local: Option<LocalStore>,
    /// The S3 store, if configured.
    pub remote: Option<Arc<dyn SnapshotStore>>,
    /// Details of the S3 location for records (never credentials).
    pub remote_spec: Option<ETCDSnapshotS3>,
    /// Snapshots to keep per node in S3 when configured (`--s3-retention`, `etcd-s3-retention`).
    pub s3_retention: Option<usize>,
    /// How long an S3 upload of this node must have been idle before a save aborts it as left
    /// by a killed save.
    pub stale_upload_after: Duration,
    pub token_hash: Option<TokenHash>,
    pub cluster_id: Option<String>,
    pub extra_metadata: Option<BTreeMap<String, String>>,
    pub zstd_level: i32,
    /// Ask the member for its HashKV after each save and record it.
    pub record_hash_kv: bool,
    /// Where saves take their lock when there is no local store (S3 only): the directory a local
    /// store would use, so every save of the node takes the same lock.
    pub lock_dir: Option<PathBuf>,
    /// Within one process (the agent): a reconcile pass holds it shared from its listing to
    /// its last write, a prune or delete alone. Otherwise a pass that listed a snapshot just
    /// before retention removed it would create its resource again (seen in
    /// `agent_cluster.rs`: created, deleted, created). Processes exclude each other through
    /// the removal lock file only for reads that verify.
    pub removals: Arc<tokio::sync::RwLock<()>>,
}

impl Context {
    /// The snapshot directory whose locks this node's operations take: the local store's, or
    /// where a local copy would be kept (S3 only).
    fn lock_dir(&self) -> Option<&std::path::Path> {
        self.local.as_ref().map(LocalStore::dir).or(self.lock_dir.as_deref())
    }

    /// Held while snapshots are removed (prune, delete): refused while a verify reads them.
    pub fn lock_for_removal(&self) -> Result<Option<RemovalLock>, StoreError> {
        self.lock_dir().map(RemovalLock::remove).transpose()
    }

    /// Held while every snapshot is read (verify): waits up to `wait` for a removal to finish.
    pub async fn lock_for_reading(&self, wait: Duration) -> Result<Option<RemovalLock>, StoreError> {
        match self.lock_dir() {
            Some(dir) => RemovalLock::read(dir, wait).await.map(Some),
            None => Ok(None),
        }
    }

    /// Every configured store, local first.
    pub fn stores(&self) -> Vec<&dyn SnapshotStore> {
        let mut stores: Vec<&dyn SnapshotStore> = Vec::new();
        if let Some(local) = &self.local {
            stores.push(local);
        }
        if let Some(remote) = &self.remote {
            stores.push(remote.as_ref());
        }
        stores
    }
}

/// Failures that prevent a save from being attempted at all (nothing to record).
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("no snapshot destination: configure a local directory or S3")]
    NoDestination,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Learner(EtcdError),
    #[error(transparent)]
    Etcd(EtcdError),
    #[error("invalid snapshot name: {0}")]
    Name(#[from] etcdsnap_api::NameError),
    #[error("snapshot cancelled (shutting down); nothing was published")]
    Cancelled,
}

/// What to save.
#[derive(Debug, Clone)]
pub struct SaveOptions {
    /// Base name: `on-demand` for CLI saves, `etcd-snapshot` for scheduled ones.
    pub base_name: String,
    pub compression: Compression,
    /// Cancelling aborts the save cleanly: no partial file, no open multipart upload.
    pub cancel: CancellationToken,
}

/// The outcome of one save: a record per destination, ready or failed.
#[derive(Debug, Clone)]
pub struct SaveReport {
    pub name: SnapshotName,
    pub records: Vec<SnapshotRecord>,
    pub member: Option<MemberStatus>,
    /// Bytes received from etcd.
    pub raw_size: u64,
    pub duration: Duration,
    /// When each destination was done (published or failed), from the start of the save.
    pub finished: Vec<(StorageKind, Duration)>,
}

impl SaveReport {
    pub fn all_ready(&self) -> bool {
        self.records.iter().all(SnapshotRecord::is_ready)
    }

    pub fn failures(&self) -> impl Iterator<Item = (&SnapshotRecord, &str)> {
        self.records.iter().filter_map(|r| match &r.outcome {
            Outcome::Failed { message } => Some((r, message.as_str())),
            Outcome::Ready => None,
        })
    }
}

fn now_rounded() -> jiff::Timestamp {
    let now = etcdsnap_storage::clock::now();
    let secs = etcdsnap_api::round_to_second(now.as_nanosecond());
    jiff::Timestamp::from_second(secs).unwrap_or(now)
}

/// Takes a snapshot and writes it to every configured store in one pass.
pub async fn save(ctx: &Context, opts: &SaveOptions, progress: Option<Progress>) -> Result<SaveReport, SaveError> {
    let stores = ctx.stores();
    if stores.is_empty() {
        return Err(SaveError::NoDestination);
    }
    let _lock = match (&ctx.local, &ctx.lock_dir) {
        (Some(local), _) => Some(local.lock()?),
        (None, Some(dir)) => Some(DirLock::take(dir)?),
        (None, None) => None,
    };
    let started = Instant::now();
    clean_interrupted(ctx, &opts.base_name).await;
    failpoint::reached(failpoint::SAVE_STARTED).await;
    let (name, created_at) = free_name(ctx, &stores, opts).await?;
    let mut report = SaveReport {
        name,
        records: Vec::new(),
        member: None,
        raw_size: 0,
        duration: Duration::ZERO,
        finished: Vec::new(),
    };
    let attempt = Attempt { ctx, opts, stores: &stores, created_at, started, progress: progress.as_ref() };
    // A member that dies mid-stream costs one attempt only: the next streams from another member
    // (same name; every sink of the broken attempt was aborted).
    let mut tried: Vec<String> = Vec::new();
    while let Some(lost) = attempt.run(&mut report, &tried).await? {
        tried.push(lost);
        if let Some(p) = &progress {
            p.restart();
        }
    }
    report.records.sort_by_key(|r| r.storage == StorageKind::S3);
    report.duration = started.elapsed();
    Ok(report)
}

/// One try at streaming the snapshot from a member into every store.
struct Attempt<'a> {
    ctx: &'a Context,
    opts: &'a SaveOptions,
    stores: &'a [&'a dyn SnapshotStore],
    created_at: jiff::Timestamp,
    started: Instant,
    progress: Option<&'a Progress>,
}

impl Attempt<'_> {
    /// Streams from the first member not in `tried` and records the outcome in `report`.
    /// Returns the member's endpoint when it stopped streaming and another may be tried.
    async fn run(&self, report: &mut SaveReport, tried: &[String]) -> Result<Option<String>, SaveError> {
        let (ctx, name) = (self.ctx, report.name.clone());
        let (mut member, status) = match ctx.etcd.connect_member_except(tried).await {
            Ok(m) => m,
            Err(e @ EtcdError::Learner { .. }) => return Err(SaveError::Learner(e)),
            Err(e @ (EtcdError::ReadTls { .. } | EtcdError::IncompleteIdentity | EtcdError::NoEndpoints))
                if tried.is_empty() =>
            {
                return Err(SaveError::Etcd(e));
            }
            Err(e) => {
                let all: Vec<StorageKind> = self.stores.iter().map(|s| s.kind()).collect();
                self.fail(report, &all, &e.to_string());
                return Ok(None);
            }
        };
        if let Some(p) = self.progress {
            p.set_total(status.db_size.max(0) as u64);
        }
        tracing::info!(snapshot = %name, endpoint = %status.endpoint, revision = status.revision, db_size = status.db_size, "saving etcd snapshot");
        report.member = Some(status.clone());

        let new = NewSnapshot {
            name: name.clone(),
            node_name: ctx.node_name.clone(),
            cluster_id: ctx.cluster_id.clone(),
            token_hash: ctx.token_hash.clone(),
            etcd: status.etcd_info(),
        };
        let mut sinks: Vec<Box<dyn SnapshotSink>> = Vec::new();
        for store in self.stores {
            match store.create(&new).await {
                Ok(sink) => sinks.push(sink),
                Err(e) => self.fail(report, &[store.kind()], &e.to_string()),
            }
        }
        let kinds: Vec<StorageKind> = sinks.iter().map(|s| s.storage()).collect();
        if sinks.is_empty() {
            return Ok(None);
        }
        let stream = match member.snapshot().await {
            Ok(s) => s,
            Err(e) => {
                for sink in sinks {
                    sink.abort().await;
                }
                self.fail(report, &kinds, &e.to_string());
                return Ok(None);
            }
        };
        let spec = EncodeSpec {
            compression: self.opts.compression,
            zstd_level: ctx.zstd_level,
            zip_entry: name.without_compression_extension().to_string(),
            created_at: self.created_at,
            expected_size: status.db_size.max(0) as u64,
        };
        // The member computes its HashKV while it streams the snapshot: the save does not wait
        // for it afterwards (bench/RESULTS.md, drills).
        let streaming = pipeline::run(stream, sinks, spec, self.progress.cloned(), self.opts.cancel.clone());
        let (streamed, etcd) = tokio::join!(streaming, self.etcd_facts(&mut member, &status));
        match streamed {
            Ok(output) => {
                report.raw_size = output.raw_size;
                publish(ctx, report, output, self.created_at, self.opts.compression, etcd, self.started).await;
            }
            Err(PipelineError::Cancelled) => return Err(SaveError::Cancelled),
            Err(PipelineError::Etcd(e @ (EtcdError::Stream { .. } | EtcdError::Stalled { .. })))
                if tried.len() + 1 < ctx.etcd.endpoints.len() =>
            {
                tracing::warn!(snapshot = %name, error = %e, "the etcd member stopped streaming; taking the snapshot again from another member");
                return Ok(Some(status.endpoint));
            }
            Err(e) => self.fail(report, &kinds, &e.to_string()),
        }
        Ok(None)
    }

    /// What is recorded about etcd: the member's status and, when asked for, its HashKV at the
    /// revision the snapshot started from (the snapshot holds every revision up to it, and a
    /// HashKV at a past revision does not change while newer ones are written). A member that
    /// cannot answer costs the record its hash, not the snapshot.
    async fn etcd_facts(&self, member: &mut EtcdMember, status: &MemberStatus) -> EtcdInfo {
        let mut etcd = status.etcd_info();
        if self.ctx.record_hash_kv {
            let facts = async {
                let hash = member.hash_kv(status.revision).await?;
                let keys = member.count_keys(KUBERNETES_PREFIX, status.revision).await?;
                Ok::<_, EtcdError>((hash, keys))
            };
            let answer = tokio::select! {
                // A cancelled save publishes nothing; it does not wait for the hash either.
                _ = self.opts.cancel.cancelled() => return etcd,
                answer = facts => answer,
            };
            match answer {
                Ok((hash, keys)) => {
                    etcd.hash_kv = Some(hash);
                    etcd.kubernetes_keys = Some(keys);
                }
                Err(e) => {
                    tracing::warn!(revision = status.revision, error = %e, "no HashKV recorded: drills of this snapshot check its bytes and trailer only")
                }
            }
        }
        etcd
    }

    /// Records a failure for each of `kinds`.
    fn fail(&self, report: &mut SaveReport, kinds: &[StorageKind], message: &str) {
        for kind in kinds {
            report.records.push(failed_record(self.ctx, &report.name, *kind, self.created_at, message));
            report.finished.push((*kind, self.started.elapsed()));
        }
    }
}

/// Aborts what interrupted saves of this node and base name left in remote stores (best effort).
async fn clean_interrupted(ctx: &Context, base: &str) {
    if let Some(remote) = &ctx.remote
        && let Err(e) = remote.clean_interrupted(&ctx.node_name, base, ctx.stale_upload_after).await
    {
        tracing::warn!(store = %remote.describe(), error = %e, "could not check for uploads left by interrupted saves");
    }
}

/// K3s's name for a snapshot taken now; a name already taken this second (in any destination)
/// moves to the next second rather than overwriting (K3s overwrites).
async fn free_name(
    ctx: &Context,
    stores: &[&dyn SnapshotStore],
    opts: &SaveOptions,
) -> Result<(SnapshotName, jiff::Timestamp), SaveError> {
    let mut created_at = now_rounded();
    loop {
        let file = snapshot_file_name(&opts.base_name, &ctx.node_name, created_at.as_second(), opts.compression);
        let name = SnapshotName::parse(&file)?;
        if !name_taken(stores, &name).await {
            return Ok((name, created_at));
        }
        created_at = created_at.checked_add(jiff::SignedDuration::from_secs(1)).unwrap_or(created_at);
    }
}

/// Commits every sink that received the whole stream (metadata document first, then the
/// snapshot), aborts the ones that failed midway, and records the outcome of each.
async fn publish(
    ctx: &Context,
    report: &mut SaveReport,
    output: PipelineOutput,
    created_at: jiff::Timestamp,
    compression: Compression,
    etcd: EtcdInfo,
    started: Instant,
) {
    let name = report.name.clone();
    failpoint::reached(failpoint::BEFORE_COMMIT).await;
    for outcome in output.sinks {
        let kind = outcome.sink.storage();
        if let Some(e) = outcome.error {
            outcome.sink.abort().await;
            report.records.push(failed_record(ctx, &name, kind, created_at, &e.to_string()));
            report.finished.push((kind, started.elapsed()));
            continue;
        }
        let stored = SnapshotRecord::stored(
            name.clone(),
            kind,
            ctx.node_name.clone(),
            outcome.sink.location(),
            created_at,
            output.stored_size,
        );
        let record = SnapshotRecord {
            compression,
            sha256: Some(output.stored_sha256.clone()),
            etcd: Some(etcd.clone()),
            metadata_source: MetadataSource::Document,
            ..with_context(ctx, stored)
        };
        match outcome.sink.commit(&record.to_document()).await {
            Ok(()) => report.records.push(record),
            Err(e) => report.records.push(failed_record(ctx, &name, kind, created_at, &e.to_string())),
        }
        report.finished.push((kind, started.elapsed()));
    }
}

/// Whether any destination already holds `name`. A destination that cannot answer does not
/// block the save (writing to it will report the problem).
async fn name_taken(stores: &[&dyn SnapshotStore], name: &SnapshotName) -> bool {
    for store in stores {
        if let Ok(true) = store.exists(name).await {
            return true;
        }
    }
    false
}

/// A failed record, shaped like K3s's: no location for local failures, size 0.
fn failed_record(
    ctx: &Context,
    name: &SnapshotName,
    storage: StorageKind,
    created_at: jiff::Timestamp,
    message: &str,
) -> SnapshotRecord {
    with_context(ctx, SnapshotRecord::failed(name.clone(), storage, ctx.node_name.clone(), created_at, message))
}

/// What this node records with every new copy: token hash, cluster id, the S3 location and the
/// extra metadata.
fn with_context(ctx: &Context, record: SnapshotRecord) -> SnapshotRecord {
    SnapshotRecord {
        token_hash: ctx.token_hash.clone(),
        cluster_id: ctx.cluster_id.clone(),
        s3: (record.storage == StorageKind::S3).then(|| ctx.remote_spec.clone()).flatten(),
        extra_metadata: ctx.extra_metadata.clone(),
        drill: None,
        ..record
    }
}

/// Everything the stores hold, with per-entry warnings and per-store errors.
#[derive(Debug, Default)]
pub struct ListReport {
    pub records: Vec<SnapshotRecord>,
    pub warnings: Vec<String>,
    /// Stores that could not be listed at all: (store, error).
    pub errors: Vec<(String, String)>,
}

pub async fn list(ctx: &Context) -> ListReport {
    let mut report = ListReport::default();
    for store in ctx.stores() {
        match store.list().await {
            Ok(listing) => {
                report.records.extend(listing.records);
                report.warnings.extend(listing.warnings);
            }
            Err(e) => report.errors.push((store.describe(), e.to_string())),
        }
    }
    report.records.sort_by(|a, b| {
        (a.created_at, &a.name, a.storage == StorageKind::S3).cmp(&(
            b.created_at,
            &b.name,
            b.storage == StorageKind::S3,
        ))
    });
    report
}

/// What happened to one name in one store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteResult {
    Deleted,
    NotFound,
    Failed(String),
}

/// Deletes `names` from every store; returns (name, store, result) for each.
pub async fn delete(ctx: &Context, names: &[SnapshotName]) -> Vec<(SnapshotName, StorageKind, String, DeleteResult)> {
    let mut results = Vec::new();
    let _in_process = ctx.removals.write().await;
    let _removing = match ctx.lock_for_removal() {
        Ok(lock) => lock,
        Err(e) => {
            for name in names {
                for store in ctx.stores() {
                    results.push((name.clone(), store.kind(), store.describe(), DeleteResult::Failed(e.to_string())));
                }
            }
            return results;
        }
    };
    for name in names {
        for store in ctx.stores() {
            let result = match store.delete(name).await {
                Ok(true) => DeleteResult::Deleted,
                Ok(false) => DeleteResult::NotFound,
                Err(e) => DeleteResult::Failed(e.to_string()),
            };
            results.push((name.clone(), store.kind(), store.describe(), result));
        }
    }
    results
}

/// Retention per store.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    pub base_name: String,
    pub keep_local: usize,
    pub keep_remote: usize,
}

/// What a prune removed (and failed to remove) per store.
#[derive(Debug, Default)]
pub struct PruneReport {
    pub deleted: Vec<(StorageKind, SnapshotName)>,
    pub errors: Vec<String>,
}

/// Applies retention: locally to every node group found in the directory (it is this node's);
/// in S3 only to this node's snapshots of this cluster.
pub async fn prune(ctx: &Context, opts: &PruneOptions) -> PruneReport {
    let mut report = PruneReport::default();
    let _in_process = ctx.removals.write().await;
    let _removing = match ctx.lock_for_removal() {
        Ok(lock) => lock,
        Err(e) => {
            report.errors.push(e.to_string());
            return report;
        }
    };
    for store in ctx.stores() {
        let policy = match store.kind() {
            StorageKind::Local => {
                RetentionPolicy { base: opts.base_name.clone(), keep: opts.keep_local, node: None, cluster_id: None }
            }
            StorageKind::S3 => {
                let Some(cluster) = ctx.cluster_id.clone() else {
                    report.errors.push(format!(
                        "{}: S3 retention skipped: the cluster id is unknown (no Kubernetes access and no --cluster-id), so other clusters' snapshots cannot be told apart",
                        store.describe()
                    ));
                    continue;
                };
                RetentionPolicy {
                    base: opts.base_name.clone(),
                    keep: opts.keep_remote,
                    node: Some(ctx.node_name.clone()),
                    cluster_id: Some(cluster),
                }
            }
        };
        let listing = match store.list().await {
            Ok(l) => l,
            Err(e) => {
                report.errors.push(format!("{}: {e}", store.describe()));
                continue;
            }
        };
        for name in plan_retention(&listing.records, &policy) {
            match store.delete(&name).await {
                Ok(_) => {
                    tracing::info!(snapshot = %name, store = %store.describe(), "removed by retention");
                    report.deleted.push((store.kind(), name));
                }
                Err(e) => report.errors.push(format!("{}: deleting {name}: {e}", store.describe())),
            }
        }
    }
    report
}

/// The result of verifying one stored snapshot.
#[derive(Debug, Clone)]
pub struct VerifyResult {
    pub record: SnapshotRecord,
    pub check: Option<StoredCheck>,
    /// Empty when everything matched.
    pub problems: Vec<String>,
}

impl VerifyResult {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Re-reads stored bytes: sha256 against the record, etcd's trailer after decompression.
pub async fn verify_record(
    store: &dyn SnapshotStore,
    record: &SnapshotRecord,
    progress: Option<Progress>,
) -> VerifyResult {
    let mut result = VerifyResult { record: record.clone(), check: None, problems: Vec::new() };
    let reader = match store.open(&record.name).await {
        Ok(r) => r,
        Err(e) => {
            result.problems.push(e.to_string());
            return result;
        }
    };
    if let Some(p) = &progress {
        p.set_total(reader.size);
    }
    let compression = record.name.compression();
    let counted = CountingReader { inner: reader.reader, progress };
    let check = tokio::task::spawn_blocking(move || {
        let bridge = tokio_util::io::SyncIoBridge::new(counted);
        verify_reader(bridge, compression)
    })
    .await;
    let check = match check {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            result.problems.push(e.to_string());
            return result;
        }
        Err(e) => {
            result.problems.push(format!("verification worker failed: {e}"));
            return result;
        }
    };
    result.problems.extend(check_problems(record, &check));
    result.check = Some(check);
    result
}

/// What a pass over stored bytes found wrong against their record: the sha256, the size (when
/// a metadata document recorded it), etcd's trailer.
pub fn check_problems(record: &SnapshotRecord, check: &StoredCheck) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(expected) = &record.sha256
        && expected != &check.stored_sha256
    {
        problems.push(format!("sha256 mismatch: recorded {expected}, stored bytes hash to {}", check.stored_sha256));
    }
    if record.metadata_source == MetadataSource::Document && record.size != check.stored_size {
        problems.push(format!("size mismatch: recorded {} bytes, read {}", record.size, check.stored_size));
    }
    problems.extend(check.trailer.problem());
    problems
}

/// Adds bytes read to a progress counter.
struct CountingReader {
    inner: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    progress: Option<Progress>,
}

impl tokio::io::AsyncRead for CountingReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Some(p) = &self.progress {
            p.advance((buf.filled().len() - before) as u64);
        }
        poll
    }
}
