//! Save: one snapshot streamed from an etcd member into every configured store in one pass,
//! published (record first, then the snapshot) only where the whole stream arrived intact.
//!
//! [`save`] takes the node's lock and picks a free name; each [`Attempt`] streams from one
//! member ([`Attempt::run`]), gathers what is recorded about etcd ([`Attempt::etcd_facts`]) and
//! publishes every sink that received the whole stream ([`Attempt::publish`]). What follows a
//! save (verify, resources, catch-up uploads, retention) is the session's:
//! [`crate::session::Session::after_save`].

use super::Context;
use crate::pitr::history;
use crate::seal::Prepared;
use etcdsnap_api::consts::KUBERNETES_PREFIX;
use etcdsnap_api::{Compression, EtcdInfo, KvHash, SnapshotName, StorageKind, snapshot_file_name};
use etcdsnap_storage::etcd::{EtcdError, EtcdMember, MemberStatus};
use etcdsnap_storage::failpoint;
use etcdsnap_storage::pipeline::encode::EncodeSpec;
use etcdsnap_storage::pipeline::{self, PipelineError, PipelineOutput, Progress};
use etcdsnap_storage::record::{MetadataSource, Outcome, SnapshotRecord};
use etcdsnap_storage::store::local::DirLock;
use etcdsnap_storage::store::{NewSnapshot, SnapshotSink, SnapshotStore, StoreError};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long a save may take to learn which history the live etcd is.
const HISTORY_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// The kit or the EncryptionConfiguration could not be read, or a record not signed:
    /// nothing was published.
    #[error("sealing: {0}; nothing was saved")]
    Seal(#[from] crate::seal::SealError),
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

    /// The ready copy in `storage`, if the save reached it.
    pub fn ready_in(&self, storage: StorageKind) -> Option<&SnapshotRecord> {
        self.records.iter().find(|r| r.storage == storage && r.is_ready())
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
    let sealed = ctx.sealing.prepare().await?;
    let mut report = SaveReport {
        name,
        records: Vec::new(),
        member: None,
        raw_size: 0,
        duration: Duration::ZERO,
        finished: Vec::new(),
    };
    let attempt =
        Attempt { ctx, opts, stores: &stores, created_at, started, progress: progress.as_ref(), sealed: &sealed };
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

/// etcd's HashKV and object count at one revision.
struct KvFacts {
    revision: i64,
    hash: KvHash,
    keys: i64,
    by_resource: BTreeMap<String, i64>,
}

/// One try at streaming the snapshot from a member into every store.
struct Attempt<'a> {
    ctx: &'a Context,
    opts: &'a SaveOptions,
    stores: &'a [&'a dyn SnapshotStore],
    created_at: jiff::Timestamp,
    started: Instant,
    progress: Option<&'a Progress>,
    /// What sealing adds to this save's records and stores beside them.
    sealed: &'a Prepared,
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
        // Recorded so that a whole cluster can be restored from this one snapshot.
        let members = member
            .members()
            .await
            .inspect_err(|e| tracing::warn!(snapshot = %name, error = %e, "no member list recorded: restore --all-members cannot use this snapshot"))
            .ok();

        let sinks = self.open_sinks(report, &status).await;
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
            recipients: ctx.sealing.recipients.clone(),
        };
        // The member starts hashing at the revision it reported while it streams; the snapshot
        // holds that revision or a later one (writes between the status and the stream), read
        // from its own pages. When they differ, it is asked again at the snapshot's revision.
        let streaming =
            pipeline::run(stream, sinks, spec, status.revision, self.progress.cloned(), self.opts.cancel.clone());
        let (streamed, early) = tokio::join!(streaming, self.kv_facts(&mut member, status.revision));
        match streamed {
            Ok(output) => {
                report.raw_size = output.raw_size;
                let revision = output.revision.revision;
                let facts = match early {
                    facts if revision == status.revision => facts,
                    _ => self.kv_facts(&mut member, revision).await,
                };
                if revision != status.revision {
                    tracing::debug!(snapshot = %name, status = status.revision, revision, "the member wrote while the snapshot started");
                }
                let (history, fingerprint) = self.history_facts(&mut member, &status, revision).await;
                let etcd = EtcdInfo { revision, members, history, fingerprint, ..self.etcd_facts(&status, facts) };
                self.publish(report, output, etcd).await;
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

    /// A sink in every store; a store that cannot take one is recorded as failed.
    async fn open_sinks(&self, report: &mut SaveReport, status: &MemberStatus) -> Vec<Box<dyn SnapshotSink>> {
        let ctx = self.ctx;
        let new = NewSnapshot {
            name: report.name.clone(),
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
        sinks
    }

    /// The member's HashKV and count of Kubernetes objects at `revision`, when the save records
    /// them (`--record-hashkv`). A HashKV at a past revision does not change while newer ones are
    /// written. A member that cannot answer costs the record its hash, not the snapshot.
    async fn kv_facts(&self, member: &mut EtcdMember, revision: i64) -> Option<KvFacts> {
        if !self.ctx.record_hash_kv {
            return None;
        }
        let facts = async {
            let hash = member.hash_kv(revision).await?;
            let by_resource = member.count_keys_by_resource(KUBERNETES_PREFIX, revision).await?;
            let keys = by_resource.values().sum();
            Ok::<_, EtcdError>(KvFacts { revision, hash, keys, by_resource })
        };
        let answer = tokio::select! {
            // A cancelled save publishes nothing; it does not wait for the hash either.
            _ = self.opts.cancel.cancelled() => return None,
            answer = facts => answer,
        };
        answer
            .inspect_err(|e| {
                tracing::warn!(revision, error = %e, "no HashKV recorded: drills of this snapshot check its bytes, trailer and revision only")
            })
            .ok()
    }

    /// The history the snapshot belongs to and the fingerprint of its revision
    /// (`crate::pitr::history`): the live history among the records within reach, else a new
    /// one. A member that cannot answer in time costs the record its fingerprint (the snapshot
    /// then never names its history to a later save or capture), not the snapshot.
    async fn history_facts(
        &self,
        member: &mut EtcdMember,
        status: &MemberStatus,
        revision: i64,
    ) -> (Option<String>, Option<String>) {
        let ctx = self.ctx;
        let cluster = format!("{:x}", status.cluster_id);
        let s3 = ctx.remote.as_ref().and_then(|r| r.as_s3());
        let facts = async {
            let client = member.client_mut();
            let history = history::for_save(client, ctx.local.as_ref(), s3, &cluster).await;
            let fingerprint = match history::fingerprint_at(client, revision).await {
                Ok(history::AtRevision::Fingerprint(f)) => Some(f),
                Ok(other) => {
                    tracing::warn!(revision, answer = ?other, "no fingerprint recorded for the snapshot's revision");
                    None
                }
                Err(e) => {
                    tracing::warn!(revision, error = %e, "no fingerprint recorded for the snapshot's revision");
                    None
                }
            };
            (Some(history), fingerprint)
        };
        tokio::select! {
            _ = self.opts.cancel.cancelled() => (None, None),
            answer = tokio::time::timeout(HISTORY_TIMEOUT, facts) => answer.unwrap_or_else(|_| {
                tracing::warn!(revision, "etcd did not say in time which history it is: the snapshot starts a new one");
                (Some(etcdsnap_storage::pitr::history::new_id()), None)
            }),
        }
    }

    /// What is recorded about etcd: the member's status, and the HashKV at the snapshot's own
    /// revision when there is one.
    fn etcd_facts(&self, status: &MemberStatus, facts: Option<KvFacts>) -> EtcdInfo {
        let mut etcd = status.etcd_info();
        if let Some(f) = facts {
            (etcd.revision, etcd.hash_kv, etcd.kubernetes_keys) = (f.revision, Some(f.hash), Some(f.keys));
            etcd.kubernetes_keys_by_resource = Some(f.by_resource);
        }
        etcd
    }

    /// Commits every sink that received the whole stream (metadata document first, then the
    /// snapshot), aborts the ones that failed midway, and records the outcome of each.
    async fn publish(&self, report: &mut SaveReport, output: PipelineOutput, etcd: EtcdInfo) {
        let (ctx, name) = (self.ctx, report.name.clone());
        failpoint::reached(failpoint::BEFORE_COMMIT).await;
        for outcome in output.sinks {
            let kind = outcome.sink.storage();
            if let Some(e) = outcome.error {
                outcome.sink.abort().await;
                self.fail(report, &[kind], &e.to_string());
                continue;
            }
            let stored = SnapshotRecord::stored(
                name.clone(),
                kind,
                ctx.node_name.clone(),
                outcome.sink.location(),
                self.created_at,
                output.stored_size,
            );
            let record = SnapshotRecord {
                compression: self.opts.compression,
                sha256: Some(output.stored_sha256.clone()),
                etcd: Some(etcd.clone()),
                sealed: self.sealed.sealed.clone(),
                encryption_config_sha256: self.sealed.encryption_config_sha256.clone(),
                metadata_source: MetadataSource::Document,
                program: outcome.sink.program(),
                s3_lock: outcome.sink.lock(),
                ..with_context(ctx, stored)
            };
            let doc = record.to_document();
            let companions = match ctx.sealing.companions(&doc, self.sealed) {
                Ok(c) => c,
                Err(e) => {
                    outcome.sink.abort().await;
                    self.fail(report, &[kind], &e.to_string());
                    continue;
                }
            };
            match outcome.sink.commit(&doc, &companions).await {
                Ok(()) => {
                    report.records.push(record);
                    report.finished.push((kind, self.started.elapsed()));
                }
                Err(e) => self.fail(report, &[kind], &e.to_string()),
            }
        }
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
    let sealed = if ctx.sealing.seals() { etcdsnap_api::seal::SEALED_EXTENSION } else { "" };
    loop {
        let file = snapshot_file_name(&opts.base_name, &ctx.node_name, created_at.as_second(), opts.compression);
        let file = format!("{file}{sealed}");
        let name = SnapshotName::parse(&file)?;
        if !name_taken(stores, &name).await {
            return Ok((name, created_at));
        }
        created_at = created_at.checked_add(jiff::SignedDuration::from_secs(1)).unwrap_or(created_at);
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
