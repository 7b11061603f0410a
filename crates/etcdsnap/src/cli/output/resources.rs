//! ETCDSnapshotFile resources as the API server has them (`ls --cluster`, `watch`): one row per
//! resource, or the objects themselves.

use super::{Cells, table};
use etcdsnap_api::ETCDSnapshotFile;
use serde::Serialize;

/// The columns of [`row`].
pub const HEADER: [&str; 7] = ["NAME", "SNAPSHOTNAME", "NODE", "LOCATION", "SIZE", "CREATIONTIME", "READY"];

/// `ls --cluster`'s table.
pub fn table_of(items: &[ETCDSnapshotFile], cells: Cells) -> String {
    let mut rows = vec![HEADER.map(String::from).to_vec()];
    rows.extend(items.iter().map(|cr| row(cr, cells)));
    table(&rows)
}

/// One resource's cells, in the order of [`HEADER`].
pub fn row(cr: &ETCDSnapshotFile, cells: Cells) -> Vec<String> {
    let status = cr.status.clone().unwrap_or_default();
    vec![
        cr.metadata.name.clone().unwrap_or_default(),
        cr.spec.snapshot_name.clone(),
        cr.spec.node_name.clone(),
        cells.location(&cr.spec.location),
        status.size.map(|q| cells.quantity(&q.0)).unwrap_or_default(),
        status.creation_time.map(|t| cells.created(t.0)).unwrap_or_default(),
        status.ready_to_use.unwrap_or(false).to_string(),
    ]
}

/// One change `watch -o json` prints, a line each, like a Kubernetes watch event.
#[derive(Serialize)]
pub struct WatchEvent<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub object: &'a ETCDSnapshotFile,
}
