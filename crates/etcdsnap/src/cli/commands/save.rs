//! `etcdsnap save`: a snapshot now, then what follows every save (resources, catch-up uploads).

use crate::cli::flags::SnapshotFlags;
use crate::cli::progress::ProgressLine;
use crate::cli::seal::{self, EncryptionConfigArg, SealArgs};
use crate::cli::{exit, help, output, resolve};
use clap::Args;
use etcdsnap::ops::{self, SaveError, SaveOptions};
use etcdsnap::session::{AfterSave, CatchUp, KubePolicy, Purpose, Session};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The exit code of a command stopped by Ctrl-C (128 + SIGINT, as shells report it).
const INTERRUPTED: u8 = 130;

#[derive(Debug, Args)]
#[command(after_help = EXAMPLES, mut_args(help::unused(&[help::KUBE_DUTIES, help::RETENTION])), mut_args(help::no_wide))]
pub struct SaveArgs {
    #[command(flatten)]
    pub flags: SnapshotFlags,
    #[command(flatten)]
    pub seal: SealArgs,
    #[command(flatten)]
    pub encryption: EncryptionConfigArg,
}

const EXAMPLES: &str = "Examples:
  # A snapshot of the local etcd into the default directory (on a K3s or RKE2 server: its own)
  etcdsnap save

  # Compressed with zstd, also uploaded to S3, under another base name
  etcdsnap save --name before-upgrade --compress zstd --s3 --s3-bucket backups --s3-folder prod

  # K3s's own command line works unchanged
  etcdsnap save --etcd-snapshot-compress --etcd-s3 --etcd-s3-bucket backups

  # Sealed with age to two recipients, its record signed, the etcd certificates kept in its kit
  etcdsnap save --encrypt-to age1... --encrypt-to age1... --sign-key /etc/etcdsnap/sign.key \\
    --kit-file /etc/kubernetes/pki/etcd

  # From a remote member with mutual TLS, the saved records as JSON
  etcdsnap save --endpoints https://10.0.0.5:2379 --cacert ca.crt --cert client.crt --key client.key -o json
";

/// How many of the newest snapshots of a name an on-demand save uploads when earlier uploads of
/// them failed (K3s's default retention; `etcdsnap prune` trims what is kept beyond it).
const SAVE_CATCH_UP_KEEP: usize = 5;

pub async fn run(args: SaveArgs) -> anyhow::Result<ExitCode> {
    let flags = &args.flags;
    let node = &flags.node;
    let mut config = resolve::session_config(node, flags.retention.s3_retention, true, KubePolicy::OneShot)?;
    config.token_hash = resolve::node_token_hash(node)?;
    let preset = resolve::preset(&node.storage)?;
    let token = resolve::server_token(&node.token, preset.as_ref())?.map(|(t, _)| t);
    config.sealing = seal::sealing(&args.seal, &args.encryption, token, preset.as_ref())?;
    let session = Session::open(config).await?;
    let ctx = session.context(Purpose::Save).await;
    let progress = ProgressLine::start("Saving snapshot");
    let options = SaveOptions {
        base_name: flags.name.clone(),
        compression: resolve::compression(&node.compress),
        cancel: Default::default(),
    };
    let saved = Arc::new(AtomicBool::new(false));
    let _interrupt = on_interrupt(options.cancel.clone(), saved.clone());
    let result = ops::save(&ctx, &options, Some(progress.counter())).await;
    saved.store(true, Ordering::SeqCst);
    progress.finish();
    let report = match result {
        Err(SaveError::Cancelled) => {
            eprintln!("interrupted: no snapshot saved");
            return Ok(ExitCode::from(INTERRUPTED));
        }
        other => other?,
    };
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

/// Ctrl-C while the snapshot is taken cancels it cleanly (nothing is published, no partial
/// file or upload stays); once it is saved, ends the command at once, saying what is missing.
fn on_interrupt(cancel: CancellationToken, saved: Arc<AtomicBool>) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        if !saved.load(Ordering::SeqCst) {
            return cancel.cancel();
        }
        eprintln!("interrupted: the snapshot was saved; `etcdsnap reconcile` writes any resource that is missing");
        std::process::exit(INTERRUPTED.into());
    }))
}

/// A task that stops when its handle is dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
