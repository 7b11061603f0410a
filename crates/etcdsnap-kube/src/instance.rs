//! One agent per node name. Two agents started with the same `--node-name` (a copied
//! configuration, a second machine that kept a hostname, an old container still running beside
//! its replacement) would both save as that node, both write its resources and undo each other's
//! work, and, sharing one identity, both renew the leader Lease. So:
//!
//! - every agent process has an [`Instance`]: its node name plus what tells it apart from any
//!   other process (host, pid, a digest of the boot and pid namespace, a random nonce); its
//!   identity in every Lease is `<node>/<instance>`;
//! - an agent holds its node's own Lease, `etcdsnap/etcdsnap-agent-<node>` ([`NodeClaim`]),
//!   under the leader election's rules (taken over only once unchanged for its duration, never
//!   by comparing stamps), and renews it every retry period;
//! - an agent that finds the Lease held and renewed by another instance refuses to start, and
//!   one that finds it taken over while it was stopped stops, both saying which node, who holds
//!   it and what to do ([`ClaimError`]).
//!
//! A holder that is a process of this same machine (same host, boot and pid namespace) that no
//! longer exists is gone for sure: its Lease is taken over at once, so an agent restarted after
//! a crash does not wait a Lease duration.

use crate::ApiError;
use crate::leader::{GoneHolder, LeaderElector, LeaseRef, Role, Timing};
use crate::lease::{HEARTBEAT_NAMESPACE, create_heartbeat_namespace};
use kube::Client;
use sha2::{Digest, Sha256};
use std::hash::BuildHasher;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Prefix of the per-node agent Leases (beside the heartbeats, in [`HEARTBEAT_NAMESPACE`]).
pub const NODE_LEASE_PREFIX: &str = "etcdsnap-agent-";

/// This process, as the Leases know it.
#[derive(Debug, Clone)]
pub struct Instance {
    node: String,
    /// `<host>.<pid>.<place>.<nonce>`.
    id: String,
    place: Option<String>,
}

/// Where a process lives, as far as its pid means anything: the host's boot and the pid
/// namespace, digested (8 hex digits). None when either cannot be read.
fn place_here() -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let pid_ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
    let digest = Sha256::digest(format!("{}\n{}", boot.trim(), pid_ns.display()));
    Some(hex::encode(&digest[..4]))
}

fn host_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host.trim().chars().filter(|c| !c.is_whitespace() && *c != '/').collect();
    if host.is_empty() { "unknown-host".into() } else { host }
}

/// The parts of an instance id: host, pid, place.
fn parse_id(id: &str) -> Option<(&str, u32, &str)> {
    let mut parts = id.rsplitn(4, '.');
    let (_nonce, place, pid, host) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    Some((host, pid.parse().ok()?, place))
}

impl Instance {
    /// This process on `node`.
    pub fn new(node: &str) -> Instance {
        let place = place_here();
        // A random nonce without a random number crate: the standard hasher's keys are random.
        let nonce = std::collections::hash_map::RandomState::new().hash_one(std::process::id()) as u32;
        let id =
            format!("{}.{}.{}.{nonce:08x}", host_name(), std::process::id(), place.as_deref().unwrap_or("unknown"));
        Instance { node: node.to_string(), id, place }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// The identity this process holds Leases under: `<node>/<instance>`.
    pub fn identity(&self) -> String {
        format!("{}/{}", self.node, self.id)
    }

    /// Says a holder is gone when it is a process of this same machine and pid namespace that no
    /// longer exists.
    pub fn gone_holders(&self) -> GoneHolder {
        let place = self.place.clone();
        Box::new(move |holder: &str| {
            let Some(place) = &place else { return false };
            let Some((_, id)) = holder.split_once('/') else { return false };
            match parse_id(id) {
                Some((_, pid, theirs)) => theirs == place && pid != std::process::id() && !process_exists(pid),
                None => false,
            }
        })
    }
}

/// Whether a process with this pid exists in this pid namespace (signal 0: EPERM means it does).
fn process_exists(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else { return true };
    !matches!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None), Err(nix::errno::Errno::ESRCH))
}

/// A holder as a person reads it: "the agent on host H (pid P)", or the identity itself.
pub fn describe_holder(holder: &str) -> String {
    match holder.split_once('/').and_then(|(_, id)| parse_id(id)) {
        Some((host, pid, _)) => format!("the agent on host {host} (pid {pid}, identity {holder})"),
        None => format!("{holder:?}"),
    }
}

/// Name of a node's agent Lease: `etcdsnap-agent-<node>` when that is a valid object name, else
/// a digest of the node name (as for heartbeats).
pub fn node_lease_name(node: &str) -> String {
    let name = format!("{NODE_LEASE_PREFIX}{node}");
    if etcdsnap_api::is_dns1123_subdomain(&name) {
        return name;
    }
    let digest = hex::encode(Sha256::digest(node.as_bytes()));
    format!("{NODE_LEASE_PREFIX}{}", &digest[..32])
}

pub fn node_lease(node: &str) -> LeaseRef {
    LeaseRef { namespace: HEARTBEAT_NAMESPACE.into(), name: node_lease_name(node) }
}

/// The longest [`NodeClaim::acquire`] waits: a Lease duration for a holder that stopped renewing,
/// and two looks more.
pub fn claim_wait(timing: Timing) -> Duration {
    timing.lease_duration + timing.retry_period * 2
}

/// Why an agent may not act as its node.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error(
        "another etcdsnap agent runs with node name {node}: {} holds {lease} and renewed it while this agent waited. Two agents with one node name would both save and write resources as that node and undo each other's work. Stop the other agent, or give this one a node name of its own (--node-name, ETCDSNAP_NODE_NAME)",
        describe_holder(holder)
    )]
    Taken { node: String, holder: String, lease: LeaseRef },
    #[error(
        "another etcdsnap agent took over node name {node} while this agent was not renewing {lease} (stopped, or cut off from the API server for longer than the Lease): {} holds it now. This agent stops, so that only one acts as {node}. If both were meant to run, give each a node name of its own (--node-name, ETCDSNAP_NODE_NAME)",
        describe_holder(holder)
    )]
    Lost { node: String, holder: String, lease: LeaseRef },
    #[error("cannot make sure that no other agent runs as node {node}: {source}")]
    Api {
        node: String,
        #[source]
        source: ApiError,
    },
}

/// This agent's hold on its node's Lease.
pub struct NodeClaim {
    elector: LeaderElector,
    node: String,
    held: bool,
}

impl NodeClaim {
    pub fn new(client: Client, instance: &Instance, timing: Timing) -> NodeClaim {
        let elector = LeaderElector::on_lease(client, node_lease(&instance.node), &instance.identity(), timing)
            .with_gone_holders(instance.gone_holders());
        NodeClaim { elector, node: instance.node.clone(), held: false }
    }

    /// Takes the node's Lease: at once when it is free, released, or held by a process of this
    /// machine that is gone; after its duration when its holder stopped renewing it. Fails with
    /// [`ClaimError::Taken`] when another instance renews it.
    pub async fn acquire(&mut self) -> Result<(), ClaimError> {
        let wait = claim_wait(self.elector.timing());
        let role = match self.elector.acquire_within(wait).await {
            Err(e) if e.is_not_found() => {
                // The namespace does not exist yet (a first agent, before any heartbeat).
                create_heartbeat_namespace(self.elector.client()).await.map_err(|e| self.api(e))?;
                self.elector.acquire_within(wait).await
            }
            other => other,
        }
        .map_err(|e| self.api(e))?;
        match role {
            Role::Leader(_) => {
                self.held = true;
                Ok(())
            }
            Role::Follower { holder } => {
                Err(ClaimError::Taken { node: self.node.clone(), holder, lease: self.elector.lease().clone() })
            }
        }
    }

    fn api(&self, source: ApiError) -> ClaimError {
        ClaimError::Api { node: self.node.clone(), source }
    }

    /// Renews the Lease every retry period until `stop`, then releases it. Returns
    /// [`ClaimError::Lost`] as soon as another instance is seen holding it (one that took it while
    /// this one did not renew, or, when [`NodeClaim::acquire`] could not reach the API server,
    /// one that held it all along).
    pub async fn keep(mut self, stop: CancellationToken) -> Result<(), ClaimError> {
        let retry = self.elector.timing().retry_period;
        loop {
            match self.elector.round().await {
                Ok(Role::Leader(_)) => {
                    if !self.held {
                        tracing::info!(node = %self.node, lease = %self.elector.lease(), "this agent holds its node's Lease");
                    }
                    self.held = true;
                }
                Ok(Role::Follower { holder }) if !holder.is_empty() => {
                    let (node, lease) = (self.node.clone(), self.elector.lease().clone());
                    return Err(if self.held {
                        ClaimError::Lost { node, holder, lease }
                    } else {
                        ClaimError::Taken { node, holder, lease }
                    });
                }
                Ok(Role::Follower { .. }) => {}
                Err(e) if e.is_not_found() => {
                    if let Err(e) = create_heartbeat_namespace(self.elector.client()).await {
                        tracing::warn!("node lease: {e}");
                    }
                }
                Err(e) => tracing::warn!("node lease not renewed: {e}"),
            }
            let pause = retry + etcdsnap_storage::retry::jitter(retry / 5);
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(pause) => {}
            }
        }
        if let Err(e) = self.elector.release().await {
            tracing::warn!("releasing the node lease: {e}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leader::holder_node;

    #[test]
    fn every_instance_is_unique_and_names_its_node_host_and_pid() {
        let (a, b) = (Instance::new("node-a"), Instance::new("node-a"));
        assert_ne!(a.identity(), b.identity(), "two processes with one node name are two holders");
        assert_eq!(holder_node(&a.identity()), "node-a");
        let identity = a.identity();
        let (host, pid, _) = parse_id(identity.split_once('/').unwrap().1).unwrap();
        assert_eq!((host, pid), (host_name().as_str(), std::process::id()));
        let described = describe_holder(&a.identity());
        assert!(described.starts_with(&format!("the agent on host {host} (pid {pid}, ")), "{described}");
        assert_eq!(describe_holder("node-a/reconcile-7"), "\"node-a/reconcile-7\"");
    }

    #[test]
    fn a_host_name_with_dots_still_parses() {
        assert_eq!(parse_id("cp-1.example.org.4242.1a2b3c4d.00ff00ff"), Some(("cp-1.example.org", 4242, "1a2b3c4d")));
        assert_eq!(parse_id("no-pid.1a2b3c4d.00ff00ff"), None);
    }

    #[test]
    fn only_a_gone_process_of_this_machine_is_gone() {
        let me = Instance::new("node-a");
        let gone = me.gone_holders();
        let place = me.place.clone().expect("Linux has a boot id and a pid namespace");
        // This process is alive; pid 1 of this namespace too.
        assert!(!gone(&me.identity()));
        assert!(!gone(&format!("node-a/h.1.{place}.00000000")));
        // A pid beyond the kernel's limit exists nowhere.
        assert!(gone(&format!("node-a/h.{}.{place}.00000000", i32::MAX - 1)));
        // Another machine's (or namespace's) process is never judged from here.
        assert!(!gone(&format!("node-a/h.{}.0badf00d.00000000", i32::MAX - 1)));
        assert!(!gone("node-a"), "an earlier release's identity");
    }

    #[test]
    fn node_lease_names_fit_object_names() {
        assert_eq!(node_lease_name("node-1"), "etcdsnap-agent-node-1");
        let upper = node_lease_name("Node-B");
        assert!(etcdsnap_api::is_dns1123_subdomain(&upper), "{upper}");
        assert_ne!(upper, node_lease_name("node-b"));
        assert!(node_lease_name(&"n".repeat(250)).len() <= 253);
    }
}
