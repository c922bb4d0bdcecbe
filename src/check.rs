//! `lifeboat check`: structural checks, and with `read_data` a full
//! download, decrypt and re-hash of every chunk.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use futures::StreamExt;
use serde::Serialize;
use tracing::warn;

use crate::crypto::ChunkId;
use crate::error::Result;
use crate::pipeline::{BlobDecoder, fetch_pack};
use crate::repo::{self, Keys, Repository};

#[derive(Debug, Default, Serialize)]
pub struct CheckReport {
    pub snapshots: usize,
    pub packs: usize,
    pub chunks_checked: u64,
    /// Problems that make at least one snapshot unrestorable.
    pub errors: Vec<CheckProblem>,
    /// Harmless findings (e.g. packs left by an interrupted backup).
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct CheckProblem {
    pub what: String,
    pub detail: String,
    /// Snapshots (short ids, with names) that cannot be fully restored.
    pub affected_snapshots: Vec<String>,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }
}

pub async fn check(repo: &Repository, keys: &Keys, read_data: bool) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let index = repo.load_index(keys).await?;
    let manifests = repo.manifests(keys).await?;
    report.snapshots = manifests.len();

    // Which snapshots use each chunk, to name the victims of any damage.
    let mut users: HashMap<ChunkId, BTreeSet<String>> = HashMap::new();
    for m in &manifests {
        let label = format!("{} ({})", m.short_id(), m.name);
        for s in &m.streams {
            for c in &s.chunks {
                users.entry(*c).or_default().insert(label.clone());
            }
        }
    }
    let affected_by = |chunks: &mut dyn Iterator<Item = ChunkId>| -> Vec<String> {
        let mut set = BTreeSet::new();
        for c in chunks {
            if let Some(u) = users.get(&c) {
                set.extend(u.iter().cloned());
            }
        }
        set.into_iter().collect()
    };

    // 1. Every chunk a manifest names is in the index.
    let mut missing: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in &manifests {
        for s in &m.streams {
            for c in &s.chunks {
                if !index.contains(c) {
                    missing.entry(format!("{} ({})", m.short_id(), m.name)).or_default().push(c.to_hex());
                }
            }
        }
    }
    for (snap, chunks) in missing {
        report.errors.push(CheckProblem {
            what: format!("{} chunk(s) missing from the index", chunks.len()),
            detail: format!("first: {}", chunks[0]),
            affected_snapshots: vec![snap],
        });
    }

    // 2. Every indexed pack exists with the recorded size.
    let stored: HashMap<String, u64> =
        repo.backend.list("packs/").await?.into_iter().map(|o| (o.key, o.size)).collect();
    report.packs = index.packs.len();
    let mut pack_chunks: HashMap<ChunkId, Vec<ChunkId>> = HashMap::new();
    for (id, loc) in &index.blobs {
        pack_chunks.entry(loc.pack).or_default().push(*id);
    }
    for (pack, (size, _)) in &index.packs {
        let key = repo::pack_key(pack);
        let problem = match stored.get(&key) {
            None => Some("pack object is missing".to_string()),
            Some(s) if s != size => Some(format!("pack object has {s} bytes, the index says {size}")),
            _ => None,
        };
        if let Some(detail) = problem {
            let affected = affected_by(&mut pack_chunks.get(pack).cloned().unwrap_or_default().into_iter());
            report.errors.push(CheckProblem {
                what: format!("pack {}", pack.to_hex()),
                detail,
                affected_snapshots: affected,
            });
        }
    }
    let indexed: BTreeSet<String> = index.packs.keys().map(repo::pack_key).collect();
    let orphans = stored.keys().filter(|k| !indexed.contains(*k)).count();
    if orphans > 0 {
        report.warnings.push(format!(
            "{orphans} pack(s) are not referenced by any index (left by an interrupted backup); `lifeboat prune` removes them"
        ));
    }

    // 3. With --read-data: download, verify, decrypt and re-hash everything.
    if read_data {
        keys.identities("check --read-data")?;
        let mut packs: Vec<ChunkId> = index.packs.keys().copied().collect();
        packs.sort();
        let mut results = futures::stream::iter(packs.into_iter().map(|p| {
            let repo = repo.clone();
            let keys = keys.clone();
            let blobs: Vec<(ChunkId, repo::BlobLocation)> = pack_chunks
                .get(&p)
                .map(|v| v.iter().filter_map(|c| index.get(c).map(|l| (*c, *l))).collect())
                .unwrap_or_default();
            async move {
                let data = match fetch_pack(&repo, &keys, p).await {
                    Ok(d) => d,
                    Err(e) => return (p, blobs.len() as u64, vec![(None, e.to_string())]),
                };
                let key = keys.dedup.clone();
                let n = blobs.len() as u64;
                let bad = tokio::task::spawn_blocking(move || {
                    let mut bad = Vec::new();
                    let mut decoder = match BlobDecoder::new() {
                        Ok(d) => d,
                        Err(e) => return vec![(None, e)],
                    };
                    let mut blobs = blobs;
                    // In pack order, so a shared frame decompresses once.
                    blobs.sort_by_key(|(_, l)| (l.offset, l.skip));
                    let mut raw = Vec::new();
                    for (id, loc) in &blobs {
                        raw.resize(loc.raw_length as usize, 0);
                        if let Err(d) = decoder.decode_into(&data.data, loc, id, Some(&key), &mut raw) {
                            bad.push((Some(*id), d));
                        }
                    }
                    bad
                })
                .await
                .unwrap_or_else(|e| vec![(None, e.to_string())]);
                (p, n, bad)
            }
        }))
        .buffer_unordered(2);

        while let Some((pack, n, bad)) = results.next().await {
            report.chunks_checked += n;
            if bad.is_empty() {
                continue;
            }
            let whole_pack = bad.iter().any(|(c, _)| c.is_none());
            let affected = if whole_pack {
                affected_by(&mut pack_chunks.get(&pack).cloned().unwrap_or_default().into_iter())
            } else {
                affected_by(&mut bad.iter().filter_map(|(c, _)| *c))
            };
            warn!(pack = %pack.to_hex(), "damaged pack");
            report.errors.push(CheckProblem {
                what: format!("pack {}", pack.to_hex()),
                detail: bad[0].1.clone(),
                affected_snapshots: affected,
            });
        }
    }
    Ok(report)
}
