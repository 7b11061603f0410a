//! A real S3 server: versitygw's POSIX gateway, with SigV4, multipart and user metadata.

use crate::certs::Pki;
use crate::process::{Server, testbin};
use crate::{Error, Result, free_port, random_suffix, wait_for};
use rusty_s3::{Bucket, Credentials, Method, S3Action, UrlStyle};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::TempDir;

mod lock;

const REGION: &str = "us-east-1";
const SIGN_FOR: Duration = Duration::from_secs(600);

/// The CA a TLS-enabled [`S3Server`] serves under.
#[derive(Debug, Clone)]
pub struct S3Tls {
    pub ca: PathBuf,
    pub ca_pem: String,
}

/// A running versitygw serving the directory `root()` as buckets. Killed on drop.
#[derive(Debug)]
pub struct S3Server {
    server: Server,
    port: u16,
    /// `127.0.0.1:<port>`.
    endpoint: String,
    tls: Option<S3Tls>,
    access_key: String,
    secret_key: String,
    root: PathBuf,
    access_log: PathBuf,
    http: reqwest::Client,
    dir: TempDir,
}

/// One request seen by the server, from its access log.
#[derive(Debug, Clone)]
pub struct S3Request {
    pub bucket: String,
    pub key: String,
    /// The S3 operation, e.g. `ListObjectsV2`, `HeadObject`, `GetObject`, `UploadPart`.
    pub operation: String,
    pub uri: String,
    pub status: u16,
}

impl S3Server {
    /// Plain HTTP.
    pub async fn start() -> Result<S3Server> {
        Self::start_with(false, None).await
    }

    /// Plain HTTP, with the bucket `bucket` created.
    pub async fn with_bucket(bucket: &str) -> Result<S3Server> {
        let s3 = Self::start().await?;
        s3.create_bucket(bucket).await?;
        Ok(s3)
    }

    /// HTTPS with a certificate from its own CA (see [`S3Server::tls`]).
    pub async fn start_tls() -> Result<S3Server> {
        Self::start_with(true, None).await
    }

    /// Plain HTTP, also answering virtual-host-style requests (`Host: <bucket>.<domain>`).
    pub async fn start_virtual_host(domain: &str) -> Result<S3Server> {
        Self::start_with(false, Some(domain)).await
    }

    async fn start_with(tls: bool, virtual_domain: Option<&str>) -> Result<S3Server> {
        let mut last = None;
        for _ in 0..3 {
            match Self::try_start(tls, virtual_domain).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::other("versitygw", "not started")))
    }

    async fn try_start(tls: bool, virtual_domain: Option<&str>) -> Result<S3Server> {
        let bin = testbin("versitygw")?;
        let dir =
            tempfile::Builder::new().prefix("testenv-s3-").tempdir().map_err(|e| Error::io("create S3 temp dir", e))?;
        let d = dir.path();
        let root = d.join("root");
        let sidecar = d.join("sidecar");
        for p in [&root, &sidecar] {
            std::fs::create_dir_all(p).map_err(|e| Error::io(format!("create {}", p.display()), e))?;
        }
        let port = free_port()?;
        let access_key = format!("AKTEST{}", random_suffix().to_uppercase());
        let secret_key = format!("secret-{}-{}", random_suffix(), random_suffix());
        let access_log = d.join("access.log");

        let mut args = vec![
            "--access".into(),
            access_key.clone(),
            "--secret".into(),
            secret_key.clone(),
            "--port".into(),
            format!("127.0.0.1:{port}"),
            "--region".into(),
            REGION.into(),
            "--access-log".into(),
            access_log.display().to_string(),
        ];
        if let Some(domain) = virtual_domain {
            args.extend(["--virtual-domain".into(), domain.to_string()]);
        }
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(30));
        let tls = if tls {
            let pki = Pki::new("s3", &d.join("pki"))?;
            let serving = pki.server("s3", &[])?;
            args.extend(["--cert".into(), serving.cert.display().to_string()]);
            args.extend(["--key".into(), serving.key.display().to_string()]);
            let cert = reqwest::Certificate::from_pem(pki.ca_pem().as_bytes()).map_err(|e| Error::other("S3 CA", e))?;
            http = http.tls_certs_only([cert]);
            Some(S3Tls { ca: pki.ca_path(), ca_pem: pki.ca_pem() })
        } else {
            None
        };
        args.extend(["posix".into(), "--sidecar".into(), sidecar.display().to_string(), root.display().to_string()]);
        let server = Server::spawn("versitygw", &bin, args, d.join("versitygw.log"))?;
        let http = http.build().map_err(|e| Error::other("S3 HTTP client", e))?;
        let endpoint = format!("127.0.0.1:{port}");
        let mut s3 = S3Server { server, port, endpoint, tls, access_key, secret_key, root, access_log, http, dir };
        s3.wait_ready().await?;
        Ok(s3)
    }

    /// Waits until a signed ListBuckets succeeds.
    pub async fn wait_ready(&mut self) -> Result<()> {
        #[allow(clippy::disallowed_methods, reason = "a signature needs the true time, not etcdsnap's clock")]
        let url = rusty_s3::signing::sign(
            &jiff::Timestamp::now(),
            Method::Get,
            self.base_url()?,
            &self.access_key,
            &self.secret_key,
            None,
            REGION,
            SIGN_FOR.as_secs(),
            std::iter::empty(),
            std::iter::empty(),
        );
        let http = self.http.clone();
        let result = {
            let server = &mut self.server;
            wait_for("versitygw to list buckets", Duration::from_secs(60), || {
                let running = server.check_running();
                let http = http.clone();
                let url = url.clone();
                async move {
                    running.map_err(|e| e.to_string())?;
                    let resp = http.get(url).send().await.map_err(|e| e.to_string())?;
                    if resp.status().is_success() {
                        Ok(Some(()))
                    } else {
                        Err(format!("ListBuckets answered {}", resp.status()))
                    }
                }
            })
            .await
        };
        result.map_err(|e| match self.server.check_running() {
            Err(exited) => exited,
            Ok(()) => e,
        })
    }

    /// `127.0.0.1:<port>`: what K3s calls the endpoint (no scheme).
    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    /// `http://127.0.0.1:<port>` or `https://...`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn tls(&self) -> Option<&S3Tls> {
        self.tls.as_ref()
    }

    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    pub fn region(&self) -> &str {
        REGION
    }

    /// The flags that point `etcdsnap` at `bucket` on this server: `--s3 --s3-endpoint <endpoint>
    /// --s3-insecure --s3-bucket <bucket>`, without `--s3-insecure` when the server speaks TLS
    /// (the caller then says how to trust it). The credentials go in the environment:
    /// [`S3Server::credentials_env`].
    pub fn etcdsnap_flags<'a>(&'a self, bucket: &'a str) -> Vec<&'a str> {
        let mut flags = vec!["--s3", "--s3-endpoint", &self.endpoint];
        if self.tls.is_none() {
            flags.push("--s3-insecure");
        }
        flags.extend(["--s3-bucket", bucket]);
        flags
    }

    /// The same settings as `etcdsnap` reads them from its environment (`ETCDSNAP_S3`,
    /// `ETCDSNAP_S3_ENDPOINT`, `ETCDSNAP_S3_INSECURE` for plain HTTP, `ETCDSNAP_S3_BUCKET`), with
    /// the credentials.
    pub fn etcdsnap_env(&self, bucket: &str) -> Vec<(String, String)> {
        let mut env =
            vec![("ETCDSNAP_S3".to_string(), "true".to_string()), ("ETCDSNAP_S3_ENDPOINT".into(), self.endpoint())];
        if self.tls.is_none() {
            env.push(("ETCDSNAP_S3_INSECURE".into(), "true".into()));
        }
        env.push(("ETCDSNAP_S3_BUCKET".into(), bucket.to_string()));
        env.extend(self.credentials_env().map(|(k, v)| (k.to_string(), v.to_string())));
        env
    }

    /// This server's credentials in the variables `etcdsnap` reads them from:
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
    pub fn credentials_env(&self) -> [(&'static str, &str); 2] {
        [("AWS_ACCESS_KEY_ID", &self.access_key), ("AWS_SECRET_ACCESS_KEY", &self.secret_key)]
    }

    /// The directory served as buckets (one sub-directory per bucket).
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn server(&mut self) -> &mut Server {
        &mut self.server
    }

    /// Stops the server (SIGKILL); `restart` brings it back with the same data.
    pub fn stop(&mut self) {
        self.server.kill();
    }

    pub async fn restart(&mut self) -> Result<()> {
        self.server.restart()?;
        self.wait_ready().await
    }

    fn base_url(&self) -> Result<url::Url> {
        url::Url::parse(&format!("{}/", self.url())).map_err(|e| Error::other("S3 URL", e))
    }

    fn credentials(&self) -> Credentials {
        Credentials::new(self.access_key.clone(), self.secret_key.clone())
    }

    fn bucket(&self, name: &str) -> Result<Bucket> {
        Bucket::new(self.base_url()?, UrlStyle::Path, name.to_string(), REGION)
            .map_err(|e| Error::other(format!("bucket {name}"), e))
    }

    async fn send(&self, what: &str, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| Error::other(what, e))?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            Err(Error::other(what, format!("{status}: {body}")))
        }
    }

    /// Creates a bucket through the S3 API.
    pub async fn create_bucket(&self, name: &str) -> Result<()> {
        let bucket = self.bucket(name)?;
        let creds = self.credentials();
        let action = bucket.create_bucket(&creds);
        let url = action.sign(SIGN_FOR);
        self.send(&format!("create bucket {name}"), self.http.put(url).body(action.body())).await?;
        Ok(())
    }

    /// Puts an object with `x-amz-meta-*` user metadata, e.g. to lay out what K3s would upload.
    pub async fn put_object(&self, bucket: &str, key: &str, body: Vec<u8>, meta: &[(&str, &str)]) -> Result<()> {
        let b = self.bucket(bucket)?;
        let creds = self.credentials();
        let mut action = b.put_object(Some(&creds), key);
        let headers: Vec<(String, String)> =
            meta.iter().map(|(k, v)| (format!("x-amz-meta-{}", k.to_lowercase()), v.to_string())).collect();
        for (k, v) in &headers {
            action.headers_mut().insert(k.clone(), v.clone());
        }
        let url = action.sign(SIGN_FOR);
        let mut req = self.http.put(url).body(body);
        for (k, v) in &headers {
            req = req.header(k, v);
        }
        self.send(&format!("put s3://{bucket}/{key}"), req).await?;
        Ok(())
    }

    /// Gets an object's bytes and its `x-amz-meta-*` headers (names lowercased, prefix removed).
    pub async fn get_object(&self, bucket: &str, key: &str) -> Result<(Vec<u8>, Vec<(String, String)>)> {
        let b = self.bucket(bucket)?;
        let creds = self.credentials();
        let url = b.get_object(Some(&creds), key).sign(SIGN_FOR);
        let resp = self.send(&format!("get s3://{bucket}/{key}"), self.http.get(url)).await?;
        let meta = resp
            .headers()
            .iter()
            .filter_map(|(k, v)| {
                let k = k.as_str().to_lowercase();
                let v = v.to_str().ok()?;
                k.strip_prefix("x-amz-meta-").map(|m| (m.to_string(), v.to_string()))
            })
            .collect();
        let body = resp.bytes().await.map_err(|e| Error::other("read object body", e))?;
        Ok((body.to_vec(), meta))
    }

    /// All response headers of a HEAD of the object (names lowercased).
    pub async fn head_object(&self, bucket: &str, key: &str) -> Result<Vec<(String, String)>> {
        let b = self.bucket(bucket)?;
        let creds = self.credentials();
        let url = b.head_object(Some(&creds), key).sign(SIGN_FOR);
        let resp = self.send(&format!("head s3://{bucket}/{key}"), self.http.head(url)).await?;
        Ok(resp
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_lowercase(), v.to_str().ok()?.to_string())))
            .collect())
    }

    /// Keys of all objects in `bucket` under `prefix` (recursive, paginated).
    pub async fn list_keys(&self, bucket: &str, prefix: &str) -> Result<Vec<String>> {
        let b = self.bucket(bucket)?;
        let creds = self.credentials();
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut action = b.list_objects_v2(Some(&creds));
            action.with_prefix(prefix);
            if let Some(t) = &token {
                action.with_continuation_token(t.clone());
            }
            let url = action.sign(SIGN_FOR);
            let resp = self.send(&format!("list s3://{bucket}/{prefix}"), self.http.get(url)).await?;
            let text = resp.text().await.map_err(|e| Error::other("read list body", e))?;
            let parsed = rusty_s3::actions::ListObjectsV2::parse_response(&text)
                .map_err(|e| Error::other("parse ListObjectsV2", e))?;
            keys.extend(parsed.contents.into_iter().map(|c| c.key));
            match parsed.next_continuation_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        Ok(keys)
    }

    /// Multipart uploads that were started and neither completed nor aborted, as `(key, upload id)`.
    pub async fn list_multipart_uploads(&self, bucket: &str) -> Result<Vec<(String, String)>> {
        #[allow(clippy::disallowed_methods, reason = "a signature needs the true time, not etcdsnap's clock")]
        let url = rusty_s3::signing::sign(
            &jiff::Timestamp::now(),
            Method::Get,
            self.bucket(bucket)?.base_url().clone(),
            &self.access_key,
            &self.secret_key,
            None,
            REGION,
            SIGN_FOR.as_secs(),
            [("uploads", "")].into_iter(),
            std::iter::empty(),
        );
        let resp = self.send(&format!("list multipart uploads of {bucket}"), self.http.get(url)).await?;
        let text = resp.text().await.map_err(|e| Error::other("read body", e))?;
        Ok(parse_uploads(&text))
    }

    /// Every request the server logged so far (its `--access-log`).
    pub fn requests(&self) -> Vec<S3Request> {
        let text = std::fs::read_to_string(&self.access_log).unwrap_or_default();
        text.lines().filter_map(parse_access_log_line).collect()
    }
}

/// Pulls `<Key>` and `<UploadId>` pairs out of a ListMultipartUploads answer.
fn parse_uploads(xml: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for upload in xml.split("<Upload>").skip(1) {
        let field = |name: &str| {
            let open = format!("<{name}>");
            let close = format!("</{name}>");
            upload.split_once(&open).and_then(|(_, rest)| rest.split_once(&close)).map(|(v, _)| v.to_string())
        };
        if let (Some(key), Some(id)) = (field("Key"), field("UploadId")) {
            out.push((key, id));
        }
    }
    out
}

/// versitygw writes AWS-style access log lines:
/// `owner bucket [dd/Month/yyyy:hh:mm:ss +zzzz] ip requester request-id operation key uri status ...`.
fn parse_access_log_line(line: &str) -> Option<S3Request> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 11 {
        return None;
    }
    let dash = |s: &str| {
        if s == "-" { String::new() } else { s.to_string() }
    };
    Some(S3Request {
        bucket: dash(f[1]),
        operation: f[7].trim_start_matches("s3_").to_string(),
        key: dash(f[8]),
        uri: f[9].to_string(),
        status: f[10].parse().ok()?,
    })
}
