//! Sealing in the save's one pass: the (compressed) bytes are encrypted with age to the
//! configured recipients on their way to the sinks, so the stored bytes are exactly what
//! `age -d` opens, and what it gives back is what an unsealed save would have stored. The
//! sha256 of the record is the sha256 of these stored bytes, so `verify` needs no key.
//!
//! age encrypts in 64 KiB chunks: one chunk is held, and the encrypted bytes are gathered into
//! writes of [`SEALED_WRITE_SIZE`] before the fan-out, so sealing adds a few hundred KiB of
//! memory whatever the database's size.

use super::encode::BatchWrite;
use crate::seal::Recipients;
use std::io::{self, BufWriter, IoSlice, Write};

/// Sealed bytes are handed to the sinks in writes of about this size.
const SEALED_WRITE_SIZE: usize = 256 * 1024;

/// The stage between the compressor and the fan-out: age encryption, or nothing.
pub enum Sealer<W: BatchWrite> {
    Open(W),
    Sealed(Box<::age::stream::StreamWriter<BufWriter<W>>>),
}

impl<W: BatchWrite> Sealer<W> {
    /// Seals to `recipients` when given (the age header is written to `out` at once).
    pub fn new(recipients: Option<&Recipients>, out: W) -> io::Result<Sealer<W>> {
        let Some(recipients) = recipients else { return Ok(Sealer::Open(out)) };
        let encryptor = recipients.encryptor().map_err(io::Error::other)?;
        let writer = encryptor.wrap_output(BufWriter::with_capacity(SEALED_WRITE_SIZE, out))?;
        Ok(Sealer::Sealed(Box::new(writer)))
    }

    /// Writes age's last chunk and returns the output, every byte handed to it.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Sealer::Open(w) => Ok(w),
            Sealer::Sealed(s) => s.finish()?.into_inner().map_err(|e| e.into_error()),
        }
    }
}

impl<W: BatchWrite> Write for Sealer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sealer::Open(w) => w.write(buf),
            Sealer::Sealed(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sealer::Open(w) => w.flush(),
            // age's stream writer flushes its pending chunk only when finished.
            Sealer::Sealed(_) => Ok(()),
        }
    }
}

impl<W: BatchWrite> BatchWrite for Sealer<W> {
    fn write_batch(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<()> {
        match self {
            Sealer::Open(w) => w.write_batch(bufs),
            Sealer::Sealed(s) => bufs.iter().try_for_each(|b| s.write_all(b)),
        }
    }
}
