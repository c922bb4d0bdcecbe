//! Restore: fetch packs in the order a stream needs them, decrypt,
//! decompress, verify every chunk's keyed hash, write in order.
//!
//! Runs of consecutive chunks from one pack are decoded concurrently
//! (`buffered`), output order is preserved, and at most a few packs are held
//! in memory at once.

use std::io::Write;
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt, Shared};
use futures::stream::{self, StreamExt};
use sha2::{Digest, Sha256};

use super::pack::decode_pack_blob;
use crate::crypto::ChunkId;
use crate::error::{Error, Result};
use crate::repo::{self, BlobLocation, Index, Keys, Repository, StreamManifest};

/// Largest plaintext one decode job produces; bounds memory per job.
const RUN_LIMIT: u64 = 8 * 1024 * 1024;
/// Decode jobs in flight.
const DEPTH: usize = 3;
/// Decrypted packs kept for reuse.
const CACHE_PACKS: usize = 3;

type PackFuture = Shared<BoxFuture<'static, std::result::Result<Arc<Vec<u8>>, Arc<Error>>>>;

/// A tiny LRU of decrypted packs, shared by concurrent decode jobs so a pack
/// is fetched once even when several jobs need it at the same time.
#[derive(Clone)]
pub struct PackCache {
    repo: Repository,
    keys: Keys,
    slots: Arc<Mutex<Vec<(ChunkId, PackFuture)>>>,
}

impl PackCache {
    pub fn new(repo: &Repository, keys: &Keys) -> Self {
        PackCache { repo: repo.clone(), keys: keys.clone(), slots: Arc::new(Mutex::new(Vec::new())) }
    }

    pub async fn get(&self, pack: ChunkId) -> Result<Arc<Vec<u8>>> {
        let fut = {
            let mut slots = self.slots.lock().map_err(|_| Error::Other("pack cache poisoned".into()))?;
            if let Some(pos) = slots.iter().position(|(id, _)| *id == pack) {
                let entry = slots.remove(pos);
                let f = entry.1.clone();
                slots.push(entry);
                f
            } else {
                let repo = self.repo.clone();
                let keys = self.keys.clone();
                let f = async move { fetch_pack(&repo, &keys, pack).await.map(Arc::new).map_err(Arc::new) }
                    .boxed()
                    .shared();
                slots.push((pack, f.clone()));
                if slots.len() > CACHE_PACKS {
                    drop(slots.remove(0));
                }
                f
            }
        };
        fut.await.map_err(|e| match &*e {
            Error::CorruptPack { pack, detail } => Error::CorruptPack { pack: pack.clone(), detail: detail.clone() },
            other => Error::Other(other.to_string()),
        })
    }
}

/// Download a pack, check its name (SHA-256 of the ciphertext), decrypt it.
pub async fn fetch_pack(repo: &Repository, keys: &Keys, pack: ChunkId) -> Result<Vec<u8>> {
    keys.identities("restoring data")?;
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
    tokio::task::spawn_blocking(move || {
        let digest: [u8; 32] = Sha256::digest(&ct).into();
        if digest != pack.0 {
            return Err(Error::CorruptPack {
                pack: pack.to_hex(),
                detail: "its content does not match its name (bit rot or tampering)".into(),
            });
        }
        let ids = keys2.identities("restoring data")?;
        ids.decrypt(&what, &ct).map_err(|e| match e {
            crate::crypto::CryptoError::Corrupt { detail, .. } => Error::CorruptPack { pack: pack.to_hex(), detail },
            other => other.into(),
        })
    })
    .await
    .map_err(|e| Error::Other(e.to_string()))?
}

struct Run {
    pack: ChunkId,
    blobs: Vec<(ChunkId, BlobLocation)>,
}

fn plan(snapshot: &str, stream: &StreamManifest, index: &Index) -> Result<Vec<Run>> {
    let mut runs: Vec<Run> = Vec::new();
    let mut run_bytes = 0u64;
    for id in &stream.chunks {
        let loc =
            *index.get(id).ok_or_else(|| Error::MissingChunk { snapshot: snapshot.to_string(), chunk: id.to_hex() })?;
        match runs.last_mut() {
            Some(r) if r.pack == loc.pack && run_bytes + loc.raw_length as u64 <= RUN_LIMIT => {
                r.blobs.push((*id, loc));
                run_bytes += loc.raw_length as u64;
            }
            _ => {
                runs.push(Run { pack: loc.pack, blobs: vec![(*id, loc)] });
                run_bytes = loc.raw_length as u64;
            }
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
    keys.identities("restoring data")?;
    let runs = plan(snapshot, stream, index)?;
    let cache = PackCache::new(repo, keys);
    let dedup = keys.dedup.clone();

    // The writer runs on its own thread: output may be a slow pipe or disk.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(2);
    let writer = tokio::task::spawn_blocking(move || {
        let mut out = out;
        let mut written = 0u64;
        while let Some(buf) = rx.blocking_recv() {
            out.write_all(&buf).map_err(Error::Output)?;
            written += buf.len() as u64;
        }
        out.flush().map_err(Error::Output)?;
        Ok::<u64, Error>(written)
    });

    let mut decoded = stream::iter(runs)
        .map(|run| {
            let cache = cache.clone();
            let dedup = dedup.clone();
            async move {
                let pack = cache.get(run.pack).await?;
                tokio::task::spawn_blocking(move || {
                    let total: usize = run.blobs.iter().map(|(_, l)| l.raw_length as usize).sum();
                    let mut buf = Vec::with_capacity(total);
                    for (id, loc) in &run.blobs {
                        let raw = decode_pack_blob(&pack, loc.offset, loc.length, loc.raw_length, id, &dedup)
                            .map_err(|detail| Error::CorruptPack { pack: run.pack.to_hex(), detail })?;
                        buf.extend_from_slice(&raw);
                    }
                    Ok::<_, Error>(buf)
                })
                .await
                .map_err(|e| Error::Other(e.to_string()))?
            }
        })
        .buffered(DEPTH);

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
    let written = written?;
    if written != stream.size {
        return Err(Error::Corrupt {
            what: format!("snapshot {snapshot} stream {}", stream.name),
            detail: format!("restored {written} bytes, the manifest says {}", stream.size),
        });
    }
    Ok(written)
}
