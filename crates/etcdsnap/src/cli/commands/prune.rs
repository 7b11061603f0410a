//! `etcdsnap prune`: retention applied now (or, with `--dry-run`, what each store's rule keeps
//! and removes), then the removed snapshots' resources.

use crate::cli::flags::{OutputFormat, SnapshotFlags};
use crate::cli::output::{emit, print_structured, prune as view};
use crate::cli::{exit, help, resolve};
use clap::Args;
use etcdsnap::ops::{self, PruneOptions};
use etcdsnap::session::Purpose;
use std::process::ExitCode;

#[derive(Debug, Args)]
#[command(
    after_help = EXAMPLES,
    mut_args(help::unused(&[help::ETCD, help::TOKEN, help::COMPRESS, help::KUBE_DUTIES, help::SAVE_ONLY])),
    mut_args(help::no_wide)
)]
pub struct PruneArgs {
    /// Say what each store's rule keeps and removes, and remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub flags: SnapshotFlags,
}

const EXAMPLES: &str = "Examples:
  # What keeping the 3 newest on-demand snapshots would remove, without removing anything
  etcdsnap prune --retention 3 --dry-run

  # Keep the 3 newest on-demand snapshots (K3s's spelling works too)
  etcdsnap prune --snapshot-retention 3

  # The agent's scheduled snapshots, locally and in S3 (S3 counts this node's, of this cluster)
  etcdsnap prune --name etcd-snapshot --retention 5 --s3 --s3-bucket backups

  # restic's rules: the newest 3, one a day for a week, one a week for a month (UTC), and
  # which rule keeps each snapshot
  etcdsnap prune --name etcd-snapshot --keep-last 3 --keep-daily 7 --keep-weekly 4 --dry-run
";

pub async fn run(args: PruneArgs) -> anyhow::Result<ExitCode> {
    let flags = &args.flags;
    let session = resolve::command_session(flags, false).await?;
    let ctx = session.context(Purpose::Write).await;
    let missing = ctx.missing_local_error();
    if let Some(w) = ctx.missing_local_warning() {
        tracing::warn!("{w}");
    }
    if let Some(e) = &missing
        && ctx.stores().is_empty()
    {
        anyhow::bail!("{e}");
    }
    let options = PruneOptions {
        base_name: flags.name.clone(),
        keep_local: flags.retention.policy(),
        keep_remote: flags.retention.s3_policy(ctx.s3_retention),
        dry_run: args.dry_run,
    };
    let report = ops::prune(&ctx, &options).await;
    match flags.output.output {
        OutputFormat::Table | OutputFormat::Wide if args.dry_run => emit(&view::preview_text(&report))?,
        OutputFormat::Table | OutputFormat::Wide => emit(&view::deleted_text(&report))?,
        format => print_structured(&view::PruneView::new(&report, args.dry_run), format)?,
    }
    for e in missing.iter().map(ToString::to_string).chain(report.errors.iter().map(ToString::to_string)) {
        eprintln!("error: {e}");
    }
    if !args.dry_run {
        session.after_removal(&ctx, &report.deleted).await;
    }
    // Replicas: what they miss is copied, then their own retention applies (not in a dry run).
    let mut replicas_ok = true;
    if !args.dry_run {
        for status in etcdsnap::session::replicate(&ctx, Some(&options)).await {
            if flags.output.output.is_table() {
                let removed: String =
                    status.removed.iter().map(|name| format!("Removed {name} from replica {}\n", status.url)).collect();
                emit(&removed)?;
            }
            for e in &status.errors {
                eprintln!("error: {e}");
            }
            replicas_ok &= status.errors.is_empty();
        }
    }
    Ok(exit(report.errors.is_empty() && missing.is_none() && replicas_ok))
}
