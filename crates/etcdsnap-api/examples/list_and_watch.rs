//! Lists every `ETCDSnapshotFile` in the cluster, page by page, then (with `--watch`) prints
//! additions, changes and deletions as they happen. What a dashboard or a restore tool does.
//!
//! ```sh
//! KUBECONFIG=/path/to/kubeconfig cargo run -p etcdsnap-api --example list_and_watch
//! KUBECONFIG=/path/to/kubeconfig cargo run -p etcdsnap-api --example list_and_watch -- --node node-1 --watch
//! ```

use etcdsnap_api::{ETCDSnapshotFile, Program};
use futures::TryStreamExt;
use kube::api::{Api, ListParams};
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};

/// `k3s`, or `rke2` with `--program rke2` (RKE2 names the label and annotation after itself).
fn program() -> Program {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--program")
        .and_then(|i| args.get(i + 1))
        .and_then(|p| p.parse().ok())
        .unwrap_or_default()
}

fn describe(snap: &ETCDSnapshotFile) -> String {
    let status = snap.status.clone().unwrap_or_default();
    format!(
        "{} node={} location={} size={} created={} ready={} token-hash={}",
        snap.spec.snapshot_name,
        snap.spec.node_name,
        snap.spec.location,
        status.size.map(|q| q.0).unwrap_or_default(),
        status.creation_time.map(|t| t.0.to_string()).unwrap_or_default(),
        status.ready_to_use.unwrap_or(false),
        snap.annotations().get(program().annotation_token_hash()).map(String::as_str).unwrap_or("-"),
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let node = args.iter().position(|a| a == "--node").and_then(|i| args.get(i + 1));
    let watch = args.iter().any(|a| a == "--watch");

    // KUBECONFIG, ~/.kube/config, or the in-cluster service account.
    let client = Client::try_default().await?;
    // ETCDSnapshotFile is cluster-scoped: Api::all.
    let api: Api<ETCDSnapshotFile> = Api::all(client);

    // One node's snapshots (or `s3`) through the storage-node label; pages of 500.
    let selector = node.map(|n| format!("{}={n}", program().label_storage_node()));
    let mut params = ListParams::default().limit(500);
    if let Some(s) = &selector {
        params = params.labels(s);
    }
    let mut total = 0;
    loop {
        let page = api.list(&params).await?;
        for snap in &page.items {
            println!("{} {}", snap.name_any(), describe(snap));
        }
        total += page.items.len();
        match page.metadata.continue_.filter(|t| !t.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    println!("{total} snapshots");
    if !watch {
        return Ok(());
    }

    // The watcher lists, then watches, and re-lists on its own after disconnections.
    let mut config = watcher::Config::default();
    if let Some(s) = &selector {
        config = config.labels(s);
    }
    let mut events = std::pin::pin!(watcher::watcher(api, config));
    while let Some(event) = events.try_next().await? {
        match event {
            Event::Apply(snap) => println!("changed {}", describe(&snap)),
            Event::Delete(snap) => println!("deleted {}", snap.spec.snapshot_name),
            Event::Init | Event::InitApply(_) | Event::InitDone => {}
        }
    }
    Ok(())
}
