//! `lifeboat forget` (retention) and `lifeboat prune` (reclaim space).
//!
//! Forget removes snapshot manifests according to the policy's retention
//! rules; it needs only the write credential (it reads snapshot summaries).
//! Prune deletes packs no snapshot references. It holds the prune lock (see
//! [`crate::repo::lock`]) so it never runs while a backup that might reuse
//! those packs is in flight, leaves unindexed packs younger than a grace
//! period alone, writes the new index before deleting the old one, and never
//! tries to delete an object still under Object Lock retention.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::crypto::ChunkId;
use crate::error::Result;
use crate::repo::lock::{Lock, LockKind};
use crate::repo::{self, IndexFile, Keys, Repository};
use crate::retention::{self, Decision, RetentionRules, SnapshotInfo};

#[derive(Debug, Serialize)]
pub struct ForgetReport {
    pub job: String,
    pub decisions: Vec<Decision>,
    pub removed: Vec<String>,
    /// Snapshots retention would remove but Object Lock still protects.
    pub locked: Vec<String>,
}

/// Apply `groups` (tag filter → rules) to the snapshots named `job`.
pub async fn forget(
    repo: &Repository,
    keys: &Keys,
    job: &str,
    groups: &[(Option<String>, RetentionRules)],
    now: chrono::DateTime<chrono::Utc>,
    dry_run: bool,
) -> Result<ForgetReport> {
    let metas: Vec<repo::SnapshotMeta> =
        repo.snapshot_metas(keys).await?.into_iter().filter(|m| m.name == job).collect();
    let infos: Vec<SnapshotInfo> =
        metas.iter().map(|m| SnapshotInfo { id: m.id.clone(), time: m.started, tags: m.tags.clone() }).collect();
    let decisions = retention::plan_grouped(&infos, groups, now);
    let mut removed = Vec::new();
    let mut locked = Vec::new();
    for d in decisions.iter().filter(|d| !d.keep) {
        if dry_run {
            continue;
        }
        if repo.backend.locked_until(&format!("snapshots/{}", d.id)).await?.is_some() {
            locked.push(d.id.clone());
            continue;
        }
        repo.forget(&d.id).await?;
        removed.push(d.id.clone());
    }
    Ok(ForgetReport { job: job.to_string(), decisions, removed, locked })
}

#[derive(Debug, Default, Serialize)]
pub struct PruneReport {
    pub packs_total: usize,
    pub packs_deleted: usize,
    pub bytes_deleted: u64,
    pub unindexed_packs_deleted: usize,
    /// Packs some live snapshot still partly uses (not repacked).
    pub packs_partly_used: usize,
    pub bytes_reclaimable_by_repack: u64,
    pub packs_locked: usize,
    pub index_files_rewritten: usize,
    /// WAL retention: archived WAL files older than the oldest base backup
    /// kept for their archive (see [`crate::source::wal::expired`]).
    pub wal_files_deleted: usize,
    pub wal_bytes_deleted: u64,
    /// WAL files retention would delete but Object Lock still protects.
    pub wal_files_locked: usize,
    /// WAL archives left whole: no physical base backup of theirs is kept
    /// (or one does not record its start), so nothing proves what is unneeded.
    pub wal_archives_without_base_backup: Vec<String>,
    pub dry_run: bool,
}

/// Delete unreferenced packs. `grace` protects unindexed packs written by
/// a backup that may still be running on a host whose lock we cannot see.
pub async fn prune(repo: &Repository, keys: &Keys, grace: chrono::Duration, dry_run: bool) -> Result<PruneReport> {
    keys.identities("prune")?;
    let lock = Lock::acquire(repo, LockKind::Prune).await?;
    let result = prune_locked(repo, keys, grace, dry_run).await;
    lock.release().await?;
    result
}

async fn prune_locked(repo: &Repository, keys: &Keys, grace: chrono::Duration, dry_run: bool) -> Result<PruneReport> {
    let mut report = PruneReport { dry_run, ..Default::default() };
    // Everything any snapshot references.
    let manifests = repo.manifests(keys).await?;
    let mut used: HashSet<ChunkId> = HashSet::new();
    for m in &manifests {
        for s in &m.streams {
            used.extend(s.chunks.iter().copied());
        }
    }
    // Index files, one by one (we may rewrite some).
    let index_objs = repo.backend.list("index/").await?;
    let mut files: Vec<(String, IndexFile)> = Vec::new();
    for o in &index_objs {
        let ct = repo.backend.get(&o.key).await?;
        let pt = crate::crypto::decrypt_one(&keys.index_identity, &o.key, &ct)?;
        let f: IndexFile = repo::decode_json(&o.key, &pt)?;
        files.push((o.key.clone(), f));
    }
    let mut indexed: HashSet<ChunkId> = HashSet::new();
    let mut dead: HashSet<ChunkId> = HashSet::new();
    for (_, f) in &files {
        for p in &f.packs {
            report.packs_total += 1;
            indexed.insert(p.id);
            let live = p.blobs.iter().filter(|b| used.contains(&b.id)).count();
            if live == 0 {
                dead.insert(p.id);
            } else if live < p.blobs.len() {
                report.packs_partly_used += 1;
                report.bytes_reclaimable_by_repack += p
                    .blobs
                    .iter()
                    .filter(|b| !used.contains(&b.id))
                    .map(|b| repo::BlobLocation::of(p.id, b).stored_share())
                    .sum::<u64>();
            }
        }
    }
    // Never delete what Object Lock still protects.
    let mut locked: HashSet<ChunkId> = HashSet::new();
    for p in &dead {
        if repo.backend.locked_until(&repo::pack_key(p)).await?.is_some() {
            locked.insert(*p);
        }
    }
    report.packs_locked = locked.len();
    let deletable: HashSet<ChunkId> = dead.difference(&locked).copied().collect();

    // Unindexed packs older than the grace period: leftovers of crashed backups.
    let now = chrono::Utc::now();
    let stored = repo.backend.list("packs/").await?;
    let sizes: HashMap<String, u64> = stored.iter().map(|o| (o.key.clone(), o.size)).collect();
    let mut orphans = Vec::new();
    for o in &stored {
        let Some(id) = o.key.rsplit('/').next().and_then(ChunkId::from_hex) else { continue };
        if indexed.contains(&id) {
            continue;
        }
        if o.modified.is_some_and(|m| now - m > grace) && repo.backend.locked_until(&o.key).await?.is_none() {
            orphans.push(o.key.clone());
        }
    }
    report.unindexed_packs_deleted = orphans.len();
    let wal = expired_wal(repo, &manifests, &mut report).await?;
    if dry_run {
        report.packs_deleted = deletable.len();
        report.bytes_deleted = deletable.iter().filter_map(|p| sizes.get(&repo::pack_key(p))).sum();
        return Ok(report);
    }

    // 1. New index files first (so a crash leaves duplicates, never gaps)…
    for (key, f) in &files {
        if !f.packs.iter().any(|p| deletable.contains(&p.id)) {
            continue;
        }
        let kept: Vec<_> = f.packs.iter().filter(|p| !deletable.contains(&p.id)).cloned().collect();
        if !kept.is_empty() {
            repo.write_index(keys, &IndexFile { version: 1, packs: kept }).await?;
        }
        repo.backend.delete(key).await?;
        report.index_files_rewritten += 1;
    }
    // 2. …then the packs.
    for p in &deletable {
        let key = repo::pack_key(p);
        report.bytes_deleted += sizes.get(&key).copied().unwrap_or(0);
        repo.backend.delete(&key).await?;
        report.packs_deleted += 1;
    }
    for key in &orphans {
        repo.backend.delete(key).await?;
    }
    // 3. WAL no kept base backup can replay (oldest first, so a crash
    //    midway leaves a shorter archive, never one with a hole).
    for key in &wal {
        repo.backend.delete(key).await?;
    }
    repo::lock::clear_stale(repo).await?;
    Ok(report)
}

/// The WAL objects that retention removes, oldest first; fills the WAL
/// fields of `report` (counts as if deleted, as a dry run reports them).
async fn expired_wal(repo: &Repository, manifests: &[repo::Manifest], report: &mut PruneReport) -> Result<Vec<String>> {
    use crate::source::wal;
    // Oldest kept start segment per archive; None when some physical
    // backup of the archive does not know its start.
    let mut oldest: HashMap<String, Option<String>> = HashMap::new();
    for m in manifests {
        let src = &m.source;
        if m.kind != "postgres" || src["mode"] != "physical" {
            continue;
        }
        let Some(archive) = src["wal_archive"].as_str() else { continue };
        let start = src["start_segment"].as_str().filter(|s| s.len() == 24).map(str::to_string);
        let entry = oldest.entry(archive.to_string()).or_insert_with(|| start.clone());
        *entry = match (entry.take(), start) {
            (Some(a), Some(b)) => Some(if b[8..] < a[8..] { b } else { a }),
            _ => None,
        };
    }
    let mut doomed: Vec<(String, String, u64)> = Vec::new(); // (position, key, size)
    let mut archives: Vec<String> = Vec::new();
    for o in repo.backend.list("wal/").await? {
        let Some((archive, name)) = o.key.strip_prefix("wal/").and_then(|k| k.split_once('/')) else { continue };
        match oldest.get(archive) {
            Some(Some(start)) if wal::expired(name, start) => {
                if repo.backend.locked_until(&o.key).await?.is_some() {
                    report.wal_files_locked += 1;
                } else {
                    doomed.push((name[8..24].to_string(), o.key.clone(), o.size));
                }
            }
            Some(Some(_)) => {}
            _ => {
                if !archives.iter().any(|a| a == archive) {
                    archives.push(archive.to_string());
                }
            }
        }
    }
    doomed.sort();
    archives.sort();
    report.wal_archives_without_base_backup = archives;
    report.wal_files_deleted = doomed.len();
    report.wal_bytes_deleted = doomed.iter().map(|d| d.2).sum();
    Ok(doomed.into_iter().map(|d| d.1).collect())
}
