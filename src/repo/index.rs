//! The chunk index: which pack holds each chunk, at which offset.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::crypto::ChunkId;

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    pub pack: ChunkId,
    pub offset: u32,
    pub length: u32,
    pub raw_length: u32,
}

#[derive(Debug, Default, Clone)]
pub struct Index {
    pub blobs: HashMap<ChunkId, BlobLocation>,
    /// Pack id -> (stored size, index object that lists it).
    pub packs: HashMap<ChunkId, (u64, String)>,
}

impl Index {
    pub fn add_file(&mut self, source: &str, file: IndexFile) {
        for p in file.packs {
            self.add_pack(source, &p);
        }
    }

    pub fn add_pack(&mut self, source: &str, p: &PackRecord) {
        self.packs.insert(p.id, (p.size, source.to_string()));
        for b in &p.blobs {
            // First writer wins; duplicates across packs are harmless.
            self.blobs.entry(b.id).or_insert(BlobLocation {
                pack: p.id,
                offset: b.offset,
                length: b.length,
                raw_length: b.raw_length,
            });
        }
    }

    pub fn contains(&self, id: &ChunkId) -> bool {
        self.blobs.contains_key(id)
    }

    pub fn get(&self, id: &ChunkId) -> Option<&BlobLocation> {
        self.blobs.get(id)
    }
}
