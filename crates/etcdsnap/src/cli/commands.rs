//! One handler per command. Each turns its flags into a [`SessionConfig`], opens the
//! [`Session`] and runs the operation on the context the session gives it.

use super::EXIT_FAILURE;
use super::args::{
    DeleteArgs, EtcdArgs, LsArgs, NodeFlags, OutputFormat, PruneArgs, SaveArgs, SnapshotFlags, StorageArgs, TokenArgs,
    VerifyArgs,
};
use super::kube_commands;
use super::output::{self, human_bytes};
use super::presets::Preset;
use super::progress::ProgressLine;
use anyhow::{Context as _, bail};
use etcdsnap::ops::{self, DeleteResult, PruneOptions, SaveOptions};
use etcdsnap::session::{AfterSave, CatchUp, KubePolicy, LocalSetting, Purpose, Session, SessionConfig};
use etcdsnap_api::{SnapshotName, TokenHash, validate_node_name};
use etcdsnap_storage::Outcome;
use etcdsnap_storage::etcd::EtcdConfig;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub(super) fn exit(ok: bool) -> ExitCode {
    if ok { ExitCode::SUCCESS } else { ExitCode::from(EXIT_FAILURE) }
}

/// etcdsnap's data directory when none is given.
pub(super) const DEFAULT_DATA_DIR: &str = "/var/lib/etcdsnap";

/// The K3s or RKE2 server these flags are about, if any: `--data-dir` naming one, or with no
/// `--data-dir` and no `--dir`, the machine's own.
pub(super) fn preset(storage: &StorageArgs) -> Option<Preset> {
    match (&storage.data_dir, &storage.dir) {
        (Some(dd), _) => Preset::at(dd),
        (None, None) => Preset::detect(),
        (None, Some(_)) => None,
    }
}

/// This node's name: the flag (or `$ETCDSNAP_NODE_NAME`), else the first of `$NODE_NAME` (what
/// K3s sets for itself), `$K3S_NODE_NAME`, `$RKE2_NODE_NAME` and the K3s/RKE2 config's
/// `node-name`, else the host name in lower case. Any name K3s accepts is accepted, unless
/// Kubernetes would refuse the objects named after it.
pub(super) fn node_name(args: &StorageArgs, preset: Option<&Preset>) -> anyhow::Result<String> {
    let from_env = ["NODE_NAME", "K3S_NODE_NAME", "RKE2_NODE_NAME"]
        .into_iter()
        .find_map(|v| std::env::var(v).ok().filter(|n| !n.trim().is_empty()));
    let name = match (&args.node_name, from_env, preset.and_then(Preset::config_node_name)) {
        (Some(n), _, _) => n.clone(),
        (None, Some(n), _) | (None, None, Some(n)) => n,
        (None, None, None) => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .context("cannot determine the node name: pass --node-name")?
            .trim()
            .to_lowercase(),
    };
    let name = name.trim().to_string();
    validate_node_name(&name).map_err(|e| anyhow::anyhow!("--node-name: {e}"))?;
    Ok(name)
}

/// The server token's hash: `--token` (or `$ETCDSNAP_TOKEN`), `--token-file`, then K3s's and
/// RKE2's own variables (`$K3S_TOKEN`, `$K3S_TOKEN_FILE`, `$RKE2_TOKEN`, `$RKE2_TOKEN_FILE`), then
/// the server's token file. None when there is no token anywhere (the hash is then not
/// recorded). Where it came from is logged, never the token.
pub(super) fn token_hash(args: &TokenArgs, preset: Option<&Preset>) -> anyhow::Result<Option<TokenHash>> {
    let hash_of = |token: &str, from: &str| TokenHash::of_token(token).with_context(|| from.to_string());
    let from_file = |path: &Path, from: &str| -> anyhow::Result<TokenHash> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {from} {}", path.display()))?;
        hash_of(&text, &format!("{from} {}", path.display()))
    };
    if let Some(token) = &args.token {
        return Ok(Some(hash_of(token, "--token")?));
    }
    if let Some(path) = &args.token_file {
        return Ok(Some(from_file(path, "--token-file")?));
    }
    for distro in ["K3S", "RKE2"] {
        if let Ok(token) = std::env::var(format!("{distro}_TOKEN"))
            && !token.trim().is_empty()
        {
            tracing::info!("server token from ${distro}_TOKEN");
            return Ok(Some(hash_of(&token, &format!("${distro}_TOKEN"))?));
        }
        if let Some(path) = std::env::var_os(format!("{distro}_TOKEN_FILE")) {
            tracing::info!("server token from ${distro}_TOKEN_FILE");
            return Ok(Some(from_file(Path::new(&path), &format!("${distro}_TOKEN_FILE"))?));
        }
    }
    if let Some(p) = preset
        && p.token_file().is_file()
    {
        tracing::info!(file = %p.token_file().display(), "server token from the {} server", p.distro.name());
        return Ok(Some(from_file(&p.token_file(), "the server token file")?));
    }
    Ok(None)
}

/// etcd's endpoints and certificates: the flags, else a K3s/RKE2 server's client certificate.
pub(super) fn etcd_config(args: &EtcdArgs, preset: Option<&Preset>) -> EtcdConfig {
    let mut config = EtcdConfig {
        endpoints: args.endpoints.iter().map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect(),
        ca_file: args.cacert.clone(),
        cert_file: args.cert.clone(),
        key_file: args.key.clone(),
        dial_timeout: args.dial_timeout,
        command_timeout: args.command_timeout,
        stream_idle_timeout: args.command_timeout,
    };
    let no_tls_flags = args.cacert.is_none() && args.cert.is_none() && args.key.is_none();
    if no_tls_flags && let Some((ca, cert, key)) = preset.and_then(Preset::etcd_tls) {
        tracing::info!(cert = %cert.display(), "etcd client certificate of the {} server", preset.map(|p| p.distro.name()).unwrap_or_default());
        (config.ca_file, config.cert_file, config.key_file) = (Some(ca), Some(cert), Some(key));
    }
    config
}

/// What a command's node flags configure. `creates`: the command writes snapshots (the default
/// directory is created, saves take its lock).
pub(super) fn session_config(node: &NodeFlags, creates: bool, policy: KubePolicy) -> anyhow::Result<SessionConfig> {
    let storage = &node.storage;
    let preset = preset(storage);
    let name = node_name(storage, preset.as_ref())?;
    let data_dir = match (&preset, &storage.data_dir) {
        (Some(p), _) => p.state_dir(),
        (None, Some(dd)) => dd.clone(),
        (None, None) => PathBuf::from(DEFAULT_DATA_DIR),
    };
    let (dir, is_default) = match (&storage.dir, &preset) {
        (Some(dir), _) => (dir.clone(), false),
        (None, Some(p)) => (p.snapshot_dir(), true),
        (None, None) => (data_dir.join("snapshots"), true),
    };
    if let Some(p) = &preset {
        tracing::info!(data_dir = %p.data_dir.display(), snapshots = %dir.display(), "{} server: using its paths", p.distro.name());
    }
    Ok(SessionConfig {
        kube: node.kube.connect_options(),
        kube_settings: node.kube.settings(&name),
        kube_policy: policy,
        node_name: name,
        data_dir,
        local: LocalSetting { dir, is_default, keep: !storage.no_local },
        creates,
        s3_enabled: storage.s3.enabled,
        s3_flags: storage.s3.raw(node.s3_retention),
        s3_stale_upload_after: storage.s3.stale_upload_after,
        cluster_id: storage.cluster_id.clone(),
        etcd: etcd_config(&node.etcd, preset.as_ref()),
        token_hash: None,
        zstd_level: node.compress.zstd_level,
        record_hash_kv: node.etcd.record_hashkv,
    })
}

/// The session of a command (the token is read only by the commands that record or check it).
pub(super) async fn command_session(flags: &SnapshotFlags, creates: bool) -> anyhow::Result<Session> {
    Ok(Session::open(session_config(&flags.node, creates, KubePolicy::OneShot)?).await?)
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
    let flags = &args.flags;
    let mut config = session_config(&flags.node, true, KubePolicy::OneShot)?;
    config.token_hash = token_hash(&flags.node.token, preset(&flags.node.storage).as_ref())?;
    let session = Session::open(config).await?;
    let ctx = session.context(Purpose::Save).await;
    let compression = flags.node.compress.compression();
    let progress = ProgressLine::start("Saving snapshot");
    let options = SaveOptions { base_name: flags.name.clone(), compression, cancel: Default::default() };
    let result = ops::save(&ctx, &options, Some(progress.counter())).await;
    progress.finish();
    let mut report = result?;
    // S3 answers again: upload what earlier saves of this name kept only locally. No verify and
    // no prune: `save` never prunes, like K3s.
    let steps = AfterSave {
        verify: false,
        catch_up: Some(CatchUp { base_name: flags.name.clone(), keep: SAVE_CATCH_UP_KEEP, only_after_upload: true }),
        prune: None,
    };
    let after = session.after_save(&ctx, &report, &steps, &()).await;
    report.records.extend(after.uploaded);
    match flags.output.output {
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
    let session = command_session(&args.flags, false).await?;
    let ctx = session.context(Purpose::Read).await;
    if args.deltas {
        let Some(local) = &ctx.local else {
            bail!("delta chains live beside the local snapshot directory, which does not exist (pass --dir)");
        };
        return Ok(exit(super::ls_deltas::print_chains(local.dir(), args.flags.output.output)?));
    }
    let report = ops::list(&ctx).await;
    for w in &report.warnings {
        tracing::warn!("{w}");
    }
    for (store, e) in &report.errors {
        eprintln!("error: listing {store}: {e}");
    }
    output::print_records(&report.records, args.flags.output.output)?;
    Ok(exit(report.errors.is_empty()))
}

pub async fn delete(args: DeleteArgs) -> anyhow::Result<ExitCode> {
    let names = parse_names(&args.names)?;
    let session = command_session(&args.flags, false).await?;
    let ctx = session.context(Purpose::Write).await;
    if ctx.stores().is_empty() {
        bail!("no snapshot storage found: the snapshot directory does not exist and S3 is not configured");
    }
    let results = match ops::delete(&ctx, &names).await {
        Ok(results) => results,
        Err(e) => {
            // The removal lock was not taken: nothing was removed anywhere.
            for name in &names {
                for store in ctx.stores() {
                    eprintln!("error: deleting {name} from {}: {e}", store.describe());
                }
            }
            return Ok(exit(false));
        }
    };
    let mut ok = true;
    for name in &names {
        let mine: Vec<_> = results.iter().filter(|d| d.name == *name).collect();
        for d in &mine {
            match &d.result {
                DeleteResult::Deleted => println!("Snapshot {name} deleted from {}.", d.store),
                DeleteResult::NotFound => {}
                DeleteResult::Failed(e) => {
                    ok = false;
                    eprintln!("error: deleting {name} from {}: {e}", d.store);
                }
            }
        }
        if mine.iter().all(|d| matches!(d.result, DeleteResult::NotFound)) {
            ok = false;
            eprintln!("Snapshot {name} not found.");
        }
    }
    let removed = ops::remove::deleted(&results);
    session.after_removal(&ctx, &removed).await;
    Ok(exit(ok))
}

pub async fn prune(args: PruneArgs) -> anyhow::Result<ExitCode> {
    let flags = &args.flags;
    let session = command_session(flags, false).await?;
    let ctx = session.context(Purpose::Write).await;
    let keep_remote = ctx.s3_retention.unwrap_or(flags.retention);
    let options = PruneOptions { base_name: flags.name.clone(), keep_local: flags.retention, keep_remote };
    let report = ops::prune(&ctx, &options).await;
    for (_, name) in &report.deleted {
        println!("Snapshot {name} deleted.");
    }
    for e in &report.errors {
        eprintln!("error: {e}");
    }
    session.after_removal(&ctx, &report.deleted).await;
    Ok(exit(report.errors.is_empty()))
}

/// How long `verify` waits for a prune or delete of this node's snapshots to finish.
const VERIFY_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

pub async fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let names = parse_names(&args.names)?;
    let session = command_session(&args.flags, false).await?;
    let ctx = session.context(Purpose::Read).await;
    // No prune or delete removes a snapshot while it is being read.
    let _reading = ctx.lock_for_reading(VERIFY_LOCK_WAIT).await?;
    let mut results = Vec::new();
    let mut listing_errors = Vec::new();
    let mut ok = true;
    let mut found = vec![false; names.len()];
    for store in ctx.stores() {
        let listing = match store.list().await {
            Ok(listing) => listing,
            // The other stores are still checked; this one is reported after the results.
            Err(e) => {
                listing_errors.push(format!("listing {}: {e}", store.describe()));
                continue;
            }
        };
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
        if listing_errors.is_empty() {
            eprintln!("Snapshot {name} not found.");
        } else {
            eprintln!("Snapshot {name} not found in the stores that could be listed.");
        }
    }
    ok &= listing_errors.is_empty();
    match args.flags.output.output {
        OutputFormat::Table => {
            let cells = output::Cells::for_stdout();
            let mut rows = vec![["Name", "Location", "Size", "Created", "Result"].map(String::from).to_vec()];
            for r in &results {
                let result = if r.ok() { "OK".to_string() } else { format!("FAILED: {}", r.problems.join("; ")) };
                rows.push(vec![
                    r.record.name.to_string(),
                    cells.location(&r.record.location),
                    cells.size(r.record.size),
                    cells.created(r.record.created_at),
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
            output::print_structured(&serde_json::json!({"items": items, "errors": listing_errors}), format)?;
        }
    }
    for e in &listing_errors {
        eprintln!("error: {e}; its snapshots were not verified");
    }
    Ok(exit(ok))
}
