//! Compression of the stored bytes: none, zstd (`.zst`), or K3s's zip (`.zip`: one Deflate entry
//! named like the snapshot without `.zip`, mode 0600, modified at the snapshot time), written as
//! a stream so the same bytes can go to disk and S3 at once.

use etcdsnap_api::Compression;
use std::io::{self, Write};
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
}

pub enum Encoder<W: Write> {
    Plain(W),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Zip(Box<zip::ZipWriter<StreamWriter<W>>>),
}

/// zstd's job size with one worker thread: the floor of its memory use (it holds about two jobs).
const ZSTD_JOB_BYTES: u32 = 2 * 1024 * 1024;

/// Entries at or above this size are written in zip64 form (with room for database growth
/// between the status call and the snapshot).
const ZIP64_FROM: u64 = 3 * 1024 * 1024 * 1024;

impl<W: Write> Encoder<W> {
    pub fn new(spec: &EncodeSpec, out: W) -> io::Result<Encoder<W>> {
        Ok(match spec.compression {
            Compression::None => Encoder::Plain(out),
            Compression::Zstd => {
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

    pub fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Encoder::Plain(w) => w.write_all(buf),
            Encoder::Zstd(e) => e.write_all(buf),
            Encoder::Zip(z) => z.write_all(buf),
        }
    }

    /// Writes trailing structures (zstd epilogue, zip data descriptor and central directory) and
    /// returns the output.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Plain(w) => Ok(w),
            Encoder::Zstd(e) => e.finish(),
            Encoder::Zip(z) => Ok(z.finish().map_err(io::Error::other)?.into_inner()),
        }
    }
}

fn zip_time(t: jiff::Timestamp) -> zip::DateTime {
    let dt = t.to_zoned(jiff::tz::TimeZone::UTC).datetime();
    let parts =
        (dt.year() as u16, dt.month() as u8, dt.day() as u8, dt.hour() as u8, dt.minute() as u8, dt.second() as u8);
    zip::DateTime::from_date_and_time(parts.0, parts.1, parts.2, parts.3, parts.4, parts.5).unwrap_or_default()
}
