//! Many small snapshot-like objects in an S3 folder, for listing and reconcile benchmarks: half
//! with an etcdsnap metadata document, half as K3s writes them (user metadata only).

use crate::{Error, Result};
use futures::StreamExt;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use std::time::Duration;

/// One object to put: key, body, and `x-amz-meta-*` headers.
type Put = (String, Vec<u8>, Vec<(&'static str, String)>);

/// Puts `count` objects named `etcd-snapshot-node<i%3>-<1700000000+i>` under `folder/` of
/// `bucket` at `url` (`http://host:port`), 16 at a time.
pub async fn fill_snapshot_objects(
    url: &str,
    bucket: &str,
    folder: &str,
    count: usize,
    access_key: &str,
    secret_key: &str,
) -> Result<()> {
    let creds = Credentials::new(access_key, secret_key);
    let base = url::Url::parse(&format!("{url}/")).map_err(|e| Error::other("S3 URL", e))?;
    let b =
        Bucket::new(base, UrlStyle::Path, bucket.to_string(), "us-east-1").map_err(|e| Error::other("S3 bucket", e))?;
    let http = reqwest::Client::new();
    let jobs = (0..count).map(|i| {
        let (b, creds, http) = (b.clone(), creds.clone(), http.clone());
        async move {
            for (key, body, meta) in objects(folder, i) {
                let mut action = b.put_object(Some(&creds), &key);
                for (k, v) in &meta {
                    action.headers_mut().insert(*k, v.clone());
                }
                let mut req = http.put(action.sign(Duration::from_secs(3600))).body(body);
                for (k, v) in &meta {
                    req = req.header(*k, v);
                }
                req.send().await?.error_for_status()?;
            }
            Ok::<(), reqwest::Error>(())
        }
    });
    let results: Vec<_> = futures::stream::iter(jobs).buffer_unordered(16).collect().await;
    for r in results {
        r.map_err(|e| Error::other("S3 put", e))?;
    }
    Ok(())
}

/// The object (and, for even `i`, its metadata document) for snapshot number `i`.
fn objects(folder: &str, i: usize) -> Vec<Put> {
    let node = format!("node{}", i % 3);
    let name = format!("etcd-snapshot-{node}-{}", 1_700_000_000 + i);
    let body = vec![(i % 251) as u8; 256];
    if i.is_multiple_of(2) {
        let doc = serde_json::json!({
            "apiVersion": "etcdsnap.io/v1", "kind": "SnapshotMetadata", "name": name, "nodeName": node,
            "location": "", "createdAt": "2023-11-14T22:13:20Z", "size": 256, "sha256": "", "compression": "none", "clusterId": "bench"
        });
        vec![
            (format!("{folder}/.metadata/{name}"), doc.to_string().into_bytes(), vec![]),
            (format!("{folder}/{name}"), body, vec![]),
        ]
    } else {
        let meta = vec![("x-amz-meta-k3s-node-name", node), ("x-amz-meta-k3s-cluster-id", "bench".to_string())];
        vec![(format!("{folder}/{name}"), body, meta)]
    }
}
