//! Talking to etcd: connecting (optionally with mutual TLS), asking a member for its status, and
//! streaming a snapshot out of it.

use crate::describe_error;
use bytes::Bytes;
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use etcdsnap_api::{ClusterMember, EtcdInfo, KvHash};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs, tried in order; the snapshot is taken from the first member that answers.
    pub endpoints: Vec<String>,
    /// CA bundle that signed the server certificates (PEM).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key for mutual TLS (PEM).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Time allowed to establish a connection.
    pub dial_timeout: Duration,
    /// Time allowed for a unary request such as Status.
    pub command_timeout: Duration,
    /// A snapshot stream that delivers nothing for this long is abandoned.
    pub stream_idle_timeout: Duration,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec!["https://127.0.0.1:2379".into()],
            ca_file: None,
            cert_file: None,
            key_file: None,
            dial_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(30),
            stream_idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Failures talking to etcd. Messages name the endpoint and say what to check.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("no etcd endpoints configured (--endpoints)")]
    NoEndpoints,
    #[error("cannot read {what} {path}: {source}")]
    ReadTls {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--cert and --key must be given together")]
    IncompleteIdentity,
    #[error("cannot reach etcd at {endpoint}: {message}")]
    Unreachable { endpoint: String, message: String },
    #[error(
        "etcd member {member_id} at {endpoint} is a learner; snapshots are not taken from learners: point --endpoints at a voting member"
    )]
    Learner { endpoint: String, member_id: String },
    #[error("etcd at {endpoint} reports errors: {errors}")]
    Unhealthy { endpoint: String, errors: String },
    #[error("etcd snapshot stream from {endpoint} failed: {message}")]
    Stream { endpoint: String, message: String },
    #[error("etcd snapshot stream from {endpoint} stalled: no data for {seconds}s")]
    Stalled { endpoint: String, seconds: u64 },
}

/// What a member says about itself; recorded with every snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    pub endpoint: String,
    pub version: String,
    pub db_size: i64,
    pub revision: i64,
    pub cluster_id: u64,
    pub member_id: u64,
    pub leader: u64,
    pub is_learner: bool,
}

impl MemberStatus {
    pub fn etcd_info(&self) -> EtcdInfo {
        EtcdInfo {
            revision: self.revision,
            version: self.version.clone(),
            cluster_id: format!("{:x}", self.cluster_id),
            member_id: format!("{:x}", self.member_id),
            db_size: Some(self.db_size),
            hash_kv: None,
            kubernetes_keys: None,
            kubernetes_keys_by_resource: None,
            members: None,
        }
    }
}

/// A connection to one etcd member.
pub struct EtcdMember {
    client: Client,
    endpoint: String,
    config: EtcdConfig,
}

/// HTTP/2 flow-control windows for the snapshot stream. tonic's default (64 KiB per stream)
/// makes etcd send a large snapshot in small bursts, each waiting for a window update; large
/// windows let it stream, with fewer and larger reads. The stream window is also memory:
/// whenever the pipeline falls behind, the connection task keeps reading until etcd has used
/// the whole window, and holds it as 16 KiB frames (about 1.25x the window in allocations).
/// 1 MiB streams as fast as 2 MiB did on loopback and saves ~1.2 MiB of peak RSS; the
/// connection window only needs to stay above it.
/// Keys read per page when counting by resource type.
const KEY_PAGE: i64 = 10_000;

const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 2 * 1024 * 1024;

impl EtcdConfig {
    /// TLS settings, when the endpoint is https or certificates were given.
    fn tls_options(&self, endpoint: &str) -> Result<Option<TlsOptions>, EtcdError> {
        let needs_tls = self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some();
        if needs_tls || endpoint.starts_with("https://") {
            let mut tls = TlsOptions::new();
            // Without --cacert the system roots apply (etcd-client's tls-roots feature).
            if let Some(ca) = &self.ca_file {
                tls = tls.ca_certificate(Certificate::from_pem(read_pem("CA file (--cacert)", ca)?));
            }
            match (&self.cert_file, &self.key_file) {
                (Some(cert), Some(key)) => {
                    let cert = read_pem("client certificate (--cert)", cert)?;
                    let key = read_pem("client key (--key)", key)?;
                    tls = tls.identity(Identity::from_pem(cert, key));
                }
                (None, None) => {}
                _ => return Err(EtcdError::IncompleteIdentity),
            }
            return Ok(Some(tls));
        }
        Ok(None)
    }

    /// A gRPC channel to one endpoint, with large flow-control windows.
    async fn channel(&self, endpoint: &str) -> Result<tonic::transport::Channel, EtcdError> {
        let unreachable = |message: String| EtcdError::Unreachable {
            endpoint: endpoint.to_string(),
            message: with_hint(endpoint, message),
        };
        let url = if endpoint.contains("://") {
            endpoint.to_string()
        } else if self.tls_options(endpoint)?.is_some() {
            format!("https://{endpoint}")
        } else {
            format!("http://{endpoint}")
        };
        let mut builder = tonic::transport::Endpoint::from_shared(url.clone())
            .map_err(|e| unreachable(format!("invalid endpoint URL: {e}")))?
            .connect_timeout(self.dial_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10))
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW);
        if let Some(tls) = self.tls_options(&url)? {
            if !url.starts_with("https://") {
                return Err(unreachable("TLS settings (--cacert/--cert/--key) need an https:// endpoint".into()));
            }
            builder = builder.tls_config(tls).map_err(|e| unreachable(describe_error(&e)))?;
        }
        let connect = builder.connect();
        tokio::time::timeout(self.dial_timeout, connect)
            .await
            .map_err(|_| unreachable(format!("no connection within {:?}", self.dial_timeout)))?
            .map_err(|e| unreachable(describe_error(&e)))
    }

    /// Connects to the first endpoint whose member answers Status; that member will serve the
    /// snapshot. A learner is refused with an error rather than skipped silently.
    pub async fn connect_member(&self) -> Result<(EtcdMember, MemberStatus), EtcdError> {
        self.connect_member_except(&[]).await
    }

    /// [`Self::connect_member`], skipping `tried` (members that failed this save already).
    pub async fn connect_member_except(&self, tried: &[String]) -> Result<(EtcdMember, MemberStatus), EtcdError> {
        if self.endpoints.is_empty() {
            return Err(EtcdError::NoEndpoints);
        }
        for endpoint in &self.endpoints {
            self.tls_options(endpoint)?;
        }
        let mut last = None;
        let candidates: Vec<&String> = self.endpoints.iter().filter(|e| !tried.contains(e)).collect();
        for (i, endpoint) in candidates.iter().copied().enumerate() {
            match self.try_member(endpoint).await {
                Ok((member, status)) => {
                    if status.is_learner {
                        return Err(EtcdError::Learner {
                            endpoint: endpoint.clone(),
                            member_id: format!("{:x}", status.member_id),
                        });
                    }
                    return Ok((member, status));
                }
                // Said here only when another endpoint is tried next: the last one's error is
                // the caller's to report, once.
                Err(e) if i + 1 < candidates.len() => {
                    tracing::warn!(endpoint = %endpoint, error = %e, "etcd endpoint not usable; trying the next");
                    last = Some(e);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(EtcdError::NoEndpoints))
    }

    async fn try_member(&self, endpoint: &str) -> Result<(EtcdMember, MemberStatus), EtcdError> {
        let channel = self.channel(endpoint).await?;
        let client = Client::from_channel(etcd_client::Channel::Tonic(channel), Some(ConnectOptions::new()))
            .await
            .map_err(|e| EtcdError::Unreachable {
                endpoint: endpoint.to_string(),
                message: with_hint(endpoint, describe_error(&e)),
            })?;
        let mut member = EtcdMember { client, endpoint: endpoint.to_string(), config: self.clone() };
        let status = member.status().await?;
        Ok((member, status))
    }
}

/// A connection error with what to try when its cause is a known mistake: https against a
/// member that serves plain HTTP (the TLS handshake meets a plain HTTP/2 answer).
fn with_hint(endpoint: &str, message: String) -> String {
    let plain_answer = ["tls handshake eof", "InvalidContentType", "corrupt message", "wrong version number"]
        .iter()
        .any(|m| message.contains(m));
    match endpoint.strip_prefix("https://") {
        Some(rest) if plain_answer => {
            format!("{message} (the member may serve plain HTTP: try --endpoints http://{rest})")
        }
        _ => message,
    }
}

/// The first key after every key starting with `prefix` (etcd's range end for a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The resource type of a Kubernetes key below `/registry/`: `pods` for `pods/ns/name`,
/// `apps.example.com/widgets` for a group's resource.
fn resource_of(rest: &[u8]) -> String {
    let text = String::from_utf8_lossy(rest);
    let mut parts = text.split('/');
    let first = parts.next().unwrap_or_default();
    match parts.next() {
        Some(second) if first.contains('.') => format!("{first}/{second}"),
        _ => first.to_string(),
    }
}

fn read_pem(what: &'static str, path: &PathBuf) -> Result<Vec<u8>, EtcdError> {
    std::fs::read(path).map_err(|source| EtcdError::ReadTls { what, path: path.clone(), source })
}

impl EtcdMember {
    /// The raw client, for what this module does not wrap (a point-in-time capture's watch).
    pub fn into_client(self) -> Client {
        self.client
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The member's Status, within the command timeout.
    pub async fn status(&mut self) -> Result<MemberStatus, EtcdError> {
        let endpoint = self.endpoint.clone();
        let unreachable = |message: String| EtcdError::Unreachable {
            endpoint: endpoint.clone(),
            message: with_hint(&endpoint, message),
        };
        let resp = tokio::time::timeout(self.config.command_timeout, self.client.status())
            .await
            .map_err(|_| unreachable(format!("no Status answer within {:?}", self.config.command_timeout)))?
            .map_err(|e| unreachable(describe_error(&e)))?;
        let header = resp.header();
        if !resp.errors().is_empty() {
            return Err(EtcdError::Unhealthy { endpoint: self.endpoint.clone(), errors: resp.errors().join("; ") });
        }
        Ok(MemberStatus {
            endpoint: self.endpoint.clone(),
            version: resp.version().to_string(),
            db_size: resp.db_size(),
            revision: header.map(|h| h.revision()).unwrap_or_default(),
            cluster_id: header.map(|h| h.cluster_id()).unwrap_or_default(),
            member_id: header.map(|h| h.member_id()).unwrap_or_default(),
            leader: resp.leader(),
            is_learner: resp.is_learner(),
        })
    }

    /// etcd's HashKV of this member's key space at `revision`, within the command timeout. It
    /// reads the member's whole key space (a cost measured in bench/RESULTS.md).
    pub async fn hash_kv(&mut self, revision: i64) -> Result<KvHash, EtcdError> {
        let endpoint = self.endpoint.clone();
        let unreachable = |message: String| EtcdError::Unreachable {
            endpoint: endpoint.clone(),
            message: with_hint(&endpoint, message),
        };
        let resp = tokio::time::timeout(self.config.command_timeout, self.client.hash_kv(revision))
            .await
            .map_err(|_| unreachable(format!("no HashKV answer within {:?}", self.config.command_timeout)))?
            .map_err(|e| unreachable(describe_error(&e)))?;
        Ok(KvHash { hash: resp.hash(), compact_revision: resp.compact_version() })
    }

    /// How many keys under `prefix` exist at `revision`, within the command timeout.
    pub async fn count_keys(&mut self, prefix: &[u8], revision: i64) -> Result<i64, EtcdError> {
        let endpoint = self.endpoint.clone();
        let unreachable = |message: String| EtcdError::Unreachable {
            endpoint: endpoint.clone(),
            message: with_hint(&endpoint, message),
        };
        let opts = etcd_client::GetOptions::new().with_prefix().with_count_only().with_revision(revision);
        let resp = tokio::time::timeout(self.config.command_timeout, self.client.get(prefix, Some(opts)))
            .await
            .map_err(|_| unreachable(format!("no Range answer within {:?}", self.config.command_timeout)))?
            .map_err(|e| unreachable(describe_error(&e)))?;
        Ok(resp.count())
    }

    /// The cluster's members as this member knows them (etcd's MemberList).
    pub async fn members(&mut self) -> Result<Vec<ClusterMember>, EtcdError> {
        let endpoint = self.endpoint.clone();
        let unreachable = |message: String| EtcdError::Unreachable {
            endpoint: endpoint.clone(),
            message: with_hint(&endpoint, message),
        };
        let resp = tokio::time::timeout(self.config.command_timeout, self.client.member_list())
            .await
            .map_err(|_| unreachable(format!("no MemberList answer within {:?}", self.config.command_timeout)))?
            .map_err(|e| unreachable(describe_error(&e)))?;
        Ok(resp
            .members()
            .iter()
            .map(|m| ClusterMember {
                name: m.name().to_string(),
                id: format!("{:x}", m.id()),
                peer_urls: m.peer_urls().to_vec(),
                client_urls: m.client_urls().to_vec(),
                is_learner: m.is_learner(),
            })
            .collect())
    }

    /// How many keys under `prefix` exist at `revision` for each resource type (the key's first
    /// segment after the prefix, two when the first names an API group, as in
    /// `apiregistration.k8s.io/apiservices`). Reads keys only, a page at a time.
    pub async fn count_keys_by_resource(
        &mut self,
        prefix: &[u8],
        revision: i64,
    ) -> Result<BTreeMap<String, i64>, EtcdError> {
        let endpoint = self.endpoint.clone();
        let unreachable = |message: String| EtcdError::Unreachable {
            endpoint: endpoint.clone(),
            message: with_hint(&endpoint, message),
        };
        let end = prefix_end(prefix);
        let mut from = prefix.to_vec();
        let mut counts = BTreeMap::new();
        loop {
            let opts = etcd_client::GetOptions::new()
                .with_range(end.clone())
                .with_keys_only()
                .with_limit(KEY_PAGE)
                .with_revision(revision);
            let resp = tokio::time::timeout(self.config.command_timeout, self.client.get(from.clone(), Some(opts)))
                .await
                .map_err(|_| unreachable(format!("no Range answer within {:?}", self.config.command_timeout)))?
                .map_err(|e| unreachable(describe_error(&e)))?;
            for kv in resp.kvs() {
                *counts.entry(resource_of(&kv.key()[prefix.len().min(kv.key().len())..])).or_insert(0) += 1;
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok(counts),
            }
        }
    }

    /// Starts the Maintenance.Snapshot stream. No request deadline is set (a deadline would cut
    /// off large snapshots); instead each message must arrive within the idle timeout.
    pub async fn snapshot(&mut self) -> Result<SnapshotStream, EtcdError> {
        let endpoint = self.endpoint.clone();
        let stream = tokio::time::timeout(self.config.command_timeout, self.client.snapshot())
            .await
            .map_err(|_| EtcdError::Stalled {
                endpoint: endpoint.clone(),
                seconds: self.config.command_timeout.as_secs(),
            })?
            .map_err(|e| EtcdError::Stream { endpoint: endpoint.clone(), message: describe_error(&e) })?;
        Ok(SnapshotStream {
            inner: stream,
            endpoint,
            idle_timeout: self.config.stream_idle_timeout,
            remaining: None,
            version: None,
        })
    }
}

/// The chunks of one etcd snapshot, in order. The last 32 bytes of the whole stream are etcd's
/// sha256 of everything before them (checked by the pipeline).
pub struct SnapshotStream {
    inner: etcd_client::SnapshotStreaming,
    endpoint: String,
    idle_timeout: Duration,
    remaining: Option<u64>,
    version: Option<String>,
}

impl SnapshotStream {
    /// The next chunk, or None at the end. A stream that ends while etcd still announced
    /// remaining bytes is an error (truncated).
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, EtcdError> {
        let endpoint = self.endpoint.clone();
        let msg = tokio::time::timeout(self.idle_timeout, self.inner.message())
            .await
            .map_err(|_| EtcdError::Stalled { endpoint: endpoint.clone(), seconds: self.idle_timeout.as_secs() })?
            .map_err(|e| EtcdError::Stream { endpoint: endpoint.clone(), message: describe_error(&e) })?;
        match msg {
            Some(mut resp) => {
                self.remaining = Some(resp.remaining_bytes());
                if self.version.is_none() && !resp.version().is_empty() {
                    self.version = Some(resp.version().to_string());
                }
                Ok(Some(Bytes::from(std::mem::take(&mut resp.0.blob))))
            }
            None => match self.remaining {
                Some(0) => Ok(None),
                Some(n) => Err(EtcdError::Stream {
                    endpoint,
                    message: format!("stream ended with {n} bytes still announced (truncated)"),
                }),
                None => Err(EtcdError::Stream { endpoint, message: "stream ended before any data".into() }),
            },
        }
    }

    /// The storage version etcd 3.6+ announces with the snapshot.
    pub fn storage_version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_counted_by_resource_type() {
        assert_eq!(resource_of(b"pods/default/web"), "pods");
        assert_eq!(resource_of(b"namespaces/default"), "namespaces");
        assert_eq!(resource_of(b"apiregistration.k8s.io/apiservices/v1.apps"), "apiregistration.k8s.io/apiservices");
        assert_eq!(prefix_end(b"/registry/"), b"/registry0".to_vec());
        assert_eq!(prefix_end(&[1, 0xff]), vec![2]);
    }
}
