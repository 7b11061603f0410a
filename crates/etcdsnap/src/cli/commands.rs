//! One handler per command. Each turns its flags into a [`SessionConfig`], opens the
//! [`Session`] and runs the operation on the context the session gives it.

use super::EXIT_FAILURE;
use super::args::{
    DeleteArgs, EtcdArgs, LsArgs, OutputFormat, PruneArgs, SaveArgs, StorageArgs, TokenArgs, VerifyArgs,
};
use super::kube_args::KubeArgs;
use super::kube_commands;
use super::output::{self, human_bytes, rfc3339};
use super::progress::ProgressLine;
use anyhow::{Context as _, bail};
use etcdsnap::ops::{self, DeleteResult, PruneOptions, SaveOptions};
use etcdsnap::session::{DEFAULT_ZSTD_LEVEL, KubePolicy, LocalSetting, Purpose, Session, SessionConfig};
use etcdsnap_api::{SnapshotName, StorageKind, TokenHash, is_dns1123_subdomain};
use etcdsnap_storage::Outcome;
use etcdsnap_storage::etcd::EtcdConfig;
use std::process::ExitCode;

pub(super) fn exit(ok: bool) -> ExitCode {
    if ok { ExitCode::SUCCESS } else { ExitCode::from(EXIT_FAILURE) }
}

/// This node's name: the flag, else `$NODE_NAME` (what K3s uses), else the host name.
pub(super) fn node_name(args: &StorageArgs) -> anyhow::Result<String> {
    let name = match &args.node_name {
        Some(n) => n.clone(),
        None => match std::env::var("NODE_NAME") {
            Ok(n) if !n.is_empty() => n,
            _ => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .or_else(|_| std::fs::read_to_string("/etc/hostname"))
                .context("cannot determine the node name: pass --node-name")?
                .trim()
                .to_lowercase(),
        },
    };
    if !is_dns1123_subdomain(&name) {
        bail!(
            "invalid node name {name:?}: it must be a lowercase DNS-1123 name like a Kubernetes node's (pass --node-name)"
        );
    }
    Ok(name)
}

pub(super) fn token_hash(args: &TokenArgs) -> anyhow::Result<Option<TokenHash>> {
    if let Some(token) = &args.token {
        return Ok(Some(TokenHash::of_token(token).context("--token")?));
    }
    if let Some(path) = &args.token_file {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading --token-file {}", path.display()))?;
        return Ok(Some(TokenHash::of_token(&text).with_context(|| format!("--token-file {}", path.display()))?));
    }
    Ok(None)
}

pub(super) fn etcd_config(args: &EtcdArgs) -> EtcdConfig {
    EtcdConfig {
        endpoints: args.endpoints.iter().map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect(),
        ca_file: args.cacert.clone(),
        cert_file: args.cert.clone(),
        key_file: args.key.clone(),
        dial_timeout: args.dial_timeout,
        command_timeout: args.command_timeout,
        stream_idle_timeout: args.command_timeout,
    }
}

/// What the storage and Kubernetes flags of a command configure. `creates`: the command writes
/// snapshots (the default directory is created, saves lock it); `s3_retention`: the command's
/// `--s3-retention`.
pub(super) fn session_config(
    storage: &StorageArgs,
    kube: &KubeArgs,
    creates: bool,
    s3_retention: Option<usize>,
    policy: KubePolicy,
) -> anyhow::Result<SessionConfig> {
    let node = node_name(storage)?;
    let local = match (&storage.dir, storage.no_local) {
        (_, true) => LocalSetting::Disabled,
        (Some(dir), false) => LocalSetting::Dir { path: dir.clone(), is_default: false },
        (None, false) => LocalSetting::Dir { path: storage.data_dir.join("snapshots"), is_default: true },
    };
    Ok(SessionConfig {
        kube: kube.connect_options(),
        kube_settings: kube.settings(&node),
        kube_policy: policy,
        node_name: node,
        data_dir: storage.data_dir.clone(),
        local,
        creates,
        s3_enabled: storage.s3.enabled,
        s3_flags: storage.s3.raw(s3_retention),
        cluster_id: storage.cluster_id.clone(),
        etcd: EtcdConfig::default(),
        token_hash: None,
        zstd_level: DEFAULT_ZSTD_LEVEL,
    })
}

/// The session of a command that only reads or changes storage (no etcd).
async fn storage_session(
    storage: &StorageArgs,
    kube: &KubeArgs,
    s3_retention: Option<usize>,
) -> anyhow::Result<Session> {
    Ok(Session::open(session_config(storage, kube, false, s3_retention, KubePolicy::OneShot)?).await?)
}

fn parse_names(names: &[String]) -> anyhow::Result<Vec<SnapshotName>> {
    let mut parsed = Vec::new();
    let mut bad = Vec::new();
    for n in names {
        match SnapshotName::parse(n) {
            Ok(name) => parsed.push(name),
            Err(e) => bad.push(e.to_string()),
        }
    }
    if !bad.is_empty() {
        bail!("{}", bad.join("; "));
    }
    Ok(parsed)
}

/// How many of the newest snapshots of a name an on-demand save uploads when earlier uploads of
/// them failed (K3s's default retention; `etcdsnap prune` trims what is kept beyond it).
const SAVE_CATCH_UP_KEEP: usize = 5;

pub async fn save(args: SaveArgs) -> anyhow::Result<ExitCode> {
    let mut config = session_config(&args.storage, &args.kube, true, None, KubePolicy::OneShot)?;
    config.etcd = etcd_config(&args.etcd);
    config.token_hash = token_hash(&args.token)?;
    config.zstd_level = args.compress.zstd_level;
    let session = Session::open(config).await?;
    let ctx = session.context(Purpose::Save).await;
    let compression = args.compress.compression();
    let progress = ProgressLine::start("Saving snapshot");
    let options = SaveOptions { base_name: args.name.clone(), compression, cancel: Default::default() };
    let result = ops::save(&ctx, &options, Some(progress.counter())).await;
    progress.finish();
    let mut report = result?;
    // S3 answers again: upload what earlier saves of this name kept only locally.
    if report.records.iter().any(|r| r.storage == StorageKind::S3 && r.is_ready()) {
        let (uploaded, problems) = ops::catchup::upload_missing(&ctx, &args.name, SAVE_CATCH_UP_KEEP).await;
        for p in problems {
            tracing::warn!("{p}");
        }
        report.records.extend(uploaded);
    }
    session.publish(&report.records).await;
    match args.output.output {
        OutputFormat::Table => {
            for r in &report.records {
                match &r.outcome {
                    Outcome::Ready => println!(
                        "Snapshot {} saved to {} ({}, sha256 {}) in {:.1}s.",
                        r.name,
                        r.location,
                        human_bytes(r.size),
                        r.sha256.as_deref().unwrap_or("-"),
                        report.duration.as_secs_f64()
                    ),
                    Outcome::Failed { message } => {
                        eprintln!(
                            "Snapshot {} failed ({}): {message}",
                            r.name,
                            r.storage.prefix().trim_end_matches('-')
                        )
                    }
                }
            }
        }
        format => output::print_structured(&output::as_list(&report.records), format)?,
    }
    Ok(exit(report.all_ready()))
}

pub async fn ls(args: LsArgs) -> anyhow::Result<ExitCode> {
    if args.cluster {
        return kube_commands::ls_cluster(&args).await;
    }
    let session = storage_session(&args.storage, &args.kube, None).await?;
    let ctx = session.context(Purpose::Read).await;
    let report = ops::list(&ctx).await;
    for w in &report.warnings {
        tracing::warn!("{w}");
    }
    for (store, e) in &report.errors {
        eprintln!("error: listing {store}: {e}");
    }
    output::print_records(&report.records, args.output.output)?;
    Ok(exit(report.errors.is_empty()))
}

pub async fn delete(args: DeleteArgs) -> anyhow::Result<ExitCode> {
    let names = parse_names(&args.names)?;
    let session = storage_session(&args.storage, &args.kube, None).await?;
    let ctx = session.context(Purpose::Write).await;
    if ctx.stores().is_empty() {
        bail!("no snapshot storage found: the snapshot directory does not exist and S3 is not configured");
    }
    let results = ops::delete(&ctx, &names).await;
    let mut ok = true;
    for name in &names {
        let mine: Vec<_> = results.iter().filter(|(n, ..)| n == name).collect();
        let mut deleted = false;
        for (_, _, store, result) in &mine {
            match result {
                DeleteResult::Deleted => {
                    deleted = true;
                    println!("Snapshot {name} deleted from {store}.");
                }
                DeleteResult::NotFound => {}
                DeleteResult::Failed(e) => {
                    ok = false;
                    eprintln!("error: deleting {name} from {store}: {e}");
                }
            }
        }
        if !deleted && mine.iter().all(|(.., r)| *r == DeleteResult::NotFound) {
            ok = false;
            eprintln!("Snapshot {name} not found.");
        }
    }
    let removed: Vec<(StorageKind, String)> = results
        .iter()
        .filter(|(.., r)| *r == DeleteResult::Deleted)
        .map(|(name, kind, ..)| (*kind, name.to_string()))
        .collect();
    session.after_removal(&ctx, &removed).await;
    Ok(exit(ok))
}

pub async fn prune(args: PruneArgs) -> anyhow::Result<ExitCode> {
    let session = storage_session(&args.storage, &args.kube, args.s3_retention).await?;
    let ctx = session.context(Purpose::Write).await;
    let keep_remote = ctx.s3_retention.unwrap_or(args.retention);
    let options = PruneOptions { base_name: args.name.clone(), keep_local: args.retention, keep_remote };
    let report = ops::prune(&ctx, &options).await;
    for (_, name) in &report.deleted {
        println!("Snapshot {name} deleted.");
    }
    for e in &report.errors {
        eprintln!("error: {e}");
    }
    let removed: Vec<(StorageKind, String)> =
        report.deleted.iter().map(|(kind, name)| (*kind, name.to_string())).collect();
    session.after_removal(&ctx, &removed).await;
    Ok(exit(report.errors.is_empty()))
}

pub async fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let names = parse_names(&args.names)?;
    let session = storage_session(&args.storage, &args.kube, None).await?;
    let ctx = session.context(Purpose::Read).await;
    let mut results = Vec::new();
    let mut ok = true;
    let mut found = vec![false; names.len()];
    for store in ctx.stores() {
        let listing = store.list().await.with_context(|| format!("listing {}", store.describe()))?;
        for w in &listing.warnings {
            tracing::warn!("{w}");
        }
        for record in listing.records {
            if !names.is_empty() {
                let Some(i) = names.iter().position(|n| *n == record.name) else {
                    continue;
                };
                found[i] = true;
            }
            let progress = ProgressLine::start(&format!("Verifying {}", record.name));
            let result = ops::verify_record(store, &record, Some(progress.counter())).await;
            progress.finish();
            ok &= result.ok();
            results.push(result);
        }
    }
    for (name, _) in names.iter().zip(&found).filter(|(_, f)| !**f) {
        ok = false;
        eprintln!("Snapshot {name} not found.");
    }
    match args.output.output {
        OutputFormat::Table => {
            let mut rows = vec![["Name", "Location", "Size", "Created", "Result"].map(String::from).to_vec()];
            for r in &results {
                let result = if r.ok() { "OK".to_string() } else { format!("FAILED: {}", r.problems.join("; ")) };
                rows.push(vec![
                    r.record.name.to_string(),
                    r.record.location.clone(),
                    r.record.size.to_string(),
                    rfc3339(r.record.created_at),
                    result,
                ]);
            }
            print!("{}", output::table(&rows));
            let failed = results.iter().filter(|r| !r.ok()).count();
            println!("{} verified, {failed} failed.", results.len());
        }
        format => {
            let items: Vec<serde_json::Value> = results
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "name": r.record.name.as_str(),
                        "location": r.record.location,
                        "ok": r.ok(),
                        "problems": r.problems,
                        "recordedSha256": r.record.sha256,
                        "storedSha256": r.check.as_ref().map(|c| c.stored_sha256.clone()),
                        "storedSize": r.check.as_ref().map(|c| c.stored_size),
                        "trailerValid": r.check.as_ref().map(|c| c.trailer.is_valid()),
                    })
                })
                .collect();
            output::print_structured(&serde_json::json!({"items": items}), format)?;
        }
    }
    Ok(exit(ok))
}
