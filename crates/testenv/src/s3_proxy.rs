//! An HTTP proxy in front of the real S3 server that lies about listings on request: it answers
//! the next ListObjectsV2 calls with an HTML page sent as 200, a ListBucketResult cut in half, a
//! 503 SlowDown, a reset connection, or a long stall, and forwards everything else (and every
//! call once its lies are used up) unchanged. It keeps a log of what went through, so tests can
//! check what a client did (no re-upload, say) while it was lied to.
//!
//! Requests are forwarded with their own Host header, so SigV4 signatures made for the proxy's
//! address still verify at the server; [`LyingS3Proxy::start_rewriting_host`] sends the
//! server's own instead, for fake-gcs-server, which routes by Host (a GCS client signs nothing
//! with it: its bearer token does not depend on the address).

use crate::{Error, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// One lie about a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lie {
    /// `200 OK` with an HTML error page, as a captive proxy sends.
    HtmlOk,
    /// The real answer, cut in half, with a Content-Length that says it is whole.
    TruncatedList,
    /// `503` with S3's `SlowDown` error.
    SlowDown,
    /// The connection is closed without an answer.
    Reset,
    /// Nothing for this long, then the real answer.
    Stall(Duration),
}

/// One request that went through.
#[derive(Debug, Clone)]
pub struct Passed {
    pub method: String,
    /// Path and query.
    pub target: String,
    /// The lie told, or None when forwarded.
    pub lie: Option<Lie>,
}

#[derive(Default)]
struct State {
    lies: VecDeque<Lie>,
    log: Vec<Passed>,
}

/// A running proxy; stops when dropped.
pub struct LyingS3Proxy {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl LyingS3Proxy {
    /// Listens on a free loopback port and forwards to `upstream` (`http://host:port`).
    pub async fn start(upstream: &str) -> Result<LyingS3Proxy> {
        Self::start_with(upstream, false).await
    }

    /// [`LyingS3Proxy::start`], forwarding each request with the Host of `upstream` instead of
    /// the one it came with.
    pub async fn start_rewriting_host(upstream: &str) -> Result<LyingS3Proxy> {
        Self::start_with(upstream, true).await
    }

    async fn start_with(upstream: &str, rewrite_host: bool) -> Result<LyingS3Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await.map_err(|e| Error::io("bind S3 proxy", e))?;
        let addr = listener.local_addr().map_err(|e| Error::io("S3 proxy address", e))?;
        let state = Arc::new(Mutex::new(State::default()));
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::other("S3 proxy client", e))?;
        let upstream = upstream.trim_end_matches('/').to_string();
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (state, http, upstream) = (shared.clone(), http.clone(), upstream.clone());
                tokio::spawn(async move {
                    let service =
                        service_fn(move |req| handle(req, state.clone(), http.clone(), upstream.clone(), rewrite_host));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(LyingS3Proxy { addr, state, task })
    }

    /// `127.0.0.1:<port>`, for `--s3-endpoint`.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// Tells `lie` to the next `times` ListObjectsV2 (or Azure List Blobs) calls.
    pub fn lie_to_next_lists(&self, lie: Lie, times: usize) {
        if let Ok(mut s) = self.state.lock() {
            s.lies.extend(std::iter::repeat_n(lie, times));
        }
    }

    /// Forgets the lies not told yet.
    pub fn tell_the_truth(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.lies.clear();
        }
    }

    /// Lies not told yet.
    pub fn lies_left(&self) -> usize {
        self.state.lock().map(|s| s.lies.len()).unwrap_or_default()
    }

    /// Every request so far.
    pub fn log(&self) -> Vec<Passed> {
        self.state.lock().map(|s| s.log.clone()).unwrap_or_default()
    }
}

impl Drop for LyingS3Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Answer = std::result::Result<Response<Full<Bytes>>, std::io::Error>;

async fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
    http: reqwest::Client,
    upstream: String,
    rewrite_host: bool,
) -> Answer {
    let method = req.method().clone();
    let target = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_else(|| "/".into());
    // ListObjectsV2, or Azure Blob Storage's List Blobs (a replica behind the proxy).
    let is_list = method == hyper::Method::GET && (target.contains("list-type=2") || target.contains("comp=list"));
    let lie = if is_list { state.lock().ok().and_then(|mut s| s.lies.pop_front()) } else { None };
    if let Ok(mut s) = state.lock() {
        s.log.push(Passed { method: method.to_string(), target: target.clone(), lie });
    }
    match lie {
        Some(Lie::HtmlOk) => {
            return Ok(answer(
                StatusCode::OK,
                "text/html",
                "<html><body><h1>Gateway error</h1>Please try again later.</body></html>",
            ));
        }
        Some(Lie::SlowDown) => {
            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
            return Ok(answer(StatusCode::SERVICE_UNAVAILABLE, "application/xml", body));
        }
        Some(Lie::Reset) => return Err(std::io::Error::other("connection reset by the lying proxy")),
        Some(Lie::Stall(d)) => tokio::time::sleep(d).await,
        Some(Lie::TruncatedList) | None => {}
    }
    let (status, headers, body) = forward(req, &http, &upstream, &target, rewrite_host).await?;
    let body = if lie == Some(Lie::TruncatedList) { body.slice(..body.len() / 2) } else { body };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    for (name, value) in &headers {
        let framing = [hyper::header::CONNECTION, hyper::header::TRANSFER_ENCODING, hyper::header::CONTENT_LENGTH];
        if !framing.contains(name) {
            response.headers_mut().append(name, value.clone());
        }
    }
    Ok(response)
}

fn answer(status: StatusCode, content_type: &'static str, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    response
}

/// Sends the request on to the real server; its status, headers and whole body.
async fn forward(
    req: Request<Incoming>,
    http: &reqwest::Client,
    upstream: &str,
    target: &str,
    rewrite_host: bool,
) -> std::result::Result<(StatusCode, hyper::HeaderMap, Bytes), std::io::Error> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map_err(std::io::Error::other)?.to_bytes();
    let mut outgoing = http.request(parts.method, format!("{upstream}{target}")).body(body);
    for (name, value) in &parts.headers {
        let dropped = name == hyper::header::CONNECTION
            || name == hyper::header::TRANSFER_ENCODING
            || (rewrite_host && name == hyper::header::HOST);
        if !dropped {
            outgoing = outgoing.header(name, value);
        }
    }
    let response = outgoing.send().await.map_err(std::io::Error::other)?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await.map_err(std::io::Error::other)?;
    Ok((status, headers, body))
}
