//! A Kubernetes client whose connections stop writing the moment a leader term ends.
//!
//! Checking the term before a request is not enough on its own: between that check and the
//! bytes reaching the socket, a request passes through kube's buffer task, hyper's pool and the
//! connection task. A leader paused there (SIGSTOP, a long stall of the host) sends it when it
//! runs again, long after another node took over. The fenced client checks the term inside the
//! socket's `poll_write`, with no await between the check and the write system call, so a
//! request not yet written when the term ended is never written.
//!
//! What remains is a request whose bytes the kernel already had before the pause: it reached
//! the API server then, before any other node could take over.
//!
//! What the fence covers depends on the clock that ends the term. The term's deadline is on the
//! boot clock (`CLOCK_BOOTTIME`, [`etcdsnap_storage::clock::since_boot`]), so it covers:
//!
//! - a process stopped (SIGSTOP, a debugger, a cgroup freezer) or starved of CPU past its
//!   Lease: on the boot clock its deadline passed, and its first write after it runs again is
//!   refused (tested against a real API server in `tests/kubernetes/leadership.rs`);
//! - a machine suspended (suspend to RAM or disk): the boot clock counts the time asleep, where
//!   the monotonic clock would not.
//!
//! It does not cover a virtual machine paused by its hypervisor with its clocks stopped (QEMU's
//! `stop`, a saved and restored VM, the downtime of a live migration): no clock inside the
//! machine shows that time passed, so its term still looks valid when it runs again. Such a
//! leader goes on writing until its elector's next round, at most one retry period later (a
//! sixth of the Lease, 5 s at most), reads the Lease, sees the other holder and ends the term.
//! Some of those writes are refused by the API server anyway (a replace carries the
//! resourceVersion it was computed from, so one of an object the new leader changed fails with
//! 409); creates and annotation patches are not. A pause shorter than a third of the Lease
//! duration (the margin between the renew deadline and the Lease) is harmless: its term then
//! ends, by its own clock, before another node may take over. Where such pauses happen, choose
//! a Lease duration (`--leader-lease-duration`) above three times the longest of them.
//!
//! The leader's S3 writes (a drill's record, delta retention) do not go through this client:
//! they check the term right before each request, which a pause between the check and the
//! request's bytes leaving can defeat, the same window as above.

use crate::leader::LeaderTerm;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioExecutor;
use kube::client::ConfigExt;
use kube::{Client, Config};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::ServiceBuilder;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Builds a client like kube's default one (base URI, TLS, credentials, extra headers, connect
/// and read timeouts) whose every connection is fenced by `term`.
pub fn fenced_client(config: &Config, term: &LeaderTerm) -> Result<Client, kube::Error> {
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_connect_timeout(config.connect_timeout);
    let connector = FencedConnector { inner: tcp, term: term.clone(), read_timeout: config.read_timeout };
    let https = config.rustls_https_connector_with_connector(connector)?;
    let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(https);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(http);
    Ok(Client::new(service, config.default_namespace.clone()))
}

/// Connects like [`HttpConnector`], refusing once the term ended, and fences the stream.
#[derive(Clone)]
struct FencedConnector {
    inner: HttpConnector,
    term: LeaderTerm,
    read_timeout: Option<Duration>,
}

impl tower::Service<http::Uri> for FencedConnector {
    type Response = FencedStream<<HttpConnector as tower::Service<http::Uri>>::Response>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        tower::Service::<http::Uri>::poll_ready(&mut self.inner, cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let term = self.term.clone();
        let read_timeout = self.read_timeout;
        let connecting = tower::Service::<http::Uri>::call(&mut self.inner, uri);
        Box::pin(async move {
            term.check()?;
            let stream = connecting.await?;
            Ok(FencedStream { inner: stream, term, read_timeout, read_deadline: None })
        })
    }
}

/// A connection that writes nothing once its term ended. Like kube's default client, a read
/// that waits longer than the read timeout fails (a dead API server must not hang a pass).
struct FencedStream<S> {
    inner: S,
    term: LeaderTerm,
    read_timeout: Option<Duration>,
    /// Armed while a read is pending.
    read_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> FencedStream<S> {
    fn fence(&self) -> io::Result<()> {
        self.term.check().map_err(io::Error::other)
    }
}

impl<S: Read + Unpin> Read for FencedStream<S> {
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

impl<S: Write + Unpin> Write for FencedStream<S> {
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

impl<S: Connection> Connection for FencedStream<S> {
    fn connected(&self) -> Connected {
        self.inner.connected()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leader::LeaderTerm;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A fenced stream over a real socket pair: writes pass during the term and fail after it,
    /// and the peer never receives what was written after the end.
    #[tokio::test]
    async fn a_fenced_stream_writes_during_the_term_and_nothing_after_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let term = LeaderTerm::fixed("alpha", std::time::Duration::from_secs(60));
        let mut fenced = hyper_util::rt::TokioIo::new(FencedStream {
            inner: hyper_util::rt::TokioIo::new(client.unwrap()),
            term: term.clone(),
            read_timeout: None,
            read_deadline: None,
        });
        let (mut peer, _) = server.unwrap();
        fenced.write_all(b"during").await.unwrap();
        term.ended().cancel();
        let after = fenced.write_all(b"after").await.unwrap_err();
        assert!(after.to_string().contains("alpha"), "{after}");
        drop(fenced);
        let mut received = Vec::new();
        peer.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, b"during");
    }

    /// A peer that never answers makes a read fail after the read timeout, not hang.
    #[tokio::test]
    async fn a_silent_peer_fails_the_read_after_the_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let _peer = server.unwrap();
        let mut fenced = hyper_util::rt::TokioIo::new(FencedStream {
            inner: hyper_util::rt::TokioIo::new(client.unwrap()),
            term: LeaderTerm::fixed("alpha", Duration::from_secs(60)),
            read_timeout: Some(Duration::from_millis(200)),
            read_deadline: None,
        });
        let mut buf = [0u8; 8];
        let err = fenced.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
