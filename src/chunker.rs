//! Content-defined chunking (FastCDC, 2020 variant).
//!
//! Chunk boundaries depend on content, not offsets, so inserting bytes in a
//! dump only changes the chunks around the insertion. The size parameters
//! live in the repository config so that every writer cuts the same way;
//! docs/FORMAT.md records the measurement behind the defaults.
//!
//! A stream may also declare a [`Layout`]: a PostgreSQL base backup is a tar
//! of 8 KiB pages, and a second backup after updates spread over a table
//! changes a fraction of the pages in *every* megabyte, so no content-defined
//! chunk survives. With [`Layout::TarPages`] the data of relation files is
//! cut at page boundaries instead (one chunk per page), and everything else
//! in the tar (headers, WAL, config files) is cut by content as usual.
//! Restore is unchanged: a stream is the concatenation of its chunks,
//! whatever decided where they were cut.

use std::io::Read;

use bytes::{Bytes, BytesMut};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
}

impl Default for ChunkerParams {
    /// 256 KiB / 1 MiB / 4 MiB: see "Chunk size" in docs/FORMAT.md.
    fn default() -> Self {
        ChunkerParams { min_size: 256 * 1024, avg_size: 1024 * 1024, max_size: 4 * 1024 * 1024 }
    }
}

impl ChunkerParams {
    pub fn validate(&self) -> Result<(), String> {
        use fastcdc::v2020::{AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MINIMUM_MIN};
        if !(self.min_size <= self.avg_size && self.avg_size <= self.max_size) {
            return Err("chunker sizes must satisfy min <= avg <= max".into());
        }
        if self.min_size < MINIMUM_MIN
            || self.max_size > MAXIMUM_MAX
            || self.avg_size < AVERAGE_MIN
            || self.avg_size > AVERAGE_MAX
        {
            return Err("chunker sizes out of FastCDC's range".into());
        }
        Ok(())
    }
}

/// How much is read from the source at a time, and the size of the blocks
/// chunks are cut from.
const READ_SIZE: usize = 1024 * 1024;
const BLOCK_SIZE: usize = 8 * 1024 * 1024;

/// Iterate over the chunks of a reader; memory is bounded by `max_size`
/// plus one block.
///
/// Cut points are exactly those of `fastcdc::v2020::StreamCDC` (the same
/// `cut` over the same `max_size` window), so repositories written before
/// keep deduplicating. What differs is the buffering: StreamCDC copies every
/// chunk out of its buffer, shifts the rest down and zero-fills the tail,
/// about 5 % of a backup's CPU; here reads land in a reused scratch buffer,
/// are appended to an 8 MiB block, and chunks are zero-copy views of it
/// ([`Bytes`]). (Reading straight into the block would zero-fill its free
/// space before every read, and a pipe returns 64 KiB per read.)
pub fn chunks<R: Read>(reader: R, p: ChunkerParams) -> Chunks<R> {
    chunks_with_layout(reader, p, Layout::Cdc)
}

/// What a stream is, as far as choosing cut points goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// Any byte stream: content-defined cut points only.
    #[default]
    Cdc,
    /// A tar archive whose relation data files (PostgreSQL's `base/`,
    /// `global/` and tablespace files) are cut into `page`-sized chunks,
    /// counted from the start of each file (the last one may be shorter).
    TarPages { page: u32 },
}

impl Layout {
    /// PostgreSQL's default block size.
    pub const POSTGRES_PAGES: Layout = Layout::TarPages { page: 8192 };

    /// Page-cut layout for a cluster of `cluster_bytes`: one chunk per
    /// `block` while that keeps a base backup under [`MAX_PAGE_CHUNKS`]
    /// chunks, else runs of 2, 4, 8… blocks. The size only changes when the
    /// cluster doubles, so consecutive backups cut alike and deduplicate.
    pub fn postgres_pages(block: u32, cluster_bytes: u64) -> Layout {
        let mut page = block.max(512) as u64;
        while cluster_bytes / page > MAX_PAGE_CHUNKS && page < 4 << 20 {
            page *= 2;
        }
        Layout::TarPages { page: page as u32 }
    }
}

/// Chunks per page-cut base backup: every chunk costs an id in the manifest
/// and an entry in the index (held in memory by backups), so a 4 TB cluster
/// must not become 500 million of them. 2^19 pages of 8 KiB is a 4 GiB
/// cluster; above that pages are grouped.
pub const MAX_PAGE_CHUNKS: u64 = 1 << 19;

/// [`chunks`] with a declared stream layout.
pub fn chunks_with_layout<R: Read>(reader: R, p: ChunkerParams, layout: Layout) -> Chunks<R> {
    Chunks::new(reader, p, layout, None)
}

/// [`chunks_with_layout`] over bytes already in memory (a mapped file,
/// see `source::Mapped`): chunks are views of `data`, nothing is copied.
/// `done(upto)` is told how far the chunker has got, so a mapping can drop
/// pages far behind it.
pub fn chunks_in_memory(
    data: Bytes,
    p: ChunkerParams,
    layout: Layout,
    done: Box<dyn FnMut(usize) + Send>,
) -> Chunks<std::io::Empty> {
    Chunks::new(std::io::empty(), p, layout, Some(InMemory { total: data.len(), rest: data, done }))
}

struct InMemory {
    rest: Bytes,
    total: usize,
    done: Box<dyn FnMut(usize) + Send>,
}

pub struct Chunks<R> {
    reader: R,
    p: ChunkerParams,
    buf: BytesMut,
    scratch: Vec<u8>,
    eof: bool,
    tar: Option<TarCursor>,
    mapped: Option<InMemory>,
}

/// Where a tar-aware cutter is in the archive. Offsets are absolute stream
/// offsets, so a content-defined cut can end anywhere without losing track.
#[derive(Debug, Default)]
struct TarCursor {
    page: u64,
    /// Stream offset of the first buffered byte.
    pos: u64,
    /// Stream offset of the next tar header not yet parsed.
    next_header: u64,
    /// Relation data being cut into pages: `[start, end)`.
    pages: Option<(u64, u64)>,
    /// End of archive or a header we cannot read: the rest is plain CDC.
    done: bool,
}

impl TarCursor {
    /// Length of the next chunk of `window` (the buffered bytes, at least
    /// `max_size` of them unless the stream has ended).
    fn cut(&mut self, window: &[u8], p: ChunkerParams, eof: bool) -> usize {
        let mut limit = window.len();
        if let Some((start, end)) = self.pages {
            if self.pos >= start {
                // Pages are cut relative to the start of the file's data.
                let into = (self.pos - start) % self.page;
                let len = (self.page - into).min(end - self.pos) as usize;
                if self.pos + len as u64 >= end {
                    self.pages = None;
                }
                return len.min(window.len());
            }
            limit = limit.min((start - self.pos) as usize);
        }
        // Bytes before the next relation data: find where it starts.
        while !self.done && self.pages.is_none() {
            let Some(at) = self.next_header.checked_sub(self.pos).map(|o| o as usize) else {
                // The header was cut into an earlier chunk: cannot happen, but
                // never guess about someone else's bytes.
                self.done = true;
                break;
            };
            if at >= window.len() {
                break;
            }
            if at + 512 > window.len() {
                if eof {
                    self.done = true;
                } else {
                    // Do not cut through a header we have not read yet.
                    limit = at.max(1);
                }
                break;
            }
            match crate::tar::parse_header(&window[at..at + 512]) {
                crate::tar::Header::End | crate::tar::Header::Unknown => self.done = true,
                crate::tar::Header::Entry(e) => {
                    let size = e.size;
                    let relation = e.is_file() && is_relation_path("", &e.path);
                    let data = self.next_header + 512;
                    self.next_header = data + size.div_ceil(512) * 512;
                    if relation && size > 0 {
                        self.pages = Some((data, data + size));
                        limit = at + 512;
                    }
                }
            }
        }
        if limit < p.min_size as usize {
            return limit;
        }
        let cdc = fastcdc::v2020::FastCDC::new(&window[..limit], p.min_size, p.avg_size, p.max_size);
        cdc.cut(0, limit).1.max(1)
    }
}

/// `base/DB/REL`, `global/REL` or `pg_tblspc/OID/PG_*/DB/REL`, where REL is
/// a relfilenode with an optional fork (`_fsm`, `_vm`, `_init`) and segment
/// (`.N`): the files PostgreSQL stores as pages.
fn is_relation_path(prefix: &str, name: &str) -> bool {
    let full;
    let path = if prefix.is_empty() {
        name
    } else {
        full = format!("{prefix}/{name}");
        &full
    };
    let path = path.trim_start_matches("./");
    let parts: Vec<&str> = path.split('/').collect();
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let dir_ok = match parts.as_slice() {
        ["global", _] => true,
        ["base", db, _] => digits(db),
        ["pg_tblspc", oid, _, db, _] => digits(oid) && digits(db),
        _ => false,
    };
    let Some(file) = parts.last() else { return false };
    let (file, seg) = match file.split_once('.') {
        Some((f, s)) => (f, Some(s)),
        None => (*file, None),
    };
    let rel = match file.split_once('_') {
        Some((r, fork)) => matches!(fork, "fsm" | "vm" | "init").then_some(r),
        None => Some(file),
    };
    dir_ok && rel.is_some_and(digits) && seg.is_none_or(digits)
}

impl<R: Read> Chunks<R> {
    fn new(reader: R, p: ChunkerParams, layout: Layout, mapped: Option<InMemory>) -> Chunks<R> {
        let tar = match layout {
            Layout::Cdc => None,
            Layout::TarPages { page } => Some(TarCursor { page: page.max(512) as u64, ..TarCursor::default() }),
        };
        // In memory there is nothing to read: no scratch buffer, and the end is known.
        let (scratch, eof) = if mapped.is_some() { (Vec::new(), true) } else { (vec![0; READ_SIZE], false) };
        Chunks { reader, p, buf: BytesMut::new(), scratch, eof, tar, mapped }
    }

    /// Read until a whole `max_size` window is buffered, or the source ends.
    fn fill(&mut self) -> std::io::Result<()> {
        let want = self.p.max_size as usize;
        while !self.eof && self.buf.len() < want {
            match self.reader.read(&mut self.scratch) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    // A fresh block when this one is full; earlier chunks keep theirs alive.
                    if self.buf.capacity() - self.buf.len() < n {
                        self.buf.reserve(BLOCK_SIZE.max(want + READ_SIZE));
                    }
                    self.buf.extend_from_slice(&self.scratch[..n]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl<R: Read> Iterator for Chunks<R> {
    type Item = std::io::Result<Bytes>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.mapped.is_none()
            && let Err(e) = self.fill()
        {
            return Some(Err(e));
        }
        let avail: &[u8] = match &self.mapped {
            Some(m) => &m.rest,
            None => &self.buf,
        };
        if avail.is_empty() {
            return None;
        }
        let window = &avail[..avail.len().min(self.p.max_size as usize)];
        let end = match &mut self.tar {
            None => {
                let cdc = fastcdc::v2020::FastCDC::new(window, self.p.min_size, self.p.avg_size, self.p.max_size);
                cdc.cut(0, window.len()).1.max(1)
            }
            Some(t) => {
                let end = t.cut(window, self.p, self.eof);
                t.pos += end as u64;
                end
            }
        };
        Some(Ok(match &mut self.mapped {
            Some(m) => {
                let chunk = m.rest.split_to(end);
                (m.done)(m.total - m.rest.len());
                chunk
            }
            None => self.buf.split_to(end).freeze(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pseudo-random bytes (an LCG's high bits).
    fn lcg_bytes(mut x: u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (x >> 33) as u8
            })
            .collect()
    }

    #[test]
    fn in_memory_chunks_cut_exactly_like_read_ones() {
        let data = lcg_bytes(5, 3 << 20);
        let p = ChunkerParams { min_size: 16 * 1024, avg_size: 64 * 1024, max_size: 256 * 1024 };
        let read: Vec<Bytes> = chunks(&data[..], p).collect::<Result<_, _>>().unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let done = Box::new(move |n| s2.lock().unwrap().push(n));
        let mem: Vec<Bytes> =
            chunks_in_memory(Bytes::from(data.clone()), p, Layout::Cdc, done).collect::<Result<_, _>>().unwrap();
        assert_eq!(read, mem);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), mem.len());
        assert_eq!(*seen.last().unwrap(), data.len());
        assert!(chunks_in_memory(Bytes::new(), p, Layout::Cdc, Box::new(|_| ())).next().is_none());
    }

    #[test]
    fn chunks_reassemble_and_resync_after_insert() {
        let data = lcg_bytes(1, 8 << 20);
        let p = ChunkerParams { min_size: 16 * 1024, avg_size: 64 * 1024, max_size: 256 * 1024 };
        let a: Vec<Bytes> = chunks(&data[..], p).collect::<Result<_, _>>().unwrap();
        assert_eq!(a.concat(), data);
        let mut edited = data.clone();
        edited.splice(4 << 20..4 << 20, vec![b'x'; 1024]);
        let b: Vec<Bytes> = chunks(&edited[..], p).collect::<Result<_, _>>().unwrap();
        let set: std::collections::HashSet<&Bytes> = a.iter().collect();
        let changed = b.iter().filter(|c| !set.contains(c)).count();
        assert!(changed <= 3, "{changed} chunks changed after a 1 KiB insert");
    }

    /// A reader that returns at most `n` bytes per call, to exercise refills.
    struct Dribble<'a>(&'a [u8], usize);
    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.1).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn cut_points_equal_fastcdc_streamcdc() {
        // Repetitive text with random stretches: natural cuts and forced max-size cuts.
        let mut data = Vec::new();
        let mut x: u64 = 7;
        while data.len() < 20 << 20 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            if (x >> 60) < 3 {
                data.extend(std::iter::repeat_n(b'z', 3 << 20));
            } else {
                data.extend_from_slice(format!("{} row {}\n", x >> 20, x % 977).as_bytes());
            }
        }
        for p in
            [ChunkerParams::default(), ChunkerParams { min_size: 16 * 1024, avg_size: 64 * 1024, max_size: 256 * 1024 }]
        {
            let theirs: Vec<usize> = fastcdc::v2020::StreamCDC::new(&data[..], p.min_size, p.avg_size, p.max_size)
                .map(|c| c.unwrap().length)
                .collect();
            for step in [usize::MAX, 1 << 20, 12_345] {
                let ours: Vec<usize> = chunks(Dribble(&data, step), p).map(|c| c.unwrap().len()).collect();
                assert_eq!(ours, theirs, "read size {step}");
            }
        }
        assert_eq!(chunks(&b""[..], ChunkerParams::default()).count(), 0);
        let one: Vec<Bytes> = chunks(&b"x"[..], ChunkerParams::default()).map(|c| c.unwrap()).collect();
        assert_eq!(one, vec![Bytes::from_static(b"x")]);
    }

    /// One ustar entry (header with a valid checksum, data, padding).
    fn tar_entry(name: &str, data: &[u8]) -> Vec<u8> {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..108].copy_from_slice(b"0000600\0");
        h[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let mut e = h.to_vec();
        e.extend_from_slice(data);
        e.resize(e.len().div_ceil(512) * 512, 0);
        e
    }

    fn noise(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (x >> 33) as u8
            })
            .collect()
    }

    /// A small "base backup": config, a relation with its fsm fork, WAL.
    fn cluster(rel: &[u8]) -> (Vec<u8>, u64) {
        let mut t = tar_entry("PG_VERSION", b"15\n");
        t.extend(tar_entry("postgresql.auto.conf", &noise(1, 700)));
        let rel_data = t.len() as u64 + 512;
        t.extend(tar_entry("base/16384/16393", rel));
        t.extend(tar_entry("base/16384/16393_fsm", &noise(2, 3 * 8192)));
        t.extend(tar_entry("base/16384/pg_internal.init", &noise(3, 10_000)));
        t.extend(tar_entry("pg_wal/000000010000000000000003", &noise(4, 3 << 20)));
        t.extend([0u8; 1024]);
        (t, rel_data)
    }

    #[test]
    fn tar_pages_cut_relation_data_at_page_boundaries() {
        let p = ChunkerParams { min_size: 16 * 1024, avg_size: 64 * 1024, max_size: 256 * 1024 };
        let rel = noise(9, 200 * 8192);
        let (tar, start) = cluster(&rel);
        for step in [usize::MAX, 65_536, 5_000, 511] {
            let got: Vec<Bytes> =
                chunks_with_layout(Dribble(&tar, step), p, Layout::POSTGRES_PAGES).collect::<Result<_, _>>().unwrap();
            assert_eq!(got.concat(), tar, "read size {step}");
            let mut at = 0u64;
            let mut cuts = std::collections::BTreeSet::new();
            for c in &got {
                at += c.len() as u64;
                cuts.insert(at);
            }
            for page in 0..=200u64 {
                assert!(cuts.contains(&(start + page * 8192)), "no cut at page {page} (read size {step})");
            }
            let pages = got.iter().filter(|c| c.len() == 8192).count();
            assert!(pages >= 203, "{pages} page chunks: the fsm fork is pages too");
            assert!(got.iter().all(|c| c.len() <= p.max_size as usize));
        }
        // The same bytes without a layout are cut by content alone.
        let plain: Vec<Bytes> = chunks(&tar[..], p).collect::<Result<_, _>>().unwrap();
        assert!(plain.iter().filter(|c| c.len() == 8192).count() < 3);
    }

    #[test]
    fn tar_pages_keep_unchanged_pages_after_spread_updates() {
        let p = ChunkerParams::default();
        let rel = noise(5, 512 * 8192);
        let mut changed = rel.clone();
        for page in (0..512).step_by(10) {
            changed[page * 8192 + 100] ^= 0xff; // one tuple in every 10th page
        }
        let (a, ..) = cluster(&rel);
        let (b, ..) = cluster(&changed);
        let new_bytes = |layout| {
            let old: std::collections::HashSet<Bytes> =
                chunks_with_layout(&a[..], p, layout).collect::<Result<_, _>>().unwrap();
            let new: Vec<Bytes> = chunks_with_layout(&b[..], p, layout).collect::<Result<_, _>>().unwrap();
            assert_eq!(new.concat(), b);
            new.iter().filter(|c| !old.contains(*c)).map(|c| c.len()).sum::<usize>()
        };
        let paged = new_bytes(Layout::POSTGRES_PAGES);
        assert!(paged <= 52 * 8192 + 4096, "{paged} new bytes: only the 52 changed pages should be new");
        let cdc = new_bytes(Layout::Cdc);
        assert!(cdc >= 500 * 8192, "{cdc} new bytes with content-defined chunks");
    }

    #[test]
    fn tar_pages_degrade_to_cdc_on_anything_else() {
        let p = ChunkerParams { min_size: 16 * 1024, avg_size: 64 * 1024, max_size: 256 * 1024 };
        // Not a tar at all, a tar cut short inside a header, and one with a bad checksum.
        let (tar, start) = cluster(&noise(6, 16 * 8192));
        let short = tar[..start as usize - 200].to_vec();
        let mut bad = tar_entry("base/1/1", &noise(7, 4 * 8192));
        bad[148] = b'9';
        for input in [noise(8, 1 << 20), short, bad] {
            let got: Vec<Bytes> =
                chunks_with_layout(&input[..], p, Layout::POSTGRES_PAGES).collect::<Result<_, _>>().unwrap();
            assert_eq!(got.concat(), input);
        }
        assert!(is_relation_path("", "base/1/2619"));
        assert!(is_relation_path("", "global/1262_vm"));
        assert!(is_relation_path("", "./base/16384/16393.12"));
        assert!(is_relation_path("pg_tblspc/16500/PG_15_202209061", "16384/16401_fsm"));
        assert!(!is_relation_path("", "base/16384/pg_internal.init"));
        assert!(!is_relation_path("", "base/16384/16393_foo"));
        assert!(!is_relation_path("", "pg_wal/000000010000000000000003"));
        assert!(!is_relation_path("", "base/pgsql_tmp/pgsql_tmp123.0"));
    }

    #[test]
    fn page_runs_grow_with_the_cluster_only_past_the_chunk_budget() {
        let pages = |bytes| match Layout::postgres_pages(8192, bytes) {
            Layout::TarPages { page } => page,
            Layout::Cdc => unreachable!(),
        };
        assert_eq!(pages(0), 8192);
        assert_eq!(pages(2_000_000_000), 8192);
        assert_eq!(pages(4 << 30), 8192);
        assert_eq!(pages((4 << 30) + 8192), 16384);
        assert_eq!(pages(100 << 30), 256 * 1024);
        assert_eq!(pages(u64::MAX), 4 << 20);
    }
}
