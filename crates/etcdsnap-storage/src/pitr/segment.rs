//! The bytes of a delta segment: etcd's changes over a run of consecutive revisions, each
//! revision with every event it holds and the wall time at which it was observed, and what the
//! capture learnt of the leases those events name.
//!
//! A segment is at most `--delta-max-bytes` (8 MiB by default), so it is built and read whole
//! in memory; its size does not grow with the database. The encoding is explicit and versioned
//! (little-endian integers, length-prefixed byte strings) and ends in a trailer that counts what
//! it holds, so a truncated segment is an error, never a shorter history. The stored form is
//! this encoding compressed with zstd ([`Segment::to_stored`]), and with sealing on, that sealed
//! with age to the snapshots' recipients: `age -d <segment> | zstd -d` gives the encoding back.
//!
//! Format 2 (`ESDSEG2`), written since the replay proves itself: after the magic, a sequence of
//! records, each a tag byte, a u32 length and that many bytes:
//!
//! - `1`, a revision: revision, observed time, event count, then each event: kind, key, value,
//!   create and mod revision, version, lease, and the key's previous state ([`PrevState`]:
//!   `0` not captured, `1` absent, `2` present followed by its 8-byte [`PrevDigest`]);
//! - `2`, a lease observation ([`LeaseObservation`]);
//! - `0xFF`, the trailer: how many revisions and lease observations came before it.
//!
//! Tags `0x80..=0xFE` are optional additions a later release may write: a reader skips those it
//! does not know. Any other unknown tag is refused (it would change what the segment means).
//! Format 1 (`ESDSEG1`, without lengths, previous states or leases) is still read: its events'
//! previous states are [`PrevState::NotCaptured`].

use crate::seal::keys::AGE_MAGIC;
use crate::seal::{Identity, Recipients};
use sha2::{Digest as _, Sha256};
use std::io::Read;

const MAGIC_V1: &[u8; 8] = b"ESDSEG1\n";
const MAGIC: &[u8; 8] = b"ESDSEG2\n";
const TAG_REVISION: u8 = 1;
const TAG_LEASE: u8 = 2;
/// Tags from here on (below the trailer's) are optional: skipped when unknown.
const FIRST_OPTIONAL_TAG: u8 = 0x80;
const TAG_END: u8 = 0xFF;
/// The smallest encoding of one event in format 1 (kind, two lengths, four integers) and in
/// format 2 (plus the previous state's tag).
const MIN_EVENT_V1: usize = 1 + 4 + 4 + 32;
const MIN_EVENT: usize = MIN_EVENT_V1 + 1;

/// What an event did to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// A digest of one key-value state: its value, create and mod revision, version and lease
/// (the first 8 bytes of a SHA-256 over them). Equal states have equal digests; a different
/// state has the same digest with a chance of 2^-64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PrevDigest(pub [u8; 8]);

impl PrevDigest {
    pub fn of(value: &[u8], create_revision: i64, mod_revision: i64, version: i64, lease: i64) -> PrevDigest {
        let mut h = Sha256::new();
        h.update(b"etcdsnap key-value state 1\n");
        for n in [create_revision, mod_revision, version, lease] {
            h.update(n.to_le_bytes());
        }
        h.update(value);
        let mut out = [0u8; 8];
        out.copy_from_slice(&h.finalize()[..8]);
        PrevDigest(out)
    }
}

impl std::fmt::Display for PrevDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// A key's state just before an event changed it, as the capture saw it (etcd's `prev_kv`).
/// The replay compares it with the state its own etcd reports: this is how a replay proves
/// that it reproduced the captured history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrevState {
    /// Not known: a segment of format 1, or etcd did not return it (its revision had just been
    /// compacted). Such an event is applied unchecked.
    NotCaptured,
    /// The key did not exist.
    Absent,
    Present(PrevDigest),
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
    pub prev: PrevState,
}

/// Every event of one etcd revision (one transaction), and when the capture saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionChanges {
    pub revision: i64,
    /// Unix milliseconds at which the watch delivered the revision.
    pub observed_ms: i64,
    pub events: Vec<PitrEvent>,
}

impl RevisionChanges {
    /// The bytes of keys and values the revision's transaction carries.
    pub fn payload_bytes(&self) -> usize {
        self.events.iter().map(|e| e.key.len() + e.value.len()).sum()
    }
}

/// What etcd said of a lease when the capture first saw a put attached to it in a segment
/// (LeaseTimeToLive): the replay grants a lease its base lacks with the time it had left at
/// the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseObservation {
    pub id: i64,
    /// The revision of that put.
    pub revision: i64,
    /// Unix milliseconds at which etcd answered.
    pub observed_ms: i64,
    /// The TTL it was granted with, in seconds.
    pub granted_ttl: i64,
    /// Seconds it had left then; -1 when it was already gone (expired or revoked).
    pub remaining_ttl: i64,
}

/// Consecutive revisions, oldest first, and the leases observed on the way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Segment {
    pub revisions: Vec<RevisionChanges>,
    pub leases: Vec<LeaseObservation>,
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
            self.revisions.iter().flat_map(|r| &r.events).map(|e| MIN_EVENT + 8 + e.key.len() + e.value.len()).sum();
        MAGIC.len() + self.revisions.len() * 25 + events + self.leases.len() * 45 + 21
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(MAGIC);
        for r in &self.revisions {
            record(&mut out, TAG_REVISION, |out| {
                out.extend_from_slice(&r.revision.to_le_bytes());
                out.extend_from_slice(&r.observed_ms.to_le_bytes());
                out.extend_from_slice(&(r.events.len() as u32).to_le_bytes());
                for e in &r.events {
                    encode_event(out, e);
                }
            });
        }
        for l in &self.leases {
            record(&mut out, TAG_LEASE, |out| {
                for n in [l.id, l.revision, l.observed_ms, l.granted_ttl, l.remaining_ttl] {
                    out.extend_from_slice(&n.to_le_bytes());
                }
            });
        }
        record(&mut out, TAG_END, |out| {
            out.extend_from_slice(&(self.revisions.len() as u64).to_le_bytes());
            out.extend_from_slice(&(self.leases.len() as u64).to_le_bytes());
        });
        out
    }

    /// Reads an encoded segment (format 2 or 1), checking that revisions increase, that every
    /// event belongs to its revision, that every lease observation falls within the segment and
    /// that the trailer counts what was read.
    pub fn decode(name: &str, bytes: &[u8]) -> Result<Segment, SegmentError> {
        let mut r = Reader { name, bytes, offset: 0 };
        let magic = r.take(MAGIC.len())?;
        if magic == MAGIC_V1 {
            return decode_v1(r);
        }
        if magic != MAGIC {
            return Err(SegmentError::Magic { name: name.into() });
        }
        let mut segment = Segment::default();
        loop {
            let tag = r.u8()?;
            let len = r.u32()? as usize;
            let start = r.offset;
            r.take(len)?;
            // The record's own reader ends where the record does; its offsets stay the file's.
            let mut b = Reader { name, bytes: &bytes[..r.offset], offset: start };
            match tag {
                TAG_REVISION => {
                    let changes = b.revision(true)?;
                    segment.push_checked(changes, &r)?;
                }
                TAG_LEASE => {
                    let [id, revision, observed_ms, granted_ttl, remaining_ttl] =
                        [b.i64()?, b.i64()?, b.i64()?, b.i64()?, b.i64()?];
                    segment.leases.push(LeaseObservation { id, revision, observed_ms, granted_ttl, remaining_ttl });
                }
                TAG_END => {
                    let (revisions, leases) = (b.i64()? as u64, b.i64()? as u64);
                    if (revisions, leases) != (segment.revisions.len() as u64, segment.leases.len() as u64) {
                        return Err(r.corrupt(format!(
                            "trailer counts {revisions} revisions and {leases} leases, {} and {} read",
                            segment.revisions.len(),
                            segment.leases.len()
                        )));
                    }
                    if r.offset != bytes.len() {
                        return Err(r.corrupt("bytes after the trailer".into()));
                    }
                    segment.check_leases(&r)?;
                    return Ok(segment);
                }
                tag if tag >= FIRST_OPTIONAL_TAG => continue,
                tag => return Err(r.corrupt(format!("unknown record {tag} (written by a newer etcdsnap?)"))),
            }
            if b.offset != r.offset {
                return Err(b.corrupt(format!("record {tag} holds {} bytes more than it uses", r.offset - b.offset)));
            }
        }
    }

    fn push_checked(&mut self, changes: RevisionChanges, r: &Reader<'_>) -> Result<(), SegmentError> {
        if let Some(prev) = self.last_revision()
            && changes.revision <= prev
        {
            return Err(r.corrupt(format!("revision {} after {prev}", changes.revision)));
        }
        self.revisions.push(changes);
        Ok(())
    }

    fn check_leases(&self, r: &Reader<'_>) -> Result<(), SegmentError> {
        let (first, last) = (self.first_revision().unwrap_or(0), self.last_revision().unwrap_or(0));
        match self.leases.iter().find(|l| l.revision < first || l.revision > last) {
            Some(l) => {
                Err(r.corrupt(format!("lease {:x} observed at revision {} outside {first}..={last}", l.id, l.revision)))
            }
            None => Ok(()),
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

/// Appends one format-2 record: tag, length, then what `body` writes.
fn record(out: &mut Vec<u8>, tag: u8, body: impl FnOnce(&mut Vec<u8>)) {
    out.push(tag);
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    body(out);
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

fn encode_event(out: &mut Vec<u8>, e: &PitrEvent) {
    out.push(match e.kind {
        EventKind::Put => 0,
        EventKind::Delete => 1,
    });
    put_bytes(out, &e.key);
    put_bytes(out, &e.value);
    for n in [e.create_revision, e.mod_revision, e.version, e.lease] {
        out.extend_from_slice(&n.to_le_bytes());
    }
    match e.prev {
        PrevState::NotCaptured => out.push(0),
        PrevState::Absent => out.push(1),
        PrevState::Present(d) => {
            out.push(2);
            out.extend_from_slice(&d.0);
        }
    }
}

/// Format 1: revisions one after the other, then the trailer's tag and revision count.
fn decode_v1(mut r: Reader<'_>) -> Result<Segment, SegmentError> {
    let mut segment = Segment::default();
    loop {
        match r.u8()? {
            TAG_REVISION => {
                let changes = r.revision(false)?;
                segment.push_checked(changes, &r)?;
            }
            TAG_END => {
                let count = r.i64()? as u64;
                if count != segment.revisions.len() as u64 {
                    return Err(
                        r.corrupt(format!("trailer counts {count} revisions, {} read", segment.revisions.len()))
                    );
                }
                if r.offset != r.bytes.len() {
                    return Err(r.corrupt("bytes after the trailer".into()));
                }
                return Ok(segment);
            }
            tag => return Err(r.corrupt(format!("unknown tag {tag}"))),
        }
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

    /// One revision: `with_prev` in format 2, where each event ends in its previous state.
    fn revision(&mut self, with_prev: bool) -> Result<RevisionChanges, SegmentError> {
        let revision = self.i64()?;
        let observed_ms = self.i64()?;
        let count = self.u32()? as usize;
        // A count beyond what the bytes left can hold is corrupt, and is refused before
        // anything is allocated for it.
        let min_event = if with_prev { MIN_EVENT } else { MIN_EVENT_V1 };
        if count > (self.bytes.len() - self.offset) / min_event {
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
            let prev = if with_prev { self.prev()? } else { PrevState::NotCaptured };
            events.push(PitrEvent { kind, key, value, create_revision, mod_revision, version, lease, prev });
        }
        if events.is_empty() {
            return Err(self.corrupt(format!("revision {revision} without events")));
        }
        Ok(RevisionChanges { revision, observed_ms, events })
    }

    fn prev(&mut self) -> Result<PrevState, SegmentError> {
        match self.u8()? {
            0 => Ok(PrevState::NotCaptured),
            1 => Ok(PrevState::Absent),
            2 => {
                let mut d = [0u8; 8];
                d.copy_from_slice(self.take(8)?);
                Ok(PrevState::Present(PrevDigest(d)))
            }
            t => Err(self.corrupt(format!("unknown previous state {t}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, rev: i64, create: i64, version: i64, lease: i64) -> PitrEvent {
        let prev = if create == rev {
            PrevState::Absent
        } else {
            PrevState::Present(PrevDigest::of(b"before", create, rev - 1, version - 1, lease))
        };
        PitrEvent {
            kind: EventKind::Put,
            key: key.into(),
            value: format!("value of {key} at {rev}").into_bytes(),
            create_revision: create,
            mod_revision: rev,
            version,
            lease,
            prev,
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
            prev: PrevState::Present(PrevDigest::of(b"value of /registry/pods/a at 11", 11, 11, 1, 0)),
        };
        let mut unknown = put("\u{0}binary\u{ff}", 13, 13, 1, 0);
        unknown.prev = PrevState::NotCaptured;
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
                RevisionChanges { revision: 13, observed_ms: 2_500, events: vec![unknown] },
            ],
            leases: vec![LeaseObservation {
                id: 0x7a,
                revision: 12,
                observed_ms: 1_501,
                granted_ttl: 15,
                remaining_ttl: 14,
            }],
        }
    }

    /// The format-1 encoding of `s` (the release before previous states and leases).
    fn encode_v1(s: &Segment) -> Vec<u8> {
        let mut out = MAGIC_V1.to_vec();
        for r in &s.revisions {
            out.push(TAG_REVISION);
            out.extend_from_slice(&r.revision.to_le_bytes());
            out.extend_from_slice(&r.observed_ms.to_le_bytes());
            out.extend_from_slice(&(r.events.len() as u32).to_le_bytes());
            for e in &r.events {
                out.push(if e.kind == EventKind::Put { 0 } else { 1 });
                put_bytes(&mut out, &e.key);
                put_bytes(&mut out, &e.value);
                for n in [e.create_revision, e.mod_revision, e.version, e.lease] {
                    out.extend_from_slice(&n.to_le_bytes());
                }
            }
        }
        out.push(TAG_END);
        out.extend_from_slice(&(s.revisions.len() as u64).to_le_bytes());
        out
    }

    #[test]
    fn a_segment_reads_back_as_written_stored_or_not() {
        let s = sample();
        assert_eq!(Segment::decode("s", &s.encode()).unwrap(), s);
        let stored = s.to_stored(3, None).unwrap();
        assert_eq!(Segment::from_stored("s", &stored, 1 << 20, None).unwrap(), s);
        assert_eq!((s.first_revision(), s.last_revision(), s.event_count()), (Some(11), Some(13), 4));
        assert!(s.encoded_len() >= s.encode().len(), "{} < {}", s.encoded_len(), s.encode().len());
    }

    #[test]
    fn a_segment_of_the_previous_format_is_read_without_previous_states() {
        let s = sample();
        let old = Segment::decode("old", &encode_v1(&s)).unwrap();
        assert!(old.leases.is_empty());
        assert_eq!(old.revisions.len(), 3);
        for (o, n) in old.revisions.iter().flat_map(|r| &r.events).zip(s.revisions.iter().flat_map(|r| &r.events)) {
            assert_eq!(o.prev, PrevState::NotCaptured);
            assert_eq!(PitrEvent { prev: n.prev, ..o.clone() }, *n);
        }
        let bytes = encode_v1(&s);
        for len in 0..bytes.len() {
            assert!(Segment::decode("s", &bytes[..len]).is_err(), "a format-1 segment cut to {len} bytes was accepted");
        }
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
        // The first event's kind byte sits after magic, tag, length, revision, time and count.
        let mut bad_kind = bytes.clone();
        bad_kind[8 + 1 + 4 + 8 + 8 + 4] = 7;
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
        // A lease observed outside the segment's revisions.
        let mut s = sample();
        s.leases[0].revision = 14;
        assert!(Segment::decode("s", &s.encode()).unwrap_err().to_string().contains("outside 11..=13"));
    }

    #[test]
    fn unknown_optional_records_are_skipped_and_unknown_required_ones_refused() {
        let s = sample();
        let with = |tag: u8| {
            let mut bytes = s.encode();
            // Inserted right after the magic.
            let mut extra = Vec::new();
            record(&mut extra, tag, |out| out.extend_from_slice(b"a later release's field"));
            bytes.splice(8..8, extra);
            bytes
        };
        assert_eq!(Segment::decode("s", &with(0x80)).unwrap(), s);
        assert_eq!(Segment::decode("s", &with(0xFE)).unwrap(), s);
        let err = Segment::decode("s", &with(0x03)).unwrap_err();
        assert!(err.to_string().contains("unknown record 3"), "{err}");
    }

    #[test]
    fn a_state_digest_covers_value_revisions_version_and_lease() {
        let d = PrevDigest::of(b"v", 1, 2, 3, 4);
        assert_eq!(d, PrevDigest::of(b"v", 1, 2, 3, 4));
        for other in [
            PrevDigest::of(b"w", 1, 2, 3, 4),
            PrevDigest::of(b"v", 9, 2, 3, 4),
            PrevDigest::of(b"v", 1, 9, 3, 4),
            PrevDigest::of(b"v", 1, 2, 9, 4),
            PrevDigest::of(b"v", 1, 2, 3, 9),
        ] {
            assert_ne!(d, other);
        }
        assert_eq!(d.to_string().len(), 16);
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
