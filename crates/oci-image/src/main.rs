//! `oci-image`: a root file system directory in, an OCI image archive out. No daemon, no registry.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use oci_image::{ImageSettings, PathOverride, build_image, oci_architecture};

/// Writes a reproducible single-layer OCI image archive (an `oci-archive:` tar) of etcdsnap from a
/// root file system directory.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The root file system to pack: becomes `/` in the image.
    #[arg(long)]
    rootfs: PathBuf,

    /// Where to write the archive; replaced atomically.
    #[arg(long, short)]
    output: PathBuf,

    /// The image's version label (`org.opencontainers.image.version`).
    #[arg(long)]
    image_version: String,

    /// The source commit (`org.opencontainers.image.revision`).
    #[arg(long, default_value = "unknown")]
    revision: String,

    /// The name in index.json (`org.opencontainers.image.ref.name`) [default: etcdsnap:VERSION].
    #[arg(long)]
    ref_name: Option<String>,

    /// The image's description label.
    #[arg(long)]
    description: Option<String>,

    /// Every mtime in the layer and the image's creation time, in seconds since 1970.
    #[arg(long, env = "SOURCE_DATE_EPOCH", default_value_t = 0)]
    source_date_epoch: u64,

    /// CPU architecture (OCI or Rust name) [default: this machine's].
    #[arg(long)]
    arch: Option<String>,

    /// PATH=UID:GID: an owner other than 0:0 for one path (repeatable; replaces the default).
    #[arg(long = "owner", value_name = "PATH=UID:GID", default_values = ["/var/lib/etcdsnap=65532:65532"])]
    owners: Vec<String>,

    /// PATH=MODE: an octal mode other than the one on disk (repeatable; replaces the default).
    #[arg(long = "mode", value_name = "PATH=MODE", default_values = ["/tmp=1777"])]
    modes: Vec<String>,
}

fn run(args: Args) -> anyhow::Result<()> {
    let mut settings = ImageSettings::etcdsnap(&args.image_version, &args.revision)?;
    if let Some(arch) = &args.arch {
        settings.architecture = oci_architecture(arch)?.to_string();
    }
    if let Some(name) = args.ref_name {
        settings.ref_name = name;
    }
    if let Some(description) = args.description {
        settings.description = description;
    }
    settings.source_date_epoch = args.source_date_epoch;
    settings.overrides = args
        .owners
        .iter()
        .map(|s| PathOverride::parse_owner(s))
        .chain(args.modes.iter().map(|s| PathOverride::parse_mode(s)))
        .collect::<Result<_, _>>()?;

    let built = build_image(&args.rootfs, &args.output, &settings)
        .with_context(|| format!("writing the image {} from {}", args.output.display(), args.rootfs.display()))?;
    println!(
        "{}: {} {} ({} files, layer {} bytes)",
        args.output.display(),
        built.ref_name,
        built.manifest_digest,
        built.layer.entries,
        built.layer.size
    );
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("oci-image: {err:#}");
            ExitCode::FAILURE
        }
    }
}
