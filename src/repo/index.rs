//! The chunk index: which pack holds each chunk, at which offset.

use serde::{Deserialize, Serialize};

use crate::crypto::{ChunkId, IdMap};

/// One index object (`index/<id>`): the packs one backup session wrote.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IndexFile {
    pub version: u32,
    pub packs: Vec<PackRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PackRecord {
    /// SHA-256 of the pack ciphertext (also its object name).
    pub id: ChunkId,
    /// Size of the stored (encrypted) object.
    pub size: u64,
    pub blobs: Vec<PackBlob>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct PackBlob {
    pub id: ChunkId,
    /// Offset of the compressed blob in the decrypted pack.
    pub offset: u32,
    /// Compressed length.
    pub length: u32,
    /// Length of the chunk plaintext.
    pub raw_length: u32,
    /// Format 2: non-zero when the blob shares one compressed frame
    /// (`offset`/`length`) with its neighbours; the frame decompresses to
    /// `frame_raw` bytes and the blob is `raw_length` of them from `skip`.
    /// Small chunks (a base backup's pages) compress far better together.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub frame_raw: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skip: u32,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// Where a chunk's bytes are: a pack and the blob's place in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    pub pack: ChunkId,
    pub offset: u32,
    pub length: u32,
    pub raw_length: u32,
    pub frame_raw: u32,
    pub skip: u32,
}

impl BlobLocation {
    pub fn of(pack: ChunkId, b: &PackBlob) -> BlobLocation {
        BlobLocation {
            pack,
            offset: b.offset,
            length: b.length,
            raw_length: b.raw_length,
            frame_raw: b.frame_raw,
            skip: b.skip,
        }
    }

    /// Compressed bytes attributable to this blob (a framed blob's share of
    /// its frame), for space accounting.
    pub fn stored_share(&self) -> u64 {
        if self.frame_raw == 0 {
            self.length as u64
        } else {
            self.length as u64 * self.raw_length as u64 / self.frame_raw as u64
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct Index {
    pub blobs: IdMap<BlobLocation>,
    /// Pack id -> (stored size, index object that lists it).
    pub packs: IdMap<(u64, String)>,
    /// Chunks listed at more than one place (two backups stored the same
    /// new chunk at once, or someone with the write credential added a
    /// second location). A restore hashes these rather than trust a pack.
    pub ambiguous: IdMap<()>,
}

impl Index {
    pub fn add_file(&mut self, source: &str, file: IndexFile) {
        self.blobs.reserve(file.packs.iter().map(|p| p.blobs.len()).sum());
        for p in file.packs {
            self.add_pack(source, &p);
        }
    }

    pub fn add_pack(&mut self, source: &str, p: &PackRecord) {
        self.packs.insert(p.id, (p.size, source.to_string()));
        for b in &p.blobs {
            // First writer wins; a chunk stored twice is remembered as such.
            let loc = BlobLocation::of(p.id, b);
            match self.blobs.entry(b.id) {
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(loc);
                }
                std::collections::hash_map::Entry::Occupied(e) => {
                    if *e.get() != loc {
                        self.ambiguous.insert(b.id, ());
                    }
                }
            }
        }
    }

    pub fn contains(&self, id: &ChunkId) -> bool {
        self.blobs.contains_key(id)
    }

    pub fn get(&self, id: &ChunkId) -> Option<&BlobLocation> {
        self.blobs.get(id)
    }
}
