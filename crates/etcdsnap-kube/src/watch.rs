//! A stream of additions, changes and deletions of `ETCDSnapshotFile` objects, for `etcdsnap
//! watch` and any program that wants to follow snapshots as they happen. Built on kube-runtime's
//! watcher (which relists and resumes on its own); this layer turns its events into
//! added/modified/deleted, including deletions that happened while the watch was re-listing.

use etcdsnap_api::ETCDSnapshotFile;
use futures::{Stream, StreamExt};
use kube::Client;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use std::collections::{BTreeMap, BTreeSet};

/// One change to one object.
#[derive(Debug, Clone)]
pub enum Change {
    Added(ETCDSnapshotFile),
    Modified(ETCDSnapshotFile),
    Deleted(ETCDSnapshotFile),
}

impl Change {
    /// `ADDED`, `MODIFIED` or `DELETED`, like the watch API.
    pub fn kind(&self) -> &'static str {
        match self {
            Change::Added(_) => "ADDED",
            Change::Modified(_) => "MODIFIED",
            Change::Deleted(_) => "DELETED",
        }
    }

    pub fn object(&self) -> &ETCDSnapshotFile {
        match self {
            Change::Added(o) | Change::Modified(o) | Change::Deleted(o) => o,
        }
    }
}

/// Classifies watcher events using what has been seen so far (name -> last object).
#[derive(Debug, Default)]
pub struct Classifier {
    known: BTreeMap<String, ETCDSnapshotFile>,
    relisted: Option<BTreeSet<String>>,
}

impl Classifier {
    pub fn classify(&mut self, event: Event<ETCDSnapshotFile>) -> Vec<Change> {
        match event {
            Event::Init => {
                self.relisted = Some(BTreeSet::new());
                Vec::new()
            }
            Event::InitApply(obj) => {
                if let (Some(seen), Some(name)) = (self.relisted.as_mut(), obj.metadata.name.clone()) {
                    seen.insert(name);
                }
                self.apply(obj).into_iter().collect()
            }
            Event::InitDone => {
                let seen = self.relisted.take().unwrap_or_default();
                let gone: Vec<String> = self.known.keys().filter(|k| !seen.contains(*k)).cloned().collect();
                gone.into_iter().filter_map(|k| self.known.remove(&k)).map(Change::Deleted).collect()
            }
            Event::Apply(obj) => self.apply(obj).into_iter().collect(),
            Event::Delete(obj) => {
                if let Some(name) = &obj.metadata.name {
                    self.known.remove(name);
                }
                vec![Change::Deleted(obj)]
            }
        }
    }

    fn apply(&mut self, obj: ETCDSnapshotFile) -> Option<Change> {
        let name = obj.metadata.name.clone()?;
        match self.known.insert(name, obj.clone()) {
            None => Some(Change::Added(obj)),
            Some(prev) if prev.metadata.resource_version == obj.metadata.resource_version => None,
            Some(_) => Some(Change::Modified(obj)),
        }
    }
}

/// Every object as Added, then changes as they happen, until the stream is dropped.
pub fn changes(client: &Client) -> impl Stream<Item = Result<Change, watcher::Error>> + use<> {
    let api: Api<ETCDSnapshotFile> = Api::all(client.clone());
    let mut classifier = Classifier::default();
    watcher::watcher(api, watcher::Config::default().page_size(crate::resources::PAGE_SIZE))
        .map(move |event| event.map(|e| futures::stream::iter(classifier.classify(e).into_iter().map(Ok))))
        .map(|r| match r {
            Ok(s) => s.left_stream(),
            Err(e) => futures::stream::iter(vec![Err(e)]).right_stream(),
        })
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RecordResource;
    use crate::test_record;

    fn obj(name: &str, rv: &str) -> ETCDSnapshotFile {
        let mut o = test_record(name, "n").to_resource(etcdsnap_api::Program::K3s);
        o.metadata.name = Some(name.into());
        o.metadata.resource_version = Some(rv.into());
        o
    }

    #[test]
    fn classifies_adds_changes_and_deletes_across_relists() {
        let mut c = Classifier::default();
        assert!(c.classify(Event::Init).is_empty());
        let kinds = |v: Vec<Change>| v.iter().map(|c| c.kind()).collect::<Vec<_>>();
        assert_eq!(kinds(c.classify(Event::InitApply(obj("a-n-1", "1")))), ["ADDED"]);
        assert_eq!(kinds(c.classify(Event::InitApply(obj("a-n-2", "1")))), ["ADDED"]);
        assert!(c.classify(Event::InitDone).is_empty());
        assert_eq!(kinds(c.classify(Event::Apply(obj("a-n-1", "2")))), ["MODIFIED"]);
        assert!(c.classify(Event::Apply(obj("a-n-1", "2"))).is_empty());
        assert_eq!(kinds(c.classify(Event::Delete(obj("a-n-2", "3")))), ["DELETED"]);
        // A relist that no longer contains a-n-1 reports its deletion.
        c.classify(Event::Init);
        assert_eq!(kinds(c.classify(Event::InitApply(obj("a-n-3", "5")))), ["ADDED"]);
        let done = c.classify(Event::InitDone);
        assert_eq!(kinds(done.clone()), ["DELETED"]);
        assert_eq!(done[0].object().metadata.name.as_deref(), Some("a-n-1"));
    }
}
