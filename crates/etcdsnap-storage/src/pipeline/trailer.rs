//! etcd's integrity trailer: a snapshot ends with the sha256 of all the bytes before it.
//! `etcdutl snapshot restore` refuses a file whose trailer does not match; checking it while the
//! stream passes means a damaged snapshot is never published in the first place.

use sha2::{Digest, Sha256};

/// Length of the trailer.
pub const TRAILER_LEN: usize = 32;

/// Hashes a stream while holding back its last 32 bytes, which are only known to be the trailer
/// once the stream ends.
#[derive(Clone, Default)]
pub struct TrailerCheck {
    hasher: Sha256,
    tail: Vec<u8>,
    total: u64,
}

/// Result of [`TrailerCheck::finish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrailerOutcome {
    /// Bytes seen, trailer included.
    pub total: u64,
    /// The trailer as found at the end of the stream (hex), if the stream was long enough.
    pub found: Option<String>,
    /// sha256 of everything before the trailer (hex).
    pub computed: String,
    /// sha256 of the whole stream, trailer included (hex): the hash of an uncompressed file.
    pub whole: String,
}

impl TrailerOutcome {
    pub fn is_valid(&self) -> bool {
        self.found.as_deref() == Some(self.computed.as_str())
    }

    /// Why the check failed, in words an operator can act on.
    pub fn problem(&self) -> Option<String> {
        match &self.found {
            _ if self.is_valid() => None,
            None => Some(format!(
                "only {} bytes: too short to be an etcd snapshot (it must end with a 32-byte sha256 trailer)",
                self.total
            )),
            Some(found) => Some(format!(
                "etcd integrity trailer does not match: the data hashes to {} but the trailer says {found} (corrupt or truncated snapshot)",
                self.computed
            )),
        }
    }
}

impl TrailerCheck {
    pub fn new() -> TrailerCheck {
        TrailerCheck::default()
    }

    /// Bytes seen so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn update(&mut self, chunk: &[u8]) {
        self.total += chunk.len() as u64;
        if chunk.len() >= TRAILER_LEN {
            // Everything held back so far is now certainly data, and so is all of this chunk but
            // its last 32 bytes.
            self.hasher.update(&self.tail);
            let split = chunk.len() - TRAILER_LEN;
            self.hasher.update(&chunk[..split]);
            self.tail.clear();
            self.tail.extend_from_slice(&chunk[split..]);
        } else {
            self.tail.extend_from_slice(chunk);
            if self.tail.len() > TRAILER_LEN {
                let excess = self.tail.len() - TRAILER_LEN;
                self.hasher.update(&self.tail[..excess]);
                self.tail.drain(..excess);
            }
        }
    }

    pub fn finish(self) -> TrailerOutcome {
        let computed = hex::encode(self.hasher.clone().finalize());
        let mut whole = self.hasher;
        whole.update(&self.tail);
        let found = (self.tail.len() == TRAILER_LEN).then(|| hex::encode(&self.tail));
        TrailerOutcome { total: self.total, found, computed, whole: hex::encode(whole.finalize()) }
    }
}

#[cfg(test)]
pub(crate) fn with_trailer(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    v.extend_from_slice(&Sha256::digest(data));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_in_chunks(bytes: &[u8], chunk: usize) -> TrailerOutcome {
        let mut t = TrailerCheck::new();
        for c in bytes.chunks(chunk.max(1)) {
            t.update(c);
        }
        t.finish()
    }

    #[test]
    fn valid_snapshots_pass_whatever_the_chunking() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let snap = with_trailer(&data);
        for chunk in [1, 5, 31, 32, 33, 64, 1000, 9999, 100_000] {
            let out = check_in_chunks(&snap, chunk);
            assert!(out.is_valid(), "chunk {chunk}: {out:?}");
            assert_eq!(out.total, snap.len() as u64);
            assert_eq!(out.whole, hex::encode(Sha256::digest(&snap)));
        }
    }

    #[test]
    fn any_flipped_byte_fails() {
        let data = vec![42u8; 2000];
        let snap = with_trailer(&data);
        for pos in [0, 1, 1000, snap.len() - 33, snap.len() - 32, snap.len() - 1] {
            let mut bad = snap.clone();
            bad[pos] ^= 0x01;
            let out = check_in_chunks(&bad, 100);
            assert!(!out.is_valid(), "flip at {pos} not detected");
            assert!(out.problem().is_some_and(|p| p.contains("does not match")));
        }
    }

    #[test]
    fn truncation_fails() {
        let snap = with_trailer(&[1u8; 500]);
        for len in [0, 10, 31, 32, 100, snap.len() - 1] {
            assert!(!check_in_chunks(&snap[..len], 7).is_valid(), "truncated to {len} accepted");
        }
        assert!(check_in_chunks(&[], 1).problem().is_some_and(|p| p.contains("too short")));
    }
}
