//! `etcdsnap crd`: the ETCDSnapshotFile CRD as YAML, or installed with `--install`.

use crate::cli::flags::KubeArgs;
use crate::cli::resolve;
use clap::Args;
use etcdsnap_kube::crd::{crd_yaml, ensure_crd};
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct CrdArgs {
    /// Install or upgrade the CRD in the cluster (and wait until it is Established) instead of
    /// printing it.
    #[arg(long)]
    pub install: bool,
    #[command(flatten)]
    pub kube: KubeArgs,
}

pub async fn run(args: CrdArgs) -> anyhow::Result<ExitCode> {
    if !args.install {
        print!("{}", crd_yaml());
        return Ok(ExitCode::SUCCESS);
    }
    let kube = resolve::kube_only(&args.kube, "installing the CRD").await?;
    let outcome = ensure_crd(&kube.client).await?;
    println!("CRD {}: {outcome:?}", etcdsnap_api::consts::CRD_NAME);
    Ok(ExitCode::SUCCESS)
}
