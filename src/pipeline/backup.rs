//! Backup: turn byte streams into packs, an index file and a manifest.

use std::collections::HashSet;
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::{debug, info};

use super::pack::PackSealer;
use crate::chunker;
use crate::crypto::{self, ChunkId};
use crate::error::{Error, Result};
use crate::repo::{
    self, BackupStats, Index, IndexFile, Keys, Manifest, PackBlob, PackRecord, Repository, StreamManifest,
};
use crate::storage::{Backend, StorageError};

/// What the snapshot will say about itself.
#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    pub name: String,
    pub kind: String,
    pub tags: Vec<String>,
}

/// A pack ready for encryption and upload.
/// A full pack's blob bytes, waiting to be sealed (trailer), encrypted and stored.
struct SealedPack {
    body: Vec<u8>,
    blobs: Vec<PackBlob>,
    raw_bytes: u64,
}

/// One chunk after hashing (and compressing, if new).
struct Hashed {
    id: ChunkId,
    raw_len: u32,
    stored: Stored,
}

enum Stored {
    /// In the index the session started from: not compressed again.
    Known,
    /// Compressed on its own.
    Alone(Vec<u8>),
    /// `raw_len` bytes from `skip` of the batch's shared frame `frame`.
    Framed { frame: usize, skip: u32 },
}

/// Several small new chunks compressed as one zstd frame (format 2).
struct Frame {
    compressed: Vec<u8>,
    raw: u32,
}

/// What a hash worker hands the packer: a batch's chunks in stream order
/// and the frames they share.
struct HashedBatch {
    chunks: Vec<Hashed>,
    frames: Vec<Frame>,
}

/// New chunks up to this size are compressed together with their new
/// neighbours, in frames of up to `FRAME_BYTES`: an 8 KiB page compresses
/// ~3.0x alone and ~4x with its neighbours (measured on pg_basebackup
/// output), while dedup still works page by page. A restore decompresses a
/// frame once per run of its pages, and at most `FRAME_BYTES` for a page
/// read on its own.
const FRAME_MEMBER_MAX: usize = 64 * 1024;
const FRAME_BYTES: usize = 128 * 1024;

/// An open backup. Add one or more streams, then [`BackupSession::commit`].
/// Dropping it without committing leaves no visible snapshot: packs already
/// uploaded are unreferenced and `prune` removes them.
pub struct BackupSession {
    repo: Repository,
    keys: Keys,
    opts: BackupOptions,
    known: Arc<Index>,
    session_ids: HashSet<ChunkId>,
    streams: Vec<StreamManifest>,
    stats: BackupStats,
    started: chrono::DateTime<chrono::Utc>,
    clock: Instant,
    pack_tx: Option<mpsc::Sender<SealedPack>>,
    uploader: Option<tokio::task::JoinHandle<Result<Vec<PackRecord>>>>,
    current: PackBuilder,
    lock: Option<LockKeeper>,
}

/// Refreshes a lock in the background until told to release it (or until
/// the session is dropped, which also releases it).
struct LockKeeper {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

fn keep_fresh(mut lock: repo::lock::Lock) -> LockKeeper {
    let (stop, mut rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut rx => break,
                _ = tokio::time::sleep(std::time::Duration::from_secs(300)) => {
                    if let Err(e) = lock.refresh().await {
                        tracing::warn!("cannot refresh the backup lock: {e}");
                    }
                }
            }
        }
        if let Err(e) = lock.release().await {
            tracing::warn!("cannot release the backup lock: {e}");
        }
    });
    LockKeeper { stop, task }
}

struct PackBuilder {
    body: Vec<u8>,
    blobs: Vec<PackBlob>,
    raw_bytes: u64,
}

impl BackupSession {
    pub async fn start(repo: &Repository, keys: &Keys, opts: BackupOptions) -> Result<BackupSession> {
        // Hold off prune for as long as this backup may reference indexed data.
        let lock =
            repo::lock::Lock::acquire_waiting(repo, repo::lock::LockKind::Backup, std::time::Duration::from_secs(600))
                .await?;
        let known = Arc::new(repo.load_index(keys).await?);
        debug!(chunks = known.blobs.len(), packs = known.packs.len(), "index loaded");
        // One sealed pack may wait while two are being encrypted/uploaded.
        let (tx, rx) = mpsc::channel::<SealedPack>(1);
        let sealer =
            PackSealer { version: repo.config.version, recipients: keys.recipients.clone(), dedup: keys.dedup.clone() };
        let uploader = tokio::spawn(upload_packs(repo.backend.clone(), sealer, rx));
        Ok(BackupSession {
            repo: repo.clone(),
            keys: keys.clone(),
            opts,
            known,
            session_ids: HashSet::new(),
            streams: Vec::new(),
            stats: BackupStats::default(),
            started: crate::clock::now(),
            clock: Instant::now(),
            pack_tx: Some(tx),
            uploader: Some(uploader),
            current: PackBuilder { body: Vec::new(), blobs: Vec::new(), raw_bytes: 0 },
            lock: Some(keep_fresh(lock)),
        })
    }

    /// Whether small new chunks share compressed frames (repository format
    /// 2 and later), which makes page-sized chunks cheap.
    pub fn shared_frames(&self) -> bool {
        self.repo.config.version >= 2
    }

    /// Read `reader` to its end as one named stream of the snapshot.
    pub async fn add_stream<R: Read + Send + 'static>(&mut self, name: &str, reader: R) -> Result<&StreamManifest> {
        self.add_stream_with_layout(name, reader, chunker::Layout::Cdc).await
    }

    /// [`add_stream`](Self::add_stream) for a stream whose layout lets the
    /// chunker cut where later backups will find the same bytes again (a
    /// base backup's pages); restore does not need to know.
    pub async fn add_stream_with_layout<R: Read + Send + 'static>(
        &mut self,
        name: &str,
        reader: R,
        layout: chunker::Layout,
    ) -> Result<&StreamManifest> {
        let chunks = chunker::chunks_with_layout(reader, self.repo.config.chunker, layout);
        self.add_chunks(name, chunks).await
    }

    /// [`add_stream`](Self::add_stream) for a stream already in memory, e.g.
    /// a file on standard input, mapped (`source::Mapped`): no read copies.
    pub async fn add_mapped_stream(&mut self, name: &str, input: crate::source::Mapped) -> Result<&StreamManifest> {
        let (data, done) = input.into_parts();
        let chunks = chunker::chunks_in_memory(data, self.repo.config.chunker, chunker::Layout::Cdc, done);
        self.add_chunks(name, chunks).await
    }

    async fn add_chunks<I>(&mut self, name: &str, chunks: I) -> Result<&StreamManifest>
    where
        I: Iterator<Item = std::io::Result<Bytes>> + Send + 'static,
    {
        let span = tracing::info_span!("stream", name);
        // The blocking part needs the session's packer state; move it in and back out.
        let mut state = PackerState {
            known: self.known.clone(),
            session_ids: std::mem::take(&mut self.session_ids),
            current: std::mem::replace(
                &mut self.current,
                PackBuilder { body: Vec::new(), blobs: Vec::new(), raw_bytes: 0 },
            ),
            stats: std::mem::take(&mut self.stats),
            pack_tx: self.pack_tx.clone().ok_or_else(|| Error::Other("backup session already committed".into()))?,
            pack_size: self.repo.config.pack_size as usize,
        };
        let compress =
            Compression { level: self.repo.config.compression_level, shared_frames: self.repo.config.version >= 2 };
        let dedup = self.keys.dedup.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let _e = span.enter();
            let r = run_stream(chunks, compress, dedup, &mut state);
            (state, r)
        })
        .await
        .map_err(|e| Error::Other(format!("backup worker failed: {e}")))?;
        let (state, result) = joined;
        // Take the state apart so its pack sender is dropped here: on error,
        // `finish_uploads` waits for the uploader, which only ends once every
        // sender is gone (keeping this clone alive deadlocked a failed read).
        let PackerState { session_ids, current, stats, pack_tx, .. } = state;
        drop(pack_tx);
        self.session_ids = session_ids;
        self.current = current;
        self.stats = stats;
        let (size, chunks) = match result {
            Ok(v) => v,
            Err(e) => {
                // An upload error closes the channel; report it rather than the symptom.
                self.finish_uploads().await?;
                return Err(e);
            }
        };
        self.streams.push(StreamManifest { name: name.to_string(), size, chunks });

        Ok(self.streams.last().expect("just pushed"))
    }

    async fn finish_uploads(&mut self) -> Result<Vec<PackRecord>> {
        self.pack_tx = None;
        match self.uploader.take() {
            Some(h) => h.await.map_err(|e| Error::Other(format!("upload task failed: {e}")))?,
            None => Ok(Vec::new()),
        }
    }

    /// Make the snapshot visible: flush the last pack, wait until every pack
    /// is durable, write the index, then the manifest.
    pub async fn commit(mut self, source: serde_json::Value) -> Result<Manifest> {
        let result = self.commit_inner(source).await;
        self.release_lock().await;
        result
    }

    /// Give up: nothing becomes visible, and the backup lock is released now
    /// (rather than going stale and holding off prune for half an hour).
    pub async fn abort(mut self) {
        self.pack_tx = None;
        if let Some(u) = self.uploader.take() {
            u.abort();
        }
        self.release_lock().await;
    }

    /// Commit with the source's metadata, or abort if the source failed.
    pub async fn finish(self, source: Result<serde_json::Value>) -> Result<Manifest> {
        match source {
            Ok(meta) => self.commit(meta).await,
            Err(e) => {
                self.abort().await;
                Err(e)
            }
        }
    }

    async fn release_lock(&mut self) {
        if let Some(k) = self.lock.take() {
            let _ = k.stop.send(());
            let _ = k.task.await;
        }
    }

    async fn commit_inner(&mut self, source: serde_json::Value) -> Result<Manifest> {
        if !self.current.blobs.is_empty() {
            let p =
                std::mem::replace(&mut self.current, PackBuilder { body: Vec::new(), blobs: Vec::new(), raw_bytes: 0 });
            let tx = self.pack_tx.clone().ok_or_else(|| Error::Other("session closed".into()))?;
            let sealed = SealedPack { body: p.body, blobs: p.blobs, raw_bytes: p.raw_bytes };
            if tx.send(sealed).await.is_err() {
                // The uploader stopped early: its error explains why.
                self.finish_uploads().await?;
                return Err(Error::Other("uploader stopped".into()));
            }
        }
        let records = self.finish_uploads().await?;
        self.stats.packs_written = records.len() as u64;
        self.stats.bytes_new_stored = records.iter().map(|r| r.size).sum();
        if !records.is_empty() {
            let key = self.repo.write_index(&self.keys, &IndexFile { version: 1, packs: records }).await?;
            debug!(index = key, "index written");
        }
        self.stats.duration_secs = self.clock.elapsed().as_secs_f64();
        let manifest = Manifest {
            version: 1,
            id: hex::encode(rand::random::<[u8; 16]>()),
            name: self.opts.name.clone(),
            kind: self.opts.kind.clone(),
            tags: self.opts.tags.clone(),
            hostname: hostname(),
            started: self.started,
            finished: crate::clock::now(),
            streams: std::mem::take(&mut self.streams),
            source,
            stats: self.stats.clone(),
        };
        self.repo.write_manifest(&self.keys, &manifest).await?;
        info!(
            snapshot = manifest.short_id(),
            bytes_read = manifest.stats.bytes_read,
            bytes_new_stored = manifest.stats.bytes_new_stored,
            "snapshot committed"
        );
        Ok(manifest)
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

struct PackerState {
    known: Arc<Index>,
    session_ids: HashSet<ChunkId>,
    current: PackBuilder,
    stats: BackupStats,
    pack_tx: mpsc::Sender<SealedPack>,
    pack_size: usize,
}

/// Chunk, hash, compress and pack one stream. Runs on blocking threads.
fn run_stream<I>(
    chunks: I,
    compress: Compression,
    dedup: crypto::DedupKey,
    st: &mut PackerState,
) -> Result<(u64, Vec<ChunkId>)>
where
    I: Iterator<Item = std::io::Result<Bytes>> + Send + 'static,
{
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(1, 8);
    // Chunks travel in numbered batches: a hand-off between threads costs a
    // futex wake-up, which page-sized chunks (8 KiB) would pay 128 times
    // per MiB (a fifth of the CPU, measured).
    let (raw_tx, raw_rx) = sync_channel::<RawBatch>(workers * 2);
    let (hashed_tx, hashed_rx) = sync_channel::<(u64, HashedBatch)>(workers * 2);
    let (err_tx, err_rx) = sync_channel::<std::io::Error>(1);
    // Batches sent but not yet taken by a worker. While some wait, the
    // workers are the bottleneck and the chunker has time to spare, so it
    // computes chunk ids itself, right after the cut: the chunk is still in
    // its core's cache then, where a worker would fetch it again from memory
    // (on 2 cores ~2% of a backup's CPU, measured). When none
    // wait, the chunker is the bottleneck and leaves the hashing to them.
    let queued = Arc::new(AtomicUsize::new(0));

    let chunker = {
        let queued = queued.clone();
        let key = dedup.clone();
        std::thread::Builder::new()
            .name("lifeboat-chunker".into())
            .spawn(move || {
                let mut batch = RawBatch::default();
                let mut batch_bytes = 0;
                let send = |batch: &mut RawBatch, batch_bytes: &mut usize| {
                    *batch_bytes = 0;
                    let next = RawBatch { seq: batch.seq + 1, ..RawBatch::default() };
                    queued.fetch_add(1, Ordering::Relaxed);
                    raw_tx.send(std::mem::replace(batch, next)).is_ok()
                };
                for c in chunks {
                    match c {
                        Ok(data) => {
                            batch_bytes += data.len();
                            // Only a prefix of the batch is hashed here, so
                            // a worker knows where to take over.
                            if batch.ids.len() == batch.chunks.len() && queued.load(Ordering::Relaxed) > 0 {
                                batch.ids.push(key.chunk_id(&data));
                            }
                            batch.chunks.push(data);
                            if (batch_bytes >= BATCH_BYTES || batch.chunks.len() >= BATCH_CHUNKS)
                                && !send(&mut batch, &mut batch_bytes)
                            {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = err_tx.send(e);
                            return;
                        }
                    }
                }
                if !batch.chunks.is_empty() {
                    send(&mut batch, &mut batch_bytes);
                }
            })
            .map_err(|e| Error::Other(format!("cannot start chunker thread: {e}")))?
    };

    let raw_rx = Arc::new(Mutex::new(raw_rx));
    let mut handles = Vec::new();
    for i in 0..workers {
        let rx = raw_rx.clone();
        let tx: SyncSender<(u64, HashedBatch)> = hashed_tx.clone();
        let key = dedup.clone();
        let known = st.known.clone();
        let queued = queued.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("lifeboat-hash-{i}"))
                .spawn(move || hash_worker(rx, queued, tx, key, known, compress))
                .map_err(|e| Error::Other(format!("cannot start worker thread: {e}")))?,
        );
    }
    drop(hashed_tx);

    let result = pack_in_order(hashed_rx, st);
    // Unblock and join the helpers whatever happened.
    drop(raw_rx);
    let _ = chunker.join();
    for h in handles {
        let _ = h.join();
    }
    let (size, chunks) = result?;
    if let Ok(e) = err_rx.try_recv() {
        return Err(Error::Input(e));
    }
    Ok((size, chunks))
}

/// A batch of chunks is sent on once it holds this many bytes or chunks.
const BATCH_BYTES: usize = 1 << 20;
const BATCH_CHUNKS: usize = 256;

/// How new chunks are compressed.
#[derive(Clone, Copy)]
struct Compression {
    level: i32,
    /// Small neighbours share a frame (repositories of format 2 and later).
    shared_frames: bool,
}

/// Chunks in stream order, numbered so the packer can restore that order.
#[derive(Default)]
struct RawBatch {
    seq: u64,
    chunks: Vec<Bytes>,
    /// Ids of the first `ids.len()` chunks, computed by the chunker.
    ids: Vec<ChunkId>,
}

/// Batches of chunks, shared by the hash workers.
type BatchQueue = Arc<Mutex<Receiver<RawBatch>>>;

fn hash_worker(
    rx: BatchQueue,
    queued: Arc<AtomicUsize>,
    tx: SyncSender<(u64, HashedBatch)>,
    key: crypto::DedupKey,
    known: Arc<Index>,
    compress: Compression,
) {
    let mut compressor = match super::compress::Compressor::new(compress.level) {
        Ok(c) => c,
        Err(_) => return,
    };
    let mut scratch = Vec::with_capacity(FRAME_BYTES);
    loop {
        let next = match rx.lock() {
            Ok(guard) => guard.recv(),
            Err(_) => return,
        };
        let Ok(RawBatch { seq, chunks: batch, mut ids }) = next else { return };
        queued.fetch_sub(1, Ordering::Relaxed);
        let hashed_here = ids.len();
        ids.extend(batch[hashed_here..].iter().map(|d| key.chunk_id(d)));
        // Known chunks are not compressed again: that is what makes a
        // second backup of unchanged data cheap.
        let is_new: Vec<bool> = ids.iter().map(|id| !known.contains(id)).collect();
        let mut out = HashedBatch { chunks: Vec::with_capacity(batch.len()), frames: Vec::new() };
        let mut i = 0;
        while i < batch.len() {
            let id = ids[i];
            let raw_len = batch[i].len() as u32;
            if !is_new[i] {
                out.chunks.push(Hashed { id, raw_len, stored: Stored::Known });
                i += 1;
                continue;
            }
            // A run of small new chunks that fits one frame.
            let mut end = i;
            let mut bytes = 0;
            if compress.shared_frames {
                while end < batch.len()
                    && is_new[end]
                    && batch[end].len() <= FRAME_MEMBER_MAX
                    && bytes + batch[end].len() <= FRAME_BYTES
                {
                    bytes += batch[end].len();
                    end += 1;
                }
            }
            if end - i < 2 {
                let Ok(c) = compressor.compress(&batch[i]) else { return };
                out.chunks.push(Hashed { id, raw_len, stored: Stored::Alone(c) });
                i += 1;
                continue;
            }
            scratch.clear();
            let frame = out.frames.len();
            for j in i..end {
                let skip = scratch.len() as u32;
                scratch.extend_from_slice(&batch[j]);
                out.chunks.push(Hashed {
                    id: ids[j],
                    raw_len: batch[j].len() as u32,
                    stored: Stored::Framed { frame, skip },
                });
            }
            let Ok(c) = compressor.compress(&scratch) else { return };
            out.frames.push(Frame { compressed: c, raw: scratch.len() as u32 });
            i = end;
        }
        if tx.send((seq, out)).is_err() {
            return;
        }
    }
}

fn pack_in_order(rx: Receiver<(u64, HashedBatch)>, st: &mut PackerState) -> Result<(u64, Vec<ChunkId>)> {
    let mut pending = std::collections::BTreeMap::new();
    let mut next = 0u64;
    let mut size = 0u64;
    let mut chunks = Vec::new();
    // Counts sealed packs, so a frame placed in an earlier pack is written
    // again rather than referenced across packs.
    let mut pack_no = 0u64;
    for (seq, batch) in rx.iter() {
        pending.insert(seq, batch);
        while let Some(HashedBatch { chunks: hashed, frames }) = pending.remove(&next) {
            next += 1;
            let mut placed: Vec<Option<(u64, u32)>> = vec![None; frames.len()];
            for h in hashed {
                size += h.raw_len as u64;
                st.stats.bytes_read += h.raw_len as u64;
                st.stats.chunks += 1;
                chunks.push(h.id);
                if st.known.contains(&h.id) || st.session_ids.contains(&h.id) {
                    continue;
                }
                let cur = &mut st.current;
                let blob = match h.stored {
                    Stored::Known => continue,
                    Stored::Alone(data) => {
                        let offset = cur.body.len() as u32;
                        cur.body.extend_from_slice(&data);
                        PackBlob {
                            id: h.id,
                            offset,
                            length: data.len() as u32,
                            raw_length: h.raw_len,
                            frame_raw: 0,
                            skip: 0,
                        }
                    }
                    Stored::Framed { frame, skip } => {
                        let f = &frames[frame];
                        let offset = match placed[frame] {
                            Some((p, offset)) if p == pack_no => offset,
                            _ => {
                                let offset = cur.body.len() as u32;
                                cur.body.extend_from_slice(&f.compressed);
                                placed[frame] = Some((pack_no, offset));
                                offset
                            }
                        };
                        PackBlob {
                            id: h.id,
                            offset,
                            length: f.compressed.len() as u32,
                            raw_length: h.raw_len,
                            frame_raw: f.raw,
                            skip,
                        }
                    }
                };
                st.session_ids.insert(h.id);
                st.stats.new_chunks += 1;
                st.stats.bytes_new_raw += h.raw_len as u64;
                cur.blobs.push(blob);
                cur.raw_bytes += h.raw_len as u64;
                if cur.body.len() >= st.pack_size {
                    let p = std::mem::replace(cur, PackBuilder { body: Vec::new(), blobs: Vec::new(), raw_bytes: 0 });
                    let sealed = SealedPack { body: p.body, blobs: p.blobs, raw_bytes: p.raw_bytes };
                    pack_no += 1;
                    if st.pack_tx.blocking_send(sealed).is_err() {
                        return Err(Error::Other("upload stopped; see the upload error".into()));
                    }
                }
            }
        }
    }
    if !pending.is_empty() {
        return Err(Error::Other("internal: chunks lost between pipeline stages".into()));
    }
    Ok((size, chunks))
}

/// Encrypt and upload sealed packs, at most two at a time.
async fn upload_packs(
    backend: Arc<dyn Backend>,
    sealer: PackSealer,
    mut rx: mpsc::Receiver<SealedPack>,
) -> Result<Vec<PackRecord>> {
    let sealer = Arc::new(sealer);
    let sem = Arc::new(tokio::sync::Semaphore::new(2));
    let mut set = tokio::task::JoinSet::new();
    let mut records = Vec::new();
    while let Some(pack) = rx.recv().await {
        let permit = sem.clone().acquire_owned().await.map_err(|e| Error::Other(e.to_string()))?;
        let backend = backend.clone();
        let sealer = sealer.clone();
        set.spawn(async move {
            let _permit = permit;
            let SealedPack { body, blobs, raw_bytes } = pack;
            let (id, ct, blobs) = tokio::task::spawn_blocking(move || {
                let (id, ct) = sealer.seal(body, &blobs)?;
                Ok::<_, Error>((id, ct, blobs))
            })
            .await
            .map_err(|e| Error::Other(e.to_string()))??;
            let size = ct.len() as u64;
            match backend.put_new(&repo::pack_key(&id), Bytes::from(ct)).await {
                Ok(()) | Err(StorageError::AlreadyExists { .. }) => {}
                Err(e) => return Err(Error::from(e)),
            }
            debug!(pack = ?id, size, raw_bytes, "pack stored");
            Ok(PackRecord { id, size, blobs })
        });
        while let Some(r) = set.try_join_next() {
            records.push(r.map_err(|e| Error::Other(e.to_string()))??);
        }
    }
    while let Some(r) = set.join_next().await {
        records.push(r.map_err(|e| Error::Other(e.to_string()))??);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// Yields some data, then fails the way a dropped connection does.
    struct Failing(usize);
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("connection reset"));
            }
            let n = buf.len().min(self.0).min(64 * 1024);
            buf[..n].fill(7);
            self.0 -= n;
            Ok(n)
        }
    }

    /// Text-like data with some randomness: compresses, and cut by a small
    /// chunker into chunks that all qualify for shared frames.
    fn sample(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(
                format!("row {} customer-{} amount {}.{:02}\n", x % 1000, x % 97, x % 5000, x % 100).as_bytes(),
            );
        }
        out.truncate(len);
        out
    }

    async fn small_chunk_repo(version: u32) -> (std::path::PathBuf, Repository, Keys) {
        let dir = std::env::temp_dir().join(format!("lifeboat-frames-{}", hex::encode(rand::random::<[u8; 6]>())));
        let url: crate::storage::RepoUrl = dir.display().to_string().parse().unwrap();
        let id = age::x25519::Identity::generate();
        let opts = repo::InitOptions {
            recipients: vec![id.to_public().to_string()],
            chunker: chunker::ChunkerParams { min_size: 2048, avg_size: 8192, max_size: 32768 },
            ..Default::default()
        };
        let (mut repo, _) = Repository::init(&url, opts).await.unwrap();
        // What a repository created by an older lifeboat looks like to a writer.
        repo.config.version = version;
        let keys = repo.unlock_identity(crypto::Identities::from_x25519(id, "test")).await.unwrap();
        (dir, repo, keys)
    }

    async fn backup(repo: &Repository, keys: &Keys, data: &[u8]) -> Manifest {
        let mut s =
            BackupSession::start(repo, keys, BackupOptions { name: "t".into(), ..Default::default() }).await.unwrap();
        s.add_stream("s", std::io::Cursor::new(data.to_vec())).await.unwrap();
        s.commit(serde_json::json!({})).await.unwrap()
    }

    async fn restore(repo: &Repository, keys: &Keys, m: &Manifest) -> Vec<u8> {
        let index = repo.load_index(keys).await.unwrap();
        let (_, out) =
            crate::pipeline::restore_stream_into(repo, keys, &index, &m.id, &m.streams[0], Vec::new()).await.unwrap();
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_chunks_share_frames_dedup_singly_and_round_trip() {
        let (dir, repo, keys) = small_chunk_repo(repo::FORMAT_VERSION).await;
        let a = sample(3 << 20, 7);
        let m1 = backup(&repo, &keys, &a).await;
        let index = repo.load_index(&keys).await.unwrap();
        let framed = index.blobs.values().filter(|l| l.frame_raw > 0).count();
        assert!(framed * 10 > index.blobs.len() * 9, "{framed} of {} chunks in shared frames", index.blobs.len());
        assert_eq!(restore(&repo, &keys, &m1).await, a);

        // Change a few bytes in three places: only the chunks around them are new.
        let mut b = a.clone();
        for at in [100_000usize, 1_500_000, 3_000_000] {
            b[at..at + 4].copy_from_slice(b"EDIT");
        }
        let m2 = backup(&repo, &keys, &b).await;
        assert!(m2.stats.new_chunks <= 9, "{} new chunks", m2.stats.new_chunks);
        assert!(m2.stats.bytes_new_raw < 200_000, "{} new raw bytes", m2.stats.bytes_new_raw);
        assert_eq!(restore(&repo, &keys, &m2).await, b);
        assert_eq!(restore(&repo, &keys, &m1).await, a);
        let report = crate::check::check(&repo, &keys, true).await.unwrap();
        assert!(report.ok(), "{report:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    async fn try_restore(repo: &Repository, keys: &Keys, index: &Index, m: &Manifest) -> Result<Vec<u8>> {
        crate::pipeline::restore_stream_into(repo, keys, index, &m.id, &m.streams[0], Vec::new()).await.map(|r| r.1)
    }

    /// The index as a restore would see it if `first` were read first.
    async fn index_with_first(repo: &Repository, keys: &Keys, first: &str) -> Index {
        let mut names: Vec<String> = repo.backend.list("index/").await.unwrap().into_iter().map(|f| f.key).collect();
        names.sort_by_key(|k| k != first);
        let mut index = Index::default();
        for k in names {
            index.add_file(&k, repo.read_index_file(keys, &k).await.unwrap());
        }
        index
    }

    /// Format 3: a pack whose header MAC checks out vouches for its chunks,
    /// which are then written without hashing each; anything else is hashed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn format_3_packs_vouch_for_their_chunks_and_nothing_else() {
        let (dir, repo, keys) = small_chunk_repo(repo::FORMAT_VERSION).await;
        assert_eq!(repo.config.version, 3);
        let a = sample(1 << 20, 11);
        let m = backup(&repo, &keys, &a).await;
        assert_eq!(restore(&repo, &keys, &m).await, a);
        let index = repo.load_index(&keys).await.unwrap();
        assert!(index.ambiguous.is_empty());
        let x = m.streams[0].chunks[3];
        let legit = *index.get(&x).unwrap();
        let legit_key = repo::pack_key(&legit.pack);
        let legit_ct = repo.backend.get(&legit_key).await.unwrap().to_vec();
        let ids = keys.identities("test").unwrap();
        let legit_pt = ids.decrypt("pack", &legit_ct).unwrap();
        assert!(
            crate::pipeline::pack::open_pack(3, &legit_ct, legit_pt.clone(), &keys.dedup).unwrap().vouched.is_some()
        );

        // Someone with the write credential stores garbage under chunk x's id
        // (a second location) and indexes it.
        let garbage = vec![b'#'; legit.raw_length as usize];
        let frame = zstd::bulk::compress(&garbage, 3).unwrap();
        let blob = PackBlob {
            id: x,
            offset: 0,
            length: frame.len() as u32,
            raw_length: legit.raw_length,
            frame_raw: 0,
            skip: 0,
        };
        let sealer = PackSealer { version: 3, recipients: keys.recipients.clone(), dedup: keys.dedup.clone() };
        let (forged, forged_ct) = sealer.seal(frame, &[blob]).unwrap();
        assert_eq!(forged, ChunkId(Sha256::digest(&forged_ct).into()));
        repo.backend.put_new(&repo::pack_key(&forged), Bytes::from(forged_ct)).await.unwrap();
        let rec = PackRecord { id: forged, size: 0, blobs: vec![blob] };
        let forged_index = repo.write_index(&keys, &IndexFile { version: 1, packs: vec![rec] }).await.unwrap();

        // Two places for x: whichever the index picks, x is hashed, so the
        // forgery is refused, never written.
        let index = index_with_first(&repo, &keys, &forged_index).await;
        assert!(index.ambiguous.contains_key(&x));
        assert_eq!(index.get(&x).unwrap().pack, forged);
        let err = try_restore(&repo, &keys, &index, &m).await.unwrap_err().to_string();
        assert!(err.contains("does not match its id"), "{err}");
        let legit_index = repo.load_index(&keys).await.unwrap().packs[&legit.pack].1.clone();
        let index = index_with_first(&repo, &keys, &legit_index).await;
        assert!(index.ambiguous.contains_key(&x));
        assert_eq!(index.get(&x).unwrap().pack, legit.pack);
        assert_eq!(try_restore(&repo, &keys, &index, &m).await.unwrap(), a, "the real place still restores");
        // What the trust amounts to: were the forged place the only one (the
        // original index deleted, which Object Lock / no-delete rights
        // prevent), its pack's word would be taken. `check --read-data`
        // still hashes every chunk.
        let mut only_forged = index_with_first(&repo, &keys, &forged_index).await;
        only_forged.ambiguous.clear();
        let out = try_restore(&repo, &keys, &only_forged, &m).await.unwrap();
        assert_ne!(out, a);
        assert!(out.windows(garbage.len()).any(|w| w == garbage));

        // Someone with only bucket access replaces the legit pack with a valid
        // age file of their own: the same plaintext under a new header (its
        // MAC no longer matches), or one without a MAC (hashed, so refused).
        let index = index_with_first(&repo, &keys, "index/").await;
        let swap = |ct: Vec<u8>| {
            let path = dir.join(&legit_key);
            std::fs::remove_file(&path).unwrap();
            std::fs::write(&path, ct).unwrap();
        };
        swap(crypto::encrypt(&keys.recipients, &legit_pt).unwrap());
        let mut clean = index.clone();
        clean.ambiguous.clear();
        clean.blobs.insert(x, legit);
        let err = try_restore(&repo, &keys, &clean, &m).await.unwrap_err().to_string();
        assert!(err.contains("not written with this repository's keys"), "{err}");
        let mut no_mac = legit_pt.clone();
        let n = no_mac.len();
        let tl = u32::from_le_bytes(no_mac[n - 8..n - 4].try_into().unwrap()) as usize;
        no_mac.truncate(n - 8 - tl);
        let at = legit.offset as usize + legit.length as usize / 2;
        no_mac[at] ^= 0x20;
        let file = repo.read_index_file(&keys, &index.packs[&legit.pack].1).await.unwrap();
        let blobs = &file.packs.iter().find(|p| p.id == legit.pack).unwrap().blobs;
        swap(crypto::encrypt(&keys.recipients, &crate::pipeline::seal_pack(3, no_mac, blobs).unwrap()).unwrap());
        let err = try_restore(&repo, &keys, &clean, &m).await.unwrap_err().to_string();
        assert!(err.contains("does not match its id") || err.contains("decompress"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_format_1_repository_is_written_without_shared_frames() {
        let (dir, repo, keys) = small_chunk_repo(1).await;
        let a = sample(1 << 20, 9);
        let m = backup(&repo, &keys, &a).await;
        let index = repo.load_index(&keys).await.unwrap();
        assert!(index.blobs.len() > 20);
        assert!(index.blobs.values().all(|l| l.frame_raw == 0 && l.skip == 0));
        assert_eq!(restore(&repo, &keys, &m).await, a);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_reader_fails_the_stream_without_hanging() {
        let dir = std::env::temp_dir().join(format!("lifeboat-failing-{}", hex::encode(rand::random::<[u8; 6]>())));
        let url: crate::storage::RepoUrl = dir.display().to_string().parse().unwrap();
        let (_, recipient) = crypto::generate_identity();
        let opts = repo::InitOptions { recipients: vec![recipient], ..Default::default() };
        let (repo, cred) = Repository::init(&url, opts).await.unwrap();
        let keys = repo.unlock_write(&cred).unwrap();
        let mut s = BackupSession::start(&repo, &keys, BackupOptions::default()).await.unwrap();
        let r = tokio::time::timeout(std::time::Duration::from_secs(30), s.add_stream("x", Failing(40 << 20))).await;
        let err = r.expect("add_stream must not hang on a read error").unwrap_err();
        assert!(err.to_string().contains("connection reset"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
