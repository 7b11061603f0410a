//! `etcdsnap crd`: the ETCDSnapshotFile CRD as YAML, or installed with `--install`.

use crate::cli::flags::KubeArgs;
use crate::cli::output::emit;
use crate::cli::{help, resolve};
use clap::Args;
use etcdsnap_kube::crd::{crd_yaml, ensure_crd};
use std::process::ExitCode;

#[derive(Debug, Args)]
#[command(after_help = EXAMPLES, mut_args(help::unused(&[help::KUBE_DUTIES, help::SAVE_ONLY, &["s3_config_secret"]])))]
pub struct CrdArgs {
    /// Install or upgrade the CRD in the cluster (and wait until it is Established) instead of
    /// printing it.
    #[arg(long, conflicts_with = "no_kube")]
    pub install: bool,
    #[command(flatten)]
    pub kube: KubeArgs,
}

const EXAMPLES: &str = "Examples:
  # The CRD as YAML, for kubectl or a GitOps repository
  etcdsnap crd > etcdsnapshotfiles.yaml

  # Installed or upgraded in the cluster of a kubeconfig
  etcdsnap crd --install --kubeconfig /etc/rancher/k3s/k3s.yaml
";

pub async fn run(args: CrdArgs) -> anyhow::Result<ExitCode> {
    if !args.install {
        emit(&crd_yaml())?;
        return Ok(ExitCode::SUCCESS);
    }
    let kube = resolve::kube_only(&args.kube, "installing the CRD").await?;
    let outcome = ensure_crd(&kube.client).await?;
    emit(&format!("CRD {}: {outcome:?}\n", etcdsnap_api::consts::CRD_NAME))?;
    Ok(ExitCode::SUCCESS)
}
