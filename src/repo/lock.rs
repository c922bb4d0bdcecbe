//! Repository locks: backups and prune exclude each other.
//!
//! Object stores have no atomic lock, but they have create-only writes and
//! strong read-after-write listing. Each party **creates** its lock object
//! first and **then** lists `locks/`: of two parties racing, at least one sees
//! the other and backs off (both may, and then both retry), so a prune never
//! deletes data a running backup is about to reference.
//!
//! A lock's key carries its creation time (`locks/<kind>-<session>-<unix ms>`);
//! long backups refresh it by writing a newer one. A lock not refreshed for
//! [`STALE_AFTER`] is stale (its owner crashed) and ignored.

use std::time::Duration;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::repo::Repository;

pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    Backup,
    Prune,
}

impl LockKind {
    fn as_str(self) -> &'static str {
        match self {
            LockKind::Backup => "backup",
            LockKind::Prune => "prune",
        }
    }
}

/// A held lock; call [`Lock::release`] when done (a dropped lock goes stale).
#[derive(Debug)]
pub struct Lock {
    repo: Repository,
    key: String,
}

fn parse(key: &str) -> Option<(String, String, i64)> {
    let name = key.strip_prefix("locks/")?;
    let mut parts = name.rsplitn(3, '-');
    let ms = parts.next()?.parse().ok()?;
    let session = parts.next()?.to_string();
    let kind = parts.next()?.to_string();
    Some((kind, session, ms))
}

impl Lock {
    /// Take a lock of `kind`; fails if the other kind holds a fresh lock.
    pub async fn acquire(repo: &Repository, kind: LockKind) -> Result<Lock> {
        let session = hex::encode(rand::random::<[u8; 6]>());
        let key = format!("locks/{}-{session}-{}", kind.as_str(), chrono::Utc::now().timestamp_millis());
        repo.backend.put_new(&key, Bytes::from_static(b"{}")).await?;
        let lock = Lock { repo: repo.clone(), key };
        let now = chrono::Utc::now().timestamp_millis();
        let other = match kind {
            LockKind::Backup => "prune",
            LockKind::Prune => "backup",
        };
        let mut fresh_others = 0;
        let mut oldest = now;
        for o in repo.backend.list("locks/").await? {
            if let Some((k, s, ms)) = parse(&o.key)
                && k == other
                && now - ms < STALE_AFTER.as_millis() as i64
                && s != session
            {
                fresh_others += 1;
                oldest = oldest.min(ms);
            }
        }
        if fresh_others > 0 {
            lock.release().await?;
            let since = chrono::DateTime::from_timestamp_millis(oldest).map(|t| t.to_rfc3339()).unwrap_or_default();
            return Err(Error::Locked {
                what: match kind {
                    LockKind::Backup => {
                        format!("a prune is running on {} (since {since}); the backup waits for it", repo.url)
                    }
                    LockKind::Prune => format!(
                        "{fresh_others} backup(s) are running on {} (oldest since {since}); prune later",
                        repo.url
                    ),
                },
            });
        }
        Ok(lock)
    }

    /// Take a backup lock, waiting up to `wait` for a running prune to finish.
    pub async fn acquire_waiting(repo: &Repository, kind: LockKind, wait: Duration) -> Result<Lock> {
        let deadline = std::time::Instant::now() + wait;
        let mut delay = Duration::from_millis(200);
        loop {
            match Lock::acquire(repo, kind).await {
                Err(Error::Locked { what }) if std::time::Instant::now() < deadline => {
                    tracing::info!("{what}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                other => return other,
            }
        }
    }

    /// Replace the lock with a newer one (long-running holders).
    pub async fn refresh(&mut self) -> Result<()> {
        let Some((kind, session, _)) = parse(&self.key) else { return Ok(()) };
        let key = format!("locks/{kind}-{session}-{}", chrono::Utc::now().timestamp_millis());
        self.repo.backend.put_new(&key, Bytes::from_static(b"{}")).await?;
        let old = std::mem::replace(&mut self.key, key);
        self.repo.backend.delete(&old).await?;
        Ok(())
    }

    pub async fn release(self) -> Result<()> {
        Ok(self.repo.backend.delete(&self.key).await?)
    }
}

/// Remove locks that went stale (crashed owners).
pub async fn clear_stale(repo: &Repository) -> Result<usize> {
    let now = chrono::Utc::now().timestamp_millis();
    let mut n = 0;
    for o in repo.backend.list("locks/").await? {
        if parse(&o.key).is_some_and(|(_, _, ms)| now - ms >= STALE_AFTER.as_millis() as i64) {
            repo.backend.delete(&o.key).await?;
            n += 1;
        }
    }
    Ok(n)
}
