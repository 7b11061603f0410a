//! Events on `ETCDSnapshotFile` objects, with K3s's reasons and messages so dashboards that react
//! to them keep working. An event that cannot be written is logged and forgotten: it never fails
//! the operation it describes.

use etcdsnap_api::ETCDSnapshotFile;
use etcdsnap_api::consts::{EVENT_CREATED, EVENT_DELETED, EVENT_FAILED};
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, Resource};

/// Events of cluster-scoped objects live in `default`, as client-go's recorder puts them.
pub const EVENT_NAMESPACE: &str = "default";
/// `source.component` and `reportingComponent` of etcdsnap's events.
pub const COMPONENT: &str = "etcdsnap";

/// Which of K3s's three events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotEvent {
    /// A new resource: `ETCDSnapshotCreated`, or `ETCDSnapshotFailed` when it records a failure.
    Created,
    Deleted,
}

/// (type, reason, message) exactly as K3s words them.
pub fn describe(cr: &ETCDSnapshotFile, event: SnapshotEvent) -> (&'static str, &'static str, String) {
    let name = &cr.spec.snapshot_name;
    let node = &cr.spec.node_name;
    match event {
        SnapshotEvent::Deleted => ("Normal", EVENT_DELETED, format!("Snapshot {name} deleted")),
        SnapshotEvent::Created => {
            let error = cr.status.as_ref().and_then(|s| s.error.as_ref());
            match error {
                None => ("Normal", EVENT_CREATED, format!("Snapshot {name} saved on {node}")),
                Some(e) => {
                    let mut message = format!("Failed to save snapshot {name} on {node}");
                    if let Some(m) = e.message.as_deref().filter(|m| !m.is_empty()) {
                        message.push_str(": ");
                        message.push_str(m);
                    }
                    ("Warning", EVENT_FAILED, message)
                }
            }
        }
    }
}

/// Writes one of K3s's events about `cr`; failures are logged at debug level only.
pub async fn emit(client: &Client, cr: &ETCDSnapshotFile, event: SnapshotEvent, reporting_node: &str) {
    emit_described(client, cr, describe(cr, event), reporting_node).await
}

/// Writes an event of (type, reason, message) about `cr`; failures are logged at debug level.
pub async fn emit_described(
    client: &Client,
    cr: &ETCDSnapshotFile,
    (type_, reason, message): (&'static str, &'static str, String),
    reporting_node: &str,
) {
    let object = cr.metadata.name.clone().unwrap_or_default();
    let now = etcdsnap_storage::clock::now();
    let ev = Event {
        metadata: ObjectMeta {
            name: Some(format!("{object}.{:x}", now.as_nanosecond())),
            namespace: Some(EVENT_NAMESPACE.into()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some(ETCDSnapshotFile::api_version(&()).into_owned()),
            kind: Some(ETCDSnapshotFile::kind(&()).into_owned()),
            name: Some(object.clone()),
            uid: cr.metadata.uid.clone(),
            resource_version: cr.metadata.resource_version.clone(),
            ..Default::default()
        },
        reason: Some(reason.into()),
        message: Some(message),
        type_: Some(type_.into()),
        source: Some(EventSource { component: Some(COMPONENT.into()), host: Some(reporting_node.into()) }),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: Some(MicroTime(now)),
        count: Some(1),
        action: Some(reason.into()),
        reporting_component: Some(COMPONENT.into()),
        reporting_instance: Some(reporting_node.into()),
        ..Default::default()
    };
    let api: Api<Event> = Api::namespaced(client.clone(), EVENT_NAMESPACE);
    if let Err(e) = api.create(&PostParams::default(), &ev).await {
        tracing::debug!(object = %object, reason, error = %e, "event not recorded");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RecordResource;
    use crate::test_record;
    use etcdsnap_storage::Outcome;

    #[test]
    fn messages_match_k3s() {
        let r = test_record("on-demand-n1-1700000000", "n1");
        let cr = r.to_resource(etcdsnap_api::Program::K3s);
        assert_eq!(
            describe(&cr, SnapshotEvent::Created),
            ("Normal", "ETCDSnapshotCreated", "Snapshot on-demand-n1-1700000000 saved on n1".to_string())
        );
        assert_eq!(describe(&cr, SnapshotEvent::Deleted).2, "Snapshot on-demand-n1-1700000000 deleted");
        let mut failed = r.clone();
        failed.outcome = Outcome::Failed { message: "etcd unreachable".into() };
        assert_eq!(
            describe(&failed.to_resource(etcdsnap_api::Program::K3s), SnapshotEvent::Created),
            (
                "Warning",
                "ETCDSnapshotFailed",
                "Failed to save snapshot on-demand-n1-1700000000 on n1: etcd unreachable".to_string()
            )
        );
    }
}
