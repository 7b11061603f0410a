//! Compression of the stored bytes: none, zstd (`.zst`), or K3s's zip (`.zip`: one Deflate entry
//! named like the snapshot without `.zip`, mode 0600, modified at the snapshot time), written as
//! a stream so the same bytes can go to disk and S3 at once.

use bytes::Bytes;
use etcdsnap_api::Compression;
use std::io::{self, BufWriter, IoSlice, Write};
use zip::write::{SimpleFileOptions, StreamWriter};

/// How the stored bytes are produced.
#[derive(Debug, Clone)]
pub struct EncodeSpec {
    pub compression: Compression,
    pub zstd_level: i32,
    /// Name of the single zip entry (the snapshot name without `.zip`).
    pub zip_entry: String,
    /// Modification time of the zip entry.
    pub created_at: jiff::Timestamp,
    /// Expected uncompressed size; zip needs its zip64 form from 4 GiB on.
    pub expected_size: u64,
    /// Seal the stored bytes to these age recipients (after compression).
    pub recipients: Option<std::sync::Arc<crate::seal::Recipients>>,
}

/// The end of the encoder chain: stored bytes, one buffer or several at a time.
pub trait BatchWrite: Write {
    /// Writes every byte of `bufs`, in order.
    fn write_batch(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<()>;
}

/// Uncompressed bytes go to the output as they came (etcd's messages, a batch at a time);
/// compressed bytes, which come out of the compressor in small pieces, are gathered first.
pub enum Encoder<W: BatchWrite> {
    Plain(W),
    Zstd(zstd::stream::write::Encoder<'static, BufWriter<W>>),
    Zip(Box<zip::ZipWriter<StreamWriter<BufWriter<W>>>>),
}

/// Compressed bytes are handed to the output in writes of about this size.
const COMPRESSED_WRITE_SIZE: usize = 256 * 1024;

/// zstd's job size with one worker thread: the floor of its memory use (it holds about two jobs).
const ZSTD_JOB_BYTES: u32 = 2 * 1024 * 1024;

/// Entries at or above this size are written in zip64 form (with room for database growth
/// between the status call and the snapshot).
const ZIP64_FROM: u64 = 3 * 1024 * 1024 * 1024;

impl<W: BatchWrite> Encoder<W> {
    pub fn new(spec: &EncodeSpec, out: W) -> io::Result<Encoder<W>> {
        Ok(match spec.compression {
            Compression::None => Encoder::Plain(out),
            Compression::Zstd => {
                let out = BufWriter::with_capacity(COMPRESSED_WRITE_SIZE, out);
                let mut enc = zstd::stream::write::Encoder::new(out, spec.zstd_level)?;
                enc.include_checksum(true)?;
                // One compression worker: zstd compresses on its own thread while this one
                // hashes, checks the trailer and writes, so the two overlap.
                enc.multithread(1)?;
                // Small jobs keep zstd's buffers (input, output, overlap) to a few MiB.
                enc.set_parameter(zstd::stream::raw::CParameter::JobSize(ZSTD_JOB_BYTES))?;
                Encoder::Zstd(enc)
            }
            Compression::Zip => {
                let out = BufWriter::with_capacity(COMPRESSED_WRITE_SIZE, out);
                let mut zip = zip::ZipWriter::new_stream(out);
                let options = SimpleFileOptions::default()
                    .compression_method(zip::CompressionMethod::Deflated)
                    .last_modified_time(zip_time(spec.created_at))
                    .unix_permissions(0o600)
                    .large_file(spec.expected_size >= ZIP64_FROM);
                zip.start_file(spec.zip_entry.as_str(), options).map_err(io::Error::other)?;
                Encoder::Zip(Box::new(zip))
            }
        })
    }

    /// Encodes `chunks`, in order, showing each raw chunk to `inspect` first (the trailer
    /// check). Uncompressed chunks are all inspected, then written in one batch, without a copy.
    pub fn write_batch(&mut self, chunks: &[Bytes], mut inspect: impl FnMut(&[u8])) -> io::Result<()> {
        match self {
            Encoder::Plain(w) => {
                chunks.iter().for_each(|c| inspect(c));
                let slices: Vec<IoSlice<'_>> = chunks.iter().map(|c| IoSlice::new(c)).collect();
                w.write_batch(&slices)
            }
            Encoder::Zstd(e) => chunks.iter().try_for_each(|c| {
                inspect(c);
                e.write_all(c)
            }),
            Encoder::Zip(z) => chunks.iter().try_for_each(|c| {
                inspect(c);
                z.write_all(c)
            }),
        }
    }

    /// Writes trailing structures (zstd epilogue, zip data descriptor and central directory) and
    /// returns the output, every byte handed to it.
    pub fn finish(self) -> io::Result<W> {
        let gathered = match self {
            Encoder::Plain(w) => return Ok(w),
            Encoder::Zstd(e) => e.finish()?,
            Encoder::Zip(z) => z.finish().map_err(io::Error::other)?.into_inner(),
        };
        gathered.into_inner().map_err(|e| e.into_error())
    }
}

fn zip_time(t: jiff::Timestamp) -> zip::DateTime {
    let dt = t.to_zoned(jiff::tz::TimeZone::UTC).datetime();
    let parts =
        (dt.year() as u16, dt.month() as u8, dt.day() as u8, dt.hour() as u8, dt.minute() as u8, dt.second() as u8);
    zip::DateTime::from_date_and_time(parts.0, parts.1, parts.2, parts.3, parts.4, parts.5).unwrap_or_default()
}
