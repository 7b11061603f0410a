//! A real Google Cloud Storage API: fake-gcs-server (github.com/fsouza/fake-gcs-server), serving
//! buckets from a directory over plain HTTP. It checks no credentials, but object_store's
//! uploads always send one: etcdsnap reaches it with `google_base_url` and a service account key
//! made here (object_store signs its own tokens with it: no token server is involved).

use crate::process::{Server, testbin};
use crate::{Error, Result, free_port, wait_for};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::TempDir;

/// A running fake-gcs-server keeping its buckets under `root()`. Killed on drop.
#[derive(Debug)]
pub struct GcsServer {
    server: Server,
    port: u16,
    root: PathBuf,
    http: reqwest::Client,
    service_account_key: String,
    dir: TempDir,
}

impl GcsServer {
    /// Starts the server with the bucket `bucket` created.
    pub async fn with_bucket(bucket: &str) -> Result<GcsServer> {
        let mut last = None;
        for _ in 0..3 {
            match Self::try_start().await {
                Ok(gcs) => {
                    gcs.create_bucket(bucket).await?;
                    return Ok(gcs);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::other("fake-gcs-server", "not started")))
    }

    async fn try_start() -> Result<GcsServer> {
        let bin = testbin("fake-gcs-server")?;
        let dir = tempfile::Builder::new()
            .prefix("testenv-gcs-")
            .tempdir()
            .map_err(|e| Error::io("create GCS temp dir", e))?;
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).map_err(|e| Error::io(format!("create {}", root.display()), e))?;
        let port = free_port()?;
        let url = format!("http://127.0.0.1:{port}");
        let args = vec![
            "-scheme".into(),
            "http".into(),
            "-host".into(),
            "127.0.0.1".into(),
            "-port".into(),
            port.to_string(),
            "-backend".into(),
            "filesystem".into(),
            "-filesystem-root".into(),
            root.display().to_string(),
            "-public-host".into(),
            format!("127.0.0.1:{port}"),
            "-external-url".into(),
            url,
            "-log-level".into(),
            "warn".into(),
        ];
        let server = Server::spawn("fake-gcs-server", &bin, args, dir.path().join("fake-gcs-server.log"))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| Error::other("GCS HTTP client", e))?;
        let service_account_key = service_account_key()?;
        let mut gcs = GcsServer { server, port, root, http, service_account_key, dir };
        gcs.wait_ready().await?;
        Ok(gcs)
    }

    /// Waits until the bucket listing answers.
    pub async fn wait_ready(&mut self) -> Result<()> {
        let url = format!("{}/storage/v1/b", self.url());
        let http = self.http.clone();
        let server = &mut self.server;
        wait_for("fake-gcs-server to list buckets", Duration::from_secs(60), || {
            let running = server.check_running();
            let (http, url) = (http.clone(), url.clone());
            async move {
                running.map_err(|e| e.to_string())?;
                let resp = http.get(url).send().await.map_err(|e| e.to_string())?;
                if resp.status().is_success() { Ok(Some(())) } else { Err(format!("answered {}", resp.status())) }
            }
        })
        .await
    }

    /// `http://127.0.0.1:<port>`: the `google_base_url` of a replica here.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The `--replica-option`s that point etcdsnap's GCS client at this server.
    pub fn replica_options(&self) -> Vec<String> {
        vec![
            format!("google_base_url={}", self.url()),
            format!("google_service_account_key={}", self.service_account_key),
        ]
    }

    /// The directory holding the buckets (one sub-directory each).
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub async fn create_bucket(&self, name: &str) -> Result<()> {
        let url = format!("{}/storage/v1/b?project=test", self.url());
        let body = serde_json::json!({ "name": name }).to_string();
        let resp = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| Error::other(format!("create GCS bucket {name}"), e))?;
        if !resp.status().is_success() {
            return Err(Error::other(format!("create GCS bucket {name}"), resp.status()));
        }
        Ok(())
    }

    /// Every object name in `bucket` under `prefix` (recursive).
    pub async fn list_names(&self, bucket: &str, prefix: &str) -> Result<Vec<String>> {
        let mut names = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut url = url::Url::parse(&format!("{}/storage/v1/b/{bucket}/o", self.url()))
                .map_err(|e| Error::other("GCS URL", e))?;
            url.query_pairs_mut().append_pair("prefix", prefix);
            if let Some(t) = &token {
                url.query_pairs_mut().append_pair("pageToken", t);
            }
            let resp = self.http.get(url).send().await.map_err(|e| Error::other("list GCS objects", e))?;
            let page: serde_json::Value = resp.json().await.map_err(|e| Error::other("read GCS listing", e))?;
            let items = page["items"].as_array().cloned().unwrap_or_default();
            names.extend(items.iter().filter_map(|o| o["name"].as_str().map(str::to_string)));
            match page["nextPageToken"].as_str() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => return Ok(names),
            }
        }
    }

    /// An object's bytes.
    pub async fn get_object(&self, bucket: &str, name: &str) -> Result<Vec<u8>> {
        let mut url = url::Url::parse(&format!("{}/storage/v1/b/{bucket}/o/", self.url()))
            .map_err(|e| Error::other("GCS URL", e))?;
        url.path_segments_mut().map_err(|_| Error::other("GCS URL", "no path"))?.pop().push(name);
        url.query_pairs_mut().append_pair("alt", "media");
        let resp = self.http.get(url).send().await.map_err(|e| Error::other(format!("get gs://{bucket}/{name}"), e))?;
        if !resp.status().is_success() {
            return Err(Error::other(format!("get gs://{bucket}/{name}"), resp.status()));
        }
        Ok(resp.bytes().await.map_err(|e| Error::other("read GCS object", e))?.to_vec())
    }

    /// Puts an object (to lay out what another cluster wrote).
    pub async fn put_object(&self, bucket: &str, name: &str, body: Vec<u8>) -> Result<()> {
        let mut url = url::Url::parse(&format!("{}/upload/storage/v1/b/{bucket}/o", self.url()))
            .map_err(|e| Error::other("GCS URL", e))?;
        url.query_pairs_mut().append_pair("uploadType", "media").append_pair("name", name);
        let resp = self
            .http
            .post(url)
            .body(body)
            .send()
            .await
            .map_err(|e| Error::other(format!("put gs://{bucket}/{name}"), e))?;
        if !resp.status().is_success() {
            return Err(Error::other(format!("put gs://{bucket}/{name}"), resp.status()));
        }
        Ok(())
    }

    /// Stops the server (SIGKILL); `restart` brings it back with the same buckets.
    pub fn stop(&mut self) {
        self.server.kill();
    }

    pub async fn restart(&mut self) -> Result<()> {
        self.server.restart()?;
        self.wait_ready().await
    }
}

/// A service account key (JSON, as Google issues them) with a new RSA key: object_store signs
/// its own bearer tokens with it, and the server does not check them.
fn service_account_key() -> Result<String> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).map_err(|e| Error::other("GCS key", e))?;
    Ok(serde_json::json!({
        "type": "service_account",
        "project_id": "test",
        "private_key_id": "testenv",
        "private_key": key.serialize_pem(),
        "client_email": "etcdsnap-test@test.iam.gserviceaccount.com",
    })
    .to_string())
}
