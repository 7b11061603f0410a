//! Stored snapshots (`ls`, `save -o json|yaml`): K3s's table, or a Kubernetes `List` of the
//! ETCDSnapshotFile objects their records make, named by their ConfigMap-style key as K3s's
//! list does.

use super::{Cells, table};
use etcdsnap_api::ETCDSnapshotFile;
use etcdsnap_kube::RecordResource;
use etcdsnap_storage::SnapshotRecord;
use serde::Serialize;

/// A Kubernetes `List` object, as `kubectl get -o json` prints one.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeList<T> {
    api_version: &'static str,
    kind: &'static str,
    metadata: ListMeta,
    pub items: Vec<T>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListMeta {
    resource_version: &'static str,
}

impl<T> KubeList<T> {
    pub fn new(items: Vec<T>) -> KubeList<T> {
        KubeList { api_version: "v1", kind: "List", metadata: ListMeta { resource_version: "" }, items }
    }
}

/// The records as resources (labelled with this run's program's names), each named by its key.
pub fn view(records: &[SnapshotRecord]) -> KubeList<ETCDSnapshotFile> {
    KubeList::new(
        records
            .iter()
            .map(|r| {
                let mut cr = r.to_resource(crate::cli::resolve::program_in_use());
                cr.metadata.name = Some(r.key());
                cr
            })
            .collect(),
    )
}

/// K3s's four columns, then the last restore drill's result.
pub fn table_of(records: &[SnapshotRecord], cells: Cells) -> String {
    let mut rows = vec![["Name", "Location", "Size", "Created", "Drill"].map(String::from).to_vec()];
    for r in records {
        let drill = match &r.drill {
            Some(d) if d.passed() => "passed".to_string(),
            Some(_) => "failed".to_string(),
            None => "-".to_string(),
        };
        rows.push(vec![
            r.name.to_string(),
            cells.location(&r.location),
            cells.size(r.size),
            cells.created(r.created_at),
            drill,
        ]);
    }
    table(&rows)
}
