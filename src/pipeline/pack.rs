//! Pack plaintext layout: `blob* trailer_json trailer_len:u32le "LBPK"`.
//! The trailer lists the blobs so that an index can be rebuilt from packs
//! alone; readers normally use the index and never parse it.

use serde::{Deserialize, Serialize};

use crate::crypto::{ChunkId, DedupKey};
use crate::repo::PackBlob;

const MAGIC: &[u8; 4] = b"LBPK";

#[derive(Serialize, Deserialize)]
struct Trailer {
    version: u32,
    blobs: Vec<PackBlob>,
}

/// Append the trailer to a pack's blob bytes.
pub fn seal_pack(mut body: Vec<u8>, blobs: &[PackBlob]) -> Vec<u8> {
    let t = serde_json::to_vec(&Trailer { version: 1, blobs: blobs.to_vec() }).expect("serialisable");
    body.extend_from_slice(&t);
    body.extend_from_slice(&(t.len() as u32).to_le_bytes());
    body.extend_from_slice(MAGIC);
    body
}

/// Decompress one blob out of a decrypted pack and check its keyed hash.
pub fn decode_pack_blob(
    pack: &[u8],
    offset: u32,
    length: u32,
    raw_length: u32,
    id: &ChunkId,
    key: &DedupKey,
) -> Result<Vec<u8>, String> {
    let start = offset as usize;
    let end = start + length as usize;
    if end > pack.len() {
        return Err(format!("blob {id:?} at {start}..{end} lies outside the pack ({} bytes)", pack.len()));
    }
    let raw = zstd::bulk::decompress(&pack[start..end], raw_length as usize)
        .map_err(|e| format!("blob {id:?} does not decompress: {e}"))?;
    if raw.len() != raw_length as usize || key.chunk_id(&raw) != *id {
        return Err(format!("blob {id:?} content does not match its id"));
    }
    Ok(raw)
}
