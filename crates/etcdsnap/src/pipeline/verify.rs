//! Re-reading stored bytes: sha256 of what is stored, and etcd's trailer after decompression.
//! Used by `verify`, by restore's pre-flight check, and by tests.

use super::trailer::{TrailerCheck, TrailerOutcome};
use super::zipread::{self, ZipReadError};
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
    /// Name of the entry inside a zip.
    pub zip_entry: Option<String>,
}

/// Why the bytes could not be read to the end.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("reading the snapshot failed: {0}")]
    Io(#[from] io::Error),
    #[error("zstd data is damaged: {0}")]
    Zstd(io::Error),
    #[error("{0}")]
    Zip(#[from] ZipReadError),
}

/// Counts and hashes everything read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Feeds decompressed bytes to the trailer check.
struct TrailerWriter(TrailerCheck);

impl Write for TrailerWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

const BUF: usize = 1024 * 1024;

/// Reads `input` to its end once, computing the stored hash and checking the decompressed
/// stream's trailer. Blocking: call it from a blocking thread.
pub fn verify_reader<R: Read>(input: R, compression: Compression) -> Result<StoredCheck, VerifyError> {
    let hashing = HashingReader { inner: input, hasher: Sha256::new(), count: 0 };
    let mut sink = TrailerWriter(TrailerCheck::new());
    let (hashing, zip_entry) = match compression {
        Compression::None => {
            let mut r = BufReader::with_capacity(BUF, hashing);
            io::copy(&mut r, &mut sink)?;
            (r.into_inner(), None)
        }
        Compression::Zstd => {
            let mut dec = zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(BUF, hashing))?;
            io::copy(&mut dec, &mut sink).map_err(VerifyError::Zstd)?;
            let mut rest = dec.finish();
            drain(&mut rest)?;
            (rest.into_inner(), None)
        }
        Compression::Zip => {
            let mut entry = zipread::open_single_entry(BufReader::with_capacity(BUF, hashing))?;
            io::copy(&mut entry, &mut sink)?;
            let name = entry.name().to_string();
            let mut rest = entry.finish()?;
            drain(&mut rest)?;
            (rest.into_inner(), Some(name))
        }
    };
    let trailer = sink.0.finish();
    Ok(StoredCheck {
        stored_sha256: hex::encode(hashing.hasher.finalize()),
        stored_size: hashing.count,
        raw_size: trailer.total,
        trailer,
        zip_entry,
    })
}

/// Reads what is left (a zip's central directory), so the stored hash covers every byte.
fn drain<R: BufRead>(r: &mut R) -> io::Result<()> {
    io::copy(r, &mut io::sink()).map(|_| ())
}
