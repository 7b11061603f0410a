//! Puts N small snapshot-like objects into an S3 folder for listing benchmarks: half with an
//! etcdsnap metadata document, half as K3s writes them (user metadata only).
//!
//! Usage: s3-fill --url http://host:port --bucket B --folder F --count N (credentials from
//! AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)

use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use std::time::Duration;

/// One object to put: key, body, and `x-amz-meta-*` headers.
type Put = (String, Vec<u8>, Vec<(&'static str, String)>);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut url, mut bucket, mut folder, mut count) = (String::new(), String::new(), String::new(), 1000usize);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let v = it.next().ok_or(format!("{a} needs a value"))?;
        match a.as_str() {
            "--url" => url = v,
            "--bucket" => bucket = v,
            "--folder" => folder = v,
            "--count" => count = v.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let creds = Credentials::new(std::env::var("AWS_ACCESS_KEY_ID")?, std::env::var("AWS_SECRET_ACCESS_KEY")?);
    let b = Bucket::new(url::Url::parse(&format!("{url}/"))?, UrlStyle::Path, bucket.clone(), "us-east-1")?;
    let http = reqwest::Client::new();
    let started = std::time::Instant::now();
    let jobs = (0..count).map(|i| {
        let (b, creds, http, folder) = (b.clone(), creds.clone(), http.clone(), folder.clone());
        async move {
            let name = format!("etcd-snapshot-node{}-{}", i % 3, 1_700_000_000 + i);
            let body = vec![(i % 251) as u8; 256];
            let mut puts: Vec<Put> = Vec::new();
            if i % 2 == 0 {
                let doc = serde_json::json!({
                    "apiVersion": "etcdsnap.io/v1", "kind": "SnapshotMetadata", "name": name, "nodeName": format!("node{}", i % 3),
                    "location": "", "createdAt": "2023-11-14T22:13:20Z", "size": 256, "sha256": "", "compression": "none", "clusterId": "bench"
                });
                puts.push((format!("{folder}/.metadata/{name}"), doc.to_string().into_bytes(), vec![]));
                puts.push((format!("{folder}/{name}"), body, vec![]));
            } else {
                let meta = vec![("x-amz-meta-k3s-node-name", format!("node{}", i % 3)), ("x-amz-meta-k3s-cluster-id", "bench".to_string())];
                puts.push((format!("{folder}/{name}"), body, meta));
            }
            for (key, body, meta) in puts {
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
    use futures::StreamExt;
    let results: Vec<_> = futures::stream::iter(jobs).buffer_unordered(16).collect().await;
    for r in results {
        r?;
    }
    println!("s3-fill: {count} objects in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}
