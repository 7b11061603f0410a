//! `etcdsnap kit NAME|PATH --decrypt-identity FILE --out DIR`: a sealed snapshot's restore kit,
//! opened and written back: the server token (`DIR/token`) and the files kept at save time
//! (`DIR/files/<absolute path>`), each with its mode. Nothing is replaced: a file already there
//! stops the command.

use crate::cli::flags::SnapshotFlags;
use crate::cli::output::{emit, print_structured};
use crate::cli::seal::UnsealArgs;
use crate::cli::{help, resolve};
use anyhow::{Context as _, bail};
use clap::Args;
use etcdsnap::restore::SnapshotSource;
use etcdsnap::session::Purpose;
use etcdsnap_api::SnapshotName;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Args)]
#[command(
    after_help = EXAMPLES,
    mut_args(help::unused(help::READER_UNUSED)),
    mut_args(help::no_wide)
)]
pub struct KitArgs {
    /// The snapshot whose kit to open: a name as `ls` shows it (looked up locally, then in S3),
    /// or a file path (anything containing a `/`).
    #[arg(value_name = "NAME|PATH")]
    pub snapshot: String,
    /// Directory to write the kit into (created 0700 when missing; nothing in it is replaced).
    #[arg(long, value_name = "DIR", required = true)]
    pub out: PathBuf,
    #[command(flatten)]
    pub unseal: UnsealArgs,
    #[command(flatten)]
    pub flags: SnapshotFlags,
}

const EXAMPLES: &str = "Examples:
  # The token, certificates and EncryptionConfiguration kept with a sealed snapshot
  etcdsnap kit on-demand-node-1-1700000000.zst.age --decrypt-identity /root/etcd.agekey --out /root/kit

  # From S3, its record's signature checked first
  etcdsnap kit etcd-snapshot-node-1-1700000000.age --s3 --s3-bucket backups \\
    --decrypt-identity /root/etcd.agekey --verify-key /etc/etcdsnap/sign.pub --out /root/kit
";

/// What was written, for `-o json|yaml`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct KitView {
    snapshot: String,
    written: Vec<Written>,
}

#[derive(Serialize)]
struct Written {
    path: PathBuf,
    mode: String,
}

pub async fn run(args: KitArgs) -> anyhow::Result<ExitCode> {
    let keys = crate::cli::seal::open_keys(&args.unseal)?;
    if keys.identity.is_none() {
        bail!("a restore kit is sealed: pass --decrypt-identity with the age identity file of one of its recipients");
    }
    let mut source = find(&args).await?;
    let store = source.companions()?;
    if let Some(signed) = etcdsnap::seal::check_signature(&keys, store.as_ref(), &source.record.name)
        .await
        .with_context(|| format!("{}: signature", source.record.name))?
    {
        source.record.apply_document(signed);
    }
    let name = source.record.name.clone();
    let Some(kit) = source.record.sealed.as_ref().and_then(|s| s.kit.clone()) else {
        bail!("snapshot {name} has no restore kit (it was not sealed, or saved with nothing to keep)");
    };
    let contents = etcdsnap::seal::open_kit(&keys, store.as_ref(), &name, &kit).await?;
    let out = args.out.clone();
    let written = tokio::task::spawn_blocking(move || contents.write_to(&out)).await??;
    let view = KitView {
        snapshot: name.to_string(),
        written: written.iter().map(|p| Written { path: p.clone(), mode: mode_of(p) }).collect(),
    };
    let format = args.flags.output.output;
    if format.is_table() {
        let mut text = format!("Restore kit of {name}, written into {}:\n", args.out.display());
        for w in &view.written {
            text.push_str(&format!("  {} {}\n", w.mode, w.path.display()));
        }
        emit(&text)?;
    } else {
        print_structured(&view, format)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn mode_of(path: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).map(|m| format!("{:04o}", m.permissions().mode() & 0o7777)).unwrap_or_default()
}

/// A path, or a name in the snapshot directory, then in S3.
async fn find(args: &KitArgs) -> anyhow::Result<SnapshotSource> {
    if args.snapshot.contains('/') {
        return Ok(SnapshotSource::from_path(Path::new(&args.snapshot))?);
    }
    let name = SnapshotName::parse(&args.snapshot)
        .with_context(|| format!("{:?} is neither a path nor a snapshot name", args.snapshot))?;
    let session = resolve::command_session(&args.flags, false).await?;
    let ctx = session.context(Purpose::Read).await;
    let mut misses = Vec::new();
    for store in ctx.shared_stores() {
        match store.exists(&name).await {
            Ok(true) => return Ok(SnapshotSource::from_store(store, &name).await?),
            Ok(false) => misses.push(store.describe()),
            Err(e) => misses.push(format!("{} ({e})", store.describe())),
        }
    }
    bail!("snapshot {name} not found in {}", if misses.is_empty() { ctx.describe_stores() } else { misses.join(", ") })
}
