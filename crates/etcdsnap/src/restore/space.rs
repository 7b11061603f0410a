//! Free space: how big the restored database will be, and whether the target's file system has
//! room for it. A restore that runs out of space half-way leaves nothing useful, so this is
//! checked before anything is written.

use super::source::SnapshotSource;
use etcdsnap_api::Compression;
use serde::Serialize;
use std::fs::File;
use std::io::Read;
use std::path::Path;

/// etcdutl writes a WAL whose first segment is preallocated at 64 MiB, plus a small snap file.
pub const WAL_RESERVE: u64 = 64 * 1024 * 1024 + 1024 * 1024;

/// Decompressed size per stored byte assumed when nothing better is known: Kubernetes data
/// measured 0.16 (zstd) to 0.18 (zip) in bench/, so 8 leaves headroom.
const ESTIMATE_FACTOR: u64 = 8;

/// Where the decompressed size comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SizeBasis {
    /// The snapshot is not compressed: its size.
    Uncompressed,
    /// The content size in the zstd frame header.
    ZstdFrameHeader,
    /// The entry size in the zip's central directory.
    ZipDirectory,
    /// The database size etcd reported when the snapshot was taken.
    RecordedDbSize,
    /// A guess from the compressed size.
    Estimate,
}

impl SizeBasis {
    /// Whether a shortfall computed from this basis is certain enough to refuse the restore.
    pub fn is_exact(self) -> bool {
        self != SizeBasis::Estimate
    }

    pub fn describe(self) -> &'static str {
        match self {
            SizeBasis::Uncompressed => "size of the uncompressed snapshot",
            SizeBasis::ZstdFrameHeader => "content size in the zstd frame header",
            SizeBasis::ZipDirectory => "entry size in the zip directory",
            SizeBasis::RecordedDbSize => "etcd database size recorded at save time",
            SizeBasis::Estimate => "estimate: 8x the compressed size",
        }
    }
}

/// Bytes available to an unprivileged writer on the file system holding `dir`.
pub fn available_bytes(dir: &Path) -> std::io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

/// The size of the etcd snapshot once decompressed, and how it is known. Only metadata and
/// headers are read.
pub fn decompressed_size(source: &SnapshotSource, stored_size: u64) -> (u64, SizeBasis) {
    let from_headers = match (source.compression, source.path()) {
        (Compression::None, _) => return (stored_size, SizeBasis::Uncompressed),
        (Compression::Zstd, Some(path)) => zstd_content_size(path).map(|n| (n, SizeBasis::ZstdFrameHeader)),
        (Compression::Zip, Some(path)) => zip_entry_size(path).map(|n| (n, SizeBasis::ZipDirectory)),
        _ => None,
    };
    if let Some(found) = from_headers {
        return found;
    }
    if let Some(db) = source.record.etcd.as_ref().and_then(|e| e.db_size).filter(|n| *n > 0) {
        // The snapshot is the database file plus etcd's 32-byte trailer.
        return (db as u64 + 32, SizeBasis::RecordedDbSize);
    }
    (stored_size.saturating_mul(ESTIMATE_FACTOR), SizeBasis::Estimate)
}

fn zstd_content_size(path: &Path) -> Option<u64> {
    let mut header = [0u8; 18];
    let mut f = File::open(path).ok()?;
    let mut n = 0;
    while n < header.len() {
        match f.read(&mut header[n..]).ok()? {
            0 => break,
            k => n += k,
        }
    }
    zstd::zstd_safe::get_frame_content_size(&header[..n]).ok().flatten()
}

fn zip_entry_size(path: &Path) -> Option<u64> {
    let file = File::open(path).ok()?;
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file)).ok()?;
    if archive.len() != 1 {
        return None;
    }
    let entry = archive.by_index_raw(0).ok()?;
    Some(entry.size())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn sizes_come_from_headers_when_they_have_them() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![3u8; 100_000];

        let zst = dir.path().join("a-n-1.zst");
        let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        enc.set_pledged_src_size(Some(data.len() as u64)).unwrap();
        enc.write_all(&data).unwrap();
        std::fs::write(&zst, enc.finish().unwrap_or_default()).unwrap();
        let s = SnapshotSource::from_path(&zst).unwrap();
        assert_eq!(decompressed_size(&s, 10), (100_000, SizeBasis::ZstdFrameHeader));

        let streamed = dir.path().join("b-n-1.zst");
        let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        enc.write_all(&data).unwrap();
        std::fs::write(&streamed, enc.finish().unwrap_or_default()).unwrap();
        let s = SnapshotSource::from_path(&streamed).unwrap();
        assert_eq!(decompressed_size(&s, 10), (80, SizeBasis::Estimate));

        let zip = dir.path().join("c-n-1.zip");
        let mut z = zip::ZipWriter::new_stream(Vec::new());
        z.start_file("c-n-1", zip::write::SimpleFileOptions::default()).unwrap();
        z.write_all(&data).unwrap();
        let bytes = z.finish().unwrap().into_inner();
        std::fs::write(&zip, bytes).unwrap();
        let s = SnapshotSource::from_path(&zip).unwrap();
        assert_eq!(decompressed_size(&s, 10), (100_000, SizeBasis::ZipDirectory));
    }

    #[test]
    fn free_space_is_known() {
        let dir = tempfile::tempdir().unwrap();
        assert!(available_bytes(dir.path()).unwrap_or(0) > 0);
        assert!(available_bytes(&dir.path().join("missing")).is_err());
    }
}
