//! The stored bytes go to every sink; a sink that fails is set aside (its error kept for the
//! report) while the others continue, so a failing S3 upload never costs the local copy.

use super::encode::BatchWrite;
use crate::store::{SnapshotSink, StoreError};
use sha2::{Digest, Sha256};
use std::io::{self, IoSlice, Write};

/// A sink and, if it failed, why.
pub struct SinkSlot {
    pub sink: Box<dyn SnapshotSink>,
    pub error: Option<StoreError>,
}

/// Length and (for compressed output) sha256 of the stored bytes. Uncompressed bytes are the
/// raw stream, already hashed by the trailer check, so they are only counted here.
pub struct StoredHash {
    hasher: Option<Sha256>,
    pub size: u64,
}

impl StoredHash {
    pub fn new(hash: bool) -> StoredHash {
        StoredHash { hasher: hash.then(Sha256::new), size: 0 }
    }

    pub fn update(&mut self, buf: &[u8]) {
        if let Some(h) = &mut self.hasher {
            h.update(buf);
        }
        self.size += buf.len() as u64;
    }

    /// The hex digest, if this hash was kept.
    pub fn hex(self) -> Option<String> {
        self.hasher.map(|h| hex::encode(h.finalize()))
    }
}

/// The error the fan-out returns when no sink is left; each slot holds its own error.
#[derive(Debug, thiserror::Error)]
#[error("every snapshot destination failed")]
pub struct AllSinksFailed;

/// Whether every sink has failed.
pub fn all_failed(slots: &[SinkSlot]) -> bool {
    !slots.is_empty() && slots.iter().all(|s| s.error.is_some())
}

/// `Write` adapter at the end of the encoder chain.
pub struct FanOut<'a> {
    pub slots: &'a mut [SinkSlot],
    pub stored: &'a mut StoredHash,
}

impl BatchWrite for FanOut<'_> {
    /// Hands `bufs`, in order, to every sink still alive, each in one call (for the local file,
    /// one `writev`): the uncompressed path's way to write etcd's messages without copying them
    /// into a staging buffer first.
    fn write_batch(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<()> {
        for buf in bufs {
            self.stored.update(buf);
        }
        self.each_alive(|sink| sink.write_vectored(bufs))
    }
}

impl FanOut<'_> {
    /// Runs `write` on every sink that has not failed; a sink whose write fails is set aside
    /// with its error. Fails only when no sink is left.
    fn each_alive(&mut self, mut write: impl FnMut(&mut dyn SnapshotSink) -> Result<(), StoreError>) -> io::Result<()> {
        let mut alive = 0;
        for slot in self.slots.iter_mut() {
            if slot.error.is_some() {
                continue;
            }
            match write(slot.sink.as_mut()) {
                Ok(()) => alive += 1,
                Err(e) => {
                    tracing::warn!(destination = %slot.sink.location(), error = %e, "snapshot destination failed; continuing with the others");
                    slot.error = Some(e);
                }
            }
        }
        if alive == 0 {
            return Err(io::Error::other(AllSinksFailed));
        }
        Ok(())
    }
}

impl Write for FanOut<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stored.update(buf);
        self.each_alive(|sink| sink.write(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
