//! The wall clock lifeboat stamps snapshots, WAL and records with.
//!
//! `LIFEBOAT_CLOCK=2026-10-01T00:00:00Z` starts a simulated clock at that
//! instant that then runs at real speed. It exists so that a month of runs,
//! verifications and drills can be rehearsed in minutes (the report tests do
//! this) and so a drill can be replayed "as of" a past incident. Locks,
//! Object Lock, TTLs and replication lag keep using the real clock: they are
//! compared with times the storage or the database server stamps.

use std::sync::OnceLock;
use std::time::Instant;

use chrono::{DateTime, Utc};

static START: OnceLock<Option<(DateTime<Utc>, Instant)>> = OnceLock::new();

/// Now, on the simulated clock when `LIFEBOAT_CLOCK` is set.
pub fn now() -> DateTime<Utc> {
    let start = START.get_or_init(|| {
        let v = std::env::var("LIFEBOAT_CLOCK").ok()?;
        let t = DateTime::parse_from_rfc3339(v.trim()).ok()?.with_timezone(&Utc);
        Some((t, Instant::now()))
    });
    match start {
        Some((t, at)) => *t + chrono::Duration::from_std(at.elapsed()).unwrap_or_default(),
        None => Utc::now(),
    }
}

/// Whether a simulated clock is in use (shown in records so nobody mistakes a rehearsal for the real thing).
pub fn simulated() -> bool {
    now();
    matches!(START.get(), Some(Some(_)))
}
