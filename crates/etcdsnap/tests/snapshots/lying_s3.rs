//! Storage that fails closed: an S3 endpoint behind a proxy that lies. An HTML page sent as 200, a
//! listing cut in half, 503 SlowDown, a reset connection and a 30 s stall each either pass on a
//! retry or fail the listing; none of them reads as an empty bucket, so no resource is deleted
//! and no snapshot re-uploaded because of it. Real etcd, API server and S3 server; the lies come
//! from `testenv::LyingS3Proxy` in front of S3.

use crate::common::etcd::etcd_with_objects;
use crate::common::{Run, TestResult, files_in, run, s};
use etcdsnap_api::ETCDSnapshotFile;
use kube::api::{Api, ListParams};
use std::collections::BTreeSet;
use std::time::Duration;
use testenv::{KubeApiServer, Lie, LyingS3Proxy, S3Server};

const BUCKET: &str = "lies";

struct Env(Vec<(String, String)>);

impl Env {
    async fn run(&self, args: &[&str]) -> Run {
        let env: Vec<(&str, &str)> = self.0.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run(args, &env).await
    }
}

async fn resource_names(client: &kube::Client) -> Result<BTreeSet<String>, kube::Error> {
    let crs: Api<ETCDSnapshotFile> = Api::all(client.clone());
    Ok(crs.list(&ListParams::default()).await?.items.into_iter().filter_map(|c| c.metadata.name).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_listing_never_deletes_a_resource_nor_re_uploads_a_snapshot() -> TestResult {
    let etcd = etcd_with_objects(200).await?;
    let api = KubeApiServer::start(&etcd).await?;
    let client = api.client().await?;
    let s3 = S3Server::with_bucket(BUCKET).await?;
    let proxy = LyingS3Proxy::start(&s3.url()).await?;
    let data = tempfile::tempdir()?;
    let mut env = Env(vec![
        ("ETCDSNAP_ENDPOINTS".into(), etcd.endpoints().join(",")),
        ("ETCDSNAP_NODE_NAME".into(), "node-1".into()),
        ("ETCDSNAP_DATA_DIR".into(), s(data.path())),
        ("ETCDSNAP_KUBECONFIG".into(), s(api.kubeconfig_path())),
    ]);
    env.0.extend(s3.etcdsnap_env(BUCKET));
    // The lies come from the proxy, in front of the server.
    env.0.retain(|(k, _)| k != "ETCDSNAP_S3_ENDPOINT");
    env.0.push(("ETCDSNAP_S3_ENDPOINT".into(), proxy.endpoint()));
    env.0.push(("ETCDSNAP_S3_TIMEOUT".into(), "3s".into()));
    for _ in 0..3 {
        env.run(&["save"]).await.expect_ok();
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let saved: Vec<String> = files_in(&data.path().join("snapshots"));
    assert_eq!(saved.len(), 3);
    // S3 resources younger than a minute are protected anyway; these must be past that, or an
    // empty listing could not delete them and the test would prove nothing.
    tokio::time::sleep(etcdsnap_kube::reconcile::NEW_S3_GRACE + Duration::from_secs(1)).await;
    env.run(&["reconcile"]).await.expect_ok();
    let baseline = resource_names(&client).await?;
    assert_eq!(baseline.len(), 6, "3 local and 3 S3 resources: {baseline:?}");
    let audit_start = api.audit_events()?.len();
    let log_start = proxy.log().len();

    let lies = [Lie::HtmlOk, Lie::TruncatedList, Lie::SlowDown, Lie::Reset, Lie::Stall(Duration::from_secs(30))];
    for lie in lies {
        // Told once: the call is retried, and the retry gets the truth.
        let before = resource_names(&client).await?;
        proxy.lie_to_next_lists(lie, 1);
        let out = env.run(&["reconcile"]).await.expect_ok();
        assert_eq!(proxy.lies_left(), 0, "{lie:?} was never told");
        let retried = !out.stderr.contains("its resources are left unchanged");
        if !matches!(lie, Lie::Stall(_)) {
            assert!(retried, "{lie:?} told once was not retried to success:\n{}", out.stderr);
            assert!(out.stdout.contains("0 created, 0 updated, 0 deleted"), "{lie:?}:\n{}", out.stdout);
        }
        assert_eq!(resource_names(&client).await?, before, "{lie:?} once: resources changed");

        // Told every time: the listing fails, says so, and changes nothing.
        proxy.lie_to_next_lists(lie, 1000);
        let out = env.run(&["reconcile"]).await.expect_ok();
        assert!(
            out.stderr.contains("its resources are left unchanged"),
            "{lie:?} every time: no listing failure reported:\n{}",
            out.stderr
        );
        assert_eq!(resource_names(&client).await?, before, "{lie:?} every time: resources changed");
        // A save's catch-up would re-upload every local snapshot it believed missing from S3.
        let out = env.run(&["save"]).await;
        assert!(
            out.stderr.contains("catch-up uploads skipped") || out.stdout.contains("catch-up uploads skipped"),
            "{lie:?}: the catch-up did not say it was skipped:\n{}\n{}",
            out.stdout,
            out.stderr
        );
        proxy.tell_the_truth();
    }

    let reuploads: Vec<_> = proxy.log()[log_start..]
        .iter()
        .filter(|p| p.method == "PUT" || p.method == "POST")
        .filter(|p| saved.iter().any(|name| p.target.contains(name.as_str())))
        .cloned()
        .collect();
    assert!(reuploads.is_empty(), "snapshots re-uploaded while S3 lied: {reuploads:#?}");
    let deletes: Vec<_> = api.audit_events()?[audit_start..]
        .iter()
        .filter(|e| e.resource == "etcdsnapshotfiles" && e.verb == "delete")
        .cloned()
        .collect();
    assert!(deletes.is_empty(), "resources deleted while S3 lied: {deletes:#?}");

    // The truth again: everything is still there, and the saves made meanwhile are indexed.
    let out = env.run(&["reconcile"]).await.expect_ok();
    assert!(out.stdout.contains(" 0 deleted"), "{}", out.stdout);
    let after = resource_names(&client).await?;
    assert!(after.is_superset(&baseline), "lost: {:?}", baseline.difference(&after).collect::<Vec<_>>());
    Ok(())
}
