//! Snapshot manifests.

use serde::{Deserialize, Serialize};

use crate::crypto::ChunkId;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    /// 32 hex characters, random.
    pub id: String,
    /// The job or `--name` this snapshot belongs to.
    pub name: String,
    /// Source kind: stdin, command, postgres, redis, kubernetes, etcd.
    pub kind: String,
    #[serde(default)]
    pub tags: Vec<String>,
    pub hostname: String,
    pub started: chrono::DateTime<chrono::Utc>,
    pub finished: chrono::DateTime<chrono::Utc>,
    /// One or more byte streams (a database dump per database, a shard per stream…).
    pub streams: Vec<StreamManifest>,
    /// Source-specific metadata (server version, fingerprint, LSNs…).
    #[serde(default)]
    pub source: serde_json::Value,
    pub stats: BackupStats,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamManifest {
    pub name: String,
    pub size: u64,
    pub chunks: Vec<ChunkId>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BackupStats {
    pub bytes_read: u64,
    pub chunks: u64,
    pub new_chunks: u64,
    /// Plaintext bytes of chunks the repository did not have.
    pub bytes_new_raw: u64,
    /// Bytes of new pack objects written (compressed + encrypted).
    pub bytes_new_stored: u64,
    pub packs_written: u64,
    pub duration_secs: f64,
}

impl Manifest {
    pub fn short_id(&self) -> &str {
        &self.id[..8.min(self.id.len())]
    }
    pub fn total_size(&self) -> u64 {
        self.streams.iter().map(|s| s.size).sum()
    }
}

/// What writers (holding only the write credential) may know about a
/// snapshot: enough for listing, retention and status, no chunk list and no
/// source metadata. Stored encrypted to the index key in the snapshot
/// object's header; the full manifest follows, encrypted to the recipients.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub id: String,
    pub name: String,
    pub kind: String,
    #[serde(default)]
    pub tags: Vec<String>,
    pub hostname: String,
    pub started: chrono::DateTime<chrono::Utc>,
    pub finished: chrono::DateTime<chrono::Utc>,
    pub size: u64,
    pub stats: BackupStats,
    /// "logical" / "physical" for PostgreSQL, etc.
    #[serde(default)]
    pub mode: Option<String>,
}

impl SnapshotMeta {
    pub fn of(m: &Manifest) -> SnapshotMeta {
        SnapshotMeta {
            id: m.id.clone(),
            name: m.name.clone(),
            kind: m.kind.clone(),
            tags: m.tags.clone(),
            hostname: m.hostname.clone(),
            started: m.started,
            finished: m.finished,
            size: m.total_size(),
            stats: m.stats.clone(),
            mode: m.source.get("mode").and_then(|v| v.as_str()).map(str::to_string),
        }
    }
    pub fn short_id(&self) -> &str {
        &self.id[..8.min(self.id.len())]
    }
}
