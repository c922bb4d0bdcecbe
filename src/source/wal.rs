//! PostgreSQL WAL archive: `wal push` (archive_command) and `wal fetch`
//! (restore_command), plus the continuity check a point-in-time restore
//! runs before it starts.
//!
//! A WAL object is `wal/<cluster>/<file name>`:
//! one plaintext JSON header line (file name, size, keyed HMAC of the
//! content, push time), then `age(zstd(content))`. The keyed HMAC lets a
//! writer that cannot decrypt tell an identical re-push (a no-op) from a
//! different file under the same name (refused), and tells nobody else
//! anything about the content.

use std::path::Path;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::crypto::{self, ChunkId};
use crate::error::{Error, Result};
use crate::repo::{Keys, Repository};
use crate::storage::StorageError;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WalHeader {
    pub version: u32,
    pub name: String,
    pub size: u64,
    pub hmac: ChunkId,
    pub pushed_at: chrono::DateTime<chrono::Utc>,
}

/// What `wal push` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    Stored,
    AlreadyArchived,
}

/// Segment (24 hex), `.partial` segment, timeline `.history`, or `.backup` label.
pub fn valid_wal_name(name: &str) -> bool {
    let hex = |s: &str, n: usize| s.len() == n && s.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase());
    if let Some(base) = name.strip_suffix(".partial") {
        return hex(base, 24);
    }
    if let Some(base) = name.strip_suffix(".history") {
        return hex(base, 8);
    }
    if let Some((seg, rest)) = name.split_once('.') {
        // 000000010000000000000002.00000028.backup
        return hex(seg, 24) && rest.ends_with(".backup") && hex(&rest[..rest.len() - 7], 8);
    }
    hex(name, 24)
}

fn wal_key(cluster: &str, name: &str) -> String {
    format!("wal/{cluster}/{name}")
}

pub fn valid_cluster(cluster: &str) -> Result<()> {
    if cluster.is_empty() || !cluster.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.') {
        return Err(Error::Other(format!("invalid WAL archive name {cluster:?} (letters, digits, - _ .)")));
    }
    Ok(())
}

/// Archive one WAL file. Returns only once the object is durable.
pub async fn push(repo: &Repository, keys: &Keys, cluster: &str, path: &Path) -> Result<PushOutcome> {
    valid_cluster(cluster)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    if !valid_wal_name(&name) {
        return Err(Error::Other(format!("{name:?} is not a WAL file name (segment, .partial, .history or .backup)")));
    }
    let data = std::fs::read(path).map_err(|e| Error::Other(format!("cannot read {}: {e}", path.display())))?;
    let hmac = keys.dedup.chunk_id(&data);
    let header =
        WalHeader { version: 1, name: name.clone(), size: data.len() as u64, hmac, pushed_at: crate::clock::now() };
    let recipients = keys.recipients.clone();
    let body = tokio::task::spawn_blocking(move || {
        let z = zstd::bulk::compress(&data, 3).map_err(|e| Error::Other(format!("compress: {e}")))?;
        Ok::<_, Error>(crypto::encrypt(&recipients, &z)?)
    })
    .await
    .map_err(|e| Error::Other(e.to_string()))??;
    let mut obj = serde_json::to_vec(&header).map_err(|e| Error::Other(e.to_string()))?;
    obj.push(b'\n');
    obj.extend_from_slice(&body);
    let key = wal_key(cluster, &name);
    match repo.backend.put_new(&key, Bytes::from(obj)).await {
        Ok(()) => Ok(PushOutcome::Stored),
        Err(StorageError::AlreadyExists { .. }) => {
            let existing = read_header(repo, &key).await?;
            if existing.hmac == hmac && existing.size == header.size {
                Ok(PushOutcome::AlreadyArchived)
            } else {
                Err(Error::Other(format!(
                    "a different {name} is already archived in {} (archived {}); refusing to replace it. Two servers may be archiving into the same WAL archive name {cluster:?}: give each its own --name",
                    repo.url, existing.pushed_at
                )))
            }
        }
        Err(e) => Err(e.into()),
    }
}

async fn read_header(repo: &Repository, key: &str) -> Result<WalHeader> {
    let head = repo.backend.get_range(key, 0, 1024).await?;
    let end = head
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| Error::Corrupt { what: key.into(), detail: "no header line".into() })?;
    serde_json::from_slice(&head[..end]).map_err(|e| Error::Corrupt { what: key.into(), detail: e.to_string() })
}

/// Restore one WAL file to `dest` (written to a temp name, then renamed).
pub async fn fetch(repo: &Repository, keys: &Keys, cluster: &str, name: &str, dest: &Path) -> Result<()> {
    valid_cluster(cluster)?;
    let ids = keys.identities("wal fetch")?;
    let key = wal_key(cluster, name);
    let obj = match repo.backend.get(&key).await {
        Ok(o) => o,
        Err(StorageError::NotFound { .. }) => {
            return Err(Error::Other(format!("WAL file {name} is not in the archive {cluster:?} of {}", repo.url)));
        }
        Err(e) => return Err(e.into()),
    };
    let end = obj
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| Error::Corrupt { what: key.clone(), detail: "no header line".into() })?;
    let header: WalHeader =
        serde_json::from_slice(&obj[..end]).map_err(|e| Error::Corrupt { what: key.clone(), detail: e.to_string() })?;
    let z = ids.decrypt(&key, &obj[end + 1..])?;
    let data = zstd::bulk::decompress(&z, header.size as usize)
        .map_err(|e| Error::Corrupt { what: key.clone(), detail: e.to_string() })?;
    if keys.dedup.chunk_id(&data) != header.hmac {
        return Err(Error::Corrupt { what: key, detail: "content does not match its recorded hash".into() });
    }
    let tmp = dest.with_extension("lifeboat-tmp");
    std::fs::write(&tmp, &data).map_err(Error::Output)?;
    std::fs::rename(&tmp, dest).map_err(Error::Output)?;
    Ok(())
}

/// Every archived file of a cluster with its header, in name order.
pub async fn list(repo: &Repository, cluster: &str) -> Result<Vec<WalHeader>> {
    let prefix = format!("wal/{cluster}/");
    let mut keys: Vec<String> = repo.backend.list(&prefix).await?.into_iter().map(|o| o.key).collect();
    keys.sort();
    let mut out = crate::repo::load_concurrently(keys, |k| {
        let repo = repo.clone();
        async move { read_header(&repo, &k).await }
    })
    .await?;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The segment after `name` (24 hex: timeline, log, seg).
pub fn next_segment(name: &str, segment_size: u64) -> Option<String> {
    if name.len() != 24 {
        return None;
    }
    let tli = u32::from_str_radix(&name[..8], 16).ok()?;
    let log = u32::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u32::from_str_radix(&name[16..24], 16).ok()?;
    let per_log = (0x1_0000_0000u64 / segment_size.max(1)) as u32;
    let (log, seg) = if seg + 1 >= per_log { (log + 1, 0) } else { (log, seg + 1) };
    Some(format!("{tli:08X}{log:08X}{seg:08X}"))
}

/// The segment holding `lsn` on `timeline`.
pub fn segment_of(lsn: u64, timeline: u32, segment_size: u64) -> String {
    let segno = lsn / segment_size;
    let per_log = 0x1_0000_0000u64 / segment_size;
    format!("{timeline:08X}{:08X}{:08X}", segno / per_log, segno % per_log)
}

/// `0/2000028` → 0x2000028.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// How far recovery can get from `start` with the archived segments.
#[derive(Debug, Clone, Serialize)]
pub struct Reach {
    /// Last segment in an unbroken run from the start segment.
    pub last_segment: Option<String>,
    /// When it was archived: the newest point recovery can reach (approximately).
    pub last_time: Option<chrono::DateTime<chrono::Utc>>,
    /// First missing segment when later ones exist (a hole in the archive).
    pub gap: Option<String>,
}

pub fn reach(archived: &[WalHeader], start: &str, segment_size: u64) -> Reach {
    let by_name: std::collections::HashMap<&str, &WalHeader> = archived.iter().map(|h| (h.name.as_str(), h)).collect();
    let timeline = &start[..8.min(start.len())];
    let mut cur = start.to_string();
    let mut last: Option<&WalHeader> = None;
    while let Some(h) = by_name.get(cur.as_str()) {
        last = Some(h);
        match next_segment(&cur, segment_size) {
            Some(n) => cur = n,
            None => break,
        }
    }
    // A hole: something later on the same timeline exists beyond the run.
    let gap = archived
        .iter()
        .any(|h| h.name.len() == 24 && h.name.starts_with(timeline) && h.name.as_str() > cur.as_str())
        .then(|| cur.clone());
    Reach { last_segment: last.map(|h| h.name.clone()), last_time: last.map(|h| h.pushed_at), gap }
}

/// WAL retention: is archived file `name` older than `oldest_start`, the
/// start segment of the oldest base backup kept for its archive?
///
/// Timeline history files are always kept (small, and a restore on any
/// timeline may need them). Segments, `.partial` segments and `.backup`
/// labels compare by position (log and segment number, the last 16 hex
/// digits) whatever their timeline, so a segment of an older timeline at or
/// after the oldest backup's start stays: the backup may have been taken on
/// that timeline before a promotion. An unparsable name is kept.
pub fn expired(name: &str, oldest_start: &str) -> bool {
    if name.ends_with(".history") || !valid_wal_name(name) || oldest_start.len() != 24 || !valid_wal_name(oldest_start)
    {
        return false;
    }
    name[8..24] < oldest_start[8..24]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_segments() {
        assert!(valid_wal_name("000000010000000000000002"));
        assert!(valid_wal_name("000000010000000000000002.partial"));
        assert!(valid_wal_name("00000002.history"));
        assert!(valid_wal_name("000000010000000000000002.00000028.backup"));
        assert!(!valid_wal_name("00000001000000000000000g"));
        assert!(!valid_wal_name("../etc/passwd"));
        let s = 16 << 20;
        assert_eq!(next_segment("0000000100000000000000FF", s).unwrap(), "000000010000000100000000");
        assert_eq!(segment_of(0x2000028, 1, s), "000000010000000000000002");
        assert_eq!(parse_lsn("1/2000028"), Some(0x1_0200_0028));
    }

    #[test]
    fn wal_retention_keeps_everything_from_the_oldest_base_backup_on() {
        let start = "000000020000000100000010";
        // Before the start, on any timeline: gone.
        assert!(expired("00000002000000010000000F", start));
        assert!(expired("00000001000000000000FFFF", start));
        assert!(expired("00000001000000010000000F.partial", start));
        assert!(expired("00000002000000010000000F.00000028.backup", start));
        // The start segment, later ones, older timelines at or past it, histories: kept.
        for keep in [
            "000000020000000100000010",
            "000000020000000100000010.00000028.backup",
            "000000010000000100000010",
            "000000010000000100000011.partial",
            "000000020000000200000000",
            "00000002.history",
            "00000001.history",
            "not-a-wal-name",
        ] {
            assert!(!expired(keep, start), "{keep}");
        }
        // No known start (a backup without one): nothing expires.
        assert!(!expired("000000010000000000000001", ""));
    }
}
