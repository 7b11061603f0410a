//! The etcd cluster's members as a snapshot records them, and the member set of a whole-cluster
//! restore built from them (`restore --all-members`): every voting member, some moved to new
//! peer URLs, and a cluster token that every node derives alike without talking to the others.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;

/// One member of the etcd cluster at save time, as etcd's MemberList answered.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterMember {
    /// etcd's `--name`; empty for a member added but never started.
    pub name: String,
    /// Member id in hex, as etcdctl prints it.
    pub id: String,
    pub peer_urls: Vec<String>,
    #[serde(default)]
    pub client_urls: Vec<String>,
    /// A learner does not vote and is not part of a restored cluster.
    #[serde(default)]
    pub is_learner: bool,
}

/// `--member NAME=PEER_URL`: a recorded member restored at a new peer URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberOverride {
    pub name: String,
    pub peer_url: String,
}

/// Why a whole-cluster member set cannot be built. Nothing has been written when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemberSetError {
    #[error(
        "snapshot {0} records no cluster members (taken by K3s, RKE2 or an etcdsnap before members were recorded): restore each member with --initial-cluster instead of --all-members"
    )]
    NotRecorded(String),
    #[error("--member {0:?}: expected NAME=PEER_URL, e.g. m1=https://10.0.0.7:2380")]
    Syntax(String),
    #[error("--member {given:?}: {url:?} is not a peer URL ({why}); expected http(s)://HOST:PORT")]
    BadUrl { given: String, url: String, why: String },
    #[error("member {name:?} is not a voting member recorded in snapshot {snapshot} (recorded: {})", .recorded.join(", "))]
    UnknownMember { name: String, snapshot: String, recorded: Vec<String> },
    #[error("--member {0:?} is given twice")]
    Duplicate(String),
    #[error("members {first:?} and {second:?} would share the peer URL {url}")]
    SharedPeerUrl { first: String, second: String, url: String },
    #[error("a voting member recorded in snapshot {0} has no name (added but never started): it cannot be restored")]
    Unnamed(String),
}

impl MemberOverride {
    /// Parses `NAME=PEER_URL`, checking that the URL is `http(s)://HOST:PORT` with nothing after.
    pub fn parse(given: &str) -> Result<MemberOverride, MemberSetError> {
        let (name, url) = given.split_once('=').ok_or_else(|| MemberSetError::Syntax(given.to_string()))?;
        let (name, url) = (name.trim(), url.trim());
        if name.is_empty() || url.is_empty() {
            return Err(MemberSetError::Syntax(given.to_string()));
        }
        check_peer_url(url).map_err(|why| MemberSetError::BadUrl {
            given: given.to_string(),
            url: url.to_string(),
            why,
        })?;
        Ok(MemberOverride { name: name.to_string(), peer_url: url.to_string() })
    }
}

/// `http(s)://HOST:PORT` with a numeric port and no path, query or credentials.
fn check_peer_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| "the scheme must be http or https".to_string())?;
    if rest.contains(['/', '?', '#', '@', ',', ' ']) {
        return Err("only a host and a port may follow the scheme".into());
    }
    let (host, port) = rest.rsplit_once(':').ok_or_else(|| "no port".to_string())?;
    let host_ok = match host.strip_prefix('[') {
        Some(v6) => v6.strip_suffix(']').is_some_and(|h| !h.is_empty()),
        None => !host.is_empty() && !host.contains(':'),
    };
    if !host_ok {
        return Err("no host".into());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("port {port:?} is not a number from 1 to 65535")),
    }
}

/// The members of a whole-cluster restore, the same on every node.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MemberSet {
    /// Voting members by name, each with the peer URLs it is restored with.
    pub members: BTreeMap<String, Vec<String>>,
    /// Names moved to a new peer URL with `--member`.
    pub moved: Vec<String>,
    /// The new cluster's token, derived from `seed` and the members.
    pub token: String,
}

impl MemberSet {
    /// Every voting member recorded, with `overrides` applied, and the token derived from
    /// `seed` (what identifies the restored data: the snapshot's sha256 and the revision it is
    /// rolled forward to) and the final member set. `snapshot` names the snapshot in errors.
    pub fn build(
        snapshot: &str,
        recorded: Option<&[ClusterMember]>,
        overrides: &[MemberOverride],
        seed: &str,
    ) -> Result<MemberSet, MemberSetError> {
        let recorded =
            recorded.filter(|m| !m.is_empty()).ok_or_else(|| MemberSetError::NotRecorded(snapshot.into()))?;
        let mut members = BTreeMap::new();
        for m in recorded.iter().filter(|m| !m.is_learner) {
            if m.name.is_empty() {
                return Err(MemberSetError::Unnamed(snapshot.into()));
            }
            members.insert(m.name.clone(), m.peer_urls.clone());
        }
        let mut moved = Vec::new();
        for o in overrides {
            if moved.contains(&o.name) {
                return Err(MemberSetError::Duplicate(o.name.clone()));
            }
            let Some(urls) = members.get_mut(&o.name) else {
                return Err(unknown(snapshot, &o.name, &members));
            };
            *urls = vec![o.peer_url.clone()];
            moved.push(o.name.clone());
        }
        let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, urls) in &members {
            for url in urls {
                if let Some(first) = owner.insert(url, name) {
                    return Err(MemberSetError::SharedPeerUrl {
                        first: first.to_string(),
                        second: name.clone(),
                        url: url.clone(),
                    });
                }
            }
        }
        let token = derive_token(seed, &members);
        Ok(MemberSet { members, moved, token })
    }

    /// Checks that `name` is one of the members; the error lists them.
    pub fn require(&self, snapshot: &str, name: &str) -> Result<(), MemberSetError> {
        match self.members.contains_key(name) {
            true => Ok(()),
            false => Err(unknown(snapshot, name, &self.members)),
        }
    }

    /// etcd's `--initial-cluster`: `name=url` for every peer URL of every member, by name.
    pub fn initial_cluster(&self) -> String {
        let entries = self.members.iter().flat_map(|(n, urls)| urls.iter().map(move |u| format!("{n}={u}")));
        entries.collect::<Vec<_>>().join(",")
    }

    /// `name`'s peer URLs, comma-separated (etcd's `--initial-advertise-peer-urls`).
    pub fn peer_urls(&self, name: &str) -> String {
        self.members.get(name).map(|u| u.join(",")).unwrap_or_default()
    }
}

fn unknown(snapshot: &str, name: &str, members: &BTreeMap<String, Vec<String>>) -> MemberSetError {
    MemberSetError::UnknownMember {
        name: name.to_string(),
        snapshot: snapshot.to_string(),
        recorded: members.keys().cloned().collect(),
    }
}

/// `etcdsnap-<16 hex>`: sha256 over the seed and every member with its peer URLs, in name
/// order. A new token per restored data and member set, so no member of an earlier cluster
/// (whose token differs) is taken for a member of this one.
fn derive_token(seed: &str, members: &BTreeMap<String, Vec<String>>) -> String {
    let mut h = Sha256::new();
    h.update(b"etcdsnap all-members v1\n");
    h.update(seed.as_bytes());
    for (name, urls) in members {
        h.update(b"\n");
        h.update(name.as_bytes());
        for u in urls {
            h.update(b"=");
            h.update(u.as_bytes());
        }
    }
    let digest = hex::encode(h.finalize());
    format!("etcdsnap-{}", &digest[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, port: u16, learner: bool) -> ClusterMember {
        ClusterMember {
            name: name.into(),
            id: format!("{port:x}"),
            peer_urls: vec![format!("http://127.0.0.1:{port}")],
            client_urls: vec![],
            is_learner: learner,
        }
    }

    #[test]
    fn the_set_is_every_voting_member_with_moves_and_one_token() {
        let recorded = [member("m1", 2381, false), member("m0", 2380, false), member("l", 2390, true)];
        let moved = [MemberOverride::parse("m1=https://10.0.0.7:2380").unwrap()];
        let set = MemberSet::build("s", Some(&recorded), &moved, "abc@5").unwrap();
        assert_eq!(set.initial_cluster(), "m0=http://127.0.0.1:2380,m1=https://10.0.0.7:2380");
        assert_eq!(set.moved, ["m1"]);
        assert!(set.token.starts_with("etcdsnap-") && set.token.len() == 25);
        // The same on every node; another seed or another member set gives another token.
        assert_eq!(MemberSet::build("s", Some(&recorded), &moved, "abc@5").unwrap().token, set.token);
        assert_ne!(MemberSet::build("s", Some(&recorded), &moved, "abc@6").unwrap().token, set.token);
        assert_ne!(MemberSet::build("s", Some(&recorded), &[], "abc@5").unwrap().token, set.token);
        assert!(set.require("s", "m0").is_ok());
        assert!(matches!(set.require("s", "l"), Err(MemberSetError::UnknownMember { .. })));
    }

    #[test]
    fn bad_input_is_refused() {
        let recorded = [member("m0", 2380, false), member("m1", 2381, false)];
        assert!(matches!(MemberSet::build("s", None, &[], "x"), Err(MemberSetError::NotRecorded(_))));
        assert!(matches!(MemberSet::build("s", Some(&[]), &[], "x"), Err(MemberSetError::NotRecorded(_))));
        for bad in ["m0", "=http://h:1", "m0=", "m0=ftp://h:1", "m0=http://h", "m0=http://h:x", "m0=http://h:1/p"] {
            assert!(MemberOverride::parse(bad).is_err(), "{bad}");
        }
        assert!(MemberOverride::parse("m0=http://[::1]:2380").is_ok());
        let clash = [MemberOverride::parse("m0=http://127.0.0.1:2381").unwrap()];
        let err = MemberSet::build("s", Some(&recorded), &clash, "x").unwrap_err();
        assert!(matches!(err, MemberSetError::SharedPeerUrl { .. }), "{err}");
        let unknown = [MemberOverride::parse("m9=http://h:1").unwrap()];
        let err = MemberSet::build("s", Some(&recorded), &unknown, "x").unwrap_err();
        assert!(err.to_string().contains("m0, m1"), "{err}");
        let twice = [MemberOverride::parse("m0=http://h:1").unwrap(), MemberOverride::parse("m0=http://h:2").unwrap()];
        assert!(matches!(MemberSet::build("s", Some(&recorded), &twice, "x"), Err(MemberSetError::Duplicate(_))));
    }
}
