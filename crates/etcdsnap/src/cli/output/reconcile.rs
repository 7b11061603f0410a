//! What `reconcile` did: counts of this node's resources, then the leader's duties.

use etcdsnap::ops::reconcile::PassOutcome;
use etcdsnap_api::consts::SYSTEM_NAMESPACE;
use etcdsnap_kube::leader::{LEADER_LEASE, Role};

/// The pass as text.
pub fn text(node: &str, role: &Role, outcome: &PassOutcome) -> String {
    let r = &outcome.report;
    let mut out = format!(
        "Reconciled ETCDSnapshotFile resources for node {node}: {} created, {} updated, {} deleted, {} unchanged, {} kept (TTL).\n",
        r.created, r.updated, r.deleted, r.unchanged, r.kept
    );
    match role {
        Role::Leader(_) => {
            let s3 = if outcome.listing.state.s3.is_some() { "S3 reconciled" } else { "S3 not configured" };
            let legacy = match &r.legacy {
                Some(l) => format!(
                    "legacy ConfigMap {} entries ({} left out, ~{} bytes, {})",
                    l.entries,
                    l.dropped,
                    l.estimated_bytes,
                    if l.written { "written" } else { "unchanged" }
                ),
                None => "legacy ConfigMap off".into(),
            };
            out.push_str(&format!(
                "Leader duties done (this node holds lease {SYSTEM_NAMESPACE}/{LEADER_LEASE}): {s3}, departed nodes {:?}, {legacy}.\n",
                r.orphaned_nodes
            ));
        }
        Role::Follower { holder } => out.push_str(&format!(
            "Leader duties skipped: lease {SYSTEM_NAMESPACE}/{LEADER_LEASE} is held by {holder}.\n"
        )),
    }
    out
}
