//! Re-reading stored bytes: sha256 of what is stored, etcd's trailer after decryption and
//! decompression and, when asked, the revision the snapshot holds. Used by `verify`, by
//! restore's pre-flight check, by drills, and by tests.
//!
//! Sealed bytes are opened with an identity ([`Unseal::With`]); without one ([`Unseal::HashOnly`])
//! only their sha256 and size are checked, which is what the record vouches for.

use super::revision::{RevisionError, RevisionScanner, SnapshotRevision};
use super::trailer::{TrailerCheck, TrailerOutcome};
use super::zipread::{self, ZipReadError};
use crate::seal::Identity;
use etcdsnap_api::Compression;
use sha2::{Digest, Sha256};
use std::io::{self, BufRead, BufReader, Read, Write};

/// What re-reading found.
#[derive(Debug, Clone)]
pub struct StoredCheck {
    pub stored_sha256: String,
    pub stored_size: u64,
    /// Decompressed size (the etcd database plus its trailer).
    pub raw_size: u64,
    pub trailer: TrailerOutcome,
    /// Whether the bytes were opened and the trailer checked (false for sealed bytes read
    /// without an identity: then only the sha256 and size say anything).
    pub trailer_checked: bool,
    /// Name of the entry inside a zip.
    pub zip_entry: Option<String>,
    /// The revision read from the snapshot's pages, when asked for ([`ReadRevision`]).
    pub revision: Option<Result<SnapshotRevision, RevisionError>>,
}

/// Whether a pass also reads the revision the snapshot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadRevision {
    No,
    /// Yes; the snapshot is expected to hold at least this revision (its record's). Leaves
    /// before it are not remembered, so memory stays small whatever the database's size.
    AtLeast(i64),
}

/// How sealed bytes are read.
#[derive(Debug, Clone, Copy)]
pub enum Unseal<'a> {
    /// The bytes are not sealed.
    No,
    /// Sealed: opened with this identity, then decompressed and checked.
    With(&'a Identity),
    /// Sealed, and no identity: only the stored bytes are hashed and counted.
    HashOnly,
}

impl Unseal<'_> {
    /// How to read bytes sealed or not, with the identity (if any) the caller has.
    pub fn for_sealed(sealed: bool, identity: Option<&Identity>) -> Unseal<'_> {
        match (sealed, identity) {
            (false, _) => Unseal::No,
            (true, Some(id)) => Unseal::With(id),
            (true, None) => Unseal::HashOnly,
        }
    }
}

/// Why the bytes could not be read to the end.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("reading the snapshot failed: {0}")]
    Io(#[from] io::Error),
    #[error("zstd data is damaged: {0}")]
    Zstd(io::Error),
    #[error(transparent)]
    Zip(#[from] ZipReadError),
    #[error("writing the decompressed snapshot failed: {0}")]
    Write(io::Error),
    #[error("the sealed snapshot cannot be opened: {0}")]
    Unseal(String),
}

/// Counts everything read through it and, when the stored bytes differ from the decompressed
/// ones, hashes it (for uncompressed bytes the trailer check's running hash is the same hash, so
/// hashing twice would only cost time).
struct HashingReader<R> {
    inner: R,
    hasher: Option<Sha256>,
    count: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.count += n as u64;
        Ok(n)
    }
}

/// Feeds decompressed bytes to the trailer check and on to `out`. A failure of `out` is kept
/// aside, so that it is reported as a write failure rather than as damaged input.
struct TrailerWriter<W> {
    check: TrailerCheck,
    revision: Option<RevisionScanner>,
    out: W,
    write_error: Option<io::Error>,
}

impl<W: Write> TrailerWriter<W> {
    fn failed(&mut self, e: io::Error) -> io::Error {
        let copy = io::Error::new(e.kind(), e.to_string());
        self.write_error = Some(e);
        copy
    }
}

impl<W: Write> Write for TrailerWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Err(e) = self.out.write_all(buf) {
            return Err(self.failed(e));
        }
        self.check.update(buf);
        if let Some(r) = &mut self.revision {
            r.feed(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        match self.out.flush() {
            Ok(()) => Ok(()),
            Err(e) => Err(self.failed(e)),
        }
    }
}

const BUF: usize = 1024 * 1024;

/// Reads `input` to its end once, computing the stored hash and checking the decompressed
/// stream's trailer. Blocking: call it from a blocking thread.
pub fn verify_reader<R: Read>(
    input: R,
    compression: Compression,
    unseal: Unseal<'_>,
    read_revision: ReadRevision,
) -> Result<StoredCheck, VerifyError> {
    verify_copy(input, compression, unseal, io::sink(), read_revision).map(|(check, _)| check)
}

/// The same single pass as [`verify_reader`], also writing the decompressed bytes (the etcd
/// snapshot itself) to `out`: restore materialises a compressed or downloaded snapshot while it
/// checks it, instead of reading it twice. `out` is returned flushed; whether its content may be
/// used is for the caller to decide from the returned check.
pub fn verify_copy<R: Read, W: Write>(
    input: R,
    compression: Compression,
    unseal: Unseal<'_>,
    out: W,
    read_revision: ReadRevision,
) -> Result<(StoredCheck, W), VerifyError> {
    let transformed = compression != Compression::None || !matches!(unseal, Unseal::No);
    let hashing = HashingReader { inner: input, hasher: transformed.then(Sha256::new), count: 0 };
    let revision = match read_revision {
        ReadRevision::No => None,
        ReadRevision::AtLeast(floor) => Some(RevisionScanner::new(floor)),
    };
    let mut sink = TrailerWriter { check: TrailerCheck::new(), revision, out, write_error: None };
    let result = match unseal {
        Unseal::No => copy_through(hashing, compression, &mut sink),
        Unseal::With(identity) => open_through(hashing, identity, compression, &mut sink),
        Unseal::HashOnly => {
            let mut r = BufReader::with_capacity(BUF, hashing);
            drain(&mut r).map(|()| (r.into_inner(), None)).map_err(VerifyError::Io)
        }
    };
    if let Some(e) = sink.write_error.take() {
        return Err(VerifyError::Write(e));
    }
    let (hashing, zip_entry) = result?;
    let trailer = sink.check.finish();
    let revision = sink.revision.map(RevisionScanner::finish);
    let stored_sha256 = match hashing.hasher {
        Some(h) => hex::encode(h.finalize()),
        None => trailer.whole.clone(),
    };
    Ok((
        StoredCheck {
            stored_sha256,
            stored_size: hashing.count,
            raw_size: trailer.total,
            trailer,
            trailer_checked: !matches!(unseal, Unseal::HashOnly),
            zip_entry,
            revision,
        },
        sink.out,
    ))
}

type Copied<R> = (R, Option<String>);

/// Opens sealed bytes with `identity` and decompresses them into `sink`, to the end of the
/// input (age authenticates every chunk as it is read, the last one included); returns the
/// hashing reader and the zip entry name.
fn open_through<R: Read, W: Write>(
    hashing: HashingReader<R>,
    identity: &Identity,
    compression: Compression,
    sink: &mut TrailerWriter<W>,
) -> Result<Copied<HashingReader<R>>, VerifyError> {
    let mut buffered = BufReader::with_capacity(BUF, hashing);
    let zip_entry = {
        let decryptor =
            ::age::Decryptor::new_buffered(&mut buffered).map_err(|e| VerifyError::Unseal(e.to_string()))?;
        let plain = decryptor.decrypt(identity.as_age()).map_err(|e| VerifyError::Unseal(e.to_string()))?;
        copy_through(plain, compression, sink)?.1
    };
    drain(&mut buffered)?;
    Ok((buffered.into_inner(), zip_entry))
}

/// Decompresses `input` into `sink` to its end; returns the reader (for its hash and count)
/// and the zip entry name.
fn copy_through<R: Read, W: Write>(
    hashing: R,
    compression: Compression,
    sink: &mut TrailerWriter<W>,
) -> Result<Copied<R>, VerifyError> {
    let copied = match compression {
        Compression::None => {
            let mut r = BufReader::with_capacity(BUF, hashing);
            io::copy(&mut r, sink)?;
            (r.into_inner(), None)
        }
        Compression::Zstd => {
            let mut dec = zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(BUF, hashing))?;
            io::copy(&mut dec, sink).map_err(VerifyError::Zstd)?;
            let mut rest = dec.finish();
            drain(&mut rest)?;
            (rest.into_inner(), None)
        }
        Compression::Zip => {
            let mut entry = zipread::open_single_entry(BufReader::with_capacity(BUF, hashing))?;
            io::copy(&mut entry, sink)?;
            let name = entry.name().to_string();
            let mut rest = entry.finish()?;
            drain(&mut rest)?;
            (rest.into_inner(), Some(name))
        }
    };
    sink.flush()?;
    Ok(copied)
}

/// Reads what is left (a zip's central directory), so the stored hash covers every byte.
fn drain<R: BufRead>(r: &mut R) -> io::Result<()> {
    io::copy(r, &mut io::sink()).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::trailer::with_trailer;

    fn snapshot() -> Vec<u8> {
        with_trailer(&(0..200_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>())
    }

    #[test]
    fn copies_what_it_checks() {
        let snap = snapshot();
        let zst = zstd::encode_all(&snap[..], 3).unwrap_or_default();
        for (stored, compression) in [(snap.clone(), Compression::None), (zst.clone(), Compression::Zstd)] {
            let (check, out) = verify_copy(&stored[..], compression, Unseal::No, Vec::new(), ReadRevision::No).unwrap();
            assert_eq!(out, snap, "{compression}");
            assert!(check.trailer.is_valid());
            assert_eq!(check.stored_size, stored.len() as u64);
            assert_eq!(check.stored_sha256, hex::encode(Sha256::digest(&stored)), "{compression}");
        }
    }

    #[test]
    fn the_revision_is_read_when_asked() {
        let db = with_trailer(&crate::pipeline::revision::fixture::database(9, 20));
        let zst = zstd::encode_all(&db[..], 3).unwrap_or_default();
        let check = verify_reader(&zst[..], Compression::Zstd, Unseal::No, ReadRevision::AtLeast(5)).unwrap();
        assert_eq!(check.revision.map(|r| r.map(|r| r.revision)), Some(Ok(9)));
        let check = verify_reader(&db[..], Compression::None, Unseal::No, ReadRevision::AtLeast(10)).unwrap();
        assert!(matches!(check.revision, Some(Err(RevisionError::BeforeFloor { .. }))));
        assert!(verify_reader(&db[..], Compression::None, Unseal::No, ReadRevision::No).unwrap().revision.is_none());
    }

    struct Full;
    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(28))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failing_destination_is_a_write_error() {
        let err = verify_copy(&snapshot()[..], Compression::None, Unseal::No, Full, ReadRevision::No).err();
        assert!(matches!(err, Some(VerifyError::Write(_))), "{err:?}");
    }
}
