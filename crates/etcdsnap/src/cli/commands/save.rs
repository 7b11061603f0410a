//! `etcdsnap save`: a snapshot now, then what follows every save (resources, catch-up uploads).

use crate::cli::flags::SnapshotFlags;
use crate::cli::progress::ProgressLine;
use crate::cli::{exit, output, resolve};
use clap::Args;
use etcdsnap::ops::{self, SaveOptions};
use etcdsnap::session::{AfterSave, CatchUp, KubePolicy, Purpose, Session};
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct SaveArgs {
    #[command(flatten)]
    pub flags: SnapshotFlags,
}

/// How many of the newest snapshots of a name an on-demand save uploads when earlier uploads of
/// them failed (K3s's default retention; `etcdsnap prune` trims what is kept beyond it).
const SAVE_CATCH_UP_KEEP: usize = 5;

pub async fn run(args: SaveArgs) -> anyhow::Result<ExitCode> {
    let flags = &args.flags;
    let node = &flags.node;
    let mut config = resolve::session_config(node, flags.retention.s3_retention, true, KubePolicy::OneShot)?;
    config.token_hash = resolve::node_token_hash(node)?;
    let session = Session::open(config).await?;
    let ctx = session.context(Purpose::Save).await;
    let progress = ProgressLine::start("Saving snapshot");
    let options = SaveOptions {
        base_name: flags.name.clone(),
        compression: resolve::compression(&node.compress),
        cancel: Default::default(),
    };
    let result = ops::save(&ctx, &options, Some(progress.counter())).await;
    progress.finish();
    let report = result?;
    // S3 answers again: upload what earlier saves of this name kept only locally. No verify and
    // no prune: `save` never prunes, like K3s.
    let steps = AfterSave {
        verify: false,
        catch_up: Some(CatchUp { base_name: flags.name.clone(), keep: SAVE_CATCH_UP_KEEP, only_after_upload: true }),
        prune: None,
    };
    let after = session.after_save(&ctx, &report, &steps, &()).await;
    let printed: Vec<_> = report.records.iter().chain(&after.uploaded).cloned().collect();
    output::save::print(&printed, report.duration, flags.output.output)?;
    Ok(exit(report.all_ready()))
}
