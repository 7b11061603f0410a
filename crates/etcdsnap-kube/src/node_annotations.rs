//! K3s's "this node has reconciled its snapshots" marks on the Node object
//! (`etcd.k3s.cattle.io/local-snapshots-timestamp`, and `…/s3-snapshots-timestamp` when S3 was
//! listed; `etcd.rke2.cattle.io/…` on RKE2). A K3s server's legacy-ConfigMap controller only prunes entries of nodes that carry
//! them, so they matter when K3s servers and etcdsnap share a cluster.
//!
//! Opt-in (`--annotate-node`): patching Nodes needs a ClusterRole on `nodes`, more than the
//! agent otherwise asks for (`deploy/rbac-node-annotations.yaml`). The annotation is written when
//! missing or older than [`REFRESH_AFTER`], so a reconcile that changes nothing stays free of
//! writes almost always.

use crate::{ApiError, Kube};
use etcdsnap_api::Program;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use std::collections::BTreeMap;

/// How stale a mark may get before a reconcile renews it.
pub const REFRESH_AFTER: jiff::SignedDuration = jiff::SignedDuration::from_hours(1);

/// What was done to the Node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marked {
    Written,
    Fresh,
    /// No Node of this name (etcd outside Kubernetes, or a differing `--node-name`).
    NoNode,
}

/// Marks this node's Node as reconciled now (locally, and for S3 when `s3` is true).
pub async fn mark_reconciled(kube: &Kube, s3: bool, now: jiff::Timestamp) -> Result<Marked, ApiError> {
    // Kubernetes Node names are lower case, whatever case the host name has.
    let name = &kube.settings.node_name.to_lowercase();
    let nodes: Api<Node> = Api::all(kube.client.clone());
    let Some(node) = nodes.get_opt(name).await.map_err(ApiError::new("read node", name.as_str()))? else {
        return Ok(Marked::NoNode);
    };
    let current = node.metadata.annotations.unwrap_or_default();
    let wanted = due(&current, kube.settings.program, s3, now);
    if wanted.is_empty() {
        return Ok(Marked::Fresh);
    }
    let value = now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let annotations: BTreeMap<&str, &str> = wanted.into_iter().map(|k| (k, value.as_str())).collect();
    let patch = serde_json::json!({ "metadata": { "annotations": annotations } });
    nodes
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(ApiError::new("annotate node", name.as_str()))?;
    Ok(Marked::Written)
}

/// The annotations to (re)write: missing, unparsable or older than [`REFRESH_AFTER`].
fn due(current: &BTreeMap<String, String>, program: Program, s3: bool, now: jiff::Timestamp) -> Vec<&'static str> {
    let mut keys = vec![program.annotation_local_reconciled()];
    if s3 {
        keys.push(program.annotation_s3_reconciled());
    }
    keys.into_iter()
        .filter(|k| {
            let at = current.get(*k).and_then(|v| v.parse::<jiff::Timestamp>().ok());
            at.is_none_or(|at| now.duration_since(at) >= REFRESH_AFTER)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap_or(jiff::Timestamp::UNIX_EPOCH)
    }

    #[test]
    fn only_missing_or_stale_marks_are_written() {
        let now = at("2026-11-26T12:00:00Z");
        let p = Program::K3s;
        let (local, s3) = ("etcd.k3s.cattle.io/local-snapshots-timestamp", "etcd.k3s.cattle.io/s3-snapshots-timestamp");
        let mut current = BTreeMap::new();
        assert_eq!(due(&current, p, false, now), vec![local]);
        assert_eq!(due(&current, p, true, now), vec![local, s3]);
        current.insert(local.to_string(), "2026-11-26T11:30:00Z".to_string());
        current.insert(s3.to_string(), "2026-11-26T10:00:00Z".to_string());
        assert_eq!(due(&current, p, true, now), vec![s3]);
        current.insert(local.to_string(), "yesterday".to_string());
        assert_eq!(due(&current, p, false, now), vec![local]);
    }

    #[test]
    fn rke2_marks_its_own_names_and_ignores_k3s_s() {
        let now = at("2026-11-26T12:00:00Z");
        let current = BTreeMap::from([
            ("etcd.k3s.cattle.io/local-snapshots-timestamp".to_string(), "2026-11-26T11:59:00Z".to_string()),
            ("etcd.k3s.cattle.io/s3-snapshots-timestamp".to_string(), "2026-11-26T11:59:00Z".to_string()),
        ]);
        assert_eq!(
            due(&current, Program::Rke2, true, now),
            vec!["etcd.rke2.cattle.io/local-snapshots-timestamp", "etcd.rke2.cattle.io/s3-snapshots-timestamp"]
        );
    }
}
