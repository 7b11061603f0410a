//! Key spaces compared exactly: what a restored etcd holds at a revision against what the live
//! etcd held at the same revision, key by key: value, create and mod revision, version and
//! lease. (HashKV covers the same fields, but says only that something differs.)

use etcd_client::{Client, GetOptions};
use std::collections::BTreeMap;
use std::fmt;

/// Keys read per request: pages keep each answer small whatever the values' sizes.
const PAGE: i64 = 100;
/// The largest answer accepted (a page of large values).
const ANSWER_LIMIT: usize = 512 * 1024 * 1024;

/// One key's state at a revision.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyState {
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

impl fmt::Debug for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head = String::from_utf8_lossy(&self.value[..self.value.len().min(40)]).into_owned();
        write!(
            f,
            "create {}, mod {}, version {}, lease {:x}, {} value bytes {head:?}",
            self.create_revision,
            self.mod_revision,
            self.version,
            self.lease,
            self.value.len()
        )
    }
}

/// Every key `client`'s etcd held at `revision`.
pub async fn key_space(client: &Client, revision: i64) -> BTreeMap<Vec<u8>, KeyState> {
    let mut kv = client.kv_client().max_decoding_message_size(ANSWER_LIMIT);
    let mut keys = BTreeMap::new();
    let mut from = vec![0u8];
    loop {
        let opts = GetOptions::new().with_from_key().with_revision(revision).with_limit(PAGE);
        let resp = kv.get(from.clone(), Some(opts)).await.unwrap_or_else(|e| panic!("range at {revision}: {e}"));
        for kv in resp.kvs() {
            let state = KeyState {
                value: kv.value().to_vec(),
                create_revision: kv.create_revision(),
                mod_revision: kv.mod_revision(),
                version: kv.version(),
                lease: kv.lease(),
            };
            keys.insert(kv.key().to_vec(), state);
        }
        match resp.kvs().last() {
            Some(last) if resp.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return keys,
        }
    }
}

/// Asserts that `restored` holds at `revision` exactly the keys `live` held then, each with
/// the same value, create and mod revision, version and lease; returns how many keys that is.
pub async fn assert_same_key_space(live: &Client, restored: &Client, revision: i64) -> usize {
    let (expected, found) = (key_space(live, revision).await, key_space(restored, revision).await);
    let mut differences = Vec::new();
    for key in expected.keys().chain(found.keys().filter(|k| !expected.contains_key(*k))) {
        let (e, f) = (expected.get(key), found.get(key));
        if e != f {
            differences.push(format!("{}: live {e:?}, restored {f:?}", String::from_utf8_lossy(key)));
        }
    }
    assert!(
        differences.is_empty(),
        "the restored key space differs from the live one at revision {revision} in {} of {} keys:\n{}",
        differences.len(),
        expected.len(),
        differences.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
    );
    expected.len()
}
