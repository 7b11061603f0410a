//! Stored snapshots (`ls`, `save -o json|yaml`): K3s's table, or a Kubernetes `List` of the
//! ETCDSnapshotFile objects their records make, named by their ConfigMap-style key as K3s's
//! list does.

use super::{Cells, fit, rfc3339, table};
use etcdsnap_api::{ETCDSnapshotFile, StorageKind};
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

/// Where a copy is kept: `local`, `s3`, `gcs` or `azure` (the primary remote store), or
/// `replica` (a replica's records carry no S3 spec: they have no resource).
fn place(r: &SnapshotRecord) -> &'static str {
    match (r.storage, &r.s3) {
        (StorageKind::S3, None) => "replica",
        (StorageKind::S3, Some(_)) if r.location.starts_with("gs://") => "gcs",
        (StorageKind::S3, Some(_)) if r.location.starts_with("az://") => "azure",
        (kind, _) => kind.prefix().trim_end_matches('-'),
    }
}

/// The tables of `ls`: for a person at a terminal, name, where, size, age and drill, fitted to
/// its width; into a pipe, K3s's four columns (name, location, whole bytes, RFC 3339 time) and
/// the drill, which scripts written for `k3s etcd-snapshot ls` parse; `wide`, every column (the
/// last, until when etcdsnap locked an S3 copy with S3 Object Lock; its mode is in `-o json`).
pub fn table_of(records: &[SnapshotRecord], cells: Cells, wide: bool) -> String {
    let header: &[&str] = match (wide, cells.terminal()) {
        (true, _) => &[
            "Name",
            "Where",
            "Location",
            "Size",
            "Created",
            "Drill",
            "Revision",
            "Compression",
            "Cluster-ID",
            "History",
            "Locked-Until",
        ],
        (false, true) => &["Name", "Where", "Size", "Created", "Drill"],
        (false, false) => &["Name", "Location", "Size", "Created", "Drill"],
    };
    let mut rows = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
    for r in records {
        let cell = |column: &str| match column {
            "Name" => r.name.to_string(),
            "Where" => place(r).to_string(),
            // A wide table is read whole: locations are never shortened there.
            "Location" if wide => r.location.clone(),
            "Location" => cells.location(&r.location),
            "Size" => cells.size(r.size),
            "Created" => cells.created(r.created_at),
            "Drill" => drill(r),
            "Revision" => r.etcd.as_ref().map(|e| e.revision.to_string()).unwrap_or_else(|| "-".into()),
            "Compression" => r.compression.to_string(),
            "Locked-Until" => r.s3_lock.map_or_else(|| "-".into(), |l| rfc3339(l.until)),
            // Legacy only where the revision is known: a record without etcd facts says nothing.
            "History" => r.etcd.as_ref().map_or_else(
                || "-".into(),
                |e| etcdsnap_storage::pitr::history::label(e.history.as_deref()).to_string(),
            ),
            _ => r.etcd.as_ref().map(|e| e.cluster_id.clone()).filter(|c| !c.is_empty()).unwrap_or_else(|| "-".into()),
        };
        rows.push(header.iter().map(|h| cell(h)).collect());
    }
    match (wide, cells.width()) {
        (false, Some(width)) => table(&fit(rows, width, true)),
        _ => table(&rows),
    }
}

/// The last restore drill's result, in a word or two.
fn drill(r: &SnapshotRecord) -> String {
    match &r.drill {
        Some(d) if d.passed() => "passed".to_string(),
        Some(d) if d.failed() => "failed".to_string(),
        Some(_) => "not compared".to_string(),
        None => "-".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdsnap_api::{SnapshotName, StorageKind};

    fn record(name: &str, storage: StorageKind) -> SnapshotRecord {
        let name = SnapshotName::parse(name).unwrap();
        let created = jiff::Timestamp::from_second(1_700_000_000).unwrap();
        let location = format!("file:///var/lib/rancher/k3s/server/db/snapshots/{name}");
        SnapshotRecord::stored(name, storage, "n", location, created, 67_174_432)
    }

    fn now() -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_700_000_300).unwrap()
    }

    #[test]
    fn a_pipe_gets_k3s_s_columns_and_whole_bytes() {
        let text = table_of(&[record("on-demand-n-1700000000", StorageKind::Local)], Cells::new(false, now()), false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>(), ["Name", "Location", "Size", "Created", "Drill"]);
        let row: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(row[1], "file:///var/lib/rancher/k3s/server/db/snapshots/on-demand-n-1700000000");
        assert_eq!(&row[2..], ["67174432", "2023-11-14T22:13:20Z", "-"]);
    }

    #[test]
    fn a_terminal_gets_short_columns_fitted_to_its_width() {
        let long = "on-demand-ip-172-31-10-20.eu-west-1.compute.internal-1700000000.zst";
        let records = [record(long, StorageKind::Local), record(long, StorageKind::S3)];
        let tty = Cells::new(true, now());
        let roomy = table_of(&records, tty.with_width(200), false);
        assert!(roomy.lines().nth(1).unwrap().starts_with(long), "{roomy}");
        assert_eq!(
            roomy.lines().next().unwrap().split_whitespace().collect::<Vec<_>>(),
            ["Name", "Where", "Size", "Created", "Drill"]
        );
        for width in [80, 60] {
            let text = table_of(&records, tty.with_width(width), false);
            for line in text.lines() {
                assert!(line.chars().count() <= width, "{width}: {line:?}");
            }
            let row = text.lines().nth(1).unwrap();
            assert!(row.contains('…') && row.contains("1700000000.zst") && row.contains("64.1 MiB"), "{text}");
        }
        // Wide: every column, every name whole, and the lock of a locked S3 copy.
        let mut locked = records.clone();
        locked[1].s3 = Some(etcdsnap_api::ETCDSnapshotS3::default());
        locked[1].s3_lock = Some(etcdsnap_api::S3Lock {
            until: jiff::Timestamp::from_second(1_700_007_200).unwrap(),
            mode: etcdsnap_api::LockMode::Compliance,
        });
        let wide = table_of(&locked, tty.with_width(80), true);
        assert!(wide.lines().nth(1).unwrap().starts_with(long), "{wide}");
        assert_eq!(wide.lines().next().unwrap().split_whitespace().count(), 11);
        let last: Vec<&str> = wide.lines().filter_map(|l| l.split_whitespace().last()).collect();
        assert_eq!(last, ["Locked-Until", "-", "2023-11-15T00:13:20Z"], "{wide}");
    }

    #[test]
    fn a_remote_copy_is_placed_by_its_store() {
        let mut r = record("on-demand-n-1700000000", StorageKind::S3);
        assert_eq!(place(&r), "replica");
        r.s3 = Some(etcdsnap_api::ETCDSnapshotS3::default());
        for (location, expected) in [("s3://b/f/x", "s3"), ("gs://b/f/x", "gcs"), ("az://c/f/x", "azure")] {
            r.location = location.into();
            assert_eq!(place(&r), expected, "{location}");
        }
    }
}
