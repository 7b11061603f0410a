//! The soak's verdict, read straight from the servers (the file system, S3's own listing, the
//! API server), not through etcdsnap: what storage holds and what the index says must agree.

use crate::agents::{Agent, BUCKET, FOLDER, Fleet, RETENTION};
use etcdsnap_api::Program;
use etcdsnap_api::consts::SYSTEM_NAMESPACE;
use etcdsnap_api::{ETCDSnapshotFile, StorageKind, configmap_key};
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use object_store::ObjectStore;
use std::collections::{BTreeMap, BTreeSet};

/// One stored snapshot: where it is (the resource's `spec.location` form) and its size.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Stored {
    location: String,
    node: String,
    size: u64,
}

/// Invariant violations, each with what it was about.
#[derive(Debug, Default)]
pub struct Verdict {
    pub stored_local: usize,
    pub stored_s3: usize,
    pub resources: usize,
    pub failed_save_resources: usize,
    pub violations: Vec<String>,
}

impl Verdict {
    fn violation(&mut self, what: String) {
        eprintln!("soak: VIOLATION {what}");
        self.violations.push(what);
    }
}

pub async fn check(agents: &[Agent], fleet: &Fleet, client: &kube::Client) -> anyhow::Result<Verdict> {
    let mut v = Verdict::default();
    let (local, s3) = (list_local(agents)?, list_s3(fleet).await?);
    for stray in local.strays.iter().chain(&s3.strays) {
        v.violation(format!("not a snapshot, yet where K3s looks for snapshots: {stray}"));
    }
    let (local, s3) = (local.snapshots, s3.snapshots);
    v.stored_local = local.len();
    v.stored_s3 = s3.len();
    let resources: Vec<ETCDSnapshotFile> =
        kube::Api::<ETCDSnapshotFile>::all(client.clone()).list(&Default::default()).await?.items;
    v.resources = resources.len();

    // Every stored snapshot has exactly one resource, and it is right.
    let mut by_location: BTreeMap<&str, Vec<&ETCDSnapshotFile>> = BTreeMap::new();
    for r in &resources {
        by_location.entry(r.spec.location.as_str()).or_default().push(r);
    }
    for s in local.iter().chain(&s3) {
        match by_location.get(s.location.as_str()).map(Vec::as_slice) {
            None | Some([]) => v.violation(format!("unindexed: {} (node {})", s.location, s.node)),
            Some([r]) => check_resource(&mut v, s, r),
            Some(many) => v.violation(format!("{} resources for {}", many.len(), s.location)),
        }
    }
    // No ready resource points at nothing.
    let stored: BTreeSet<&str> = local.iter().chain(&s3).map(|s| s.location.as_str()).collect();
    for r in &resources {
        let ready = r.status.as_ref().and_then(|s| s.ready_to_use).unwrap_or(false);
        if !ready {
            v.failed_save_resources += 1;
        } else if !stored.contains(r.spec.location.as_str()) {
            v.violation(format!("resource {} points at nothing: {}", name(r), r.spec.location));
        }
    }
    check_legacy(&mut v, client, &resources).await?;
    check_retention(&mut v, agents, &local, &s3);
    check_newest_kept(&mut v, agents, &local, &s3);
    Ok(v)
}

fn name(r: &ETCDSnapshotFile) -> &str {
    r.metadata.name.as_deref().unwrap_or("?")
}

fn check_resource(v: &mut Verdict, s: &Stored, r: &ETCDSnapshotFile) {
    let ready = r.status.as_ref().and_then(|s| s.ready_to_use).unwrap_or(false);
    let size = r.status.as_ref().and_then(|s| s.size.as_ref()).and_then(|q| q.0.parse::<u64>().ok());
    if !ready {
        v.violation(format!("resource {} of stored {} is not readyToUse", name(r), s.location));
    }
    if size != Some(s.size) {
        v.violation(format!("resource {} says size {size:?}, storage has {}", name(r), s.size));
    }
    if r.spec.node_name != s.node {
        v.violation(format!("resource {} says node {}, the snapshot is {}'s", name(r), r.spec.node_name, s.node));
    }
}

/// The legacy ConfigMap names exactly the resources' snapshots.
async fn check_legacy(v: &mut Verdict, client: &kube::Client, resources: &[ETCDSnapshotFile]) -> anyhow::Result<()> {
    let cms: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let keys: BTreeSet<String> = cms
        .get_opt(Program::K3s.legacy_configmap())
        .await?
        .and_then(|c| c.data)
        .unwrap_or_default()
        .into_keys()
        .collect();
    let expected: BTreeSet<String> = resources
        .iter()
        .map(|r| {
            let kind = if r.spec.s3.is_some() { StorageKind::S3 } else { StorageKind::Local };
            configmap_key(&r.spec.snapshot_name, kind)
        })
        .collect();
    for k in expected.difference(&keys) {
        v.violation(format!("legacy ConfigMap lacks {k}"));
    }
    for k in keys.difference(&expected) {
        v.violation(format!("legacy ConfigMap has {k}, which no resource has"));
    }
    Ok(())
}

/// Retention kept exactly its count per node and store: fewer means snapshots were lost.
fn check_retention(v: &mut Verdict, agents: &[Agent], local: &[Stored], s3: &[Stored]) {
    for a in agents {
        for (store, list) in [("local", local), ("S3", s3)] {
            let n = list.iter().filter(|s| s.node == a.node).count();
            if n != RETENTION {
                v.violation(format!("{} keeps {n} snapshots in {store}, retention is {RETENTION}", a.node));
            }
        }
    }
}

/// The newest snapshot each agent logged as taken everywhere is still in both stores.
fn check_newest_kept(v: &mut Verdict, agents: &[Agent], local: &[Stored], s3: &[Stored]) {
    for a in agents {
        let log = a.log_text();
        let newest = log
            .lines()
            .filter(|l| l.contains("snapshot taken") && l.contains("ok=true"))
            .filter_map(|l| l.split("snapshot=").nth(1)?.split_whitespace().next())
            .next_back();
        let Some(newest) = newest else {
            v.violation(format!("{} logged no complete snapshot", a.node));
            continue;
        };
        for (store, list) in [("local", local), ("S3", s3)] {
            if !list.iter().any(|s| s.location.ends_with(&format!("/{newest}"))) {
                v.violation(format!("{}'s newest snapshot {newest} is gone from {store}", a.node));
            }
        }
    }
}

/// The node a snapshot name belongs to: `etcd-snapshot-<node>-<unix time>[.ext]`, the longest
/// matching node name, so names that are suffixes of each other are told apart.
fn node_of(file: &str) -> Option<&'static str> {
    let rest = file.strip_prefix("etcd-snapshot-")?;
    crate::agents::NODES
        .into_iter()
        .filter(|n| {
            rest.strip_prefix(n)
                .and_then(|t| t.strip_prefix('-'))
                .is_some_and(|t| t.starts_with(|c: char| c.is_ascii_digit()))
        })
        .max_by_key(|n| n.len())
}

/// What storage holds, and anything in it K3s would take for a snapshot that is not one.
#[derive(Default)]
struct Listing {
    snapshots: Vec<Stored>,
    strays: Vec<String>,
}

fn list_local(agents: &[Agent]) -> anyhow::Result<Listing> {
    let mut out = Listing::default();
    for a in agents {
        for entry in std::fs::read_dir(a.snapshot_dir())? {
            let entry = entry?;
            let file = entry.file_name().to_string_lossy().to_string();
            let meta = entry.metadata()?;
            let location = format!("file://{}", entry.path().display());
            match node_of(&file) {
                Some(node) if meta.is_file() && node == a.node => {
                    out.snapshots.push(Stored { location, node: node.to_string(), size: meta.len() })
                }
                _ => out.strays.push(location),
            }
        }
    }
    Ok(out)
}

async fn list_s3(fleet: &Fleet) -> anyhow::Result<Listing> {
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(format!("http://{}", fleet.s3_endpoint))
        .with_bucket_name(BUCKET)
        .with_region("us-east-1")
        .with_access_key_id(&fleet.access_key)
        .with_secret_access_key(&fleet.secret_key)
        .with_allow_http(true)
        .build()?;
    // K3s lists the folder as a plain prefix, so everything under it counts.
    let prefix = object_store::path::Path::from(FOLDER);
    let objects: Vec<object_store::ObjectMeta> = store.list(Some(&prefix)).try_collect().await?;
    let mut out = Listing::default();
    for o in objects {
        let key = o.location.to_string();
        let (parent, file) = key.rsplit_once('/').unwrap_or(("", key.as_str()));
        if parent.rsplit('/').next() == Some(".metadata") {
            continue;
        }
        let location = format!("s3://{BUCKET}/{key}");
        match node_of(file) {
            Some(node) => out.snapshots.push(Stored { location, node: node.to_string(), size: o.size }),
            None => out.strays.push(location),
        }
    }
    Ok(out)
}
