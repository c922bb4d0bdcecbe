//! A regular file on standard input, mapped into memory.
//!
//! `lifeboat backup --stdin < dump.sql` used to read the file in 1 MiB
//! pieces: the kernel copied every byte out of the page cache and the
//! chunker copied it again into its blocks, ~4 % of a backup's CPU. Mapped,
//! the chunker cuts views of the page cache itself. Pages far behind the
//! chunker are dropped from the mapping again (they stay in the page
//! cache), so resident memory stays bounded whatever the file's size.
//!
//! A mapped file that another process truncates while we read it raises
//! SIGBUS instead of a short read. The handler installed here turns that
//! into one clear line and exit status 1; no snapshot becomes visible (the
//! manifest is written last), as after any killed backup.

use std::sync::Arc;

use bytes::Bytes;

/// Files smaller than this are read as usual.
const MIN_MAPPED: u64 = 1 << 20;
/// Pages kept mapped behind the chunker: more than the pipeline holds in
/// flight, so hashing and compression rarely fault a page in again.
const KEEP_BEHIND: usize = 64 << 20;
/// Drop pages in steps of this much (one madvise per step).
const DROP_STEP: usize = 16 << 20;

struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
    /// Bytes of the first page before the stream starts (stdin's offset).
    skip: usize,
}

// SAFETY: a read-only mapping of a file; nothing writes through `ptr`.
unsafe impl Send for Mapping {}
// SAFETY: as above; shared reads only.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` came from one successful mmap, unmapped once here.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

struct View(Arc<Mapping>);

impl AsRef<[u8]> for View {
    fn as_ref(&self) -> &[u8] {
        let m = &self.0;
        // SAFETY: the mapping is `len` readable bytes and lives as long as `self`.
        unsafe { std::slice::from_raw_parts((m.ptr as *const u8).add(m.skip), m.len - m.skip) }
    }
}

/// Standard input's remaining bytes, mapped.
pub struct Mapped {
    map: Arc<Mapping>,
}

extern "C" fn on_sigbus(_: libc::c_int) {
    const MSG: &[u8] = b"error: the file on standard input became shorter while it was being backed up \
(truncated by another process?); no snapshot was written\n";
    // SAFETY: write(2) and _exit(2) are async-signal-safe.
    unsafe {
        libc::write(2, MSG.as_ptr().cast(), MSG.len());
        libc::_exit(1);
    }
}

impl Mapped {
    /// Standard input when it is a regular file with at least 1 MiB left
    /// from its current offset; `None` otherwise (a pipe, a terminal, a
    /// small file, a file system that cannot map): read it as usual. The
    /// shared offset is moved to the end, as reading it would.
    pub fn stdin() -> Option<Mapped> {
        if std::env::var_os("LIFEBOAT_NO_MMAP").is_some_and(|v| !v.is_empty() && v != "0") {
            return None;
        }
        // SAFETY: fstat/lseek/sysconf on fd 0 with a zeroed stat buffer.
        let (size, off, page) = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(0, &mut st) != 0 || st.st_mode & libc::S_IFMT != libc::S_IFREG {
                return None;
            }
            (st.st_size as u64, libc::lseek(0, 0, libc::SEEK_CUR), libc::sysconf(libc::_SC_PAGESIZE))
        };
        if off < 0 || page <= 0 || size < off as u64 + MIN_MAPPED {
            return None;
        }
        let (off, page) = (off as u64, page as u64);
        let base = off / page * page;
        let len = usize::try_from(size - base).ok()?;
        // SAFETY: a fresh read-only private mapping of fd 0; checked below.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_PRIVATE, 0, base as i64) };
        if ptr == libc::MAP_FAILED {
            return None;
        }
        // SAFETY: advice on the mapping just made; installing a handler
        // that only calls async-signal-safe functions; lseek on fd 0.
        unsafe {
            libc::madvise(ptr, len, libc::MADV_SEQUENTIAL);
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigbus as extern "C" fn(libc::c_int) as usize;
            libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
            libc::lseek(0, size as i64, libc::SEEK_SET);
        }
        tracing::debug!(bytes = size - off, "standard input is a regular file: mapping it");
        Some(Mapped { map: Arc::new(Mapping { ptr, len, skip: (off - base) as usize }) })
    }

    /// The bytes, and the callback the chunker reports its progress to.
    pub fn into_parts(self) -> (Bytes, Box<dyn FnMut(usize) + Send>) {
        let map = self.map.clone();
        let bytes = Bytes::from_owner(View(self.map));
        let mut dropped = 0usize;
        let done = move |upto: usize| {
            // Page-aligned offset in the mapping up to which pages can go.
            let to = (map.skip + upto).saturating_sub(KEEP_BEHIND) / 4096 * 4096;
            if to >= dropped + DROP_STEP {
                // SAFETY: a page-aligned range inside the mapping; the pages
                // are clean file pages, read again from the cache if touched.
                unsafe { libc::madvise(map.ptr.cast::<u8>().add(dropped).cast(), to - dropped, libc::MADV_DONTNEED) };
                dropped = to;
            }
        };
        (bytes, Box::new(done))
    }
}
