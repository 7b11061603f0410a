//! Proves that each test server is the real thing: these behaviours come from etcd, the
//! kube-apiserver and versitygw themselves, not from anything in this repository.
// Helpers of an integration test may panic too: clippy.toml allows it in #[test] functions only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, PostParams};
use kube::discovery::ApiResource;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use std::collections::BTreeMap;
use std::time::Duration;
use testenv::{Azurite, Etcd, GcsServer, KubeApiServer, S3Server};

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_put_get() -> TestResult {
    let etcd = Etcd::single().await?;
    let mut client = etcd.client().await?;
    client.put("/smoke/key", "value", None).await?;
    let resp = client.get("/smoke/key", None).await?;
    assert_eq!(resp.kvs()[0].value_str()?, "value");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_cluster_survives_losing_its_leader() -> TestResult {
    let mut etcd = Etcd::cluster(3).await?;
    let mut client = etcd.client().await?;
    client.put("/smoke/before", "1", None).await?;
    let leader = etcd.leader_index().await?;
    etcd.kill(leader);
    // The two survivors elect a new leader and keep accepting writes.
    let survivor = etcd.members().iter().enumerate().find(|(i, _)| *i != leader).map(|(_, m)| m.client_url.clone());
    let mut client =
        etcd_client::Client::connect([survivor.ok_or("no survivor")?], Some(etcd.connect_options())).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match client.put("/smoke/after", "2", None).await {
            Ok(_) => break,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("waiting for a new leader: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let resp = client.get("/smoke/before", None).await?;
    assert_eq!(resp.kvs()[0].value_str()?, "1");
    assert_ne!(etcd.leader_index().await?, leader);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_mtls_requires_a_client_certificate() -> TestResult {
    let etcd = Etcd::cluster_tls(1).await?;
    assert!(etcd.endpoints()[0].starts_with("https://"));
    let mut client = etcd.client().await?;
    client.put("/smoke/tls", "ok", None).await?;

    // Same CA, no client certificate: the server refuses the request.
    let tls = etcd.client_tls().ok_or("no tls")?;
    let ca = std::fs::read(&tls.ca)?;
    let options = etcd_client::ConnectOptions::new()
        .with_timeout(Duration::from_secs(5))
        .with_tls(etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(ca)));
    let result = async {
        let mut c = etcd_client::Client::connect(etcd.endpoints(), Some(options)).await?;
        c.get("/smoke/tls", None).await
    }
    .await;
    assert!(result.is_err(), "a client without certificate must be refused");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_enforces_the_1mib_object_limit() -> TestResult {
    let etcd = Etcd::single().await?;
    let api = KubeApiServer::start(&etcd).await?;
    let client = api.client().await?;
    let cms: Api<ConfigMap> = Api::namespaced(client, "kube-system");

    let cm = |name: &str, bytes: usize| ConfigMap {
        metadata: kube::api::ObjectMeta { name: Some(name.into()), ..Default::default() },
        data: Some(BTreeMap::from([("k".to_string(), "x".repeat(bytes))])),
        ..Default::default()
    };
    let err = cms.create(&PostParams::default(), &cm("too-big", 1024 * 1024 + 1)).await.err().ok_or("accepted")?;
    // Kubernetes <= 1.33 says "Too long: must have at most 1048576 bytes"; 1.34+ says
    // "Too long: may not be more than 1048576 bytes". Both carry reason FieldValueTooLong.
    let kube::Error::Api(status) = &err else {
        return Err(format!("unexpected error: {err}").into());
    };
    assert_eq!(status.code, 422);
    assert!(status.message.contains("Too long") && status.message.contains("1048576 bytes"), "{}", status.message);
    let causes = status.details.as_ref().map(|d| d.causes.clone()).unwrap_or_default();
    assert!(causes.iter().any(|c| c.reason == "FieldValueTooLong"), "{causes:?}");

    cms.create(&PostParams::default(), &cm("just-under", 1024 * 1024 - 1024)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_serves_custom_resources_and_enforces_rbac() -> TestResult {
    let etcd = Etcd::single().await?;
    let api = KubeApiServer::start(&etcd).await?;
    let client = api.client().await?;

    let crd: CustomResourceDefinition = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "widgets.smoke.test"},
        "spec": {
            "group": "smoke.test",
            "scope": "Cluster",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {"size": {"type": "integer"}}}}}}
            }]
        }
    }))?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &crd).await?;
    let established = kube::runtime::wait::await_condition(
        crds,
        "widgets.smoke.test",
        kube::runtime::wait::conditions::is_crd_established(),
    );
    tokio::time::timeout(Duration::from_secs(30), established).await??;

    let resource = ApiResource {
        group: "smoke.test".into(),
        version: "v1".into(),
        api_version: "smoke.test/v1".into(),
        kind: "Widget".into(),
        plural: "widgets".into(),
    };
    let widgets: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let obj: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "smoke.test/v1", "kind": "Widget",
        "metadata": {"name": "w1"}, "spec": {"size": 3}
    }))?;
    widgets.create(&PostParams::default(), &obj).await?;
    let back = widgets.get("w1").await?;
    assert_eq!(back.data["spec"]["size"], 3);

    // A service account with no role bindings can do nothing.
    let token = api.mint_service_account_token("smoke", "nobody").await?;
    let limited = api.client_for_token(&token).await?;
    let err = Api::<ConfigMap>::namespaced(limited.clone(), "kube-system").list(&Default::default()).await.err();
    assert!(matches!(err, Some(kube::Error::Api(ref s)) if s.code == 403), "expected 403, got {err:?}");
    let err = Api::<DynamicObject>::all_with(limited, &resource).get("w1").await.err();
    assert!(matches!(err, Some(kube::Error::Api(ref s)) if s.code == 403), "expected 403, got {err:?}");

    // And the audit log saw the requests.
    let events = api.audit_events()?;
    assert!(events.iter().any(|e| e.verb == "create" && e.resource == "widgets" && e.name == "w1"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_reads_the_test_kubeconfig() -> TestResult {
    let etcd = Etcd::single().await?;
    let api = KubeApiServer::start(&etcd).await?;
    let out = tokio::process::Command::new(testenv::testbin("kubectl")?)
        .arg(format!("--kubeconfig={}", api.kubeconfig_path().display()))
        .args(["get", "namespace", "kube-system", "-o", "name"])
        .output()
        .await?;
    assert!(out.status.success(), "kubectl failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "namespace/kube-system");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_objects_metadata_multipart_and_auth() -> TestResult {
    let s3 = S3Server::start().await?;
    s3.create_bucket("smoke").await?;
    s3.put_object("smoke", "dir/a", b"hello".to_vec(), &[("K3s-Node-Name", "node1")]).await?;
    let (body, meta) = s3.get_object("smoke", "dir/a").await?;
    assert_eq!(body, b"hello");
    assert!(meta.contains(&("k3s-node-name".to_string(), "node1".to_string())), "{meta:?}");
    assert_eq!(s3.list_keys("smoke", "dir/").await?, vec!["dir/a".to_string()]);

    // Multipart: two parts (the first at S3's 5 MiB minimum), completed, read back whole.
    let http = reqwest::Client::new();
    let url = url::Url::parse(&format!("{}/", s3.url()))?;
    let bucket = Bucket::new(url, UrlStyle::Path, "smoke", s3.region().to_string())?;
    let creds = Credentials::new(s3.access_key(), s3.secret_key());
    let create = bucket.create_multipart_upload(Some(&creds), "big");
    let resp = http.post(create.sign(Duration::from_secs(60))).send().await?.error_for_status()?.text().await?;
    let upload = rusty_s3::actions::CreateMultipartUpload::parse_response(&resp)?;
    assert_eq!(s3.list_multipart_uploads("smoke").await?.len(), 1, "an open upload is listed");
    let parts = [vec![b'a'; 5 * 1024 * 1024], vec![b'b'; 1000]];
    let mut etags = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let action = bucket.upload_part(Some(&creds), "big", (i + 1) as u16, upload.upload_id());
        let resp =
            http.put(action.sign(Duration::from_secs(60))).body(part.clone()).send().await?.error_for_status()?;
        etags.push(resp.headers()["etag"].to_str()?.to_string());
    }
    let complete =
        bucket.complete_multipart_upload(Some(&creds), "big", upload.upload_id(), etags.iter().map(String::as_str));
    http.post(complete.sign(Duration::from_secs(60))).body(complete.body()).send().await?.error_for_status()?;
    let (body, _) = s3.get_object("smoke", "big").await?;
    assert_eq!(body.len(), 5 * 1024 * 1024 + 1000);
    assert!(s3.list_multipart_uploads("smoke").await?.is_empty());

    // A wrong secret is refused.
    let bad = Credentials::new(s3.access_key(), "wrong-secret");
    let get = bucket.get_object(Some(&bad), "dir/a");
    let status = http.get(get.sign(Duration::from_secs(60))).send().await?.status();
    assert_eq!(status.as_u16(), 403);

    // The server's own access log counts what happened.
    let requests = s3.requests();
    assert!(requests.iter().any(|r| r.operation == "UploadPart" && r.key == "big"), "{requests:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_over_tls_with_its_own_ca() -> TestResult {
    let s3 = S3Server::start_tls().await?;
    assert!(s3.url().starts_with("https://"));
    s3.create_bucket("tls").await?;
    s3.put_object("tls", "k", b"v".to_vec(), &[]).await?;
    assert_eq!(s3.get_object("tls", "k").await?.0, b"v");

    // Without the CA the certificate is not trusted.
    let plain = reqwest::Client::new();
    assert!(plain.get(s3.url()).send().await.is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_objects_survive_a_restart() -> TestResult {
    let mut gcs = GcsServer::with_bucket("smoke").await?;
    gcs.put_object("smoke", "a/b", b"hello".to_vec()).await?;
    assert_eq!(gcs.get_object("smoke", "a/b").await?, b"hello");
    assert!(gcs.get_object("smoke", "a/missing").await.is_err());
    gcs.stop();
    assert!(gcs.list_names("smoke", "").await.is_err(), "a stopped server answers nothing");
    gcs.restart().await?;
    assert_eq!(gcs.list_names("smoke", "a/").await?, vec!["a/b".to_string()]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azurite_checks_shared_key_and_survives_a_restart() -> TestResult {
    let mut azurite = Azurite::with_container("smoke").await?;
    azurite.put_blob("smoke", "a/b", b"hello".to_vec()).await?;
    assert_eq!(azurite.get_blob("smoke", "a/b").await?, b"hello");
    // Unsigned, the same blob is refused: Azurite checks the Shared Key.
    let unsigned = reqwest::get(format!("{}/smoke/a/b", azurite.account_url())).await?;
    assert!(unsigned.status().is_client_error(), "unsigned GET answered {}", unsigned.status());
    azurite.stop();
    azurite.restart().await?;
    assert_eq!(azurite.list_names("smoke", "a/").await?, vec!["a/b".to_string()]);
    Ok(())
}
