//! `restore-check` records its verdict as an Event on the snapshot's resource: Verified while the
//! cluster holds the snapshot's key space, Failed (naming the resource type) once it does not.

use crate::common::{TestResult, files_in, run, s};
use etcdsnap_api::ETCDSnapshotFile;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};
use testenv::{Etcd, KubeApiServer};

#[tokio::test]
async fn restore_check_records_its_verdict_on_the_snapshot_s_resource() -> TestResult {
    let etcd = Etcd::single().await?;
    let api = KubeApiServer::start(&etcd).await?;
    let data = tempfile::tempdir()?;
    let (dd, kubeconfig, endpoints) = (s(data.path()), s(api.kubeconfig_path()), etcd.endpoints().join(","));
    let env = [("KUBECONFIG", kubeconfig.as_str()), ("HOME", "/nonexistent")];
    let mut client = etcd.client().await?;
    client.put("/registry/pods/default/web", "{}", None).await?;
    run(&["save", "--data-dir", &dd, "--node-name", "node-1", "--endpoints", &endpoints], &env).await.expect_ok();
    let name = files_in(&data.path().join("snapshots")).into_iter().next().ok_or("no snapshot")?;
    let resources: Api<ETCDSnapshotFile> = Api::all(api.client().await?);
    let cr = resources.list(&ListParams::default()).await?.items.into_iter().next().ok_or("no resource")?;
    let cr_name = cr.metadata.name.clone().ok_or("unnamed")?;

    let snaps = s(&data.path().join("snapshots"));
    let check = ["restore-check", &name, "--dir", &snaps, "--endpoints", &endpoints, "--wait", "10s"];
    let out = run(&check, &env).await.expect_ok();
    assert!(out.stdout.contains("Verified"), "{}", out.stdout);
    client.put("/registry/pods/default/extra", "{}", None).await?;
    let out = run(&check, &env).await.expect_fail();
    assert!(out.stdout.contains("pods 1≠2"), "{}", out.stdout);

    let events: Api<Event> = Api::namespaced(api.client().await?, "default");
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(cr_name.as_str()))
        .filter_map(|e| e.reason)
        .collect();
    assert!(reasons.iter().any(|r| r == "ETCDSnapshotRestoreVerified"), "{reasons:?}");
    assert!(reasons.iter().any(|r| r == "ETCDSnapshotRestoreFailed"), "{reasons:?}");
    Ok(())
}
