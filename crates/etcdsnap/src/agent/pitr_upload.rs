//! The upload of captured delta segments to S3 (and from there to replicas): whichever node
//! wrote segments while it led uploads them, every upload conditional so that two writers of one
//! chain never replace each other's objects.

use super::Agent;
use super::pitr::wait;
use crate::session::Purpose;
use etcdsnap_storage::failpoint;
use etcdsnap_storage::pitr::local;
use etcdsnap_storage::pitr::record::{SEGMENT_LIMIT, SegmentRecord};
use etcdsnap_storage::store::s3::S3Store;
use etcdsnap_storage::store::s3::pitr::Created;
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Copies durable local segments to S3, each segment before its record (so a record in S3
/// always has its segment), checked against the record's sha256 first. Runs on every agent with
/// --deltas and S3: whichever node wrote segments while it led uploads them, and an outage only
/// delays uploads (the local copies are durable already; the next pass retries). Then, with
/// replicas, copies to them what is durable in the primary ([`super::delta_replicas`]).
pub async fn upload_loop(agent: Arc<Agent>, every: Duration, stop: CancellationToken) {
    let mut uploader = Uploader::default();
    let mut replicating = super::delta_replicas::Replicating::default();
    loop {
        wait(every, &stop).await;
        if stop.is_cancelled() {
            return;
        }
        let ctx = agent.session.context(Purpose::Read).await;
        let Some(local) = &ctx.local else { continue };
        let deltas_dir = local::dir_beside(local.dir());
        let s3 = ctx.remote.as_ref().and_then(|r| r.as_s3());
        let mut uploaded = 0;
        if let Some(s3) = s3 {
            match uploader.pass(&deltas_dir, s3).await {
                Ok(n) => {
                    if uploader.failing {
                        tracing::info!(uploaded = n, "delta uploads to S3 work again");
                    }
                    uploader.failing = false;
                    uploaded = n;
                    if let Some(rev) = uploader.newest {
                        agent.metrics.pitr.uploaded_revision.set(rev);
                    }
                }
                Err(e) => {
                    agent.metrics.pitr.upload_failures.inc();
                    if !uploader.failing {
                        tracing::warn!(error = %e, "delta upload to S3 failed; retrying every {}s", every.as_secs());
                    }
                    uploader.failing = true;
                }
            }
        }
        if !ctx.replicas.is_empty() {
            super::delta_replicas::replicate(&agent, &ctx, s3, deltas_dir, uploaded, &mut replicating).await;
        }
    }
}

/// What is in S3 already (known after the first listing) and how the last pass went.
#[derive(Default)]
struct Uploader {
    present: Option<HashSet<(String, String)>>,
    newest: Option<i64>,
    failing: bool,
}

impl Uploader {
    /// Uploads what S3 lacks; returns how many files were uploaded.
    async fn pass(&mut self, deltas_dir: &Path, s3: &S3Store) -> Result<usize, String> {
        if self.present.is_none() {
            let listed = s3.list_pitr_objects().await.map_err(|e| e.to_string())?;
            self.present = Some(listed.into_iter().map(|o| (o.chain, o.file)).collect());
        }
        let present = self.present.get_or_insert_with(HashSet::new);
        let (records, warnings) = local::read_all(deltas_dir);
        for w in warnings {
            tracing::debug!("{w}");
        }
        // Only what is still on disk can need an upload: forget the rest (pruned), so the set
        // stays as small as the local chains.
        let local_files: HashSet<(String, String)> = records
            .iter()
            .flat_map(|r| [(r.chain.clone(), r.segment_name()), (r.chain.clone(), r.record_name())])
            .collect();
        present.retain(|f| local_files.contains(f));
        let mut uploaded = 0;
        for r in records {
            let (segment, record) = ((r.chain.clone(), r.segment_name()), (r.chain.clone(), r.record_name()));
            // Another writer (the other leader of a leader change) may have stored the same
            // revisions under the same names since the listing: its pair is kept, never
            // overwritten, so that no record in S3 describes another writer's segment.
            if !present.contains(&record)
                && s3.pitr_object_exists(&r.chain, &record.1).await.map_err(|e| e.to_string())?
            {
                tracing::info!(chain = %r.chain, file = %record.1, "delta segment already in S3 from another writer: kept");
                present.insert(segment.clone());
                present.insert(record.clone());
            }
            if !present.contains(&record) {
                if !present.contains(&segment) {
                    let bytes = read_checked(&deltas_dir.join(&r.chain).join(r.segment_name()), &r)?;
                    failpoint::reached(failpoint::PITR_SEGMENT_UPLOAD).await;
                    // Uploads never replace: the pair written is one writer's.
                    match s3.create_pitr_object(&r.chain, &segment.1, bytes).await.map_err(|e| e.to_string())? {
                        Created::Stored => uploaded += 1,
                        Created::AlreadyThere if !same_segment(s3, &r).await? => {
                            tracing::warn!(chain = %r.chain, file = %segment.1, "another writer stored a different segment under this name: its record is that writer's to write; this node's copy stays local");
                            present.insert(segment);
                            present.insert(record);
                            continue;
                        }
                        Created::AlreadyThere => {}
                    }
                    present.insert(segment);
                }
                match s3.create_pitr_object(&r.chain, &record.1, r.to_json()).await.map_err(|e| e.to_string())? {
                    Created::Stored => uploaded += 1,
                    Created::AlreadyThere => {
                        tracing::info!(chain = %r.chain, file = %record.1, "delta record already in S3 from another writer: kept")
                    }
                }
                present.insert(record);
            }
            self.newest = self.newest.max(Some(r.last_revision));
        }
        Ok(uploaded)
    }
}

/// Whether the segment stored under `record`'s name holds the bytes `record` describes.
async fn same_segment(s3: &S3Store, record: &SegmentRecord) -> Result<bool, String> {
    let bytes =
        s3.get_pitr_object(&record.chain, &record.segment_name(), SEGMENT_LIMIT).await.map_err(|e| e.to_string())?;
    Ok(record.check_stored(&bytes).is_ok())
}

/// A local segment's bytes, if they still match its record (a damaged copy is not spread).
fn read_checked(path: &Path, record: &SegmentRecord) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read delta segment {}: {e}", path.display()))?;
    record.check_stored(&bytes).map_err(|found| {
        format!(
            "delta segment {} is damaged (sha256 {found}, its record says {}): not uploaded",
            path.display(),
            record.sha256
        )
    })?;
    Ok(bytes)
}
