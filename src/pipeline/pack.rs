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
    let mut raw = vec![0u8; raw_length as usize];
    let mut dctx = zstd::bulk::Decompressor::new().map_err(|e| format!("zstd: {e}"))?;
    decode_pack_blob_into(&mut dctx, pack, offset, length, id, key, &mut raw)?;
    Ok(raw)
}

/// Like [`decode_pack_blob`], but into `out` (exactly the blob's raw length)
/// with a reusable decompression context: restore decodes gigabytes, and a
/// fresh buffer and context per chunk cost page faults and setup each time.
pub fn decode_pack_blob_into(
    dctx: &mut zstd::bulk::Decompressor<'static>,
    pack: &[u8],
    offset: u32,
    length: u32,
    id: &ChunkId,
    key: &DedupKey,
    out: &mut [u8],
) -> Result<(), String> {
    let start = offset as usize;
    let end = start + length as usize;
    if end > pack.len() {
        return Err(format!("blob {id:?} at {start}..{end} lies outside the pack ({} bytes)", pack.len()));
    }
    let n = dctx
        .decompress_to_buffer(&pack[start..end], out)
        .map_err(|e| format!("blob {id:?} does not decompress: {e}"))?;
    if n != out.len() || key.chunk_id(out) != *id {
        return Err(format!("blob {id:?} content does not match its id"));
    }
    Ok(())
}
