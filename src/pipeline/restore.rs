//! Restore: fetch packs in the order a stream needs them, decrypt,
//! decompress, verify, write in order. A chunk is verified by its keyed
//! hash, or, in a format 3 pack whose header MAC checks out, by the pack's
//! own authenticated trailer (see [`super::pack::OpenPack`]); chunks the
//! index knows at more than one place are always hashed.
//!
//! ```text
//! pack prefetch (2 packs ahead, background tasks) ──▶ run decoders (cores + 2 in flight) ──▶ writer thread
//! ```
//!
//! A stream is planned as runs of consecutive chunks (at most [`RUN_LIMIT`]
//! bytes and [`RUN_PACKS`] packs each): a later snapshot interleaves its
//! changed chunks with unchanged ones stored by earlier backups, and one
//! run per pack switch would make thousands of tiny jobs, each
//! decompressing a whole shared frame for one page. Packs are fetched and
//! decrypted ahead of the run that needs them, runs decode concurrently on
//! blocking threads, and the writer gets them back in order. Output buffers go back to a small
//! pool once written, so a restore of gigabytes touches the same few
//! buffers instead of faulting in fresh pages for every run.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt, Shared};
use futures::stream::{self, StreamExt};
use sha2::{Digest, Sha256};

use super::pack::{BlobDecoder, OpenPack, open_pack};
use crate::crypto::ChunkId;
use crate::error::{Error, Result};
use crate::repo::{self, BlobLocation, Index, Keys, Repository, StreamManifest};

/// Largest plaintext one decode job produces; bounds memory per job.
const RUN_LIMIT: u64 = 4 * 1024 * 1024;
/// Distinct packs one run may need (the packs of a few backup generations).
const RUN_PACKS: usize = 3;
/// Distinct packs fetched ahead of the run being started.
const PACKS_AHEAD: usize = 2;
/// Decrypted packs kept: the prefetched ones plus those the runs in flight
/// are decoding from.
const CACHE_PACKS: usize = PACKS_AHEAD + RUN_PACKS + 1;

/// Decode jobs in flight: enough to keep every core busy while one job
/// waits for its pack and the writer drains another.
fn decode_depth() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(1, 8) + 2
}

type PackFuture = Shared<BoxFuture<'static, std::result::Result<Arc<OpenPack>, Arc<Error>>>>;

/// A tiny LRU of decrypted packs, shared by concurrent decode jobs so a pack
/// is fetched once even when several jobs need it at the same time. Each
/// fetch runs as its own task, so a prefetched pack downloads and decrypts
/// while earlier runs are still decoding.
#[derive(Clone)]
pub struct PackCache {
    repo: Repository,
    keys: Keys,
    slots: Arc<Mutex<VecDeque<(ChunkId, PackFuture)>>>,
}

impl PackCache {
    pub fn new(repo: &Repository, keys: &Keys) -> Self {
        PackCache { repo: repo.clone(), keys: keys.clone(), slots: Arc::new(Mutex::new(VecDeque::new())) }
    }

    fn slot(&self, pack: ChunkId) -> Result<PackFuture> {
        let mut slots = self.slots.lock().map_err(|_| Error::Other("pack cache poisoned".into()))?;
        if let Some(pos) = slots.iter().position(|(id, _)| *id == pack) {
            let entry = slots.remove(pos).expect("position is in range");
            let f = entry.1.clone();
            slots.push_back(entry);
            return Ok(f);
        }
        let repo = self.repo.clone();
        let keys = self.keys.clone();
        // The chunk hashes checked on decode already vouch for every byte a
        // restore writes, so the pack-name hash is left to `check`.
        let task =
            tokio::spawn(async move { load_pack(&repo, &keys, pack, false).await.map(Arc::new).map_err(Arc::new) });
        let f = async move { task.await.unwrap_or_else(|e| Err(Arc::new(Error::Other(format!("pack fetch failed: {e}"))))) }
            .boxed()
            .shared();
        slots.push_back((pack, f.clone()));
        while slots.len() > CACHE_PACKS {
            slots.pop_front();
        }
        Ok(f)
    }

    /// Start fetching a pack without waiting for it.
    pub fn prefetch(&self, pack: ChunkId) {
        let _ = self.slot(pack);
    }

    pub async fn get(&self, pack: ChunkId) -> Result<Arc<OpenPack>> {
        Self::wait(self.slot(pack)?).await
    }

    async fn wait(fut: PackFuture) -> Result<Arc<OpenPack>> {
        fut.await.map_err(|e| match &*e {
            Error::CorruptPack { pack, detail } => Error::CorruptPack { pack: pack.clone(), detail: detail.clone() },
            other => Error::Other(other.to_string()),
        })
    }
}

/// Download a pack, check its name (SHA-256 of the ciphertext), decrypt it,
/// and check its header MAC (format 3).
pub async fn fetch_pack(repo: &Repository, keys: &Keys, pack: ChunkId) -> Result<OpenPack> {
    load_pack(repo, keys, pack, true).await
}

async fn load_pack(repo: &Repository, keys: &Keys, pack: ChunkId, check_name: bool) -> Result<OpenPack> {
    keys.identities("restoring data")?;
    tracing::debug!(pack = %pack.to_hex(), "fetching pack");
    let key = repo::pack_key(&pack);
    let ct = repo.backend.get(&key).await.map_err(|e| match e {
        crate::storage::StorageError::NotFound { .. } => {
            Error::CorruptPack { pack: pack.to_hex(), detail: "the pack object is missing".into() }
        }
        other => other.into(),
    })?;
    // Hashing and decryption are CPU work: keep them off the async threads.
    let what = format!("pack {}", pack.to_hex());
    let keys2 = keys.clone();
    let version = repo.config.version;
    tokio::task::spawn_blocking(move || {
        if check_name {
            let digest: [u8; 32] = Sha256::digest(&ct).into();
            if digest != pack.0 {
                return Err(Error::CorruptPack {
                    pack: pack.to_hex(),
                    detail: "its content does not match its name (bit rot or tampering)".into(),
                });
            }
        }
        let ids = keys2.identities("restoring data")?;
        let data = ids.decrypt(&what, &ct).map_err(|e| match e {
            crate::crypto::CryptoError::Corrupt { detail, .. } => Error::CorruptPack { pack: pack.to_hex(), detail },
            other => other.into(),
        })?;
        open_pack(version, &ct, data, &keys2.dedup).map_err(|detail| Error::CorruptPack { pack: pack.to_hex(), detail })
    })
    .await
    .map_err(|e| Error::Other(e.to_string()))?
}

/// Output buffers handed back by the writer for the next runs.
#[derive(Clone, Default)]
struct BufferPool(Arc<Mutex<Vec<Vec<u8>>>>);

impl BufferPool {
    /// A buffer for `len` bytes at `offset` in the stream, placed for a
    /// sink that writes `align`ed blocks ([`RunBuf::placed`]).
    fn take(&self, len: usize, align: usize, offset: u64) -> RunBuf {
        let buf = self.0.lock().ok().and_then(|mut p| p.pop()).unwrap_or_default();
        RunBuf::placed(buf, len, align, offset)
    }

    fn give(&self, buf: Vec<u8>, keep: usize) {
        if let Ok(mut p) = self.0.lock()
            && p.len() < keep
        {
            p.push(buf);
        }
    }
}

/// A decoded run: its bytes are `buf[start..start + len]`. Room before
/// `start` lets a direct writer put the previous run's partial block there
/// and write whole blocks straight from this buffer (no copy).
pub struct RunBuf {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl RunBuf {
    /// Room in `buf` (reused, contents unspecified) for `len` bytes that
    /// start `offset` bytes into the stream, placed for a sink that writes
    /// `align`ed blocks straight from it: the bytes start as far past an
    /// `align`ed address as `offset` is past a block boundary.
    pub fn placed(mut buf: Vec<u8>, len: usize, align: usize, offset: u64) -> RunBuf {
        if align <= 1 {
            buf.resize(len, 0);
            return RunBuf { buf, start: 0, len };
        }
        let pad = (offset % align as u64) as usize;
        buf.resize(align + pad + len, 0);
        let start = buf.as_ptr().align_offset(align) + pad;
        RunBuf { buf, start, len }
    }

    /// The bytes and the room before them: `(buffer, start)`.
    pub fn parts_mut(&mut self) -> (&mut [u8], usize) {
        (&mut self.buf[..self.start + self.len], self.start)
    }

    /// The underlying buffer, to hand back through a [`Recycle`].
    pub fn into_vec(self) -> Vec<u8> {
        self.buf
    }
}

impl From<Vec<u8>> for RunBuf {
    fn from(buf: Vec<u8>) -> Self {
        let len = buf.len();
        RunBuf { buf, start: 0, len }
    }
}

impl std::ops::Deref for RunBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl std::ops::DerefMut for RunBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

thread_local! {
    /// One decoder (zstd context, last shared frame) per blocking thread, reused across runs.
    static DECODER: std::cell::RefCell<Option<BlobDecoder>> = const { std::cell::RefCell::new(None) };
}

/// Decode one run into `buf` (already sized to the run's raw length);
/// `packs` holds the decrypted packs of `run.packs`, in that order.
fn decode_run(run: &Run, packs: &[Arc<OpenPack>], dedup: &crate::crypto::DedupKey, buf: &mut [u8]) -> Result<()> {
    DECODER.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = Some(BlobDecoder::new().map_err(Error::Other)?);
        }
        let decoder = cell.as_mut().expect("just set");
        let mut pos = 0usize;
        let mut k = 0usize;
        while k < run.blobs.len() {
            let (id, loc) = &run.blobs[k];
            let which = run.packs.iter().position(|p| *p == loc.pack).expect("plan lists every pack of a run");
            let pack = &packs[which];
            let corrupt = |detail| Error::CorruptPack { pack: loc.pack.to_hex(), detail };
            // Hash a chunk unless its authenticated pack vouches for it here.
            let vouched = |(id, loc): &(ChunkId, BlobLocation)| pack.vouches(id, loc) && !run.ambiguous.contains(id);
            // The start of a shared frame whose chunks all follow in order:
            // decompress it straight into the output.
            if loc.frame_raw != 0 && loc.skip == 0 {
                let count =
                    run.blobs[k..].iter().take_while(|(_, l)| l.pack == loc.pack && l.offset == loc.offset).count();
                let end = pos + loc.frame_raw as usize;
                let frame = &run.blobs[k..k + count];
                let key = if frame.iter().all(vouched) { None } else { Some(dedup) };
                if end <= buf.len()
                    && decoder.decode_frame_into(&pack.data, frame, key, &mut buf[pos..end]).map_err(corrupt)?
                {
                    pos = end;
                    k += count;
                    continue;
                }
            }
            let end = pos + loc.raw_length as usize;
            let key = if vouched(&run.blobs[k]) { None } else { Some(dedup) };
            decoder.decode_into(&pack.data, loc, id, key, &mut buf[pos..end]).map_err(corrupt)?;
            pos = end;
            k += 1;
        }
        Ok(())
    })
}

struct Run {
    /// Distinct packs of the run's chunks, in first-use order.
    packs: Vec<ChunkId>,
    blobs: Vec<(ChunkId, BlobLocation)>,
    /// Chunks of the run that the index knows at more than one place
    /// (usually none): a pack's word is not enough for them.
    ambiguous: Vec<ChunkId>,
    raw: u64,
}

fn plan(snapshot: &str, stream: &StreamManifest, index: &Index) -> Result<Vec<Run>> {
    let mut runs: Vec<Run> = Vec::new();
    for id in &stream.chunks {
        let loc =
            *index.get(id).ok_or_else(|| Error::MissingChunk { snapshot: snapshot.to_string(), chunk: id.to_hex() })?;
        let len = loc.raw_length as u64;
        let ambiguous = index.ambiguous.contains_key(id);
        let fits = |r: &Run| r.raw + len <= RUN_LIMIT && (r.packs.contains(&loc.pack) || r.packs.len() < RUN_PACKS);
        match runs.last_mut() {
            Some(r) if fits(r) => {
                if !r.packs.contains(&loc.pack) {
                    r.packs.push(loc.pack);
                }
                r.blobs.push((*id, loc));
                r.raw += len;
                if ambiguous {
                    r.ambiguous.push(*id);
                }
            }
            _ => runs.push(Run {
                packs: vec![loc.pack],
                blobs: vec![(*id, loc)],
                ambiguous: if ambiguous { vec![*id] } else { Vec::new() },
                raw: len,
            }),
        }
    }
    Ok(runs)
}

/// Restore one stream of a snapshot into `out`; returns the bytes written.
pub async fn restore_stream<W: Write + Send + 'static>(
    repo: &Repository,
    keys: &Keys,
    index: &Index,
    snapshot: &str,
    stream: &StreamManifest,
    out: W,
) -> Result<u64> {
    restore_stream_into(repo, keys, index, snapshot, stream, out).await.map(|(n, _)| n)
}

/// Like [`restore_stream`], and hands `out` back afterwards (a buffer to
/// read): the writer runs on its own thread meanwhile, so callers need not
/// share it behind a lock.
pub async fn restore_stream_into<W: Write + Send + 'static>(
    repo: &Repository,
    keys: &Keys,
    index: &Index,
    snapshot: &str,
    stream: &StreamManifest,
    out: W,
) -> Result<(u64, W)> {
    let (n, sink) = restore_stream_to(repo, keys, index, snapshot, stream, WriteSink(out)).await?;
    Ok((n, sink.0))
}

/// Hands a decoded buffer back to the restore for the next runs.
pub type Recycle = Arc<dyn Fn(Vec<u8>) + Send + Sync>;

/// Where a restore's decoded bytes go, one buffer (a run of up to a few
/// MiB) at a time, in stream order. Any `Write` is one; a sink that owns the
/// buffers can write them on other threads (see crate::tar::Extractor and
/// crate::direct::DirectFile).
pub trait Sink: Send + 'static {
    /// Take the next buffer; pass it to `recycle` once done with it.
    fn put(&mut self, buf: RunBuf, recycle: &Recycle) -> std::io::Result<()>;
    /// Every byte put is written (flushed, or its writer threads done).
    fn end(&mut self) -> std::io::Result<()>;
    /// Block size this sink writes straight from the buffers (1: none).
    /// Each buffer then has room before its bytes for the part of their
    /// first block that earlier bytes fill, at an address aligned to it.
    fn align(&self) -> usize {
        1
    }
}

struct WriteSink<W>(W);

impl<W: Write + Send + 'static> Sink for WriteSink<W> {
    fn put(&mut self, buf: RunBuf, recycle: &Recycle) -> std::io::Result<()> {
        self.0.write_all(&buf)?;
        recycle(buf.into_vec());
        Ok(())
    }

    fn end(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Restore one stream of a snapshot into a [`Sink`], which is handed back
/// afterwards (an extractor to finish).
pub async fn restore_stream_to<S: Sink>(
    repo: &Repository,
    keys: &Keys,
    index: &Index,
    snapshot: &str,
    stream: &StreamManifest,
    out: S,
) -> Result<(u64, S)> {
    keys.identities("restoring data")?;
    let runs = Arc::new(plan(snapshot, stream, index)?);
    let cache = PackCache::new(repo, keys);
    let dedup = keys.dedup.clone();
    let depth = decode_depth();
    let pool = BufferPool::default();

    // The writer runs on its own thread: output may be a slow pipe or disk.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<RunBuf>(2);
    let align = out.align();
    // Where each run starts in the stream: the placement a direct sink wants.
    let offsets: Arc<Vec<u64>> = Arc::new(
        runs.iter()
            .scan(0u64, |at, r| {
                let o = *at;
                *at += r.raw;
                Some(o)
            })
            .collect(),
    );
    let writer_pool = pool.clone();
    // Buffers also wait in a sink's own queues (an extractor's writers):
    // keep enough for those too, rather than fault in fresh pages.
    let recycle: Recycle = Arc::new(move |buf| writer_pool.give(buf, depth + 6));
    let writer = tokio::task::spawn_blocking(move || {
        let mut out = out;
        let mut written = 0u64;
        while let Some(buf) = rx.blocking_recv() {
            written += buf.len() as u64;
            out.put(buf, &recycle).map_err(Error::Output)?;
        }
        out.end().map_err(Error::Output)?;
        Ok::<(u64, S), Error>((written, out))
    });

    let mut decoded = stream::iter(0..runs.len())
        .map(|i| {
            let cache = cache.clone();
            let dedup = dedup.clone();
            let runs = runs.clone();
            let pool = pool.clone();
            let offsets = offsets.clone();
            // Starting run i: its packs first, then the next packs, so the
            // LRU never evicts a pack that queued runs still need.
            let own: Vec<_> = runs[i].packs.iter().map(|p| cache.slot(*p)).collect();
            let mut ahead: Vec<ChunkId> = Vec::new();
            // (A bounded look: a long run of one pack, e.g. a stream of zeros, is not rescanned.)
            'look: for r in runs[i + 1..].iter().take(64) {
                for p in &r.packs {
                    if !runs[i].packs.contains(p) && !ahead.contains(p) {
                        cache.prefetch(*p);
                        ahead.push(*p);
                        if ahead.len() == PACKS_AHEAD {
                            break 'look;
                        }
                    }
                }
            }
            async move {
                let mut packs = Vec::with_capacity(own.len());
                for slot in own {
                    packs.push(PackCache::wait(slot?).await?);
                }
                tokio::task::spawn_blocking(move || {
                    let run = &runs[i];
                    let mut buf = pool.take(run.raw as usize, align, offsets[i]);
                    decode_run(run, &packs, &dedup, &mut buf)?;
                    Ok::<_, Error>(buf)
                })
                .await
                .map_err(|e| Error::Other(e.to_string()))?
            }
        })
        .buffered(depth);

    let mut failure = None;
    while let Some(r) = decoded.next().await {
        match r {
            Ok(buf) => {
                if tx.send(buf).await.is_err() {
                    break; // writer failed; its error is reported below
                }
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let written = writer.await.map_err(|e| Error::Other(e.to_string()))?;
    if let Some(e) = failure {
        return Err(e);
    }
    let (written, out) = written?;
    if written != stream.size {
        return Err(Error::Corrupt {
            what: format!("snapshot {snapshot} stream {}", stream.name),
            detail: format!("restored {written} bytes, the manifest says {}", stream.size),
        });
    }
    Ok((written, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream of 8 KiB pages whose pack, page by page, is `packs[i]`.
    fn layout(packs: &[u8]) -> (StreamManifest, Index) {
        let mut index = Index::default();
        let mut chunks = Vec::new();
        for (i, p) in packs.iter().enumerate() {
            let id = ChunkId(Sha256::digest(i.to_le_bytes()).into());
            let loc = BlobLocation {
                pack: ChunkId([*p; 32]),
                offset: i as u32 * 100,
                length: 100,
                raw_length: 8192,
                frame_raw: 0,
                skip: 0,
            };
            index.blobs.insert(id, loc);
            chunks.push(id);
        }
        (StreamManifest { name: "base.tar".into(), size: packs.len() as u64 * 8192, chunks }, index)
    }

    #[test]
    fn changed_pages_interleaved_with_old_ones_stay_in_few_runs() {
        // A later base backup: every 5th page is new (pack 2), the rest old (pack 1).
        let packs: Vec<u8> = (0..400).map(|i| if i % 5 == 0 { 2 } else { 1 }).collect();
        let (stream, index) = layout(&packs);
        let runs = plan("s", &stream, &index).unwrap();
        assert_eq!(runs.len(), 1, "one run per pack switch would be {} runs", 160);
        assert_eq!(runs[0].packs, vec![ChunkId([2; 32]), ChunkId([1; 32])]);
        assert_eq!(runs[0].raw, 400 * 8192);
        assert_eq!(runs[0].blobs.len(), 400);

        // More packs than a run may hold at once, and the byte limit: split, in order.
        let packs: Vec<u8> = (0..1000).map(|i| (i % 5) as u8).collect();
        let (stream, index) = layout(&packs);
        let runs = plan("s", &stream, &index).unwrap();
        assert!(runs.iter().all(|r| r.packs.len() <= RUN_PACKS && r.raw <= RUN_LIMIT));
        let order: Vec<ChunkId> = runs.iter().flat_map(|r| r.blobs.iter().map(|b| b.0)).collect();
        assert_eq!(order, stream.chunks);
        let (stream, index) = layout(&vec![7u8; 1500]);
        let runs = plan("s", &stream, &index).unwrap();
        assert_eq!(
            runs.iter().map(|r| r.raw).collect::<Vec<_>>(),
            vec![RUN_LIMIT, RUN_LIMIT, 1500 * 8192 - 2 * RUN_LIMIT]
        );
    }
}
