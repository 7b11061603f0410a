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
//! The leader's S3 writes (a drill's result in its record, the deletes of delta retention) do
//! not go through this client: the S3 client's connections are reqwest's, which offer no hook
//! inside the socket's write. Each such write checks the term right before it starts and is cut
//! off (dropped, its connection closed) if the term ends while it runs
//! ([`LeaderTerm::during`]). A pause between that check and the request's bytes reaching the
//! kernel can still let one request out after the term: a record put whose content was read
//! from S3 right before it, or a delete of a segment older than every S3 snapshot, which the
//! next leader's retention deletes too.

use crate::leader::LeaderTerm;
use kube::{Client, Config};

/// Builds a client like every other of etcdsnap ([`crate::client`]) whose every connection is
/// fenced by `term`.
pub fn fenced_client(config: &Config, term: &LeaderTerm) -> Result<Client, kube::Error> {
    crate::client::build(config, Some(term))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Stream;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A fenced stream over a real socket pair: writes pass during the term and fail after it,
    /// and the peer never receives what was written after the end.
    #[tokio::test]
    async fn a_fenced_stream_writes_during_the_term_and_nothing_after_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let term = LeaderTerm::fixed("alpha", Duration::from_secs(60));
        let stream = Stream::new(hyper_util::rt::TokioIo::new(client.unwrap()), Some(term.clone()), None);
        let mut fenced = hyper_util::rt::TokioIo::new(stream);
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
}
