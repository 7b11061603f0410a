//! Real servers for etcdsnap's tests: etcd, kube-apiserver, an S3 gateway (versitygw), a GCS
//! server (fake-gcs-server) and Azure Blob Storage (Azurite),
//! started on random loopback ports with their own temp dirs, killed on drop.
//!
//! The binaries come from `testbins/` (built by `make testbins` into `target/testbins/`); nothing
//! here fakes a server. Every server is started by one long-lived spawner thread with
//! `PR_SET_PDEATHSIG`, so servers die with the test process even when it is killed.

mod azurite;
mod certs;
mod error;
mod etcd;
mod fill;
mod gcs;
mod kube_apiserver;
mod process;
mod proxy;
mod s3;
mod s3_proxy;
mod versions;

pub use azurite::{AZURITE_ACCOUNT, AZURITE_KEY, Azurite};
pub use certs::{Pki, TlsFiles};
pub use error::{Error, Result};
pub use etcd::{Etcd, EtcdMember, EtcdOptions};
pub use fill::fill_snapshot_objects;
pub use gcs::GcsServer;
pub use kube_apiserver::{AuditEvent, KubeApiServer};
pub use process::{Server, testbin, testbins_dir};
pub use proxy::{Fault, FaultProxy};
pub use s3::{S3Request, S3Server, S3Tls};
pub use s3_proxy::{Lie, LyingS3Proxy, Passed};
pub use versions::{default_etcd_version, etcd_version, etcd_versions, testbin_version, versions_env_path};

use std::future::Future;
use std::net::TcpListener;
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1, chosen by the kernel. There is a short window in which another
/// process could take it; callers that start servers retry on "address in use".
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("bind 127.0.0.1:0", e))?;
    let port = listener.local_addr().map_err(|e| Error::io("local_addr", e))?.port();
    Ok(port)
}

/// Polls `check` until it returns `Ok(Some(v))` or `timeout` passes; the last error is reported.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<Option<T>, String>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = String::from("not checked yet");
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = e,
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout { what: what.to_string(), last });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A short random lowercase hex string, for unique names (etcd prefixes, buckets, tokens).
pub fn random_suffix() -> String {
    let bytes: [u8; 6] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
