//! Leases (`coordination.k8s.io/v1`): the leader Lease `kube-system/etcdsnap-leader` that gives
//! one node the cluster-wide duties, and one heartbeat Lease per node, in etcdsnap's own
//! namespace [`HEARTBEAT_NAMESPACE`], that tells the leader which nodes still run etcdsnap.
//!
//! Heartbeats live in their own namespace for least privilege: their names depend on node names,
//! so RBAC cannot restrict updates to them by name, and a role that may update any Lease in
//! kube-system could hijack the scheduler's or controller-manager's leader election.
//!
//! Every write carries the resourceVersion it was computed from, so two nodes trying to take the
//! Lease at once cannot both succeed: the loser gets a 409 and is not the leader. Expiry compares
//! the holder's recorded renew time with the local clock; node clocks are assumed to be in sync to
//! well within the Lease duration (as on any control plane running etcd).

use crate::resources::{is_terminating, storage_label};
use crate::{ApiError, status_is};
use etcdsnap_api::ETCDSnapshotFile;
use etcdsnap_api::consts::{S3_STORAGE_NODE, SYSTEM_NAMESPACE};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Name of the leader Lease.
pub const LEADER_LEASE: &str = "etcdsnap-leader";
/// Namespace of the heartbeat Leases (created on first use when allowed; `deploy/rbac.yaml`
/// creates it for the agent).
pub const HEARTBEAT_NAMESPACE: &str = "etcdsnap";
/// Prefix of the per-node heartbeat Leases.
pub const HEARTBEAT_PREFIX: &str = "etcdsnap-node-";
/// Label marking heartbeat Leases (value `heartbeat`).
pub const LABEL_ROLE: &str = "etcdsnap.io/lease";
/// How long a one-shot command holds the leader Lease if it never releases it (it releases it).
pub const COMMAND_LEADER_DURATION: Duration = Duration::from_secs(60);

fn leases(client: &Client) -> Api<Lease> {
    Api::namespaced(client.clone(), SYSTEM_NAMESPACE)
}

fn heartbeats(client: &Client) -> Api<Lease> {
    Api::namespaced(client.clone(), HEARTBEAT_NAMESPACE)
}

fn until(renewed: jiff::Timestamp, duration: Duration) -> jiff::Timestamp {
    jiff::SignedDuration::try_from(duration).ok().and_then(|d| renewed.checked_add(d).ok()).unwrap_or(renewed)
}

/// What to do with the leader Lease, decided from what it holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseDecision {
    /// No Lease yet: create it.
    Create,
    /// Ours: renew it.
    Renew,
    /// Free or expired: take it over.
    TakeOver,
    /// Someone else holds it until the given time.
    HeldBy { holder: String, until: jiff::Timestamp },
}

/// Pure decision on the leader Lease.
pub fn decide(existing: Option<&Lease>, identity: &str, now: jiff::Timestamp) -> LeaseDecision {
    let Some(lease) = existing else {
        return LeaseDecision::Create;
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.unwrap_or_default();
    if holder == identity {
        return LeaseDecision::Renew;
    }
    let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64);
    let renewed = spec.renew_time.or(spec.acquire_time).map(|t| t.0);
    match renewed {
        Some(renewed) if !holder.is_empty() && now < until(renewed, duration) => {
            LeaseDecision::HeldBy { holder, until: until(renewed, duration) }
        }
        _ => LeaseDecision::TakeOver,
    }
}

/// Result of trying to lead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leadership {
    /// This identity holds the Lease now.
    Leader,
    /// Another identity does.
    Follower { holder: String },
}

impl Leadership {
    pub fn is_leader(&self) -> bool {
        *self == Leadership::Leader
    }
}

/// The leader Lease, as seen by one identity.
#[derive(Clone)]
pub struct LeaderLease {
    client: Client,
    identity: String,
    duration: Duration,
}

impl LeaderLease {
    /// `identity` is usually the node name; `duration` how long a holder that stops renewing keeps
    /// the others waiting.
    pub fn new(client: Client, identity: &str, duration: Duration) -> LeaderLease {
        LeaderLease { client, identity: identity.to_string(), duration }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Takes or renews the Lease if nobody else holds it. One read and at most one write.
    pub async fn try_acquire(&self) -> Result<Leadership, ApiError> {
        let api = leases(&self.client);
        let existing = api
            .get_opt(LEADER_LEASE)
            .await
            .map_err(ApiError::new("get", format!("lease {SYSTEM_NAMESPACE}/{LEADER_LEASE}")))?;
        let now = jiff::Timestamp::now();
        let result = match decide(existing.as_ref(), &self.identity, now) {
            LeaseDecision::HeldBy { holder, .. } => return Ok(Leadership::Follower { holder }),
            LeaseDecision::Create => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(LEADER_LEASE.into()),
                        namespace: Some(SYSTEM_NAMESPACE.into()),
                        ..Default::default()
                    },
                    spec: Some(self.spec(None, now)),
                };
                api.create(&PostParams::default(), &lease).await.map(|_| ())
            }
            LeaseDecision::Renew | LeaseDecision::TakeOver => {
                let Some(mut lease) = existing else {
                    return Ok(Leadership::Follower { holder: String::new() });
                };
                lease.spec = Some(self.spec(lease.spec.take(), now));
                api.replace(LEADER_LEASE, &PostParams::default(), &lease).await.map(|_| ())
            }
        };
        match result {
            Ok(()) => Ok(Leadership::Leader),
            // Someone else wrote first: they lead.
            Err(e) if status_is(&e, |s| s.is_conflict() || s.is_already_exists()) => {
                let holder = api
                    .get_opt(LEADER_LEASE)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|l| l.spec)
                    .and_then(|s| s.holder_identity)
                    .unwrap_or_default();
                Ok(Leadership::Follower { holder })
            }
            Err(e) => Err(ApiError::new("write", format!("lease {SYSTEM_NAMESPACE}/{LEADER_LEASE}"))(e)),
        }
    }

    fn spec(&self, previous: Option<LeaseSpec>, now: jiff::Timestamp) -> LeaseSpec {
        let previous = previous.unwrap_or_default();
        let ours = previous.holder_identity.as_deref() == Some(self.identity.as_str());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs().clamp(1, i32::MAX as u64) as i32),
            acquire_time: if ours { previous.acquire_time } else { Some(MicroTime(now)) },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(previous.lease_transitions.unwrap_or(0) + i32::from(!ours)),
            ..Default::default()
        }
    }

    /// Gives the Lease up (only if this identity holds it), so another node can lead at once.
    pub async fn release(&self) -> Result<(), ApiError> {
        let api = leases(&self.client);
        let Some(mut lease) = api
            .get_opt(LEADER_LEASE)
            .await
            .map_err(ApiError::new("get", format!("lease {SYSTEM_NAMESPACE}/{LEADER_LEASE}")))?
        else {
            return Ok(());
        };
        let mut spec = lease.spec.take().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        lease.spec = Some(spec);
        match api.replace(LEADER_LEASE, &PostParams::default(), &lease).await {
            Ok(_) => Ok(()),
            Err(e) if status_is(&e, |s| s.is_conflict()) => Ok(()),
            Err(e) => Err(ApiError::new("release", format!("lease {SYSTEM_NAMESPACE}/{LEADER_LEASE}"))(e)),
        }
    }
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
    let now = jiff::Timestamp::now();
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

async fn create_heartbeat_namespace(client: &Client) -> Result<(), ApiError> {
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
        Ok(NodeLiveness { renewed, now: jiff::Timestamp::now() })
    }

    /// Nodes that renewed within `ttl`.
    pub fn live_nodes(&self, ttl: Duration) -> BTreeSet<String> {
        self.renewed.iter().filter(|(_, t)| self.now < until(**t, ttl)).map(|(n, _)| n.clone()).collect()
    }

    /// Storage-node labels whose node has gone: its heartbeat is older than `ttl`, or it never had
    /// one and its newest resource is older than `ttl` (a node that stopped before heartbeats
    /// existed). Never `s3` and never `self_node`.
    pub fn orphaned_labels(&self, resources: &[ETCDSnapshotFile], self_node: &str, ttl: Duration) -> Vec<String> {
        let mut newest: BTreeMap<&str, Option<jiff::Timestamp>> = BTreeMap::new();
        for cr in resources.iter().filter(|c| !is_terminating(c)) {
            let Some(label) = storage_label(cr) else { continue };
            if label == S3_STORAGE_NODE || label == self_node {
                continue;
            }
            let created = cr.metadata.creation_timestamp.as_ref().map(|t| t.0);
            let entry = newest.entry(label).or_insert(created);
            *entry = (*entry).max(created);
        }
        newest
            .into_iter()
            .filter(|(label, created)| match self.renewed.get(*label) {
                Some(renewed) => self.now >= until(*renewed, ttl),
                None => created.is_some_and(|c| self.now >= until(c, ttl)),
            })
            .map(|(label, _)| label.to_string())
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

    fn lease(holder: &str, renewed: i64, secs: i32) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: (!holder.is_empty()).then(|| holder.to_string()),
                lease_duration_seconds: Some(secs),
                renew_time: Some(MicroTime(t(renewed))),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn leader_decisions() {
        assert_eq!(decide(None, "a", t(100)), LeaseDecision::Create);
        assert_eq!(decide(Some(&lease("a", 90, 15)), "a", t(100)), LeaseDecision::Renew);
        assert_eq!(
            decide(Some(&lease("b", 90, 15)), "a", t(100)),
            LeaseDecision::HeldBy { holder: "b".into(), until: t(105) }
        );
        assert_eq!(decide(Some(&lease("b", 80, 15)), "a", t(100)), LeaseDecision::TakeOver);
        assert_eq!(decide(Some(&lease("", 99, 15)), "a", t(100)), LeaseDecision::TakeOver);
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
        let mut cr = test_record(&format!("a-{node}-{created}"), node).to_resource();
        cr.metadata.creation_timestamp = Some(Time(t(created)));
        cr
    }

    #[test]
    fn orphans_are_nodes_without_a_recent_heartbeat() {
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
            cr("never-beat-old", 1),
            cr("never-beat-new", now - 60),
        ];
        assert_eq!(liveness.orphaned_labels(&resources, "me", day), ["never-beat-old", "stale"]);
        assert_eq!(liveness.live_nodes(day), BTreeSet::from(["alive".to_string()]));
    }
}
