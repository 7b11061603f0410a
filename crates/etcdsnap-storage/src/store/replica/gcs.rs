//! Google Cloud Storage replicas: object_store's client for everything but uploads, which go
//! through GCS's JSON API (a media upload, or a resumable upload fed part by part) rather than
//! the XML API object_store uses. Both APIs are Google's own; the JSON one is the one every GCS
//! server implements, fake-gcs-server (the tests' server) among them, which has no XML uploads.

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::gcp::GoogleCloudStorage;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, UploadPart,
};
use std::sync::Arc;
use tokio::sync::Mutex;

/// Resumable upload chunks must be multiples of this, the last one aside.
const CHUNK_QUANTUM: usize = 256 << 10;

/// A bucket: object_store's client, and JSON API uploads beside it.
#[derive(Debug)]
pub struct Gcs {
    inner: GoogleCloudStorage,
    http: reqwest::Client,
    /// `https://storage.googleapis.com`, or `google_base_url`.
    base_url: String,
    bucket: String,
}

impl std::fmt::Display for Gcs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "gs://{}", self.bucket)
    }
}

fn generic(message: impl Into<String>) -> object_store::Error {
    object_store::Error::Generic { store: "GCS", source: message.into().into() }
}

impl Gcs {
    pub fn new(inner: GoogleCloudStorage, base_url: Option<&str>, bucket: &str) -> object_store::Result<Gcs> {
        let http = reqwest::Client::builder().build().map_err(|e| generic(e.to_string()))?;
        let base_url = base_url.unwrap_or("https://storage.googleapis.com").trim_end_matches('/').to_string();
        Ok(Gcs { inner, http, base_url, bucket: bucket.to_string() })
    }

    fn upload_url(&self, location: &Path, upload_type: &str) -> object_store::Result<url::Url> {
        let mut url = url::Url::parse(&format!("{}/upload/storage/v1/b/{}/o", self.base_url, self.bucket))
            .map_err(|e| generic(e.to_string()))?;
        url.query_pairs_mut().append_pair("uploadType", upload_type).append_pair("name", location.as_ref());
        Ok(url)
    }

    async fn bearer(&self) -> object_store::Result<String> {
        Ok(self.inner.credentials().get_credential().await?.bearer.clone())
    }
}

/// The answer's status, or an error with its body.
async fn checked(what: &str, resp: reqwest::Result<reqwest::Response>) -> object_store::Result<reqwest::Response> {
    let resp = resp.map_err(|e| generic(format!("{what}: {e}")))?;
    let status = resp.status();
    if status.is_success() || status.as_u16() == 308 {
        return Ok(resp);
    }
    let body = resp.text().await.unwrap_or_default();
    let body: String = body.chars().take(200).collect();
    if status.as_u16() == 404 {
        return Err(object_store::Error::NotFound { path: what.to_string(), source: body.into() });
    }
    Err(generic(format!("{what}: {status}: {body}")))
}

#[async_trait]
impl ObjectStore for Gcs {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        _opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let url = self.upload_url(location, "media")?;
        let body: Vec<u8> = payload.iter().flat_map(|b| b.iter().copied()).collect();
        let resp = self.http.post(url).bearer_auth(self.bearer().await?).body(body).send().await;
        checked(&format!("upload {location}"), resp).await?;
        Ok(PutResult { e_tag: None, version: None, extensions: Default::default() })
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        _opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let url = self.upload_url(location, "resumable")?;
        let bearer = self.bearer().await?;
        let resp = self.http.post(url).bearer_auth(&bearer).header("content-length", "0").send().await;
        let resp = checked(&format!("start upload {location}"), resp).await?;
        let session = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| generic(format!("start upload {location}: no session URL in the answer")))?
            .to_string();
        let state = Arc::new(Mutex::new(Session { offset: 0, pending: Vec::new(), failed: None }));
        Ok(Box::new(Resumable { http: self.http.clone(), session, bearer, state }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// A resumable upload's progress: bytes sent, and what waits for a whole quantum.
#[derive(Debug)]
struct Session {
    offset: u64,
    pending: Vec<u8>,
    failed: Option<String>,
}

/// One resumable upload: parts are sent in order (each waits for the one before), in chunks of
/// whole quanta; the rest is sent with the total when the upload completes.
#[derive(Debug)]
struct Resumable {
    http: reqwest::Client,
    session: String,
    bearer: String,
    state: Arc<Mutex<Session>>,
}

impl Resumable {
    async fn send(
        http: &reqwest::Client,
        session: &str,
        bearer: &str,
        state: &mut Session,
        last: bool,
    ) -> object_store::Result<()> {
        let len = if last { state.pending.len() } else { state.pending.len() / CHUNK_QUANTUM * CHUNK_QUANTUM };
        if len == 0 && !last {
            return Ok(());
        }
        let chunk: Vec<u8> = state.pending.drain(..len).collect();
        let (start, end) = (state.offset, state.offset + len as u64);
        let total = if last { end.to_string() } else { "*".to_string() };
        let range = if len == 0 { format!("bytes */{total}") } else { format!("bytes {start}-{}/{total}", end - 1) };
        let resp = http.put(session).bearer_auth(bearer).header("content-range", range).body(chunk).send().await;
        checked("upload part", resp).await?;
        state.offset = end;
        Ok(())
    }
}

#[async_trait]
impl MultipartUpload for Resumable {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let (http, session, bearer, state) =
            (self.http.clone(), self.session.clone(), self.bearer.clone(), self.state.clone());
        // The lock is taken in call order: tokio's Mutex is fair, so parts go out in order.
        let guard = state.clone().try_lock_owned();
        Box::pin(async move {
            let mut state = match guard {
                Ok(g) => g,
                Err(_) => state.lock_owned().await,
            };
            if let Some(e) = &state.failed {
                return Err(generic(e.clone()));
            }
            state.pending.extend(data.iter().flat_map(|b| b.iter().copied()));
            let result = Resumable::send(&http, &session, &bearer, &mut state, false).await;
            if let Err(e) = &result {
                state.failed = Some(e.to_string());
            }
            result
        })
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let mut state = self.state.lock().await;
        if let Some(e) = &state.failed {
            return Err(generic(e.clone()));
        }
        Resumable::send(&self.http, &self.session, &self.bearer, &mut state, true).await?;
        Ok(PutResult { e_tag: None, version: None, extensions: Default::default() })
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        let resp = self.http.delete(&self.session).bearer_auth(&self.bearer).send().await;
        // GCS answers 499 to a cancelled session.
        match resp {
            Ok(_) => Ok(()),
            Err(e) => Err(generic(format!("abort upload: {e}"))),
        }
    }
}
