//! Reads the single entry of a K3s-style snapshot zip as a stream (no seeking: the bytes may be
//! coming from S3). K3s writes with data descriptors, which zip libraries can only stream when
//! the compressed size is known up front; Deflate data ends itself, so this reader does not need
//! it. The entry name is validated and never used as a path; a second entry is refused.

use etcdsnap_api::SnapshotName;
use std::io::{self, BufRead, Read};

const LOCAL_HEADER: u32 = 0x0403_4b50;
const DATA_DESCRIPTOR: u32 = 0x0807_4b50;
const CENTRAL_DIRECTORY: u32 = 0x0201_4b50;
const END_OF_CENTRAL_DIRECTORY: u32 = 0x0605_4b50;
const ZIP64_EXTRA: u16 = 0x0001;

/// Why a zip is refused.
#[derive(Debug, thiserror::Error)]
pub enum ZipReadError {
    #[error("not a zip archive (no local file header at the start)")]
    NotZip,
    #[error("zip entry name {0:?} is not a plain file name (path escapes are refused)")]
    UnsafeName(String),
    #[error("zip entry uses compression method {0}; only Deflate (8) and Store (0) are supported")]
    UnsupportedMethod(u16),
    #[error("zip entry is encrypted")]
    Encrypted,
    #[error("zip holds more than one entry; a snapshot zip holds exactly one")]
    MoreThanOneEntry,
    #[error("zip entry CRC-32 mismatch: recorded {recorded:08x}, computed {computed:08x}")]
    Crc { recorded: u32, computed: u32 },
    #[error("zip entry size mismatch: recorded {recorded}, read {read}")]
    Size { recorded: u64, read: u64 },
    #[error("zip archive is truncated or damaged: {0}")]
    Io(#[from] io::Error),
}

/// The entry being read.
pub struct ZipEntry<R: BufRead> {
    name: String,
    data: EntryData<R>,
    crc: crc32fast::Hasher,
    read: u64,
    descriptor: bool,
    zip64: bool,
    header_crc: u32,
    header_size: u64,
}

enum EntryData<R: BufRead> {
    Deflate(flate2::bufread::DeflateDecoder<R>),
    Stored(io::Take<R>),
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(a)
}

/// Parses the local header of the first entry and returns a reader of its decompressed bytes.
pub fn open_single_entry<R: BufRead>(mut input: R) -> Result<ZipEntry<R>, ZipReadError> {
    let mut header = [0u8; 30];
    input.read_exact(&mut header).map_err(|_| ZipReadError::NotZip)?;
    if u32_at(&header, 0) != LOCAL_HEADER {
        return Err(ZipReadError::NotZip);
    }
    let flags = u16_at(&header, 6);
    let method = u16_at(&header, 8);
    if flags & 0x1 != 0 {
        return Err(ZipReadError::Encrypted);
    }
    let mut name = vec![0u8; u16_at(&header, 26) as usize];
    input.read_exact(&mut name)?;
    let mut extra = vec![0u8; u16_at(&header, 28) as usize];
    input.read_exact(&mut extra)?;
    let name = String::from_utf8_lossy(&name).into_owned();
    if SnapshotName::parse(&name).is_err() {
        return Err(ZipReadError::UnsafeName(name));
    }
    let zip64 = has_zip64_extra(&extra);
    let descriptor = flags & 0x8 != 0;
    let mut compressed = u32_at(&header, 18) as u64;
    let mut size = u32_at(&header, 22) as u64;
    if zip64
        && !descriptor
        && let Some((usize64, csize64)) = zip64_sizes(&extra)
    {
        size = usize64;
        compressed = csize64;
    }
    let data = match method {
        8 => EntryData::Deflate(flate2::bufread::DeflateDecoder::new(input)),
        0 if !descriptor => EntryData::Stored(input.take(compressed)),
        other => return Err(ZipReadError::UnsupportedMethod(other)),
    };
    Ok(ZipEntry {
        name,
        data,
        crc: crc32fast::Hasher::new(),
        read: 0,
        descriptor,
        zip64,
        header_crc: u32_at(&header, 14),
        header_size: size,
    })
}

fn extra_fields(extra: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut i = 0;
    std::iter::from_fn(move || {
        if i + 4 > extra.len() {
            return None;
        }
        let id = u16_at(extra, i);
        let len = u16_at(extra, i + 2) as usize;
        let body = extra.get(i + 4..i + 4 + len)?;
        i += 4 + len;
        Some((id, body))
    })
}

fn has_zip64_extra(extra: &[u8]) -> bool {
    extra_fields(extra).any(|(id, _)| id == ZIP64_EXTRA)
}

fn zip64_sizes(extra: &[u8]) -> Option<(u64, u64)> {
    extra_fields(extra)
        .find(|(id, body)| *id == ZIP64_EXTRA && body.len() >= 16)
        .map(|(_, b)| (u64_at(b, 0), u64_at(b, 8)))
}

impl<R: BufRead> ZipEntry<R> {
    /// The entry's (validated) name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// After the entry data is read to its end: checks CRC and size against the data descriptor
    /// (or header), checks that the central directory follows (no second entry), and returns the
    /// input positioned after the entry, so the caller can consume the rest.
    pub fn finish(mut self) -> Result<R, ZipReadError> {
        // Drain anything the caller did not read, so CRC and size cover the whole entry.
        io::copy(&mut self, &mut io::sink())?;
        let mut input = match self.data {
            EntryData::Deflate(d) => d.into_inner(),
            EntryData::Stored(t) => t.into_inner(),
        };
        let (crc, size) = if self.descriptor {
            let mut first = [0u8; 4];
            input.read_exact(&mut first)?;
            let crc = if u32_at(&first, 0) == DATA_DESCRIPTOR {
                input.read_exact(&mut first)?;
                u32_at(&first, 0)
            } else {
                u32_at(&first, 0)
            };
            let size = if self.zip64 {
                let mut b = [0u8; 16];
                input.read_exact(&mut b)?;
                u64_at(&b, 8)
            } else {
                let mut b = [0u8; 8];
                input.read_exact(&mut b)?;
                u32_at(&b, 4) as u64
            };
            (crc, size)
        } else {
            (self.header_crc, self.header_size)
        };
        let computed = self.crc.finalize();
        if crc != computed {
            return Err(ZipReadError::Crc { recorded: crc, computed });
        }
        let read_cmp = if self.zip64 || !self.descriptor { self.read } else { self.read & 0xffff_ffff };
        if size != read_cmp {
            return Err(ZipReadError::Size { recorded: size, read: self.read });
        }
        let mut sig = [0u8; 4];
        input.read_exact(&mut sig)?;
        match u32_at(&sig, 0) {
            CENTRAL_DIRECTORY | END_OF_CENTRAL_DIRECTORY => Ok(input),
            LOCAL_HEADER => Err(ZipReadError::MoreThanOneEntry),
            _ => Err(ZipReadError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                "no central directory after the entry",
            ))),
        }
    }
}

impl<R: BufRead> Read for ZipEntry<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match &mut self.data {
            EntryData::Deflate(d) => d.read(buf)?,
            EntryData::Stored(t) => t.read(buf)?,
        };
        self.crc.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};
    use zip::write::SimpleFileOptions;

    fn zip_of(entries: &[(&str, &[u8])], stream: bool) -> Vec<u8> {
        let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        if stream {
            let mut z = zip::ZipWriter::new_stream(Vec::new());
            for (name, data) in entries {
                z.start_file(*name, opts).unwrap();
                z.write_all(data).unwrap();
            }
            z.finish().unwrap().into_inner()
        } else {
            let mut z = zip::ZipWriter::new(Cursor::new(Vec::new()));
            for (name, data) in entries {
                z.start_file(*name, opts).unwrap();
                z.write_all(data).unwrap();
            }
            z.finish().unwrap().into_inner()
        }
    }

    fn read_all(bytes: &[u8]) -> Result<(String, Vec<u8>), ZipReadError> {
        let mut entry = open_single_entry(Cursor::new(bytes))?;
        let mut out = Vec::new();
        entry.read_to_end(&mut out)?;
        let name = entry.name().to_string();
        entry.finish()?;
        Ok((name, out))
    }

    #[test]
    fn reads_streamed_and_seekable_zips() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 97) as u8).collect();
        for stream in [true, false] {
            let z = zip_of(&[("snap-n-1", &data)], stream);
            let (name, out) = read_all(&z).unwrap_or_else(|e| panic!("stream={stream}: {e}"));
            assert_eq!(name, "snap-n-1");
            assert_eq!(out, data);
        }
    }

    #[test]
    fn refuses_escaping_names_and_second_entries() {
        let z = zip_of(&[("../../etc/passwd", b"x")], true);
        assert!(matches!(read_all(&z), Err(ZipReadError::UnsafeName(_))));
        let z = zip_of(&[("a/b", b"x")], true);
        assert!(matches!(read_all(&z), Err(ZipReadError::UnsafeName(_))));
        let z = zip_of(&[("a", b"x"), ("b", b"y")], true);
        assert!(matches!(read_all(&z), Err(ZipReadError::MoreThanOneEntry)));
    }

    #[test]
    fn detects_damage() {
        let data = vec![7u8; 50_000];
        let z = zip_of(&[("snap", &data)], true);
        assert!(read_all(&z[..z.len() / 2]).is_err());
        assert!(matches!(read_all(b"PK\x05\x06"), Err(ZipReadError::NotZip)));
        assert!(matches!(read_all(b"hello world, definitely not a zip archive"), Err(ZipReadError::NotZip)));
        let mut flipped = z.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0xff;
        assert!(read_all(&flipped).is_err(), "flipped byte not detected");
    }
}
