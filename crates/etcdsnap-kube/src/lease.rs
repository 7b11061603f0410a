//! Heartbeat Leases: one per node, in etcdsnap's own namespace [`HEARTBEAT_NAMESPACE`], that
//! tells the leader which nodes still run etcdsnap (the leader Lease is [`crate::leader`]'s).
//!
//! Heartbeats live in their own namespace for least privilege: their names depend on node names,
//! so RBAC cannot restrict updates to them by name, and a role that may update any Lease in
//! kube-system could hijack the scheduler's or controller-manager's leader election.
//!
//! Liveness compares a heartbeat's renew time with the leader's wall clock. That is sound here
//! because the TTL is long (24 h by default, at least minutes): skew between control-plane
//! nodes, which run etcd and must keep their clocks close, is far below it.

use crate::resources::{is_terminating, storage_label};
use crate::{ApiError, status_is};
use etcdsnap_api::consts::S3_STORAGE_NODE;
use etcdsnap_api::{ETCDSnapshotFile, Program};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Namespace of the heartbeat Leases (created on first use when allowed; `deploy/rbac.yaml`
/// creates it for the agent).
pub const HEARTBEAT_NAMESPACE: &str = "etcdsnap";
/// Prefix of the per-node heartbeat Leases.
pub const HEARTBEAT_PREFIX: &str = "etcdsnap-node-";
/// Label marking heartbeat Leases (value `heartbeat`).
pub const LABEL_ROLE: &str = "etcdsnap.io/lease";
fn heartbeats(client: &Client) -> Api<Lease> {
    Api::namespaced(client.clone(), HEARTBEAT_NAMESPACE)
}

fn until(renewed: jiff::Timestamp, duration: Duration) -> jiff::Timestamp {
    jiff::SignedDuration::try_from(duration).ok().and_then(|d| renewed.checked_add(d).ok()).unwrap_or(renewed)
}

/// Name of a node's heartbeat Lease: `etcdsnap-node-<node>` when that is a valid object name,
/// else a digest of the node name (upper-case node names are legal, and `Node-B` and `node-b`
/// are different nodes, so lowercasing would merge them). The Lease's holder is the node name
/// itself either way.
pub fn heartbeat_name(node: &str) -> String {
    let name = format!("{HEARTBEAT_PREFIX}{node}");
    if etcdsnap_api::is_dns1123_subdomain(&name) {
        return name;
    }
    let digest = hex::encode(Sha256::digest(node.as_bytes()));
    format!("{HEARTBEAT_PREFIX}{}", &digest[..32])
}

/// How often a node renews its heartbeat: often enough that a few missed renewals never make it
/// look gone (a quarter of the orphan TTL), and at least hourly.
pub fn heartbeat_interval(orphan_ttl: Duration) -> Duration {
    (orphan_ttl / 4).min(Duration::from_secs(3600))
}

/// Marks this node as running etcdsnap. Writes only when the last renewal is older than
/// `min_interval`, so frequent callers (every reconcile) stay almost write-free. Returns whether
/// it wrote.
pub async fn renew_heartbeat(
    client: &Client,
    node: &str,
    ttl: Duration,
    min_interval: Duration,
) -> Result<bool, ApiError> {
    let api = heartbeats(client);
    let name = heartbeat_name(node);
    let what = format!("lease {HEARTBEAT_NAMESPACE}/{name}");
    let existing = api.get_opt(&name).await.map_err(ApiError::new("get", what.clone()))?;
    let now = etcdsnap_storage::clock::now();
    let spec = LeaseSpec {
        holder_identity: Some(node.to_string()),
        lease_duration_seconds: Some(ttl.as_secs().clamp(1, i32::MAX as u64) as i32),
        renew_time: Some(MicroTime(now)),
        ..Default::default()
    };
    let result = match existing {
        Some(mut lease) => {
            let last = lease.spec.as_ref().and_then(|s| s.renew_time.as_ref()).map(|t| t.0);
            if last.is_some_and(|last| now < until(last, min_interval)) {
                return Ok(false);
            }
            lease.spec = Some(spec);
            api.replace(&name, &PostParams::default(), &lease).await.map(|_| ())
        }
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(HEARTBEAT_NAMESPACE.into()),
                    labels: Some(BTreeMap::from([(LABEL_ROLE.to_string(), "heartbeat".to_string())])),
                    ..Default::default()
                },
                spec: Some(spec),
            };
            match api.create(&PostParams::default(), &lease).await {
                Err(e) if status_is(&e, |s| s.is_not_found()) => {
                    create_heartbeat_namespace(client).await?;
                    api.create(&PostParams::default(), &lease).await.map(|_| ())
                }
                other => other.map(|_| ()),
            }
        }
    };
    match result {
        Ok(()) => Ok(true),
        // Renewed concurrently by another process of this node: fine.
        Err(e) if status_is(&e, |s| s.is_conflict() || s.is_already_exists()) => Ok(false),
        Err(e) => Err(ApiError::new("renew", what)(e)),
    }
}

/// Creates etcdsnap's namespace of Leases (heartbeats, node Leases); existing is fine.
pub(crate) async fn create_heartbeat_namespace(client: &Client) -> Result<(), ApiError> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let ns = k8s_openapi::api::core::v1::Namespace {
        metadata: ObjectMeta { name: Some(HEARTBEAT_NAMESPACE.into()), ..Default::default() },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        Err(e) if status_is(&e, |s| s.is_already_exists()) => Ok(()),
        Err(e) => Err(ApiError::new("create", format!("namespace {HEARTBEAT_NAMESPACE}"))(e)),
    }
}

/// When each node last renewed its heartbeat, as seen at `now`.
#[derive(Debug, Clone, Default)]
pub struct NodeLiveness {
    pub renewed: BTreeMap<String, jiff::Timestamp>,
    pub now: jiff::Timestamp,
}

impl NodeLiveness {
    /// Reads every heartbeat Lease (one LIST).
    pub async fn read(client: &Client) -> Result<NodeLiveness, ApiError> {
        let list =
            match heartbeats(client).list(&ListParams::default().labels(&format!("{LABEL_ROLE}=heartbeat"))).await {
                Ok(list) => list.items,
                // No namespace yet: no node has ever sent a heartbeat.
                Err(e) if status_is(&e, |s| s.is_not_found()) => Vec::new(),
                Err(e) => {
                    return Err(ApiError::new("list", format!("heartbeat leases in {HEARTBEAT_NAMESPACE}"))(e));
                }
            };
        let mut renewed = BTreeMap::new();
        for lease in list {
            let Some(spec) = lease.spec else { continue };
            if let (Some(node), Some(time)) = (spec.holder_identity, spec.renew_time) {
                renewed.insert(node, time.0);
            }
        }
        Ok(NodeLiveness { renewed, now: etcdsnap_storage::clock::now() })
    }

    /// Nodes that renewed within `ttl`.
    pub fn live_nodes(&self, ttl: Duration) -> BTreeSet<String> {
        self.renewed.iter().filter(|(_, t)| self.now < until(**t, ttl)).map(|(n, _)| n.clone()).collect()
    }

    /// Storage-node labels of etcdsnap nodes that have gone: their heartbeat was not renewed
    /// for `ttl`. A label without a heartbeat is not one of etcdsnap's nodes (a K3s server that
    /// does not run etcdsnap, say): its resources belong to whoever writes them and are never
    /// judged here. Never `s3` and never `self_node`.
    pub fn orphaned_labels(
        &self,
        resources: &[ETCDSnapshotFile],
        program: Program,
        self_node: &str,
        ttl: Duration,
    ) -> Vec<String> {
        let labels: BTreeSet<&str> = resources
            .iter()
            .filter(|c| !is_terminating(c))
            .filter_map(|c| storage_label(c, program))
            .filter(|label| *label != S3_STORAGE_NODE && *label != self_node)
            .collect();
        labels
            .into_iter()
            .filter(|label| self.renewed.get(*label).is_some_and(|renewed| self.now >= until(*renewed, ttl)))
            .map(str::to_string)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RecordResource;
    use crate::test_record;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn t(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(s).unwrap_or_default()
    }

    #[test]
    fn heartbeat_names_fit_object_names() {
        assert_eq!(heartbeat_name("node-1"), "etcdsnap-node-node-1");
        let long = "n".repeat(250);
        assert!(heartbeat_name(&long).len() <= 253);
        assert_ne!(heartbeat_name(&long), heartbeat_name(&"m".repeat(250)));
        let upper = heartbeat_name("Node-B");
        assert!(etcdsnap_api::is_dns1123_subdomain(&upper), "{upper}");
        assert_ne!(upper, heartbeat_name("node-b"), "two nodes, two Leases");
    }

    fn cr(node: &str, created: i64) -> ETCDSnapshotFile {
        let mut cr = test_record(&format!("a-{node}-{created}"), node).to_resource(Program::K3s);
        cr.metadata.creation_timestamp = Some(Time(t(created)));
        cr
    }

    #[test]
    fn orphans_are_etcdsnap_nodes_whose_heartbeat_stopped() {
        let day = Duration::from_secs(86_400);
        let now = 10 * 86_400;
        let liveness = NodeLiveness {
            renewed: BTreeMap::from([("alive".to_string(), t(now - 3600)), ("stale".to_string(), t(now - 2 * 86_400))]),
            now: t(now),
        };
        let resources = vec![
            cr("alive", 1),
            cr("stale", now - 60),
            cr("me", 1),
            // K3s servers that never ran etcdsnap: theirs, however old.
            cr("k3s-only-old", 1),
            cr("k3s-only-new", now - 60),
        ];
        assert_eq!(liveness.orphaned_labels(&resources, Program::K3s, "me", day), ["stale"]);
        assert_eq!(liveness.live_nodes(day), BTreeSet::from(["alive".to_string()]));
    }
}
