//! The revision a snapshot holds, read from its own pages while they stream past.
//!
//! etcd streams a snapshot as its bbolt file: two meta pages written from the reading
//! transaction, then every page of the file up to that transaction's high-water mark. The
//! revision a restored etcd starts at is the newest revision key in the `key` bucket, or the
//! compaction marks in the `meta` bucket when those are newer (a compaction at the latest
//! revision removes its tombstone). A `Status` call before the stream cannot tell it: any write
//! between the call and the stream's start is in the file.
//!
//! Pages that are free in the reading transaction's view may be rewritten by etcd's writers
//! while the file streams, so a page's contents count only when the tree of the snapshot
//! reaches it: every page-sized slot is summarized (a branch page by its last child, a leaf by
//! its newest revision key, bucket entries and compaction marks), and [`RevisionScanner::finish`]
//! walks from the meta page's root to the `key` bucket's rightmost leaf. Memory stays small:
//! leaves are kept only when their newest key is at or after `floor` (the member's revision
//! before the stream, a lower bound of the answer), branch pages by two integers each.

/// bbolt's page flags.
const BRANCH: u16 = 0x01;
const LEAF: u16 = 0x02;
/// A leaf element whose value is a bucket.
const BUCKET_LEAF: u32 = 0x01;
const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
/// Page header, then the meta fields up to and including the high-water mark.
const META_NEEDED: usize = PAGE_HEADER + 48;
const MAGIC: u32 = 0xED0C_DAED;
/// etcd's revision keys: 8 bytes main revision, `_`, 8 bytes sub revision (big-endian), and a
/// trailing `t` on tombstones.
const REVISION_KEY: usize = 17;
/// Longest key captured from beyond a leaf's first page (revision keys are 17 or 18 bytes).
const CAPTURE_MAX: usize = 64;
/// Deepest tree walked (bbolt's trees are a few levels deep).
const MAX_DEPTH: usize = 64;

/// What a snapshot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotRevision {
    /// The revision a restored etcd starts at.
    pub revision: i64,
    /// The newest revision key in the `key` bucket (0 when it is empty).
    pub newest_key: i64,
    /// The compaction etcd finished before the snapshot (0 when none).
    pub compacted: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevisionError {
    #[error("the stream is not an etcd database file: {0}")]
    NotBolt(String),
    #[error("the stream ended after {got} of the database's {expected} bytes")]
    Truncated { got: u64, expected: u64 },
    #[error("the database's {0}")]
    Layout(String),
    #[error("its pages hold revision {found}, but the member was already at revision {floor} when the stream began")]
    BeforeFloor { found: i64, floor: i64 },
}

/// Where the live tree starts, from meta page 0.
#[derive(Debug, Clone, Copy)]
struct Layout {
    page_size: usize,
    root: u64,
    /// Pages in the file (`meta.pgid`): the stream's database part is this many pages long.
    pages: u64,
}

/// A bucket as its parent leaf names it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum BucketRef {
    Root(u64),
    Inline { newest: Option<i64>, compaction: Compaction },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Compaction {
    finished: Option<i64>,
    scheduled: Option<i64>,
}

/// Buckets a leaf names: (bucket name, where its tree is).
type Buckets = Vec<(Vec<u8>, BucketRef)>;

/// What one leaf holds that matters here.
#[derive(Debug, Default)]
struct LeafSummary {
    newest: Option<i64>,
    buckets: Buckets,
    compaction: Compaction,
}

/// A key of an overflowed leaf that lies beyond its first page.
#[derive(Debug)]
struct Capture {
    pgid: u64,
    start: u64,
    end: u64,
    bytes: Vec<u8>,
}

/// Reads the revision of a snapshot from its bytes, fed in order. Bytes after the database
/// (etcd's trailer) are ignored.
#[derive(Debug, Default)]
pub struct RevisionScanner {
    floor: i64,
    offset: u64,
    layout: Option<Layout>,
    head: Vec<u8>,
    slot: Vec<u8>,
    capture: Option<Capture>,
    /// Branch pages: (pgid, its last child), in pgid order.
    branches: Vec<(u64, u64)>,
    /// Leaves whose newest revision key is at or after `floor`: (pgid, that revision).
    leaves: Vec<(u64, i64)>,
    /// Leaves holding bucket entries (the root bucket's, and stale copies of it).
    bucket_leaves: Vec<(u64, Buckets)>,
    /// Leaves holding compaction marks (the meta bucket's, and stale copies).
    compactions: Vec<(u64, Compaction)>,
    error: Option<RevisionError>,
}

impl RevisionScanner {
    /// `floor`: a revision the snapshot is known to hold (0 when unknown, at the cost of
    /// remembering every leaf of the `key` bucket).
    pub fn new(floor: i64) -> RevisionScanner {
        RevisionScanner { floor: floor.max(0), ..RevisionScanner::default() }
    }

    pub fn feed(&mut self, mut data: &[u8]) {
        if self.error.is_some() {
            return;
        }
        while !data.is_empty() {
            let Some(layout) = self.layout else {
                let take = (META_NEEDED - self.head.len()).min(data.len());
                self.head.extend_from_slice(&data[..take]);
                self.offset += take as u64;
                data = &data[take..];
                if self.head.len() == META_NEEDED {
                    match read_meta(&self.head) {
                        Ok(l) => self.layout = Some(l),
                        Err(e) => return self.error = Some(e),
                    }
                }
                continue;
            };
            let page_size = layout.page_size as u64;
            let end = layout.pages.saturating_mul(page_size);
            if self.offset >= end {
                self.offset += data.len() as u64;
                return;
            }
            // The two meta pages: only page 0's head was needed.
            if self.offset < 2 * page_size {
                let skip = ((2 * page_size - self.offset) as usize).min(data.len());
                self.offset += skip as u64;
                data = &data[skip..];
                continue;
            }
            let in_slot = (self.offset % page_size) as usize;
            let take = (layout.page_size - in_slot).min(data.len()).min((end - self.offset) as usize);
            self.fill_capture(&data[..take]);
            self.slot.extend_from_slice(&data[..take]);
            self.offset += take as u64;
            data = &data[take..];
            if self.slot.len() == layout.page_size {
                let pgid = self.offset / page_size - 1;
                let slot = std::mem::take(&mut self.slot);
                self.summarize(pgid, &slot, layout);
                self.slot = slot;
                self.slot.clear();
            }
        }
    }

    /// Copies the bytes of a pending capture that fall in `data` (which starts at `offset`).
    fn fill_capture(&mut self, data: &[u8]) {
        let Some(c) = self.capture.as_mut() else { return };
        let (from, to) = (self.offset, self.offset + data.len() as u64);
        let (lo, hi) = (c.start.max(from), c.end.min(to));
        if lo < hi {
            c.bytes.extend_from_slice(&data[(lo - from) as usize..(hi - from) as usize]);
        }
        if to >= c.end {
            let c = self.capture.take().unwrap_or_else(|| unreachable!("checked above"));
            if let Some(rev) = revision_of_key(&c.bytes).filter(|r| *r >= self.floor) {
                self.leaves.push((c.pgid, rev));
            }
        }
    }

    /// Notes what a page-sized slot holds, if it is a page that starts there.
    fn summarize(&mut self, pgid: u64, page: &[u8], layout: Layout) {
        let Some(header) = PageHeader::read(page) else { return };
        if header.id != pgid {
            return; // an overflow continuation, or a free page's leftovers
        }
        if header.flags & BRANCH != 0 && header.count > 0 {
            let last = PAGE_HEADER + (header.count as usize - 1) * ELEMENT;
            if let Some(child) = read_u64(page, last + 8) {
                self.branches.push((pgid, child));
            }
            return;
        }
        if header.flags & LEAF == 0 {
            return;
        }
        let start = pgid * layout.page_size as u64;
        let summary = summarize_leaf(page, header, |key_start, key_len| {
            // A key beyond the first page of an overflowed leaf: captured as it streams past.
            if key_len <= CAPTURE_MAX && self.capture.is_none() {
                let s = start + key_start as u64;
                self.capture = Some(Capture { pgid, start: s, end: s + key_len as u64, bytes: Vec::new() });
            }
        });
        if let Some(rev) = summary.newest.filter(|r| *r >= self.floor) {
            self.leaves.push((pgid, rev));
        }
        if !summary.buckets.is_empty() {
            self.bucket_leaves.push((pgid, summary.buckets));
        }
        if summary.compaction != Compaction::default() {
            self.compactions.push((pgid, summary.compaction));
        }
    }

    /// The snapshot's revision, once every byte was fed.
    pub fn finish(self) -> Result<SnapshotRevision, RevisionError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let Some(layout) = self.layout else {
            return Err(RevisionError::Truncated { got: self.offset, expected: META_NEEDED as u64 });
        };
        let expected = layout.pages.saturating_mul(layout.page_size as u64);
        if self.offset < expected {
            return Err(RevisionError::Truncated { got: self.offset, expected });
        }
        let Some(root) = find(&self.bucket_leaves, layout.root) else {
            return Err(if find(&self.branches, layout.root).is_some() {
                RevisionError::Layout("root bucket spans several pages, which etcd's never does".into())
            } else {
                RevisionError::Layout(format!("root bucket page {} holds no buckets", layout.root))
            });
        };
        let bucket = |name: &[u8]| root.iter().find(|(n, _)| n == name).map(|(_, b)| b.clone());
        let newest_key = match bucket(b"key") {
            None => return Err(RevisionError::Layout("file has no `key` bucket: it is not an etcd database".into())),
            Some(BucketRef::Inline { newest, .. }) => newest,
            Some(BucketRef::Root(mut pgid)) => {
                for _ in 0..MAX_DEPTH {
                    match find(&self.branches, pgid) {
                        Some(child) => pgid = *child,
                        None => break,
                    }
                }
                find(&self.leaves, pgid).copied()
            }
        };
        let compaction = match bucket(b"meta") {
            None => Compaction::default(),
            Some(BucketRef::Inline { compaction, .. }) => compaction,
            Some(BucketRef::Root(pgid)) if find(&self.branches, pgid).is_some() => {
                return Err(RevisionError::Layout("`meta` bucket spans several pages, which etcd's never does".into()));
            }
            Some(BucketRef::Root(pgid)) => find(&self.compactions, pgid).copied().unwrap_or_default(),
        };
        let compacted = compaction.finished.unwrap_or(0);
        // etcd's store starts at revision 1: a database that never held a key is at 1.
        let revision = newest_key.unwrap_or(0).max(compacted).max(compaction.scheduled.unwrap_or(0)).max(1);
        if revision < self.floor {
            return Err(RevisionError::BeforeFloor { found: revision, floor: self.floor });
        }
        Ok(SnapshotRevision { revision, newest_key: newest_key.unwrap_or(0), compacted })
    }
}

/// The entry of `pgid` in a list kept in pgid order (a later duplicate wins: it cannot occur
/// for slots, which are summarized once each).
fn find<T>(list: &[(u64, T)], pgid: u64) -> Option<&T> {
    list.binary_search_by_key(&pgid, |(p, _)| *p).ok().map(|i| &list[i].1)
}

fn read_meta(head: &[u8]) -> Result<Layout, RevisionError> {
    let not_bolt = |what: &str| RevisionError::NotBolt(what.to_string());
    let m = PAGE_HEADER;
    let magic = read_u32(head, m).ok_or_else(|| not_bolt("too short"))?;
    if magic != MAGIC {
        return Err(not_bolt(&format!("its first page has magic {magic:#010x}, bbolt's is {MAGIC:#010x}")));
    }
    let page_size = read_u32(head, m + 8).ok_or_else(|| not_bolt("too short"))? as usize;
    if !(1024..=65536).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(not_bolt(&format!("page size {page_size}")));
    }
    let root = read_u64(head, m + 16).ok_or_else(|| not_bolt("too short"))?;
    let pages = read_u64(head, m + 40).ok_or_else(|| not_bolt("too short"))?;
    if pages < 3 || root < 2 || root >= pages {
        return Err(not_bolt(&format!("root page {root} of {pages}")));
    }
    Ok(Layout { page_size, root, pages })
}

#[derive(Debug, Clone, Copy)]
struct PageHeader {
    id: u64,
    flags: u16,
    count: u16,
    overflow: u32,
}

impl PageHeader {
    fn read(page: &[u8]) -> Option<PageHeader> {
        Some(PageHeader {
            id: read_u64(page, 0)?,
            flags: u16::from_le_bytes(page.get(8..10)?.try_into().ok()?),
            count: u16::from_le_bytes(page.get(10..12)?.try_into().ok()?),
            overflow: read_u32(page, 12)?,
        })
    }
}

/// Reads a leaf from `page` (its first page only when it overflows). `beyond(start, len)` is
/// told where the last key lies when it is past the bytes given.
fn summarize_leaf(page: &[u8], header: PageHeader, mut beyond: impl FnMut(usize, usize)) -> LeafSummary {
    let mut summary = LeafSummary::default();
    let count = header.count as usize;
    for i in 0..count {
        let at = PAGE_HEADER + i * ELEMENT;
        let (Some(flags), Some(pos), Some(ksize), Some(vsize)) =
            (read_u32(page, at), read_u32(page, at + 4), read_u32(page, at + 8), read_u32(page, at + 12))
        else {
            return summary; // the element array goes past the bytes given: not a page etcd wrote
        };
        let (key_start, ksize, vsize) = (at + pos as usize, ksize as usize, vsize as usize);
        let Some(key) = page.get(key_start..key_start + ksize) else {
            if i + 1 == count && header.overflow > 0 {
                beyond(key_start, ksize);
            }
            continue;
        };
        let value = page.get(key_start + ksize..key_start + ksize + vsize);
        if i + 1 == count {
            summary.newest = revision_of_key(key);
        }
        if flags & BUCKET_LEAF != 0 {
            if let Some(bucket) = value.and_then(read_bucket) {
                summary.buckets.push((key.to_vec(), bucket));
            }
            continue;
        }
        match key {
            b"finishedCompactRev" => summary.compaction.finished = value.and_then(revision_of_key),
            b"scheduledCompactRev" => summary.compaction.scheduled = value.and_then(revision_of_key),
            _ => {}
        }
    }
    summary
}

/// A bucket header (root page, sequence) and, for an inline bucket, the page after it.
fn read_bucket(value: &[u8]) -> Option<BucketRef> {
    let root = read_u64(value, 0)?;
    if root != 0 {
        return Some(BucketRef::Root(root));
    }
    let inline = value.get(16..)?;
    let header = PageHeader::read(inline)?;
    if header.flags & LEAF == 0 {
        return None;
    }
    let s = summarize_leaf(inline, PageHeader { overflow: 0, ..header }, |_, _| {});
    Some(BucketRef::Inline { newest: s.newest, compaction: s.compaction })
}

/// The main revision of an etcd revision key (or compaction mark value).
fn revision_of_key(key: &[u8]) -> Option<i64> {
    let tombstone = key.len() == REVISION_KEY + 1 && key[REVISION_KEY] == b't';
    if !(key.len() == REVISION_KEY || tombstone) || key[8] != b'_' {
        return None;
    }
    let main = i64::from_be_bytes(key[..8].try_into().ok()?);
    (main >= 0).then_some(main)
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

fn read_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at.checked_add(8)?)?.try_into().ok()?))
}

/// Small bbolt files laid out as etcd's, for the tests of this module and of the pipeline.
#[cfg(test)]
pub(crate) mod fixture {
    use super::*;

    pub(crate) const PS: usize = 4096;

    pub(crate) fn rev_key(main: i64, sub: i64, tombstone: bool) -> Vec<u8> {
        let mut k = main.to_be_bytes().to_vec();
        k.push(b'_');
        k.extend_from_slice(&sub.to_be_bytes());
        if tombstone {
            k.push(b't');
        }
        k
    }

    /// A page of `size` bytes with its header.
    pub(crate) fn page(id: u64, flags: u16, count: u16, overflow: u32, size: usize) -> Vec<u8> {
        let mut p = vec![0u8; size];
        p[0..8].copy_from_slice(&id.to_le_bytes());
        p[8..10].copy_from_slice(&flags.to_le_bytes());
        p[10..12].copy_from_slice(&count.to_le_bytes());
        p[12..16].copy_from_slice(&overflow.to_le_bytes());
        p
    }

    /// A leaf page holding `elems` (flags, key, value), laid out as bbolt does.
    pub(crate) fn leaf(id: u64, elems: &[(u32, Vec<u8>, Vec<u8>)], pages: usize) -> Vec<u8> {
        let mut p = page(id, LEAF, elems.len() as u16, (pages - 1) as u32, pages * PS);
        let mut data = PAGE_HEADER + elems.len() * ELEMENT;
        for (i, (flags, k, v)) in elems.iter().enumerate() {
            let at = PAGE_HEADER + i * ELEMENT;
            p[at..at + 4].copy_from_slice(&flags.to_le_bytes());
            p[at + 4..at + 8].copy_from_slice(&((data - at) as u32).to_le_bytes());
            p[at + 8..at + 12].copy_from_slice(&(k.len() as u32).to_le_bytes());
            p[at + 12..at + 16].copy_from_slice(&(v.len() as u32).to_le_bytes());
            p[data..data + k.len()].copy_from_slice(k);
            p[data + k.len()..data + k.len() + v.len()].copy_from_slice(v);
            data += k.len() + v.len();
        }
        p
    }

    pub(crate) fn branch(id: u64, children: &[(Vec<u8>, u64)]) -> Vec<u8> {
        let mut p = page(id, BRANCH, children.len() as u16, 0, PS);
        let mut data = PAGE_HEADER + children.len() * ELEMENT;
        for (i, (k, child)) in children.iter().enumerate() {
            let at = PAGE_HEADER + i * ELEMENT;
            p[at..at + 4].copy_from_slice(&((data - at) as u32).to_le_bytes());
            p[at + 4..at + 8].copy_from_slice(&(k.len() as u32).to_le_bytes());
            p[at + 8..at + 16].copy_from_slice(&child.to_le_bytes());
            p[data..data + k.len()].copy_from_slice(k);
            data += k.len();
        }
        p
    }

    pub(crate) fn bucket_value(root: u64, inline: Option<Vec<u8>>) -> Vec<u8> {
        let mut v = root.to_le_bytes().to_vec();
        v.extend_from_slice(&0u64.to_le_bytes());
        if let Some(i) = inline {
            v.extend_from_slice(&i);
        }
        v
    }

    pub(crate) fn meta(root: u64, pages: u64) -> Vec<u8> {
        let mut p = page(0, 0x04, 0, 0, PS);
        let m = PAGE_HEADER;
        p[m..m + 4].copy_from_slice(&MAGIC.to_le_bytes());
        p[m + 4..m + 8].copy_from_slice(&2u32.to_le_bytes());
        p[m + 8..m + 12].copy_from_slice(&(PS as u32).to_le_bytes());
        p[m + 16..m + 24].copy_from_slice(&root.to_le_bytes());
        p[m + 40..m + 48].copy_from_slice(&pages.to_le_bytes());
        p
    }

    /// A database: meta pages, then `pages` placed at their ids (gaps filled with free pages),
    /// then a 32-byte trailer.
    pub(crate) fn file(root: u64, pages: Vec<(u64, Vec<u8>)>) -> Vec<u8> {
        let total = pages.iter().map(|(id, p)| id + (p.len() / PS) as u64).max().unwrap_or(2);
        let mut out = meta(root, total);
        out.extend(meta(root, total));
        out.resize(total as usize * PS, 0);
        for (id, p) in pages {
            out[id as usize * PS..id as usize * PS + p.len()].copy_from_slice(&p);
        }
        out.extend_from_slice(&[7u8; 32]);
        out
    }

    pub(crate) fn kv(main: i64) -> (u32, Vec<u8>, Vec<u8>) {
        (0, rev_key(main, 0, false), b"value".to_vec())
    }

    /// Root bucket at page 2 with `key` rooted at `key_root` and an inline `meta` bucket.
    pub(crate) fn root_page(key_root: u64, compaction: Option<(i64, i64)>) -> Vec<u8> {
        let meta_elems: Vec<(u32, Vec<u8>, Vec<u8>)> = match compaction {
            Some((finished, scheduled)) => vec![
                (0, b"finishedCompactRev".to_vec(), rev_key(finished, 0, false)),
                (0, b"scheduledCompactRev".to_vec(), rev_key(scheduled, 0, false)),
            ],
            None => vec![(0, b"consistent_index".to_vec(), vec![0; 8])],
        };
        let mut inline = leaf(0, &meta_elems, 1);
        let used = PAGE_HEADER
            + meta_elems.len() * ELEMENT
            + meta_elems.iter().map(|(_, k, v)| k.len() + v.len()).sum::<usize>();
        inline.truncate(used);
        leaf(
            2,
            &[
                (BUCKET_LEAF, b"key".to_vec(), bucket_value(key_root, None)),
                (BUCKET_LEAF, b"meta".to_vec(), bucket_value(0, Some(inline))),
            ],
            1,
        )
    }

    /// A database of `pages` pages (at least 8) whose key bucket ends at revision `revision`.
    pub(crate) fn database(revision: i64, pages: u64) -> Vec<u8> {
        let mut db = file(2, vec![(2, root_page(3, None)), (3, leaf(3, &[kv(revision - 1), kv(revision)], 1))]);
        db.truncate(db.len() - 32);
        let total = pages.max(8);
        let m = PAGE_HEADER;
        for meta_page in 0..2 {
            let at = meta_page * PS + m + 40;
            db[at..at + 8].copy_from_slice(&total.to_le_bytes());
        }
        db.resize(total as usize * PS, 0);
        // Filler that is no page of the tree (free pages as a busy etcd leaves them).
        for (i, b) in db.iter_mut().enumerate().skip(8 * PS) {
            *b = (i % 251) as u8;
        }
        db
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::*;
    use super::*;

    fn scan(bytes: &[u8], floor: i64, chunk: usize) -> Result<SnapshotRevision, RevisionError> {
        let mut s = RevisionScanner::new(floor);
        for c in bytes.chunks(chunk) {
            s.feed(c);
        }
        s.finish()
    }

    #[test]
    fn the_rightmost_leaf_of_the_key_bucket_gives_the_revision_whatever_the_chunking() {
        // key bucket: branch 5 -> leaves 3 (revs 1..3) and 9 (revs 4..7); a free page 7 holds
        // newer keys written by a concurrent writer, which the tree does not reach.
        let pages = vec![
            (2, root_page(5, None)),
            (3, leaf(3, &[kv(1), kv(2), kv(3)], 1)),
            (5, branch(5, &[(rev_key(1, 0, false), 3), (rev_key(4, 0, false), 9)])),
            (7, leaf(7, &[kv(8), kv(9)], 1)),
            (9, leaf(9, &[kv(4), kv(5), (0, rev_key(7, 0, true), vec![])], 1)),
        ];
        let bytes = file(2, pages);
        for chunk in [1, 7, 100, PS, 32 * 1024, bytes.len()] {
            let r = scan(&bytes, 0, chunk).unwrap();
            assert_eq!(r, SnapshotRevision { revision: 7, newest_key: 7, compacted: 0 }, "chunk {chunk}");
        }
        assert_eq!(scan(&bytes, 6, 4096).unwrap().revision, 7);
        let e = scan(&bytes, 8, 4096).unwrap_err();
        assert!(matches!(e, RevisionError::BeforeFloor { found: 1, floor: 8 }), "{e}");
    }

    #[test]
    fn a_compaction_newer_than_every_key_is_the_revision() {
        let pages = vec![(2, root_page(3, Some((12, 15)))), (3, leaf(3, &[kv(1), kv(10)], 1))];
        let r = scan(&file(2, pages), 0, 999).unwrap();
        assert_eq!(r, SnapshotRevision { revision: 15, newest_key: 10, compacted: 12 });
    }

    #[test]
    fn the_last_key_of_an_overflowed_leaf_is_read_from_its_later_pages() {
        let big = vec![b'x'; PS * 2];
        let pages = vec![(2, root_page(3, None)), (3, leaf(3, &[(0, rev_key(40, 0, false), big), kv(41)], 4))];
        let bytes = file(2, pages);
        for chunk in [3, 1000, PS] {
            assert_eq!(scan(&bytes, 0, chunk).unwrap().revision, 41, "chunk {chunk}");
        }
    }

    #[test]
    fn a_database_that_never_held_a_key_is_at_revision_one() {
        let empty = leaf(0, &[], 1);
        let root = leaf(2, &[(BUCKET_LEAF, b"key".to_vec(), bucket_value(0, Some(empty[..PAGE_HEADER].to_vec())))], 1);
        let r = scan(&file(2, vec![(2, root)]), 1, 100).unwrap();
        assert_eq!(r, SnapshotRevision { revision: 1, newest_key: 0, compacted: 0 });
    }

    #[test]
    fn an_inline_key_bucket_is_read_from_the_root_leaf() {
        let mut inline = leaf(0, &[kv(2), kv(3)], 1);
        inline.truncate(PAGE_HEADER + 2 * ELEMENT + 2 * (REVISION_KEY + 5));
        let root = leaf(2, &[(BUCKET_LEAF, b"key".to_vec(), bucket_value(0, Some(inline)))], 1);
        assert_eq!(scan(&file(2, vec![(2, root)]), 0, 50).unwrap().revision, 3);
    }

    #[test]
    fn broken_or_foreign_streams_are_errors_never_a_revision() {
        let good = file(2, vec![(2, root_page(3, None)), (3, leaf(3, &[kv(5)], 1))]);
        assert_eq!(scan(&good, 0, 512).unwrap().revision, 5);
        let cut = &good[..good.len() - 32 - PS / 2];
        assert!(matches!(scan(cut, 0, 512), Err(RevisionError::Truncated { .. })));
        assert!(matches!(scan(&good[..10], 0, 512), Err(RevisionError::Truncated { .. })));
        assert!(matches!(scan(&[0u8; 9000], 0, 512), Err(RevisionError::NotBolt(_))));
        let no_key = file(2, vec![(2, leaf(2, &[(BUCKET_LEAF, b"lease".to_vec(), bucket_value(3, None))], 1))]);
        assert!(matches!(scan(&no_key, 0, 512), Err(RevisionError::Layout(_))));
        // Random bytes after a valid meta page: an error or a revision, never a panic.
        let mut noise = meta(2, 40);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        while noise.len() < 40 * PS {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            noise.extend_from_slice(&x.to_le_bytes());
        }
        let _ = scan(&noise, 0, 777);
    }

    #[test]
    fn revision_keys_are_told_from_other_keys() {
        assert_eq!(revision_of_key(&rev_key(9, 3, false)), Some(9));
        assert_eq!(revision_of_key(&rev_key(9, 3, true)), Some(9));
        assert_eq!(revision_of_key(b"finishedCompactRev"), None);
        assert_eq!(revision_of_key(&[0u8; 17]), None);
    }
}
