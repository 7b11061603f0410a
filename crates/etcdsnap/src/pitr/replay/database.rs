//! The replayed etcd's database, made into a snapshot file once that etcd has stopped.
//!
//! etcd's Snapshot call sends its bbolt file as a reading transaction sees it: two meta pages
//! made from that transaction's meta (page 0 with its transaction ID, page 1 with the ID
//! before), then the file's pages 2 up to the transaction's high-water mark, as they are; then
//! the sha256 of all of it. The file of a stopped etcd holds the same pages; only its two meta
//! pages differ (bbolt writes them in turn, one commit each). So rewriting the two meta pages
//! from the newer one, cutting the file at its high-water mark and appending the sha256 gives
//! the bytes that call would have sent, without streaming the whole database through etcd and
//! writing a copy of it: the replay's last large cost after the transactions themselves.
//!
//! The result is checked as any saved snapshot is: it must hold the revision the replay
//! reached (an etcd that had to be killed may not have committed its last revisions).

use super::ReplayError;
use etcdsnap_storage::pipeline::revision::RevisionScanner;
use sha2::{Digest, Sha256};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

const PAGE_HEADER: usize = 16;
/// The meta fields after the page header: magic, version, page size, flags, root bucket (2
/// words), freelist, high-water mark, transaction ID, checksum.
const MAGIC_AT: usize = PAGE_HEADER;
const VERSION_AT: usize = PAGE_HEADER + 4;
const PAGE_SIZE_AT: usize = PAGE_HEADER + 8;
const HIGH_WATER_AT: usize = PAGE_HEADER + 40;
const TXID_AT: usize = PAGE_HEADER + 48;
const CHECKSUM_AT: usize = PAGE_HEADER + 56;
const META_END: usize = CHECKSUM_AT + 8;
const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
/// The smallest page size bbolt uses (the system's page size).
const MIN_PAGE: usize = 1024;
/// The largest one accepted.
const MAX_PAGE: usize = 64 * 1024;

/// The two meta pages of a snapshot and where its pages end.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Metas {
    page_size: usize,
    /// Bytes of pages, meta pages included: the high-water mark times the page size.
    size: u64,
    first: Vec<u8>,
    second: Vec<u8>,
}

/// Moves the database of the stopped etcd in `data_dir` to `to` as a snapshot file (0600),
/// checked to hold `revision`.
pub(super) fn into_snapshot(data_dir: &Path, to: &Path, revision: i64) -> Result<(), ReplayError> {
    let failed = |message: String| ReplayError::Save { path: to.into(), message };
    let db = data_dir.join("member").join("snap").join("db");
    let io = |what: &str, e: std::io::Error| failed(format!("{what} {}: {e}", db.display()));
    let mut file = std::fs::OpenOptions::new().read(true).write(true).open(&db).map_err(|e| io("cannot open", e))?;
    let mut head = vec![0u8; 2 * MAX_PAGE];
    let len = read_up_to(&mut file, &mut head).map_err(|e| io("cannot read", e))?;
    let metas = metas(&head[..len]).map_err(|m| failed(format!("{}: {m}", db.display())))?;
    let on_disk = file.metadata().map_err(|e| io("cannot read", e))?.len();
    if on_disk < metas.size {
        return Err(failed(format!("{} holds {on_disk} bytes, its pages end at {}", db.display(), metas.size)));
    }
    file.seek(SeekFrom::Start(0)).map_err(|e| io("cannot write", e))?;
    file.write_all(&metas.first).and_then(|_| file.write_all(&metas.second)).map_err(|e| io("cannot write", e))?;
    file.set_len(metas.size).map_err(|e| io("cannot cut", e))?;

    // One pass for the trailer and the revision.
    file.seek(SeekFrom::Start(0)).map_err(|e| io("cannot read", e))?;
    let (mut sha, mut scanner) = (Sha256::new(), RevisionScanner::new(revision));
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| io("cannot read", e))?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        scanner.feed(&buf[..n]);
    }
    let held = scanner.finish().map_err(|e| failed(format!("{}: {e}", db.display())))?;
    if held.revision != revision {
        return Err(failed(format!("the database holds revision {}, the replay reached {revision}", held.revision)));
    }
    file.write_all(&sha.finalize()).map_err(|e| io("cannot write", e))?;
    drop(file);
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).map_err(|e| io("cannot restrict", e))?;
    std::fs::rename(&db, to).map_err(|e| io("cannot move", e))
}

fn read_up_to(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// The meta pages a snapshot of the database whose first bytes are `head` starts with: the
/// newer valid meta page as page 0, and as page 1 with the transaction ID before.
fn metas(head: &[u8]) -> Result<Metas, String> {
    let first = meta_at(head, 0)?;
    let page_size = u32_at(first, PAGE_SIZE_AT) as usize;
    if !(MIN_PAGE..=MAX_PAGE).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(format!("not a bbolt database (page size {page_size})"));
    }
    let second = meta_at(head, page_size)?;
    let newer = match (valid(first), valid(second)) {
        (true, true) if u64_at(second, TXID_AT) > u64_at(first, TXID_AT) => second,
        (true, _) => first,
        (false, true) => second,
        (false, false) => return Err("neither meta page is valid: not a bbolt database, or a damaged one".into()),
    };
    // bbolt writes a meta page from a zeroed page.
    let mut page = newer[..META_END].to_vec();
    page.resize(page_size, 0);
    let txid = u64_at(&page, TXID_AT);
    let size = u64_at(&page, HIGH_WATER_AT).saturating_mul(page_size as u64);
    let make = |id: u64, txid: u64| {
        let mut p = page.clone();
        p[..8].copy_from_slice(&id.to_le_bytes());
        p[TXID_AT..TXID_AT + 8].copy_from_slice(&txid.to_le_bytes());
        let sum = fnv1a(&p[PAGE_HEADER..CHECKSUM_AT]);
        p[CHECKSUM_AT..META_END].copy_from_slice(&sum.to_le_bytes());
        p
    };
    Ok(Metas { page_size, size, first: make(0, txid), second: make(1, txid.saturating_sub(1)) })
}

/// The page at `offset` of `head`, as far as `head` holds it (at least its meta fields).
fn meta_at(head: &[u8], offset: usize) -> Result<&[u8], String> {
    head.get(offset..)
        .filter(|p| p.len() >= META_END)
        .ok_or_else(|| format!("too short for a bbolt database ({} bytes)", head.len()))
}

fn valid(page: &[u8]) -> bool {
    u32_at(page, MAGIC_AT) == MAGIC
        && u32_at(page, VERSION_AT) == VERSION
        && u64_at(page, CHECKSUM_AT) == fnv1a(&page[PAGE_HEADER..CHECKSUM_AT])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(word)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(word)
}

/// 64-bit FNV-1a, bbolt's meta checksum.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 4096;

    /// A meta page `id` with transaction `txid` and high-water mark `pgid`.
    fn meta(id: u64, txid: u64, pgid: u64) -> Vec<u8> {
        let mut p = vec![0u8; PAGE];
        p[..8].copy_from_slice(&id.to_le_bytes());
        p[8..10].copy_from_slice(&0x04u16.to_le_bytes());
        p[MAGIC_AT..MAGIC_AT + 4].copy_from_slice(&MAGIC.to_le_bytes());
        p[VERSION_AT..VERSION_AT + 4].copy_from_slice(&VERSION.to_le_bytes());
        p[PAGE_SIZE_AT..PAGE_SIZE_AT + 4].copy_from_slice(&(PAGE as u32).to_le_bytes());
        p[PAGE_HEADER + 16..PAGE_HEADER + 24].copy_from_slice(&3u64.to_le_bytes()); // root
        p[HIGH_WATER_AT..HIGH_WATER_AT + 8].copy_from_slice(&pgid.to_le_bytes());
        p[TXID_AT..TXID_AT + 8].copy_from_slice(&txid.to_le_bytes());
        let sum = fnv1a(&p[PAGE_HEADER..CHECKSUM_AT]);
        p[CHECKSUM_AT..META_END].copy_from_slice(&sum.to_le_bytes());
        p
    }

    #[test]
    fn the_newer_meta_page_becomes_page_0_and_page_1_has_the_transaction_before() {
        // bbolt wrote transaction 41 to page 1 and 42 to page 0, then 43 to page 1.
        let head = [meta(0, 42, 9), meta(1, 43, 10)].concat();
        let m = metas(&head).unwrap();
        assert_eq!((m.page_size, m.size), (PAGE, 10 * PAGE as u64));
        assert_eq!(m.first, meta(0, 43, 10));
        assert_eq!(m.second, meta(1, 42, 10));
        assert!(valid(&m.first) && valid(&m.second));
        // The other way round, and a damaged newer page: the valid one is taken.
        assert_eq!(metas(&[meta(0, 44, 11), meta(1, 43, 10)].concat()).unwrap().first, meta(0, 44, 11));
        let mut damaged = meta(1, 45, 12);
        damaged[HIGH_WATER_AT] ^= 1;
        assert_eq!(metas(&[meta(0, 44, 11), damaged].concat()).unwrap().first, meta(0, 44, 11));
    }

    #[test]
    fn what_is_not_a_bbolt_database_is_refused() {
        assert!(metas(&[0u8; 100]).unwrap_err().contains("page size 0"));
        assert!(metas(&[1u8; 10]).unwrap_err().contains("too short"));
        let mut bad = [meta(0, 1, 4), meta(1, 2, 4)].concat();
        bad[MAGIC_AT] ^= 1;
        bad[PAGE + CHECKSUM_AT] ^= 1;
        assert!(metas(&bad).unwrap_err().contains("neither meta page"));
    }

    #[test]
    fn the_checksum_is_fnv1a() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
