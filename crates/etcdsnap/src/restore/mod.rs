//! Restoring a snapshot into an etcd data directory, after a pre-flight report.
//!
//! 1. [`source`] resolves the snapshot (a path, a local name, or a record in any store such as
//!    S3) without reading its bytes.
//! 2. [`preflight`] checks what can be checked from metadata: recorded size, server token hash,
//!    the target directory, free space, etcdutl and versions, member settings.
//! 3. One pass over the bytes re-hashes them (sha256 as stored, etcd's trailer after
//!    decompression). A compressed or downloaded snapshot is written decompressed, in that same
//!    pass, into a private working directory created next to the target (mode 0700, removed
//!    afterwards, never the current directory). A plain local file is read in place.
//! 4. The report is handed to the caller (printed) once complete. A failed check ends here:
//!    the target has not been touched.
//! 5. `etcdutl snapshot restore` builds the new data directory inside the working directory,
//!    and [`swap`] puts it in place: an existing data directory is moved aside to
//!    `<dir>-old-<unix>`, never deleted, and put back if the new one cannot take its place.
//!
//! For a plain local file, etcdutl starts building into the private working directory while the
//! bytes are being verified (etcdutl reads the same file and checks etcd's trailer itself); the
//! result is discarded unless every check passes, and the target is only touched after that.
//! This keeps a restore with checks as fast as etcdutl alone (bench/RESULTS.md).

pub mod cluster_check;
pub mod etcdutl;
pub mod holders;
pub mod loopback;
pub mod preflight;
pub mod prepare;
pub mod source;
pub mod space;
pub mod swap;

pub use etcdutl::{EtcdutlError, MemberSettings};
pub use preflight::{Check, CheckStatus, CurrentToken, PreflightReport, TokenResult};
pub use source::{SnapshotSource, SourceError, SourceKind};
pub use swap::{Installed, SwapError, TargetState};

use etcdsnap_storage::pipeline::Progress;
use etcdsnap_storage::pipeline::verify::{ReadRevision, StoredCheck, Unseal, VerifyError, verify_copy, verify_reader};
use etcdsnap_storage::seal::{Identity, OpenKeys};
use std::ffi::OsString;
use std::io::{BufWriter, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use swap::Target;

/// The working directory of a restore into `<parent>/<dir>` is `<parent>/.<dir><INFIX><random>`.
const WORKSPACE_INFIX: &str = ".etcdsnap-restore-";

/// Buffer of the temporary decompressed copy.
const WRITE_BUF: usize = 1024 * 1024;

/// What to restore, where, and how.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    pub source: SnapshotSource,
    /// The etcd data directory to restore into.
    pub data_dir: PathBuf,
    pub member: MemberSettings,
    /// etcdutl binary; `$PATH` when None.
    pub etcdutl: Option<PathBuf>,
    /// The current server token's hash, to compare with the recorded one.
    pub token: Option<CurrentToken>,
    /// Go on when the token hashes differ.
    pub ignore_token_mismatch: bool,
    /// Check and report only; touch nothing.
    pub dry_run: bool,
    /// The identity that opens a sealed snapshot (and its kit), the key its record's signature
    /// must verify with.
    pub keys: OpenKeys,
    /// This host's EncryptionConfiguration, to compare with the one recorded.
    pub encryption_config: Option<PathBuf>,
}

/// How a restore ended, when it did not fail outright.
#[derive(Debug, Clone)]
pub enum RestoreOutcome {
    /// `--dry-run` with every check passed.
    DryRun(PreflightReport),
    /// A check failed; nothing was touched.
    Refused(PreflightReport),
    /// The data directory now holds the snapshot.
    Restored { report: PreflightReport, installed: Installed, duration: Duration },
}

/// Failures after the pre-flight checks passed. Each says what became of the target.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("cannot create a working directory in {}: {source}; the data directory was not touched", dir.display())]
    Workspace {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}\nThe data directory was not touched.")]
    Etcdutl(#[from] EtcdutlError),
    #[error("etcdutl reported success but {} holds no etcd database; the data directory was not touched", .0.display())]
    Incomplete(PathBuf),
    #[error(transparent)]
    Swap(#[from] SwapError),
}

/// Runs the restore. `on_report` receives the complete pre-flight report exactly once, before
/// the target is touched (and before an error after the checks is returned).
pub async fn restore(
    req: &RestoreRequest,
    progress: Option<Progress>,
    on_report: impl FnOnce(&PreflightReport),
) -> Result<RestoreOutcome, RestoreError> {
    let started = Instant::now();
    let now_unix = etcdsnap_storage::clock::now().as_second();
    let mut on_report = Some(on_report);
    let mut emit = |r: &PreflightReport| {
        if let Some(f) = on_report.take() {
            f(r);
        }
    };
    let mut source = req.source.clone();
    let sealing =
        preflight::gather_sealing(&mut source, &req.keys, req.token.is_some(), req.encryption_config.as_deref()).await;
    let source = &source;
    let identity = &req.keys.identity;
    let plan = preflight::plan(preflight::PlanInput {
        source,
        keys: &req.keys,
        sealing: &sealing,
        data_dir: &req.data_dir,
        member: &req.member,
        etcdutl: req.etcdutl.as_deref(),
        token: req.token.as_ref(),
        ignore_token_mismatch: req.ignore_token_mismatch,
        dry_run: req.dry_run,
        now_unix,
    });
    let mut report = plan.report;
    // `etcdutl version` (a Go program starting) runs alongside the pass over the bytes, not
    // before it: its answer only goes into the report.
    let version = etcdutl_version(plan.etcdutl.as_deref());

    if req.dry_run {
        let (result, version) = tokio::join!(verify_pass(source, identity.clone(), None, progress), version);
        preflight::add_etcdutl(&mut report, version);
        preflight::add_integrity(&mut report, result.map_err(|e| e.to_string()));
        emit(&report);
        return Ok(if report.ok { RestoreOutcome::DryRun(report) } else { RestoreOutcome::Refused(report) });
    }
    let (Some(target), Some(etcdutl_bin), true) = (plan.target, plan.etcdutl.clone(), report.ok) else {
        // Reading a large snapshot (or downloading it) only to refuse it anyway helps nobody.
        preflight::add_etcdutl(&mut report, version.await);
        report.skip_integrity("not read: an earlier check failed");
        emit(&report);
        return Ok(RestoreOutcome::Refused(report));
    };

    let work = match Workspace::create(&target) {
        Ok(w) => w,
        Err(source) => {
            preflight::add_etcdutl(&mut report, version.await);
            report.skip_integrity("not read: no working directory");
            emit(&report);
            return Err(RestoreError::Workspace { dir: target.parent.clone(), source });
        }
    };
    let staged = work.data_dir();
    let in_place = source.path().filter(|_| !plan.materialise).map(Path::to_path_buf);
    let (result, version, running) = match &in_place {
        Some(path) => {
            // etcdutl builds into the private working directory while the bytes are checked;
            // its result is used only if every check passes.
            let running = match etcdutl::start(&etcdutl_bin, path, &staged, &req.member, &work.log_path()) {
                Ok(r) => r,
                Err(e) => {
                    preflight::add_etcdutl(&mut report, version.await);
                    report.skip_integrity("not read: etcdutl could not be started");
                    emit(&report);
                    return Err(e.into());
                }
            };
            let (result, version) = tokio::join!(verify_pass(source, identity.clone(), None, progress), version);
            (result, version, Some(running))
        }
        None => {
            let pass = verify_pass(source, identity.clone(), Some(work.snapshot_path()), progress);
            let (result, version) = tokio::join!(pass, version);
            (result, version, None)
        }
    };
    preflight::add_etcdutl(&mut report, version);
    preflight::add_integrity(&mut report, result.map_err(|e| e.to_string()));
    emit(&report);
    if !report.ok {
        if let Some(r) = running {
            r.cancel().await;
        }
        return Ok(RestoreOutcome::Refused(report));
    }

    let running = match running {
        Some(r) => r,
        None => etcdutl::start(&etcdutl_bin, &work.snapshot_path(), &staged, &req.member, &work.log_path())?,
    };
    running.wait().await?;
    if !staged.join("member/snap/db").is_file() {
        return Err(RestoreError::Incomplete(staged));
    }
    let installed = target.install(&staged, now_unix)?;
    drop(work);
    tracing::info!(data_dir = %installed.data_dir.display(), snapshot = %source.record.name, "restored");
    Ok(RestoreOutcome::Restored { report, installed, duration: started.elapsed() })
}

/// `etcdutl version`, when etcdutl was found.
async fn etcdutl_version(bin: Option<&Path>) -> Option<Result<String, EtcdutlError>> {
    match bin {
        Some(bin) => Some(etcdutl::version(bin).await),
        None => None,
    }
}

/// A private directory beside the target (same file system, so the result can be renamed into
/// place): holds the decompressed snapshot, etcdutl's output and its log. Removed on drop,
/// whatever happened; it never holds the user's data.
struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn create(target: &Target) -> std::io::Result<Workspace> {
        let mut prefix = OsString::from(".");
        prefix.push(&target.name);
        prefix.push(WORKSPACE_INFIX);
        // tempfile creates it with mode 0700.
        let dir = tempfile::Builder::new().prefix(&prefix).tempdir_in(&target.parent)?;
        Ok(Workspace { dir })
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn snapshot_path(&self) -> PathBuf {
        self.dir.path().join("snapshot.db")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcdutl.log")
    }
}

/// Why the pass over the bytes failed.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("cannot create {}: {source}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("verification worker failed: {0}")]
    Worker(String),
}

/// Reads the snapshot once: hashes it, opens it with `identity` when it is sealed, checks
/// etcd's trailer after decompression, and writes the decompressed bytes to `out` (a new 0600
/// file) when given. A sealed snapshot read without an identity is only hashed.
pub(crate) async fn verify_pass(
    source: &SnapshotSource,
    identity: Option<Arc<Identity>>,
    out: Option<PathBuf>,
    progress: Option<Progress>,
) -> Result<StoredCheck, PassError> {
    let (reader, size) = source.open().await?;
    if let Some(p) = &progress {
        p.set_total(size);
    }
    let compression = source.compression;
    // The revision the snapshot holds, read as it passes: what a drill and a restore compare
    // with the record.
    let read_revision = match source.record.etcd.as_ref().map(|e| e.revision) {
        Some(r) if r > 0 => ReadRevision::AtLeast(r),
        _ => ReadRevision::No,
    };
    let reader = Counting { inner: reader, progress };
    let sealed = source.sealed;
    tokio::task::spawn_blocking(move || -> Result<StoredCheck, PassError> {
        let unseal = Unseal::for_sealed(sealed, identity.as_deref());
        let Some(path) = out else {
            return Ok(verify_reader(reader, compression, unseal, read_revision)?);
        };
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| PassError::Create { path: path.clone(), source })?;
        let out = BufWriter::with_capacity(WRITE_BUF, file);
        let (check, _) = verify_copy(reader, compression, unseal, out, read_revision)?;
        Ok(check)
    })
    .await
    .map_err(|e| PassError::Worker(e.to_string()))?
}

/// Counts bytes read into the progress display.
struct Counting {
    inner: Box<dyn Read + Send>,
    progress: Option<Progress>,
}

impl Read for Counting {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(p) = &self.progress {
            p.advance(n as u64);
        }
        Ok(n)
    }
}
