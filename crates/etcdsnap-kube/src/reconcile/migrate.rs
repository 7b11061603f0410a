//! A change of program, carried through: etcdsnap's own resources written under the other
//! program's names (an RKE2 cluster whose snapshots etcdsnap recorded with K3s's label before it
//! knew better) get this program's storage-node label and token-hash annotation in place of the
//! other's, one update per resource, so that each is wholly one program's at any moment.
//!
//! Only resources etcdsnap wrote (`etcdsnap.io/managed-by`) that lack this program's label are
//! moved: a K3s server's own resources stay as they are. It is the leader's duty, done from the
//! listing of every resource its pass makes anyway, so a pass with nothing to move costs no
//! request. Updating rather than deleting and creating keeps the objects, so nothing that
//! watches them (Rancher) sees a snapshot deleted.

use super::ReconcileError;
use crate::Kube;
use crate::leader::LeaderTerm;
use crate::resources::{self, is_managed, is_terminating, storage_label};
use etcdsnap_api::{ETCDSnapshotFile, Program};

/// The resource with `from`'s label and token-hash annotation renamed to `to`'s, or None when it
/// is not etcdsnap's, already carries `to`'s label, or has no `from` label.
pub fn relabel(cr: &ETCDSnapshotFile, from: Program, to: Program) -> Option<ETCDSnapshotFile> {
    if from == to || !is_managed(cr) || is_terminating(cr) || storage_label(cr, to).is_some() {
        return None;
    }
    let value = storage_label(cr, from)?.to_string();
    let mut moved = cr.clone();
    let labels = moved.metadata.labels.get_or_insert_default();
    labels.remove(from.label_storage_node());
    labels.insert(to.label_storage_node().to_string(), value);
    let annotations = moved.metadata.annotations.get_or_insert_default();
    if let Some(hash) = annotations.remove(from.annotation_token_hash()) {
        annotations.entry(to.annotation_token_hash().to_string()).or_insert(hash);
    }
    Some(moved)
}

/// Moves every resource of `existing` (the leader's listing of all of them) written under the
/// other program's names to this program's, during `term`, and puts the written objects in
/// their place. Returns how many were moved and what failed; the next pass retries.
pub async fn run(kube: &Kube, existing: &mut [ETCDSnapshotFile], term: &LeaderTerm) -> (usize, Vec<ReconcileError>) {
    let program = kube.settings.program;
    let (mut moved, mut errors) = (0, Vec::new());
    for slot in existing.iter_mut() {
        let Some(cr) = relabel(slot, program.other(), program) else { continue };
        if let Err(lost) = term.check() {
            errors.push(lost.into());
            break;
        }
        match resources::replace(&kube.client, &cr).await {
            Ok(written) => {
                *slot = written;
                moved += 1;
            }
            // Changed meanwhile: the next pass looks again.
            Err(e) if e.is_conflict() || e.is_not_found() => {}
            Err(e) => errors.push(ReconcileError::Write(e)),
        }
    }
    if moved > 0 {
        let (from, to) = (program.other().label_storage_node(), program.label_storage_node());
        tracing::info!(moved, "resources etcdsnap wrote with {from} now carry {to}");
    }
    (moved, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RecordResource;
    use crate::test_record;

    #[test]
    fn etcdsnap_s_resources_move_to_the_program_s_names_wholly() {
        let mut r = test_record("a-n1-1700000000", "n1");
        r.token_hash = etcdsnap_api::TokenHash::parse_recorded("652c7dc687d9");
        let mut old = r.to_resource(Program::K3s);
        old.metadata.labels.get_or_insert_default().insert("team".into(), "x".into());
        let moved = relabel(&old, Program::K3s, Program::Rke2).expect("moved");
        let labels = moved.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("etcd.rke2.cattle.io/snapshot-storage-node").map(String::as_str), Some("n1"));
        assert!(!labels.contains_key("etcd.k3s.cattle.io/snapshot-storage-node"));
        assert_eq!(labels.get("team").map(String::as_str), Some("x"), "others' labels stay");
        let ann = moved.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(ann.get("etcd.rke2.cattle.io/snapshot-token-hash").map(String::as_str), Some("652c7dc687d9"));
        assert!(!ann.contains_key("etcd.k3s.cattle.io/snapshot-token-hash"));
        // It is now what this program writes for the record.
        assert!(resources::merge_for_update(&moved, &r.to_resource(Program::Rke2)).is_none());
        assert!(relabel(&moved, Program::K3s, Program::Rke2).is_none(), "done once");
    }

    #[test]
    fn k3s_s_own_resources_and_finished_ones_are_left_alone() {
        let r = test_record("a-n1-1700000000", "n1");
        let mut k3s_own = r.to_resource(Program::K3s);
        k3s_own.metadata.annotations = None;
        assert!(relabel(&k3s_own, Program::K3s, Program::Rke2).is_none());
        let mut both = r.to_resource(Program::K3s);
        both.metadata
            .labels
            .get_or_insert_default()
            .insert("etcd.rke2.cattle.io/snapshot-storage-node".into(), "n1".into());
        assert!(relabel(&both, Program::K3s, Program::Rke2).is_none());
        assert!(relabel(&r.to_resource(Program::Rke2), Program::Rke2, Program::Rke2).is_none());
    }
}
