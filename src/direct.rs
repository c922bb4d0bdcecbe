//! Writing restored files past the page cache (`O_DIRECT`).
//!
//! A restore writes gigabytes that nobody reads back soon. Through the page
//! cache every byte costs a kernel copy into a freshly allocated page, the
//! page's later writeback, and on a busy host the reclaim of whatever the
//! cache held before (on our 2-core VM, buffered writes plus fsync run at
//! 365 MB/s and direct ones at 1.5 GB/s: `dd bs=1M`). A direct write goes
//! from our buffer to the device, and does not evict the production
//! database's cache on the host being restored.
//!
//! Direct I/O wants the buffer address, file offset and length aligned to
//! the device's block. [`Stage`] collects a file's sequential pieces in an
//! aligned buffer and writes it out in whole blocks; the last partial block
//! goes through the page cache. A restore writes its decoded runs without
//! that copy: they arrive laid out for direct writes ([`Sink::align`]), and
//! only the partial blocks where runs meet are staged. A file system that
//! refuses `O_DIRECT`
//! (tmpfs on older kernels, some FUSE and network file systems) gets
//! ordinary writes: the fallback is decided per file and remembered.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::pipeline::{Recycle, RunBuf, Sink};

/// Alignment of direct writes: the largest logical block size in common
/// use (512-byte-sector devices accept it too).
pub const ALIGN: usize = 4096;
/// Bytes staged per direct write: large enough that the syscall and the
/// device's per-request cost vanish, small enough to stay in cache.
pub const STAGE: usize = 2 << 20;
/// Files smaller than this are written through the page cache: for them
/// a direct write would save little and cost a staged copy.
pub const MIN_DIRECT: u64 = 64 << 10;

/// Whether direct writes still look possible here. Cleared by the first
/// file system that refuses them, so later files skip the attempt.
#[derive(Debug)]
pub struct DirectPolicy(AtomicBool);

impl Default for DirectPolicy {
    fn default() -> Self {
        // LIFEBOAT_NO_DIRECT_IO=1 turns it off (to compare, or for a file
        // system that accepts O_DIRECT but handles it badly).
        DirectPolicy(AtomicBool::new(
            std::env::var_os("LIFEBOAT_NO_DIRECT_IO").is_none_or(|v| v.is_empty() || v == "0"),
        ))
    }
}

impl DirectPolicy {
    /// The process's policy: a file system that refused `O_DIRECT` once is
    /// not asked again for the rest of the run (not once per pack).
    pub fn global() -> &'static DirectPolicy {
        static GLOBAL: std::sync::LazyLock<DirectPolicy> = std::sync::LazyLock::new(DirectPolicy::default);
        &GLOBAL
    }

    pub fn off() -> DirectPolicy {
        DirectPolicy(AtomicBool::new(false))
    }

    pub fn enabled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn disable(&self) {
        self.0.store(false, Ordering::Relaxed);
    }

    /// Create (truncate) `path` for writing `size` bytes: with `O_DIRECT`
    /// when the file is large enough and the file system takes it. The
    /// flag says which.
    pub fn create(&self, path: &Path, size: u64) -> io::Result<(File, bool)> {
        let mut o = OpenOptions::new();
        o.write(true).create(true).truncate(true);
        self.open(&o, path, size)
    }

    /// Open with `o`, adding `O_DIRECT` as [`DirectPolicy::create`] does.
    pub fn open(&self, o: &OpenOptions, path: &Path, size: u64) -> io::Result<(File, bool)> {
        if size >= MIN_DIRECT && self.enabled() {
            match o.clone().custom_flags(libc::O_DIRECT).open(path) {
                Ok(f) => return Ok((f, true)),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.disable(),
                Err(e) => return Err(e),
            }
        }
        Ok((o.open(path)?, false))
    }
}

/// Turn `O_DIRECT` on or off for an open file.
pub fn set_direct(file: &File, on: bool) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on an open descriptor with integer arguments only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let want = if on { flags | libc::O_DIRECT } else { flags & !libc::O_DIRECT };
    // SAFETY: as above.
    if want != flags && unsafe { libc::fcntl(fd, libc::F_SETFL, want) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An aligned staging buffer for one file's sequential writes at a time.
pub struct Stage {
    /// `ALIGN` bytes longer than `STAGE`; the aligned window starts at `skew`.
    buf: Vec<u8>,
    skew: usize,
    /// Bytes staged, and the file offset of the first.
    len: usize,
    at: u64,
}

impl Default for Stage {
    fn default() -> Self {
        let buf = vec![0u8; STAGE + ALIGN];
        let skew = buf.as_ptr().align_offset(ALIGN);
        Stage { buf, skew, len: 0, at: 0 }
    }
}

impl Stage {
    fn window(&mut self) -> &mut [u8] {
        &mut self.buf[self.skew..self.skew + STAGE]
    }

    /// Stage as much of `data` as fits; returns how many bytes that was.
    fn fill(&mut self, data: &[u8]) -> usize {
        let take = (STAGE - self.len).min(data.len());
        let from = self.len;
        self.window()[from..from + take].copy_from_slice(&data[..take]);
        self.len += take;
        take
    }

    /// Append `data`, which goes at `at` in `file` (right after what is
    /// staged: a file's pieces come in order), writing out full stages.
    /// With `last`, write everything and forget the file.
    pub fn write(
        &mut self,
        file: &File,
        policy: &DirectPolicy,
        at: u64,
        mut data: &[u8],
        last: bool,
    ) -> io::Result<()> {
        if self.len == 0 {
            if !at.is_multiple_of(ALIGN as u64) {
                return Err(io::Error::other(format!("direct write at unaligned offset {at}")));
            }
            self.at = at;
        } else if at != self.at + self.len as u64 {
            return Err(io::Error::other(format!(
                "direct write at {at}, expected {} (pieces out of order)",
                self.at + self.len as u64
            )));
        }
        while !data.is_empty() {
            data = &data[self.fill(data)..];
            if self.len == STAGE {
                self.flush(file, policy, STAGE)?;
            }
        }
        if last {
            let whole = self.len / ALIGN * ALIGN;
            self.flush(file, policy, whole)?;
            if self.len > 0 {
                // The tail is not a whole block: through the page cache.
                set_direct(file, false)?;
                let (at, len) = (self.at, self.len);
                let tail = &self.buf[self.skew..self.skew + len];
                file.write_all_at(tail, at)?;
            }
            self.len = 0;
        }
        Ok(())
    }

    /// Write the first `n` (aligned) staged bytes; keep the rest staged.
    fn flush(&mut self, file: &File, policy: &DirectPolicy, n: usize) -> io::Result<()> {
        if n == 0 {
            return Ok(());
        }
        write_block(file, policy, &self.buf[self.skew..self.skew + n], self.at)?;
        let rest = self.len - n;
        self.buf.copy_within(self.skew + n..self.skew + self.len, self.skew);
        self.len = rest;
        self.at += n as u64;
        Ok(())
    }

    /// Forget what is staged (after a failed write).
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

/// Write aligned `out` at `at`; a file that accepted `O_DIRECT` at open but
/// refuses it at write (a file system that checks late, or a stricter
/// alignment) is written buffered from then on.
fn write_block(file: &File, policy: &DirectPolicy, out: &[u8], at: u64) -> io::Result<()> {
    match file.write_all_at(out, at) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            policy.disable();
            set_direct(file, false)?;
            file.write_all_at(out, at)
        }
        r => r,
    }
}

/// The first error of some writer threads, for the thread that queues
/// their work: a write fails on one thread and is reported on another.
#[derive(Clone, Default)]
pub struct FirstError(Arc<Mutex<Option<io::Error>>>);

impl FirstError {
    /// Keep `e` unless an earlier error is kept already.
    pub fn record(&self, e: io::Error) {
        if let Ok(mut first) = self.0.lock() {
            first.get_or_insert(e);
        }
    }

    /// A copy of the first error, if any.
    pub fn get(&self) -> Option<io::Error> {
        let first = self.0.lock().ok()?;
        first.as_ref().map(|e| io::Error::new(e.kind(), e.to_string()))
    }
}

/// Full stages of one file written by two background threads, so that the
/// device has two requests to work on and the next stage fills meanwhile:
/// a direct write waits for the device, and one request at a time left a
/// restore's writer idle half the time. Stages go out at their own offsets
/// (`pwrite`), so their order does not matter.
struct Flusher {
    full: Option<std::sync::mpsc::SyncSender<Job>>,
    free: std::sync::mpsc::Receiver<io::Result<Stage>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// The first failed write of a run buffer (a stage's comes back on `free`).
    failed: FirstError,
}

/// What a flusher thread writes.
enum Job {
    /// A full stage, sent back on `free` once written.
    Stage(Stage),
    /// Whole blocks straight from a restore's run buffer: `buf[from..from +
    /// len]` at `at`; the buffer goes back through `recycle` once written.
    Run { buf: Vec<u8>, from: usize, len: usize, at: u64, recycle: Recycle },
}

/// Stages per flusher: one filling, two being written, one queued.
const FLUSH_STAGES: usize = 4;

impl Flusher {
    fn new(file: &File, policy: &'static DirectPolicy) -> io::Result<(Flusher, Stage)> {
        let (full, full_rx) = std::sync::mpsc::sync_channel::<Job>(FLUSH_STAGES);
        let (free_tx, free) = std::sync::mpsc::sync_channel(FLUSH_STAGES);
        let full_rx = Arc::new(Mutex::new(full_rx));
        let failed = FirstError::default();
        let mut threads = Vec::new();
        for i in 0..2 {
            let (rx, tx, file, failed) = (full_rx.clone(), free_tx.clone(), file.try_clone()?, failed.clone());
            let t = std::thread::Builder::new().name(format!("lifeboat-write-{i}")).spawn(move || {
                loop {
                    let job = match rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Err(_) => return,
                        Ok(Job::Stage(mut stage)) => {
                            let n = stage.len;
                            let r = write_block(&file, policy, &stage.buf[stage.skew..stage.skew + n], stage.at);
                            stage.len = 0;
                            if tx.send(r.map(|()| stage)).is_err() {
                                return;
                            }
                        }
                        Ok(Job::Run { buf, from, len, at, recycle }) => {
                            if let Err(e) = write_block(&file, policy, &buf[from..from + len], at) {
                                failed.record(e);
                            }
                            recycle(buf);
                        }
                    }
                }
            })?;
            threads.push(t);
        }
        for _ in 1..FLUSH_STAGES {
            free_tx.send(Ok(Stage::default())).map_err(|_| io::Error::other("flusher stopped"))?;
        }
        Ok((Flusher { full: Some(full), free, threads, failed }, Stage::default()))
    }

    /// Queue a job; an earlier run buffer's write error, if any.
    fn send(&mut self, job: Job) -> io::Result<()> {
        if let Some(e) = self.failed.get() {
            return Err(e);
        }
        let full = self.full.as_ref().ok_or_else(|| io::Error::other("flusher stopped"))?;
        full.send(job).map_err(|_| io::Error::other("writer thread stopped"))
    }

    /// Queue a full stage (its `len` bytes go at its `at`) and return an empty one.
    fn swap(&mut self, stage: Stage) -> io::Result<Stage> {
        self.send(Job::Stage(stage))?;
        self.free.recv().map_err(|_| io::Error::other("writer thread stopped"))?
    }

    /// Wait for every queued job; the first write error, if any.
    fn finish(&mut self) -> io::Result<()> {
        self.full = None;
        let mut first = Ok(());
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        while let Ok(r) = self.free.try_recv() {
            if let Err(e) = r
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        match self.failed.get() {
            Some(e) if first.is_ok() => Err(e),
            _ => first,
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Our stdout as a plain file handle: a dup of fd 1, so writes share its
/// offset and flags, without std's line buffering (runs are megabytes, and
/// `Stdout` would scan each for newlines).
pub fn stdout_file() -> io::Result<File> {
    use std::os::fd::AsFd;
    Ok(File::from(io::stdout().as_fd().try_clone_to_owned()?))
}

/// Write all of `data` into a new file at `path` (`create_new`), directly
/// when it is large; the caller syncs the returned file. For repository
/// objects: a backup writes hundreds of MiB of packs that only a restore,
/// much later, reads.
pub fn write_new(path: &Path, data: &[u8]) -> io::Result<File> {
    thread_local! {
        // One stage per (blocking-pool) thread, reused for every object.
        static STAGE: std::cell::RefCell<Option<Stage>> = const { std::cell::RefCell::new(None) };
    }
    let policy = DirectPolicy::global();
    let mut o = OpenOptions::new();
    o.write(true).create_new(true);
    let (file, direct) = policy.open(&o, path, data.len() as u64)?;
    if !direct {
        file.write_all_at(data, 0)?;
        return Ok(file);
    }
    STAGE.with(|s| {
        let mut s = s.borrow_mut();
        let stage = s.get_or_insert_with(Stage::default);
        let r = stage.write(&file, policy, 0, data, true);
        if r.is_err() {
            stage.clear();
        }
        r
    })?;
    Ok(file)
}

/// A sequentially written file (a restored stream), direct when it can be.
///
/// `flush` finishes it: the staged tail is written and, for a file we
/// created, the file is synced. Writes after that go through the page cache.
pub struct DirectFile {
    file: File,
    direct: bool,
    policy: &'static DirectPolicy,
    stage: Option<Stage>,
    /// Writes full stages in the background (direct files only).
    flusher: Option<Flusher>,
    /// Offset of the next byte.
    at: u64,
    /// Sync on flush (a file we created; not somebody else's stdout).
    sync: bool,
    /// For stdout: move the shared file offset past what we wrote.
    seek_at_end: bool,
    /// For stdout: watches the device, to leave `O_DIRECT` when it lags.
    lag: Option<LagMeter>,
}

/// Decides when a redirected stdout should leave `O_DIRECT` for the page
/// cache.
///
/// A direct write returns once the device has the bytes. While the disk
/// is fast that beats the page cache here (a 1 GiB restore to a redirected
/// stdout: 0.8-1.3 s direct, 0.8-2.8 s buffered, the difference kernel time
/// spent allocating and copying cache pages), but in a slow phase of the
/// disk the same restore waited 3-22 s for it while a buffered one took
/// 1.4-1.75 s. So stdout, which nobody syncs, starts direct and measures:
/// over each window of runs, if the restore spent most of it waiting for
/// the writer threads and they took the bytes slower than [`SLOW_DEVICE`],
/// the writers are drained and the rest of the stream goes through the
/// page cache. Switching for good, not run by run: a buffered write and a
/// direct write to one file contend for its inode lock (ext4 holds it for
/// a whole extending direct write), so mixing them is slower than either.
/// Dirty-page throttling still bounds what the page cache takes.
/// `restore --to PATH` stays direct: it syncs before success, so the
/// device's time is spent either way.
#[derive(Debug)]
struct LagMeter {
    /// Runs per window, the rate under which the device counts as slow,
    /// and the share of the window spent waiting that makes it the bottleneck.
    window: usize,
    slow_bps: f64,
    wait_share: f64,
    start: Option<std::time::Instant>,
    runs: usize,
    bytes: u64,
    waited: std::time::Duration,
}

/// Below this a direct write is slower than the page cache at its worst
/// here (buffered writes into a new file on a VM whose memory is still
/// untouched: ~380 MB/s, `dd`).
const SLOW_DEVICE: f64 = 300e6;

impl LagMeter {
    fn new() -> LagMeter {
        // 16 runs: ~50 MiB, 40 ms at the 1.2 GB/s of a good phase.
        LagMeter {
            window: 16,
            slow_bps: SLOW_DEVICE,
            wait_share: 0.5,
            start: None,
            runs: 0,
            bytes: 0,
            waited: Default::default(),
        }
    }

    /// Count a run of `bytes` handed to the writers at `now` after
    /// `waited`; true when the window it closes says the device lags.
    fn lagging(&mut self, now: std::time::Instant, bytes: usize, waited: std::time::Duration) -> bool {
        let start = *self.start.get_or_insert(now.checked_sub(waited).unwrap_or(now));
        self.runs += 1;
        self.bytes += bytes as u64;
        self.waited += waited;
        if self.runs < self.window {
            return false;
        }
        let secs = now.duration_since(start).as_secs_f64().max(1e-9);
        let lags = self.waited.as_secs_f64() >= self.wait_share * secs && self.bytes as f64 / secs < self.slow_bps;
        tracing::trace!(
            rate_mb_s = self.bytes as f64 / secs / 1e6,
            waited_share = self.waited.as_secs_f64() / secs,
            "stdout: direct writes"
        );
        *self = LagMeter { start: Some(now), runs: 0, bytes: 0, waited: Default::default(), ..*self };
        lags
    }
}

impl DirectFile {
    /// Create `path` for about `size` bytes.
    pub fn create(path: &Path, size: u64) -> io::Result<DirectFile> {
        let policy = DirectPolicy::global();
        let (file, direct) = policy.create(path, size)?;
        let (flusher, stage) =
            if direct { Flusher::new(&file, policy).map(|(f, s)| (Some(f), Some(s)))? } else { (None, None) };
        Ok(DirectFile { file, direct, policy, stage, flusher, at: 0, sync: true, seek_at_end: false, lag: None })
    }

    /// Standard output, when it is a regular file (`lifeboat restore … >
    /// dump`) at a block-aligned offset, not opened for appending, and the
    /// stream is large: `None` otherwise (a pipe, a terminal), and the
    /// caller writes to stdout as usual. The flag lives on the open file
    /// description, which a shell may share (`{ …; } > file`), so it is
    /// cleared again on flush and on drop, and the shared offset is moved
    /// past what was written.
    pub fn stdout(size: u64) -> Option<DirectFile> {
        use std::io::Seek;
        let policy = DirectPolicy::global();
        if size < MIN_DIRECT || !policy.enabled() {
            return None;
        }
        let mut file = stdout_file().ok()?;
        // SAFETY: fcntl(F_GETFL) on an open descriptor.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        if !file.metadata().ok()?.file_type().is_file() || flags < 0 || flags & libc::O_APPEND != 0 {
            return None;
        }
        let at = file.stream_position().ok()?;
        if !at.is_multiple_of(ALIGN as u64) || set_direct(&file, true).is_err() {
            return None;
        }
        let Ok((flusher, stage)) = Flusher::new(&file, policy) else {
            let _ = set_direct(&file, false);
            return None;
        };
        tracing::debug!(offset = at, "stdout is a regular file: writing it with O_DIRECT");
        Some(DirectFile {
            file,
            direct: true,
            policy,
            stage: Some(stage),
            flusher: Some(flusher),
            at,
            sync: false,
            seek_at_end: true,
            lag: Some(LagMeter::new()),
        })
    }

    /// Stop writing directly: write the staged tail, clear the flag, and
    /// put the shared offset after our bytes.
    fn finish_direct(&mut self) -> io::Result<()> {
        let done = if self.direct {
            self.direct = false;
            // Every full stage first, then the tail (it clears O_DIRECT).
            let flushed = self.flusher.take().map_or(Ok(()), |mut f| f.finish());
            let staged = match &mut self.stage {
                Some(stage) if flushed.is_ok() => stage.write(&self.file, self.policy, self.at, &[], true),
                _ => flushed,
            };
            staged.and(set_direct(&self.file, false))
        } else {
            Ok(())
        };
        // Also when O_DIRECT was left midway (the device lagged).
        self.seek_past()?;
        done
    }

    /// For stdout: put the shared file offset after our bytes.
    fn seek_past(&self) -> io::Result<()> {
        if self.seek_at_end {
            use std::io::Seek;
            (&self.file).seek(io::SeekFrom::Start(self.at))?;
        }
        Ok(())
    }
}

impl io::Write for DirectFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !(self.direct && self.stage.is_some() && self.flusher.is_some()) {
            self.file.write_all_at(buf, self.at)?;
            self.at += buf.len() as u64;
            return Ok(buf.len());
        }
        let gone = || io::Error::other("direct writer stopped after an earlier error");
        let mut data = buf;
        while !data.is_empty() {
            let at = self.at + (buf.len() - data.len()) as u64;
            let stage = self.stage.as_mut().ok_or_else(gone)?;
            if stage.len == 0 {
                stage.at = at;
            }
            data = &data[stage.fill(data)..];
            if stage.len == STAGE {
                let full = self.stage.take().ok_or_else(gone)?;
                self.stage = Some(self.flusher.as_mut().ok_or_else(gone)?.swap(full)?);
            }
        }
        self.at += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.finish_direct()?;
        if self.sync { self.file.sync_all() } else { Ok(()) }
    }
}

/// A restore into a direct file: whole blocks go to the writer threads
/// straight from the run buffers, which restore lays out for that (see
/// [`Sink::align`]); only the partial block where two runs meet is copied.
impl Sink for DirectFile {
    fn put(&mut self, mut run: RunBuf, recycle: &Recycle) -> io::Result<()> {
        let len = run.len();
        let Some((from, whole, at)) = self.place(&mut run) else {
            // Not laid out for us (or small): through the stage.
            io::Write::write_all(self, &run)?;
            recycle(run.into_vec());
            return Ok(());
        };
        let flusher = self.flusher.as_mut().ok_or_else(|| io::Error::other("direct writer stopped"))?;
        let asked = std::time::Instant::now();
        flusher.send(Job::Run { buf: run.into_vec(), from, len: whole, at, recycle: recycle.clone() })?;
        self.at += len as u64;
        if let Some(lag) = &mut self.lag
            && lag.lagging(std::time::Instant::now(), whole, asked.elapsed())
        {
            // Drain the writers, write the carried block; from here on
            // runs arrive unaligned and go through the page cache.
            tracing::debug!(offset = self.at, "stdout: the disk lags; writing the rest through the page cache");
            self.lag = None;
            self.finish_direct()?;
        }
        Ok(())
    }

    fn end(&mut self) -> io::Result<()> {
        io::Write::flush(self)
    }

    fn align(&self) -> usize {
        if self.direct && self.flusher.is_some() { ALIGN } else { 1 }
    }
}

impl DirectFile {
    /// Complete `run`'s first block with the staged partial block, and stage
    /// its own last partial block instead: `(from, len, at)` of the whole
    /// blocks left to write straight from the buffer. `None` when the buffer
    /// has no aligned room for that, or holds no whole block.
    fn place(&mut self, run: &mut RunBuf) -> Option<(usize, usize, u64)> {
        if !self.direct || self.flusher.is_none() {
            return None;
        }
        let at = self.at;
        let stage = self.stage.as_mut()?;
        let pad = stage.len;
        let base = at.checked_sub(pad as u64)?;
        if pad >= ALIGN || !base.is_multiple_of(ALIGN as u64) || (pad > 0 && stage.at != base) {
            return None;
        }
        let len = run.len();
        let (buf, start) = run.parts_mut();
        let whole = (pad + len) / ALIGN * ALIGN;
        if start < pad || whole == 0 || !(buf.as_ptr() as usize + start - pad).is_multiple_of(ALIGN) {
            return None;
        }
        let from = start - pad;
        buf[from..start].copy_from_slice(&stage.window()[..pad]);
        let tail = pad + len - whole;
        stage.window()[..tail].copy_from_slice(&buf[from + whole..from + whole + tail]);
        stage.at = base + whole as u64;
        stage.len = tail;
        Some((from, whole, base))
    }
}

impl Drop for DirectFile {
    fn drop(&mut self) {
        // A failed restore never flushed: leave stdout as we found it.
        if self.seek_at_end && self.direct {
            let _ = set_direct(&self.file, false);
        }
        let _ = self.seek_past();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("lifeboat-direct-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Files of awkward sizes, written in awkward pieces, read back equal,
    /// with and without direct I/O.
    #[test]
    fn staged_writes_read_back_exactly() {
        let d = tmp("stage");
        let mut stage = Stage::default();
        for policy in [DirectPolicy::default(), DirectPolicy::off()] {
            for size in [0usize, 1, 4095, 4096, 65_537, STAGE - 1, STAGE, STAGE + 4097, 3 * STAGE + 12_345] {
                let data: Vec<u8> = (0..size).map(|i| (i * 7 + i / 4096) as u8).collect();
                let path = d.join(format!("f{size}"));
                let (file, _direct) = policy.create(&path, size as u64).unwrap();
                let mut at = 0;
                for piece in data.chunks(100_003) {
                    let last = at + piece.len() == size;
                    stage.write(&file, &policy, at as u64, piece, last).unwrap();
                    at += piece.len();
                }
                if size == 0 {
                    stage.write(&file, &policy, 0, &[], true).unwrap();
                }
                drop(file);
                assert_eq!(std::fs::read(&path).unwrap(), data, "size {size}");
            }
        }
        // Pieces must follow each other.
        let (file, _) = DirectPolicy::default().create(&d.join("gap"), 1 << 20).unwrap();
        stage.write(&file, &DirectPolicy::default(), 0, &[1; 10], false).unwrap();
        let err = stage.write(&file, &DirectPolicy::default(), 20, &[1; 10], true).unwrap_err();
        assert!(err.to_string().contains("out of order"), "{err}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// As a restore sink: runs laid out for it are written straight from
    /// their buffers (whole blocks on the writer threads, partial blocks
    /// carried to the next run), runs that are not (or are tiny) go through
    /// the stage, the file is exact either way, and every buffer comes back.
    #[test]
    fn a_direct_sink_writes_runs_in_place_and_hands_every_buffer_back() {
        direct_sink_case(false);
    }

    /// The same when the device is judged to lag after a few runs (what a
    /// redirected stdout does on a slow disk): the writers drain and the
    /// rest goes through the page cache, and the file is still exact.
    #[test]
    fn a_direct_sink_that_leaves_o_direct_midway_is_still_exact() {
        direct_sink_case(true);
    }

    /// A slow device (most of the window spent waiting, a low rate) is
    /// lagging; a fast one, or one that the restore never waits for, is not.
    #[test]
    fn the_lag_meter_needs_both_waiting_and_a_low_rate() {
        use std::time::Duration;
        let ms = Duration::from_millis;
        let mut m = LagMeter { window: 4, ..LagMeter::new() };
        // A run every `gap` on a clock of the test's own, each after a `wait`.
        let mut now = std::time::Instant::now();
        let mut runs = |n: usize, bytes: usize, gap: Duration, wait: Duration| -> Vec<bool> {
            (0..n)
                .map(|_| {
                    now += gap;
                    m.lagging(now, bytes, wait)
                })
                .collect()
        };
        // 4 MiB runs, each after a 30 ms wait: ~140 MB/s, all of it waiting.
        assert_eq!(runs(4, 4 << 20, ms(30), ms(30)), [false, false, false, true]);
        // As slow, but never waiting: decoding is the bottleneck, not the device.
        assert_eq!(runs(4, 4 << 20, ms(30), Duration::ZERO), [false; 4]);
        // Waiting all the time, but 4 MiB per 2 ms: a fast device.
        assert_eq!(runs(4, 4 << 20, ms(2), ms(2)), [false; 4]);
    }

    fn direct_sink_case(switch: bool) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let d = tmp(if switch { "switch" } else { "sink" });
        let back = Arc::new(AtomicUsize::new(0));
        let b = back.clone();
        let recycle: Recycle = Arc::new(move |_| {
            b.fetch_add(1, Ordering::SeqCst);
        });
        // Run sizes: block-sized, odd, tiny (inside one block), several MiB.
        let sizes = [4096usize, 1, 100, 4095, 3 * STAGE + 17, 8191, 12_289, STAGE, 5, 1 << 20, 777];
        let total: usize = sizes.iter().sum::<usize>() * 3;
        let data: Vec<u8> = (0..total).map(|i| (i % 253) as u8 ^ (i >> 12) as u8).collect();
        let path = d.join("out");
        let mut f = DirectFile::create(&path, total as u64).unwrap();
        if switch {
            // Judged lagging after the 2nd run it writes straight from its
            // buffer (of 3 here), whatever the device does.
            f.lag = Some(LagMeter { window: 2, slow_bps: f64::INFINITY, wait_share: 0.0, ..LagMeter::new() });
        }
        let align = f.align();
        assert_eq!(align, ALIGN, "a fresh file on this file system takes O_DIRECT");
        let (mut at, mut puts) = (0usize, 0);
        for (k, len) in sizes.iter().cycle().take(sizes.len() * 3).enumerate() {
            // Every third run arrives as a plain buffer, not laid out.
            let mut run = if k % 3 == 2 {
                RunBuf::from(vec![0u8; *len])
            } else {
                RunBuf::placed(Vec::new(), *len, align, at as u64)
            };
            run.copy_from_slice(&data[at..at + len]);
            f.put(run, &recycle).unwrap();
            at += len;
            puts += 1;
        }
        assert_eq!(f.direct, !switch, "left O_DIRECT midway?");
        f.end().unwrap();
        drop(f);
        assert_eq!(back.load(Ordering::SeqCst), puts, "every buffer handed back");
        assert!(std::fs::read(&path).unwrap() == data, "the file is exactly the runs, in order");
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// A direct file written in odd pieces is exact after flush, and
    /// writes after the flush still land in place.
    #[test]
    fn a_direct_file_is_exact_after_flush() {
        use std::io::Write;
        let d = tmp("file");
        // More full stages than the flusher holds, so stages are reused
        // while the two writer threads still write others.
        let data: Vec<u8> = (0..STAGE * (FLUSH_STAGES * 2 + 1) + 7777).map(|i| (i % 251) as u8).collect();
        let path = d.join("out");
        let mut f = DirectFile::create(&path, data.len() as u64).unwrap();
        for piece in data.chunks(123_457) {
            f.write_all(piece).unwrap();
        }
        f.flush().unwrap();
        f.write_all(b"more").unwrap();
        drop(f);
        let mut want = data.clone();
        want.extend_from_slice(b"more");
        assert_eq!(std::fs::read(&path).unwrap(), want);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
