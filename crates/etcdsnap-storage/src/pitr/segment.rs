//! The bytes of a delta segment: etcd's changes over a run of consecutive revisions, each
//! revision with every event it holds and the wall time at which it was observed.
//!
//! A segment is at most `--delta-max-bytes` (8 MiB by default), so it is built and read whole
//! in memory; its size does not grow with the database. The encoding is explicit and versioned
//! (little-endian integers, length-prefixed byte strings) and ends in a trailer that counts the
//! revisions, so a truncated segment is an error, never a shorter history. The stored form is
//! this encoding compressed with zstd ([`Segment::to_stored`]), and with sealing on, that sealed
//! with age to the snapshots' recipients: `age -d <segment> | zstd -d` gives the encoding back.

use crate::seal::keys::AGE_MAGIC;
use crate::seal::{Identity, Recipients};
use std::io::Read;

const MAGIC: &[u8; 8] = b"ESDSEG1\n";
const TAG_REVISION: u8 = 1;
const TAG_END: u8 = 0xFF;

/// What an event did to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One key's change, with the metadata etcd gave it: a replay must reproduce create and mod
/// revisions and versions exactly, and re-attach the key to its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PitrEvent {
    pub kind: EventKind,
    pub key: Vec<u8>,
    /// Empty for deletes.
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    /// The key's lease ID at the time of the put; 0 for none.
    pub lease: i64,
}

/// Every event of one etcd revision (one transaction), and when the capture saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionChanges {
    pub revision: i64,
    /// Unix milliseconds at which the watch delivered the revision.
    pub observed_ms: i64,
    pub events: Vec<PitrEvent>,
}

/// Consecutive revisions, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Segment {
    pub revisions: Vec<RevisionChanges>,
}

/// Why a segment's bytes cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SegmentError {
    #[error("delta segment {name}: not a delta segment (bad magic)")]
    Magic { name: String },
    #[error("delta segment {name}: truncated at byte {offset}")]
    Truncated { name: String, offset: usize },
    #[error("delta segment {name}: {problem} at byte {offset}")]
    Corrupt { name: String, offset: usize, problem: String },
    #[error("delta segment {name}: cannot decompress: {message}")]
    Decompress { name: String, message: String },
    #[error("delta segment {name} is sealed with age: pass --decrypt-identity to replay it")]
    Sealed { name: String },
    #[error("delta segment {name}: cannot open it with the identity given: {message}")]
    Unseal { name: String, message: String },
}

impl Segment {
    pub fn first_revision(&self) -> Option<i64> {
        self.revisions.first().map(|r| r.revision)
    }

    pub fn last_revision(&self) -> Option<i64> {
        self.revisions.last().map(|r| r.revision)
    }

    pub fn event_count(&self) -> usize {
        self.revisions.iter().map(|r| r.events.len()).sum()
    }

    /// The newest revision observed at or before `at_ms` (Unix milliseconds).
    pub fn last_revision_observed_by(&self, at_ms: i64) -> Option<i64> {
        self.revisions.iter().take_while(|r| r.observed_ms <= at_ms).last().map(|r| r.revision)
    }

    /// Approximate encoded size, for deciding when to flush.
    pub fn encoded_len(&self) -> usize {
        let events: usize =
            self.revisions.iter().flat_map(|r| &r.events).map(|e| 1 + 8 + e.key.len() + e.value.len() + 32).sum();
        MAGIC.len() + self.revisions.len() * 21 + events + 9
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(MAGIC);
        for r in &self.revisions {
            out.push(TAG_REVISION);
            out.extend_from_slice(&r.revision.to_le_bytes());
            out.extend_from_slice(&r.observed_ms.to_le_bytes());
            out.extend_from_slice(&(r.events.len() as u32).to_le_bytes());
            for e in &r.events {
                out.push(match e.kind {
                    EventKind::Put => 0,
                    EventKind::Delete => 1,
                });
                put_bytes(&mut out, &e.key);
                put_bytes(&mut out, &e.value);
                for n in [e.create_revision, e.mod_revision, e.version, e.lease] {
                    out.extend_from_slice(&n.to_le_bytes());
                }
            }
        }
        out.push(TAG_END);
        out.extend_from_slice(&(self.revisions.len() as u64).to_le_bytes());
        out
    }

    /// Reads an encoded segment, checking that revisions increase, that every event belongs to
    /// its revision and that the trailer counts what was read.
    pub fn decode(name: &str, bytes: &[u8]) -> Result<Segment, SegmentError> {
        let mut r = Reader { name, bytes, offset: 0 };
        if r.take(MAGIC.len())? != MAGIC {
            return Err(SegmentError::Magic { name: name.into() });
        }
        let mut segment = Segment::default();
        loop {
            match r.u8()? {
                TAG_REVISION => {
                    let changes = r.revision()?;
                    if let Some(prev) = segment.last_revision()
                        && changes.revision <= prev
                    {
                        return Err(r.corrupt(format!("revision {} after {prev}", changes.revision)));
                    }
                    segment.revisions.push(changes);
                }
                TAG_END => {
                    let count = r.i64()? as u64;
                    if count != segment.revisions.len() as u64 {
                        return Err(
                            r.corrupt(format!("trailer counts {count} revisions, {} read", segment.revisions.len()))
                        );
                    }
                    if r.offset != bytes.len() {
                        return Err(r.corrupt("bytes after the trailer".into()));
                    }
                    return Ok(segment);
                }
                tag => return Err(r.corrupt(format!("unknown tag {tag}"))),
            }
        }
    }

    /// The stored form: the encoding, zstd-compressed, then sealed to `recipients` when given.
    pub fn to_stored(&self, level: i32, recipients: Option<&Recipients>) -> std::io::Result<Vec<u8>> {
        let compressed = zstd::encode_all(self.encode().as_slice(), level)?;
        match recipients {
            Some(r) => r.seal(&compressed).map_err(std::io::Error::other),
            None => Ok(compressed),
        }
    }

    /// Reads the stored form, opening a sealed one with `identity`; at most `limit`
    /// decompressed bytes are accepted, so a hostile object cannot exhaust memory.
    pub fn from_stored(
        name: &str,
        stored: &[u8],
        limit: usize,
        identity: Option<&Identity>,
    ) -> Result<Segment, SegmentError> {
        let opened;
        let stored = match (stored.starts_with(AGE_MAGIC), identity) {
            (false, _) => stored,
            (true, None) => return Err(SegmentError::Sealed { name: name.into() }),
            (true, Some(id)) => {
                opened = id
                    .open(stored, stored.len() as u64)
                    .map_err(|message| SegmentError::Unseal { name: name.into(), message })?;
                opened.as_slice()
            }
        };
        let decompress = |message: String| SegmentError::Decompress { name: name.into(), message };
        let decoder = zstd::Decoder::new(stored).map_err(|e| decompress(e.to_string()))?;
        let mut bytes = Vec::new();
        decoder.take(limit as u64 + 1).read_to_end(&mut bytes).map_err(|e| decompress(e.to_string()))?;
        if bytes.len() > limit {
            return Err(decompress(format!("larger than {limit} bytes")));
        }
        Segment::decode(name, &bytes)
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

struct Reader<'a> {
    name: &'a str,
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SegmentError> {
        let end = self.offset.checked_add(n).filter(|end| *end <= self.bytes.len());
        let end = end.ok_or_else(|| SegmentError::Truncated { name: self.name.into(), offset: self.offset })?;
        let slice = &self.bytes[self.offset..end];
        self.offset = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, SegmentError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, SegmentError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }

    fn i64(&mut self) -> Result<i64, SegmentError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(i64::from_le_bytes(b))
    }

    fn bytes(&mut self) -> Result<Vec<u8>, SegmentError> {
        let len = self.u32()? as usize;
        Ok(self.take(len)?.to_vec())
    }

    fn corrupt(&self, problem: String) -> SegmentError {
        SegmentError::Corrupt { name: self.name.into(), offset: self.offset, problem }
    }

    fn revision(&mut self) -> Result<RevisionChanges, SegmentError> {
        let revision = self.i64()?;
        let observed_ms = self.i64()?;
        let count = self.u32()? as usize;
        // Each event takes at least 41 bytes: a count beyond what is left is corrupt, and is
        // refused before anything is allocated for it.
        if count > (self.bytes.len() - self.offset) / 41 {
            return Err(self.corrupt(format!("revision {revision} claims {count} events")));
        }
        let mut events = Vec::with_capacity(count);
        for _ in 0..count {
            let kind = match self.u8()? {
                0 => EventKind::Put,
                1 => EventKind::Delete,
                k => return Err(self.corrupt(format!("unknown event kind {k}"))),
            };
            let (key, value) = (self.bytes()?, self.bytes()?);
            let (create_revision, mod_revision, version, lease) = (self.i64()?, self.i64()?, self.i64()?, self.i64()?);
            if mod_revision != revision {
                return Err(self.corrupt(format!("event of revision {mod_revision} inside revision {revision}")));
            }
            events.push(PitrEvent { kind, key, value, create_revision, mod_revision, version, lease });
        }
        if events.is_empty() {
            return Err(self.corrupt(format!("revision {revision} without events")));
        }
        Ok(RevisionChanges { revision, observed_ms, events })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, rev: i64, create: i64, version: i64, lease: i64) -> PitrEvent {
        PitrEvent {
            kind: EventKind::Put,
            key: key.into(),
            value: format!("value of {key} at {rev}").into_bytes(),
            create_revision: create,
            mod_revision: rev,
            version,
            lease,
        }
    }

    pub(crate) fn sample() -> Segment {
        let delete = PitrEvent {
            kind: EventKind::Delete,
            key: b"/registry/pods/a".to_vec(),
            value: Vec::new(),
            create_revision: 0,
            mod_revision: 12,
            version: 0,
            lease: 0,
        };
        Segment {
            revisions: vec![
                RevisionChanges {
                    revision: 11,
                    observed_ms: 1_000,
                    events: vec![put("/registry/pods/a", 11, 11, 1, 0)],
                },
                RevisionChanges {
                    revision: 12,
                    observed_ms: 1_500,
                    events: vec![delete, put("/registry/leases/x", 12, 5, 3, 0x7a)],
                },
                RevisionChanges {
                    revision: 13,
                    observed_ms: 2_500,
                    events: vec![put("\u{0}binary\u{ff}", 13, 13, 1, 0)],
                },
            ],
        }
    }

    #[test]
    fn a_segment_reads_back_as_written_stored_or_not() {
        let s = sample();
        assert_eq!(Segment::decode("s", &s.encode()).unwrap(), s);
        let stored = s.to_stored(3, None).unwrap();
        assert_eq!(Segment::from_stored("s", &stored, 1 << 20, None).unwrap(), s);
        assert_eq!((s.first_revision(), s.last_revision(), s.event_count()), (Some(11), Some(13), 4));
    }

    #[test]
    fn a_sealed_segment_opens_with_its_identity_only() {
        let (secret, public) = crate::seal::keys::tests::keypair();
        let (other, _) = crate::seal::keys::tests::keypair();
        let recipients = Recipients::parse([public.as_str()]).unwrap();
        let s = sample();
        let stored = s.to_stored(3, Some(&recipients)).unwrap();
        assert!(stored.starts_with(AGE_MAGIC));
        let clear = s.to_stored(3, None).unwrap();
        assert!(!stored.windows(16).any(|w| clear.windows(16).any(|c| c == w)), "compressed bytes stored in the clear");
        let id = Identity::parse(&secret).unwrap();
        assert_eq!(Segment::from_stored("s", &stored, 1 << 20, Some(&id)).unwrap(), s);
        assert!(matches!(Segment::from_stored("s", &stored, 1 << 20, None), Err(SegmentError::Sealed { .. })));
        let other = Identity::parse(&other).unwrap();
        assert!(matches!(Segment::from_stored("s", &stored, 1 << 20, Some(&other)), Err(SegmentError::Unseal { .. })));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample().encode();
        for len in 0..bytes.len() {
            assert!(Segment::decode("s", &bytes[..len]).is_err(), "a segment cut to {len} bytes was accepted");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(Segment::decode("s", &longer), Err(SegmentError::Corrupt { .. })));
    }

    #[test]
    fn corrupt_segments_are_refused_with_the_reason() {
        let bytes = sample().encode();
        assert!(matches!(Segment::decode("s", b"PK\x03\x04 not a segment"), Err(SegmentError::Magic { .. })));
        // The first event's kind byte sits after magic, tag, revision, time and count.
        let mut bad_kind = bytes.clone();
        bad_kind[8 + 1 + 8 + 8 + 4] = 7;
        let err = Segment::decode("seg-1", &bad_kind).unwrap_err();
        assert!(err.to_string().contains("seg-1") && err.to_string().contains("event kind 7"), "{err}");
        // Revisions out of order.
        let mut s = sample();
        s.revisions.swap(0, 2);
        assert!(Segment::decode("s", &s.encode()).unwrap_err().to_string().contains("after"));
        // An event that does not belong to its revision.
        let mut s = sample();
        s.revisions[0].events[0].mod_revision = 99;
        assert!(Segment::decode("s", &s.encode()).unwrap_err().to_string().contains("inside revision 11"));
    }

    #[test]
    fn a_decompression_bomb_is_refused() {
        let big = vec![0u8; 4 << 20];
        let stored = zstd::encode_all(big.as_slice(), 3).unwrap();
        let err = Segment::from_stored("bomb", &stored, 1 << 20, None).unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
    }

    #[test]
    fn the_revision_at_a_time_is_the_last_observed_at_or_before_it() {
        let s = sample();
        assert_eq!(s.last_revision_observed_by(999), None);
        assert_eq!(s.last_revision_observed_by(1_000), Some(11));
        assert_eq!(s.last_revision_observed_by(2_499), Some(12));
        assert_eq!(s.last_revision_observed_by(10_000), Some(13));
    }
}
