//! A real Azure Blob Storage API: Azurite's blob service (the `azurite` npm package), serving
//! the emulator's well-known account `devstoreaccount1` over plain HTTP with Shared Key checks.

use crate::process::{Server, testbin};
use crate::{Error, Result, free_port, wait_for};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::Duration;
use tempfile::TempDir;

/// The emulator's account and key, published by Microsoft for Azurite and the old emulator.
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const VERSION: &str = "2021-08-06";

/// A running Azurite blob service. Killed on drop.
#[derive(Debug)]
pub struct Azurite {
    server: Server,
    port: u16,
    http: reqwest::Client,
    dir: TempDir,
}

impl Azurite {
    /// Starts the service with the container `container` created.
    pub async fn with_container(container: &str) -> Result<Azurite> {
        let mut last = None;
        for _ in 0..3 {
            match Self::try_start().await {
                Ok(azurite) => {
                    azurite.create_container(container).await?;
                    return Ok(azurite);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::other("azurite", "not started")))
    }

    async fn try_start() -> Result<Azurite> {
        let bin = testbin("azurite-blob")?;
        let dir = tempfile::Builder::new()
            .prefix("testenv-azurite-")
            .tempdir()
            .map_err(|e| Error::io("create Azurite temp dir", e))?;
        let port = free_port()?;
        let args = vec![
            "--blobHost".into(),
            "127.0.0.1".into(),
            "--blobPort".into(),
            port.to_string(),
            "--location".into(),
            dir.path().join("data").display().to_string(),
            "--skipApiVersionCheck".into(),
            "--disableProductStyleUrl".into(),
            "--silent".into(),
        ];
        let server = Server::spawn("azurite", &bin, args, dir.path().join("azurite.log"))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| Error::other("Azurite HTTP client", e))?;
        let mut azurite = Azurite { server, port, http, dir };
        azurite.wait_ready().await?;
        Ok(azurite)
    }

    /// Waits until the service answers (any HTTP answer: an unsigned request is refused).
    pub async fn wait_ready(&mut self) -> Result<()> {
        let url = format!("{}?comp=list", self.account_url());
        let http = self.http.clone();
        let server = &mut self.server;
        wait_for("Azurite to answer", Duration::from_secs(60), || {
            let running = server.check_running();
            let (http, url) = (http.clone(), url.clone());
            async move {
                running.map_err(|e| e.to_string())?;
                http.get(url).send().await.map_err(|e| e.to_string())?;
                Ok(Some(()))
            }
        })
        .await
    }

    /// `http://127.0.0.1:<port>/devstoreaccount1`: the account's endpoint.
    pub fn account_url(&self) -> String {
        format!("http://127.0.0.1:{}/{AZURITE_ACCOUNT}", self.port)
    }

    /// The `--replica-option`s that point etcdsnap's Azure client at this service, with the
    /// emulator's public key.
    pub fn replica_options(&self) -> Vec<String> {
        vec![
            format!("azure_storage_account_name={AZURITE_ACCOUNT}"),
            format!("azure_storage_account_key={AZURITE_KEY}"),
            format!("azure_storage_endpoint={}", self.account_url()),
            "azure_allow_http=true".into(),
        ]
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Sends a Shared Key signed request to `path` (after the account) with `query` pairs.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<reqwest::Response> {
        let what = format!("{method} {path}");
        let mut url = url::Url::parse(&format!("{}/{path}", self.account_url())).map_err(|e| Error::other(&what, e))?;
        for (k, v) in query {
            url.query_pairs_mut().append_pair(k, v);
        }
        let date = httpdate();
        let length = if body.is_empty() { String::new() } else { body.len().to_string() };
        let blob_type =
            (method == reqwest::Method::PUT && !query.iter().any(|(k, _)| *k == "restype")).then_some("BlockBlob");
        let mut headers = vec![("x-ms-date".to_string(), date.clone()), ("x-ms-version".into(), VERSION.into())];
        if let Some(t) = blob_type {
            headers.push(("x-ms-blob-type".into(), t.into()));
        }
        headers.sort();
        let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
        let mut sorted_query: Vec<(String, String)> =
            url.query_pairs().map(|(k, v)| (k.to_lowercase(), v.into_owned())).collect();
        sorted_query.sort();
        let canonical_query: String = sorted_query.iter().map(|(k, v)| format!("\n{k}:{v}")).collect();
        let to_sign = format!(
            "{method}\n\n\n{length}\n\n\n\n\n\n\n\n\n{canonical_headers}/{AZURITE_ACCOUNT}{}{canonical_query}",
            url.path()
        );
        let key = base64::engine::general_purpose::STANDARD.decode(AZURITE_KEY).map_err(|e| Error::other(&what, e))?;
        let signature = base64::engine::general_purpose::STANDARD.encode(hmac_sha256(&key, to_sign.as_bytes()));
        let mut req = self
            .http
            .request(method, url)
            .header("authorization", format!("SharedKey {AZURITE_ACCOUNT}:{signature}"))
            .body(body);
        for (k, v) in &headers {
            req = req.header(k, v);
        }
        let resp = req.send().await.map_err(|e| Error::other(&what, e))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            return Err(Error::other(what, format!("{status}: {text}")));
        }
        Ok(resp)
    }

    pub async fn create_container(&self, name: &str) -> Result<()> {
        self.send(reqwest::Method::PUT, name, &[("restype", "container")], Vec::new()).await.map(|_| ())
    }

    /// Every blob name in `container` under `prefix` (recursive).
    pub async fn list_names(&self, container: &str, prefix: &str) -> Result<Vec<String>> {
        let mut names = Vec::new();
        let mut marker = String::new();
        loop {
            let mut query = vec![("restype", "container"), ("comp", "list"), ("prefix", prefix)];
            if !marker.is_empty() {
                query.push(("marker", &marker));
            }
            let resp = self.send(reqwest::Method::GET, container, &query, Vec::new()).await?;
            let xml = resp.text().await.map_err(|e| Error::other("read Azure listing", e))?;
            names.extend(elements(&xml, "Name"));
            marker = elements(&xml, "NextMarker").into_iter().next().unwrap_or_default();
            if marker.is_empty() {
                return Ok(names);
            }
        }
    }

    pub async fn get_blob(&self, container: &str, name: &str) -> Result<Vec<u8>> {
        let resp = self.send(reqwest::Method::GET, &format!("{container}/{name}"), &[], Vec::new()).await?;
        Ok(resp.bytes().await.map_err(|e| Error::other("read blob", e))?.to_vec())
    }

    /// Puts a block blob (to lay out what another cluster wrote).
    pub async fn put_blob(&self, container: &str, name: &str, body: Vec<u8>) -> Result<()> {
        self.send(reqwest::Method::PUT, &format!("{container}/{name}"), &[], body).await.map(|_| ())
    }

    /// Stops the service (SIGTERM: Azurite keeps its index in memory and writes it out on exit);
    /// `restart` brings it back with the same blobs.
    pub fn stop(&mut self) {
        self.server.terminate(Duration::from_secs(10));
    }

    pub async fn restart(&mut self) -> Result<()> {
        self.server.terminate(Duration::from_secs(10));
        self.server.restart()?;
        self.wait_ready().await
    }
}

/// The texts of every `<tag>` element (no nesting, as in a blob listing's names).
fn elements(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(&open).skip(1).filter_map(|s| s.split_once(&close).map(|(v, _)| v.to_string())).collect()
}

/// The current time as HTTP writes it (RFC 1123, GMT).
fn httpdate() -> String {
    #[allow(clippy::disallowed_methods, reason = "a signature needs the true time, not etcdsnap's clock")]
    let now = jiff::Timestamp::now();
    now.strftime("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// HMAC-SHA256 (RFC 2104).
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| block.iter().map(|k| k ^ b).collect::<Vec<u8>>();
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(message).finalize();
    Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize().into()
}

#[cfg(test)]
mod tests {
    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        // RFC 4231, test case 2.
        let mac = super::hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            mac.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
