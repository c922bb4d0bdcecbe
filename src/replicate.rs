//! Cross-region replication: copy what a replica lacks.
//!
//! Replication needs no key at all: it copies ciphertext. Order matters so
//! that a replica never shows a snapshot it cannot restore:
//!
//! 1. list the primary's `snapshots/` **first** — anything they reference was
//!    durable before they were written, so it shows up in the listings that follow;
//! 2. copy `keys/`, `config`, `packs/`, `index/`, `wal/`, `records/`;
//! 3. copy the listed `snapshots/` last.
//!
//! Objects are immutable and compared by name and size, so an interrupted
//! run is resumed by running again: only what is missing is copied. Every
//! copy is verified: packs by their name (the SHA-256 of their bytes) before
//! upload, and every object by reading the replica's copy back and comparing
//! its SHA-256 with the source's.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::repo::Repository;
use crate::storage::{self, Backend, ObjectMeta, RepoUrl, StorageError};

#[derive(Debug, Clone, Serialize, Default)]
pub struct ReplicationReport {
    pub replica: String,
    pub objects_copied: u64,
    pub bytes_copied: u64,
    pub objects_present: u64,
    pub snapshots_copied: u64,
    /// Before this run: age of the oldest primary snapshot the replica lacked (0 if none).
    pub lag_before_secs: f64,
    pub seconds: f64,
}

const DATA_PREFIXES: [&str; 6] = ["keys/", "config", "packs/", "index/", "wal/", "records/"];

/// Copy everything `replica` lacks from `primary`.
pub async fn replicate(primary: &Repository, replica_url: &RepoUrl, replica_name: &str) -> Result<ReplicationReport> {
    let started = std::time::Instant::now();
    let dst = storage::open(replica_url).await?;
    // A replica must be this repository or empty.
    match dst.get("config").await {
        Ok(raw) => {
            let v: serde_json::Value = serde_json::from_slice(&raw).unwrap_or_default();
            if v["id"].as_str() != Some(primary.config.id.as_str()) {
                return Err(Error::Other(format!(
                    "replica {replica_name} ({}) holds another repository ({}); refusing to mix them",
                    dst.location(),
                    v["id"].as_str().unwrap_or("unknown")
                )));
            }
        }
        Err(StorageError::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let src = primary.backend.clone();
    // 1. Snapshots first (see the module comment).
    let snapshots = src.list("snapshots/").await?;
    let mut data = Vec::new();
    for p in DATA_PREFIXES {
        data.extend(src.list(p).await?.into_iter().filter(|o| p != "config" || o.key == "config"));
    }
    let have: HashMap<String, u64> = {
        let mut m = HashMap::new();
        for p in DATA_PREFIXES.iter().chain(std::iter::once(&"snapshots/")) {
            for o in dst.list(p).await? {
                m.insert(o.key, o.size);
            }
        }
        m
    };
    let now = chrono::Utc::now();
    let missing_snaps: Vec<ObjectMeta> = snapshots.into_iter().filter(|o| have.get(&o.key) != Some(&o.size)).collect();
    let lag = missing_snaps
        .iter()
        .filter_map(|o| o.modified)
        .map(|t| (now - t).num_milliseconds() as f64 / 1000.0)
        .fold(0.0, f64::max);
    let missing_data: Vec<ObjectMeta> = data.into_iter().filter(|o| have.get(&o.key) != Some(&o.size)).collect();

    let copied = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let present = (have.len()) as u64;
    // 2. Data, with bounded parallelism; config before snapshots by construction.
    copy_all(&src, &dst, missing_data, &copied, &bytes).await?;
    // 3. Manifests last.
    let n_snaps = missing_snaps.len() as u64;
    copy_all(&src, &dst, missing_snaps, &copied, &bytes).await?;
    let report = ReplicationReport {
        replica: replica_name.to_string(),
        objects_copied: copied.load(Ordering::Relaxed),
        bytes_copied: bytes.load(Ordering::Relaxed),
        objects_present: present,
        snapshots_copied: n_snaps,
        lag_before_secs: lag,
        seconds: started.elapsed().as_secs_f64(),
    };
    info!(replica = replica_name, copied = report.objects_copied, bytes = report.bytes_copied, "replication done");
    Ok(report)
}

async fn copy_all(
    src: &Arc<dyn Backend>,
    dst: &Arc<dyn Backend>,
    objects: Vec<ObjectMeta>,
    copied: &Arc<AtomicU64>,
    bytes: &Arc<AtomicU64>,
) -> Result<()> {
    use futures::StreamExt;
    let mut results = futures::stream::iter(objects.into_iter().map(|o| {
        let (src, dst, copied, bytes) = (src.clone(), dst.clone(), copied.clone(), bytes.clone());
        async move {
            let n = copy_one(&src, &dst, &o.key).await?;
            if n > 0 {
                copied.fetch_add(1, Ordering::Relaxed);
                bytes.fetch_add(n, Ordering::Relaxed);
            }
            Ok::<_, Error>(())
        }
    }))
    .buffer_unordered(4);
    while let Some(r) = results.next().await {
        r?;
    }
    Ok(())
}

/// Copy one object; returns the bytes copied (0 when skipped).
async fn copy_one(src: &Arc<dyn Backend>, dst: &Arc<dyn Backend>, key: &str) -> Result<u64> {
    let data = match src.get(key).await {
        Ok(d) => d,
        // Deleted by a prune since we listed it: nothing to copy.
        Err(StorageError::NotFound { .. }) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let digest: [u8; 32] = Sha256::digest(&data).into();
    if let Some(name) = key.strip_prefix("packs/").and_then(|r| r.rsplit('/').next())
        && hex::encode(digest) != name
    {
        return Err(Error::CorruptPack {
                pack: name.to_string(),
                detail: "the primary's copy does not match its name; not replicating it (run `lifeboat check --read-data` on the primary)".into(),
            });
    }
    let len = data.len() as u64;
    match dst.put_new(key, Bytes::clone(&data)).await {
        Ok(()) => {}
        Err(StorageError::AlreadyExists { .. }) => {
            // A partial earlier run, or a concurrent replicator: verify below.
            warn!(key, "already on the replica; verifying it");
        }
        Err(e) => return Err(e.into()),
    }
    let back = dst.get(key).await?;
    let back_digest: [u8; 32] = Sha256::digest(&back).into();
    if back_digest != digest {
        return Err(Error::Other(format!(
            "the replica's copy of {key} differs from the primary's (different content under the same name); investigate before trusting this replica"
        )));
    }
    Ok(len)
}
