//! The Event `restore-check` records on the snapshot's ETCDSnapshotFile when Kubernetes answers:
//! `ETCDSnapshotRestoreVerified`, or `ETCDSnapshotRestoreFailed` with what failed. A cluster
//! without Kubernetes (plain etcd), or one whose resource is gone, gets none; that never changes
//! the verdict.

use crate::cli::flags::KubeArgs;
use crate::cli::resolve;
use etcdsnap::restore::cluster_check::ClusterCheck;
use etcdsnap_api::ETCDSnapshotFile;
use etcdsnap_kube::Kube;
use etcdsnap_kube::events::emit_described;
use etcdsnap_storage::SnapshotRecord;
use kube::Api;

pub const EVENT_RESTORE_VERIFIED: &str = "ETCDSnapshotRestoreVerified";
pub const EVENT_RESTORE_FAILED: &str = "ETCDSnapshotRestoreFailed";

/// Records the verdict on the record's resource; every failure is logged and forgotten.
pub async fn record(args: &KubeArgs, record: &SnapshotRecord, report: &ClusterCheck) {
    let Ok(program) = resolve::machine_program() else { return };
    let kube = match Kube::connect(&resolve::kube_connect(args), resolve::kube_settings(args, "", program)).await {
        Ok(Some(kube)) => kube,
        Ok(None) => return,
        Err(e) => return tracing::info!(error = %e, "no Event recorded: Kubernetes is not reachable"),
    };
    let api: Api<ETCDSnapshotFile> = Api::all(kube.client.clone());
    let cr = match api.get_opt(&record.cr_name()).await {
        Ok(Some(cr)) => cr,
        Ok(None) => {
            return tracing::info!(resource = %record.cr_name(), "no Event recorded: the snapshot has no resource");
        }
        Err(e) => return tracing::info!(error = %e, "no Event recorded: Kubernetes is not reachable"),
    };
    let described = match report.ok {
        true => ("Normal", EVENT_RESTORE_VERIFIED, format!("Restore of snapshot {} verified", record.name)),
        false => (
            "Warning",
            EVENT_RESTORE_FAILED,
            format!("Restore of snapshot {} failed its check: {}", record.name, report.failures().join("; ")),
        ),
    };
    let node = hostname();
    emit_described(&kube.client, &cr, described, &node).await;
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}
