//! A TCP proxy in front of a real server that can damage, cut, slow or stall the traffic coming
//! back from it. Tests use it to see how clients behave when the network or the server misbehave
//! mid-stream, without touching the server itself.

use crate::{Error, Result};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What happens to bytes flowing from the server to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Pass everything through.
    None,
    /// XOR one byte with 0x01 once `offset` bytes of server traffic (per connection) have passed.
    FlipByteAt(u64),
    /// Close both sides once `offset` bytes have passed.
    CutAt(u64),
    /// Pass at most this many bytes per second.
    Throttle(u64),
    /// Stop forwarding (connections stay open, nothing arrives).
    Stall,
    /// Pass at most this many bytes per second from the client to the server (slow uploads).
    ThrottleUp(u64),
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    target: String,
    fault: Arc<Mutex<Fault>>,
    forwarded: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `target` (`host:port`).
    pub async fn start(target: &str) -> Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await.map_err(|e| Error::io("bind proxy", e))?;
        let addr = listener.local_addr().map_err(|e| Error::io("proxy address", e))?;
        let fault = Arc::new(Mutex::new(Fault::None));
        let forwarded = Arc::new(AtomicU64::new(0));
        let (to, f, n) = (target.to_string(), fault.clone(), forwarded.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (target, f, n) = (to.clone(), f.clone(), n.clone());
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&target).await {
                        relay(client, server, f, n).await;
                    }
                });
            }
        });
        Ok(FaultProxy { addr, target: target.to_string(), fault, forwarded, task })
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `host:port` it forwards to.
    pub fn target(&self) -> &str {
        &self.target
    }

    pub fn set_fault(&self, fault: Fault) {
        if let Ok(mut f) = self.fault.lock() {
            *f = fault;
        }
    }

    /// Bytes forwarded from servers to clients so far, over all connections.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(client: TcpStream, server: TcpStream, fault: Arc<Mutex<Fault>>, forwarded: Arc<AtomicU64>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up_fault = fault.clone();
    let upstream = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let current = up_fault.lock().map(|f| *f).unwrap_or(Fault::None);
            let limit = match current {
                Fault::ThrottleUp(bps) => ((bps / 20).max(1) as usize).min(buf.len()),
                _ => buf.len(),
            };
            let n = match cr.read(&mut buf[..limit]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
            if let Fault::ThrottleUp(_) = current {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let _ = sw.shutdown().await;
    });
    let mut seen: u64 = 0;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let current = fault.lock().map(|f| *f).unwrap_or(Fault::None);
        if current == Fault::Stall {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let limit = match current {
            Fault::Throttle(bps) => ((bps / 20).max(1) as usize).min(buf.len()),
            _ => buf.len(),
        };
        let n = match sr.read(&mut buf[..limit]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &mut buf[..n];
        match current {
            Fault::FlipByteAt(at) if at >= seen && at < seen + n as u64 => chunk[(at - seen) as usize] ^= 0x01,
            Fault::CutAt(at) if seen + n as u64 > at => {
                let keep = at.saturating_sub(seen) as usize;
                let _ = cw.write_all(&chunk[..keep]).await;
                break;
            }
            _ => {}
        }
        if cw.write_all(chunk).await.is_err() {
            break;
        }
        seen += n as u64;
        forwarded.fetch_add(n as u64, Ordering::Relaxed);
        if let Fault::Throttle(_) = current {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let _ = cw.shutdown().await;
    upstream.abort();
}
