//! The HTTP stack under every Kubernetes client of etcdsnap: kube's default one (base URI, TLS,
//! credentials, extra headers, kube's retry of 429/503/504, connect and read timeouts), with two
//! differences.
//!
//! - Its connection pool closes connections that stayed idle for [`POOL_IDLE_TIMEOUT`], and
//!   keeps at most [`POOL_MAX_IDLE`] idle. kube's default pool has no timer, so it never closes
//!   an idle connection: the pool reuses the connection it got back last, those below it stay
//!   idle until the API server closes them, and every burst of requests (a restarted API
//!   server answering a leader's pending retries) left as many connections open for as long
//!   as the API server lived (the soak saw an agent's open files grow from 16 to 34).
//! - With a leader's term, every connection is fenced by it ([`crate::fence`]): it writes
//!   nothing once the term ended.

use crate::leader::LeaderTerm;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::ConfigExt;
use kube::client::retry::RetryPolicy;
use kube::{Client, Config};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::ServiceBuilder;
use tower::retry::RetryLayer;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a connection may stay idle in the pool before it is closed.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The most idle connections the pool keeps (to the one API server).
pub const POOL_MAX_IDLE: usize = 4;

/// Builds the client, fenced by `fence` when given.
pub fn build(config: &Config, fence: Option<&LeaderTerm>) -> Result<Client, kube::Error> {
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_connect_timeout(config.connect_timeout);
    let connector = Connector { inner: tcp, fence: fence.cloned(), read_timeout: config.read_timeout };
    let https = config.rustls_https_connector_with_connector(connector)?;
    let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE)
        .build(https);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.default_retry.then(|| RetryLayer::new(RetryPolicy::server_retry())))
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(http);
    Ok(Client::new(service, config.default_namespace.clone()))
}

/// Connects like [`HttpConnector`] (refusing once the fence's term ended) and wraps the stream.
#[derive(Clone)]
struct Connector {
    inner: HttpConnector,
    fence: Option<LeaderTerm>,
    read_timeout: Option<Duration>,
}

impl tower::Service<http::Uri> for Connector {
    type Response = Stream<<HttpConnector as tower::Service<http::Uri>>::Response>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        tower::Service::<http::Uri>::poll_ready(&mut self.inner, cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let fence = self.fence.clone();
        let read_timeout = self.read_timeout;
        let connecting = tower::Service::<http::Uri>::call(&mut self.inner, uri);
        Box::pin(async move {
            if let Some(term) = &fence {
                term.check()?;
            }
            let stream = connecting.await?;
            Ok(Stream::new(stream, fence, read_timeout))
        })
    }
}

/// A connection that, when fenced, writes nothing once its term ended. Like kube's default
/// client, a read that waits longer than the read timeout fails (a dead API server must not
/// hang a pass).
pub(crate) struct Stream<S> {
    inner: S,
    fence: Option<LeaderTerm>,
    read_timeout: Option<Duration>,
    /// Armed while a read is pending.
    read_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> Stream<S> {
    pub(crate) fn new(inner: S, fence: Option<LeaderTerm>, read_timeout: Option<Duration>) -> Stream<S> {
        Stream { inner, fence, read_timeout, read_deadline: None }
    }

    fn fence(&self) -> io::Result<()> {
        self.fence.as_ref().map_or(Ok(()), |term| term.check().map_err(io::Error::other))
    }
}

impl<S: Read + Unpin> Read for Stream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Poll::Ready(read) = Pin::new(&mut this.inner).poll_read(cx, buf) {
            this.read_deadline = None;
            return Poll::Ready(read);
        }
        let Some(timeout) = this.read_timeout else { return Poll::Pending };
        let deadline = this.read_deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.read_deadline = None;
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "no answer from the API server")))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: Write + Unpin> Write for Stream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.fence()?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.fence()?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: Connection> Connection for Stream<S> {
    fn connected(&self) -> Connected {
        self.inner.connected()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A peer that never answers makes a read fail after the read timeout, not hang.
    #[tokio::test]
    async fn a_silent_peer_fails_the_read_after_the_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let _peer = server.unwrap();
        let stream = Stream::new(hyper_util::rt::TokioIo::new(client.unwrap()), None, Some(Duration::from_millis(200)));
        let mut stream = hyper_util::rt::TokioIo::new(stream);
        let mut buf = [0u8; 8];
        let err = stream.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
