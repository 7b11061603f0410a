//! `etcdsnap drill`: restore drills of stored snapshots, their results on the resources.

use super::args::{DrillToolArgs, OutputFormat, SnapshotFlags};
use super::commands::{command_session, exit};
use super::output::{self, rfc3339};
use super::progress::ProgressLine;
use anyhow::{Context as _, bail};
use clap::Args;
use etcdsnap::drill::{self, DrillReport};
use etcdsnap::ops::Context;
use etcdsnap::restore::SnapshotSource;
use etcdsnap::session::Purpose;
use etcdsnap_api::SnapshotName;
use etcdsnap_storage::store::SnapshotStore;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Debug, Args)]
pub struct DrillArgs {
    /// Snapshots to drill: names as `ls` shows them (looked up locally, then in S3), or file
    /// paths (anything containing a `/`) [default: the newest snapshot of this node in each
    /// store, the ones a restore would pick]
    #[arg(value_name = "NAME|PATH")]
    pub snapshots: Vec<String>,
    #[command(flatten)]
    pub tools: DrillToolArgs,
    #[command(flatten)]
    pub flags: SnapshotFlags,
}

pub async fn drill(args: DrillArgs) -> anyhow::Result<ExitCode> {
    let opts = args.tools.options().await?;
    let session = command_session(&args.flags, false).await?;
    let ctx = session.context(Purpose::Read).await;
    let sources = select(&ctx, &args.snapshots).await?;
    if sources.is_empty() {
        bail!("no snapshots of node {} to drill: take one with `etcdsnap save`", ctx.node_name);
    }
    let mut reports = Vec::new();
    for source in &sources {
        let progress = ProgressLine::start(&format!("Drilling {}", source.record.name));
        let report = drill::drill(source, &opts, Some(progress.counter())).await;
        progress.finish();
        for problem in drill::keep_result(source, &report, session.kube(), &ctx.node_name).await {
            eprintln!("warning: {problem}");
        }
        reports.push(report);
    }
    print(&reports, args.flags.output.output)?;
    Ok(exit(reports.iter().all(DrillReport::passed)))
}

/// The snapshots named (or by default the newest of this node in each store), as sources.
async fn select(ctx: &Context, given: &[String]) -> anyhow::Result<Vec<SnapshotSource>> {
    let stores = stores(ctx);
    if given.is_empty() {
        let mut out = Vec::new();
        for store in stores {
            let listing = store.list().await.with_context(|| format!("listing {}", store.describe()))?;
            let newest = listing
                .records
                .into_iter()
                .filter(|r| r.is_ready() && r.node_name == ctx.node_name)
                .max_by_key(|r| r.created_at);
            if let Some(r) = newest {
                let notes = listing.warnings.into_iter().filter(|w| w.contains(r.name.as_str())).collect();
                out.push(SnapshotSource::from_listed(store, r, notes)?);
            }
        }
        return Ok(out);
    }
    let mut out = Vec::new();
    for g in given {
        if g.contains('/') {
            out.push(SnapshotSource::from_path(Path::new(g))?);
            continue;
        }
        let name = SnapshotName::parse(g).with_context(|| format!("{g:?} is neither a path nor a snapshot name"))?;
        out.push(find(&stores, &name).await?);
    }
    Ok(out)
}

/// The local store first, then S3: a name is drilled where a restore would take it from.
async fn find(stores: &[Arc<dyn SnapshotStore>], name: &SnapshotName) -> anyhow::Result<SnapshotSource> {
    let mut misses = Vec::new();
    for store in stores {
        match store.exists(name).await {
            Ok(true) => return Ok(SnapshotSource::from_store(store.clone(), name).await?),
            Ok(false) => misses.push(store.describe()),
            Err(e) => misses.push(format!("{} ({e})", store.describe())),
        }
    }
    bail!("snapshot {name} not found in {}", misses.join(", "))
}

fn stores(ctx: &Context) -> Vec<Arc<dyn SnapshotStore>> {
    let mut out: Vec<Arc<dyn SnapshotStore>> = Vec::new();
    if let Some(local) = &ctx.local {
        out.push(Arc::new(local.clone()));
    }
    if let Some(remote) = &ctx.remote {
        out.push(remote.clone());
    }
    out
}

fn print(reports: &[DrillReport], format: OutputFormat) -> anyhow::Result<()> {
    match format {
        OutputFormat::Table => {
            let cells = output::Cells::for_stdout();
            let mut rows =
                vec![["Name", "Location", "Level", "Revision", "HashKV", "Took", "Result"].map(String::from).to_vec()];
            for r in reports {
                rows.push(vec![
                    r.record.name.to_string(),
                    cells.location(&r.record.location),
                    format!("{:?}", r.level).to_lowercase(),
                    r.revision.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
                    r.computed.map(|h| h.hash.to_string()).unwrap_or_else(|| "-".into()),
                    format!("{:.1}s", r.duration.as_secs_f64()),
                    r.verdict().to_string(),
                ]);
            }
            print!("{}", output::table(&rows));
            for r in reports {
                for n in &r.notes {
                    println!("note: {}: {n}", r.record.name);
                }
            }
            let failed = reports.iter().filter(|r| !r.passed()).count();
            println!("{} drilled, {failed} failed.", reports.len());
        }
        format => {
            let items: Vec<serde_json::Value> = reports.iter().map(json).collect();
            output::print_structured(&serde_json::json!({ "items": items }), format)?;
        }
    }
    Ok(())
}

fn json(r: &DrillReport) -> serde_json::Value {
    serde_json::json!({
        "name": r.record.name.as_str(),
        "location": r.record.location,
        "createdAt": rfc3339(r.record.created_at),
        "level": r.level,
        "passed": r.passed(),
        "result": r.verdict(),
        "problems": r.problems,
        "notes": r.notes,
        "revision": r.revision,
        "recordedHashKV": r.recorded,
        "computedHashKV": r.computed,
        "hashedBy": r.hashed_by,
        "recordedKubernetesKeys": r.record.etcd.as_ref().and_then(|e| e.kubernetes_keys),
        "booted": r.booted.as_ref().map(|b| serde_json::json!({
            "version": b.version, "revision": b.revision, "hashKV": b.hash, "kubernetesKeys": b.kubernetes_keys,
        })),
        "seconds": r.duration.as_secs_f64(),
    })
}
