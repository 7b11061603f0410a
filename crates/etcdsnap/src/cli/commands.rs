//! One handler per command.

use super::EXIT_FAILURE;
use super::args::{
    DeleteArgs, EtcdArgs, LsArgs, OutputFormat, PruneArgs, SaveArgs, StorageArgs, TokenArgs, VerifyArgs,
};
use super::output::{self, human_bytes, rfc3339};
use super::progress::ProgressLine;
use crate::etcd::EtcdConfig;
use crate::ops::{self, Context, DeleteResult, PruneOptions, SaveOptions};
use crate::record::Outcome;
use crate::store::StoreError;
use crate::store::local::LocalStore;
use anyhow::{Context as _, bail};
use etcdsnap_api::{Compression, SnapshotName, TokenHash, is_dns1123_subdomain};
use std::process::ExitCode;

const DEFAULT_ZSTD_LEVEL: i32 = 3;

fn exit(ok: bool) -> ExitCode {
    if ok { ExitCode::SUCCESS } else { ExitCode::from(EXIT_FAILURE) }
}

/// This node's name: the flag, else `$NODE_NAME` (what K3s uses), else the host name.
fn node_name(args: &StorageArgs) -> anyhow::Result<String> {
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

/// The snapshot directory: `--dir`, or `<data-dir>/snapshots` (created only by saves, and only
/// when it is the default, like K3s). A missing default directory when listing means "no local
/// snapshots yet".
fn local_store(args: &StorageArgs, node: &str, creating: bool) -> anyhow::Result<Option<LocalStore>> {
    if args.no_local {
        return Ok(None);
    }
    let (dir, is_default) = match &args.dir {
        Some(d) => (d.clone(), false),
        None => (args.data_dir.join("snapshots"), true),
    };
    match LocalStore::open(&dir, creating && is_default, node) {
        Ok(store) => Ok(Some(store)),
        Err(StoreError::MissingDir(_)) if is_default && !creating => Ok(None),
        Err(e) => Err(e.into()),
    }
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

fn etcd_config(args: &EtcdArgs) -> EtcdConfig {
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

fn base_context(storage: &StorageArgs, creating: bool) -> anyhow::Result<Context> {
    let node = node_name(storage)?;
    let local = local_store(storage, &node, creating)?;
    Ok(Context {
        node_name: node,
        etcd: EtcdConfig::default(),
        local,
        remote: None,
        remote_spec: None,
        token_hash: None,
        cluster_id: None,
        extra_metadata: None,
        zstd_level: DEFAULT_ZSTD_LEVEL,
    })
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

pub async fn save(args: SaveArgs) -> anyhow::Result<ExitCode> {
    let mut ctx = base_context(&args.storage, true)?;
    ctx.etcd = etcd_config(&args.etcd);
    ctx.token_hash = token_hash(&args.token)?;
    ctx.zstd_level = args.zstd_level;
    let compression = if args.snapshot_compress { Compression::Zip } else { args.compress };
    let progress = ProgressLine::start("Saving snapshot");
    let result =
        ops::save(&ctx, &SaveOptions { base_name: args.name.clone(), compression }, Some(progress.counter())).await;
    progress.finish();
    let report = result?;
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
    let ctx = base_context(&args.storage, false)?;
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
    let ctx = base_context(&args.storage, false)?;
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
    Ok(exit(ok))
}

pub async fn prune(args: PruneArgs) -> anyhow::Result<ExitCode> {
    let ctx = base_context(&args.storage, false)?;
    let report = ops::prune(
        &ctx,
        &PruneOptions { base_name: args.name.clone(), keep_local: args.retention, keep_remote: args.retention },
    )
    .await;
    for (_, name) in &report.deleted {
        println!("Snapshot {name} deleted.");
    }
    for e in &report.errors {
        eprintln!("error: {e}");
    }
    Ok(exit(report.errors.is_empty()))
}

pub async fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let names = parse_names(&args.names)?;
    let ctx = base_context(&args.storage, false)?;
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
