//! Pack plaintext layout: `blob* trailer trailer_len:u32le "LBPK"`.
//! The trailer lists the blobs so that an index can be rebuilt from packs
//! alone. In format 3 it also carries a MAC of the pack's own age header
//! (see [`DedupKey::pack_mac`]): a restore that finds it intact knows the
//! whole pack was written with the repository's keys, and decodes the
//! chunks the trailer vouches for without hashing each one again.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::crypto::{self, ChunkId, DedupKey, IdMap, Recipient};
use crate::repo::{BlobLocation, PackBlob};

const MAGIC: &[u8; 4] = b"LBPK";

#[derive(Serialize, Deserialize)]
struct Trailer {
    version: u32,
    blobs: Vec<PackBlob>,
    /// Format 3: hex HMAC of the pack's age header under a key derived
    /// from the dedup secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    header_mac: Option<String>,
}

fn trailer(version: u32, blobs: &[PackBlob], header_mac: Option<String>) -> crate::Result<Vec<u8>> {
    let t = crate::repo::encode_json(version, &Trailer { version: 1, blobs: blobs.to_vec(), header_mac })?;
    let mut out = Vec::with_capacity(t.len() + 8);
    out.extend_from_slice(&t);
    out.extend_from_slice(&(t.len() as u32).to_le_bytes());
    out.extend_from_slice(MAGIC);
    Ok(out)
}

/// Append the trailer to a pack's blob bytes (formats 1 and 2; zstd-compressed
/// JSON from format 2 on).
pub fn seal_pack(version: u32, mut body: Vec<u8>, blobs: &[PackBlob]) -> crate::Result<Vec<u8>> {
    body.extend_from_slice(&trailer(version, blobs, None)?);
    Ok(body)
}

/// What a backup needs to turn blob bytes into a stored pack.
pub struct PackSealer {
    pub version: u32,
    pub recipients: Vec<Recipient>,
    pub dedup: DedupKey,
}

impl PackSealer {
    /// The encrypted pack (blobs, then the trailer, which from format 3 on
    /// holds the MAC of the header it is encrypted under) and its id, the
    /// SHA-256 of those bytes.
    pub fn seal(&self, body: Vec<u8>, blobs: &[PackBlob]) -> crate::Result<(ChunkId, Vec<u8>)> {
        if self.version < 3 {
            let ct = crypto::encrypt(&self.recipients, &seal_pack(self.version, body, blobs)?)?;
            return Ok((ChunkId(Sha256::digest(&ct).into()), ct));
        }
        let sealed = crypto::encrypt_with_tail(&self.recipients, &body, |header| {
            trailer(self.version, blobs, Some(hex::encode(self.dedup.pack_mac(header)))).map_err(|e| e.to_string())
        })?;
        Ok((ChunkId(sealed.sha256), sealed.bytes))
    }
}

/// A decrypted pack. `vouched` lists its blobs when its trailer's header
/// MAC checked out: then every byte of it was written by a holder of the
/// repository's keys, at the places the trailer says.
pub struct OpenPack {
    pub data: Vec<u8>,
    pub vouched: Option<IdMap<PackBlob>>,
}

impl OpenPack {
    /// Whether the pack vouches for chunk `id` at exactly `loc`.
    pub fn vouches(&self, id: &ChunkId, loc: &BlobLocation) -> bool {
        self.vouched.as_ref().and_then(|m| m.get(id)).is_some_and(|b| BlobLocation::of(loc.pack, b) == *loc)
    }
}

/// Read the trailer of a decrypted format 3 pack and check its header MAC
/// against `ciphertext`. A pack without a MAC is returned unvouched (its
/// chunks are then hashed one by one); a MAC that does not match is an error.
pub fn open_pack(version: u32, ciphertext: &[u8], data: Vec<u8>, key: &DedupKey) -> Result<OpenPack, String> {
    if version < 3 {
        return Ok(OpenPack { data, vouched: None });
    }
    let n = data.len();
    if n < 8 || &data[n - 4..] != MAGIC {
        return Err("its trailer is missing".into());
    }
    let len = u32::from_le_bytes(data[n - 8..n - 4].try_into().expect("4 bytes")) as usize;
    let t: Trailer = crate::repo::decode_json(
        "pack trailer",
        data.get(n.saturating_sub(8 + len)..n - 8).ok_or("its trailer is cut short")?,
    )
    .map_err(|e| e.to_string())?;
    let Some(mac) = t.header_mac else { return Ok(OpenPack { data, vouched: None }) };
    let header = crypto::age_header_len(ciphertext).map(|l| &ciphertext[..l]).ok_or("it has no age header")?;
    let tag = hex::decode(mac).map_err(|_| "its trailer's header MAC is not hex")?;
    if !key.pack_mac_matches(header, &tag) {
        return Err(
            "it was not written with this repository's keys (its header MAC does not match): forged or damaged".into(),
        );
    }
    let vouched = t.blobs.into_iter().map(|b| (b.id, b)).collect();
    Ok(OpenPack { data, vouched: Some(vouched) })
}

/// Decodes blobs out of decrypted packs into caller buffers with a reusable
/// zstd context: restore decodes gigabytes, and a fresh buffer and context
/// per chunk cost page faults and setup each time. The last few shared
/// frames (format 2) are kept, so each frame decompresses once even when a
/// later snapshot interleaves its changed pages (new frames) with the
/// unchanged pages around them (older frames).
pub struct BlobDecoder {
    dctx: zstd::bulk::Decompressor<'static>,
    /// Recently used frames, most recent last: ((pack, offset), content).
    frames: Vec<((ChunkId, u32), Vec<u8>)>,
    /// Shared frames decompressed so far (each costs up to 128 KiB of work).
    pub frames_decompressed: u64,
    /// Chunks whose keyed hash was checked.
    pub chunks_hashed: u64,
}

/// Frames a decoder keeps: enough for the frames of a few backup
/// generations at one spot of a file (at most 128 KiB each).
const FRAMES_KEPT: usize = 8;

impl BlobDecoder {
    pub fn new() -> Result<BlobDecoder, String> {
        let dctx = zstd::bulk::Decompressor::new().map_err(|e| format!("zstd: {e}"))?;
        Ok(BlobDecoder { dctx, frames: Vec::new(), frames_decompressed: 0, chunks_hashed: 0 })
    }

    /// Decompress the shared frame of `loc` into `out` (its `frame_raw` bytes).
    fn decompress_frame(
        &mut self,
        compressed: &[u8],
        loc: &BlobLocation,
        id: &ChunkId,
        out: &mut [u8],
    ) -> Result<(), String> {
        let n = self
            .dctx
            .decompress_to_buffer(compressed, out)
            .map_err(|e| format!("blob {id:?} (shared frame) does not decompress: {e}"))?;
        if n != out.len() {
            return Err(format!("blob {id:?}: its shared frame is {n} bytes, the index says {}", loc.frame_raw));
        }
        self.frames_decompressed += 1;
        Ok(())
    }

    /// Check `data` against `id` when a key is given (`None`: the pack
    /// vouched for it, see [`OpenPack`]).
    fn check(&mut self, key: Option<&DedupKey>, id: &ChunkId, data: &[u8]) -> Result<(), String> {
        if let Some(key) = key {
            self.chunks_hashed += 1;
            if key.chunk_id(data) != *id {
                return Err(format!("blob {id:?} content does not match its id"));
            }
        }
        Ok(())
    }

    /// Decode a whole shared frame straight into `out` when `blobs` are
    /// exactly its chunks in order (how a restore reads a backup's own new
    /// chunks), checking each chunk's keyed hash in place if `key` is given:
    /// no copy out of a cached frame. Returns false, touching nothing, when
    /// `blobs` are not such a sequence (the caller decodes them one by one).
    pub fn decode_frame_into(
        &mut self,
        pack: &[u8],
        blobs: &[(ChunkId, BlobLocation)],
        key: Option<&DedupKey>,
        out: &mut [u8],
    ) -> Result<bool, String> {
        let Some((first_id, first)) = blobs.first() else { return Ok(false) };
        let mut skip = 0u32;
        for (_, l) in blobs {
            if l.frame_raw == 0 || l.pack != first.pack || l.offset != first.offset || l.skip != skip {
                return Ok(false);
            }
            skip += l.raw_length;
        }
        if skip != first.frame_raw || out.len() != skip as usize {
            return Ok(false);
        }
        self.decompress_frame(stored(pack, first, first_id)?, first, first_id, out)?;
        let mut at = 0usize;
        for (id, l) in blobs {
            let page = &out[at..at + l.raw_length as usize];
            self.check(key, id, page)?;
            at += page.len();
        }
        Ok(true)
    }

    /// Decode the blob at `loc` of `pack` (decrypted) into `out`, which is
    /// exactly the blob's raw length, and check the keyed hash if `key` is given.
    pub fn decode_into(
        &mut self,
        pack: &[u8],
        loc: &BlobLocation,
        id: &ChunkId,
        key: Option<&DedupKey>,
        out: &mut [u8],
    ) -> Result<(), String> {
        let compressed = stored(pack, loc, id)?;
        if loc.frame_raw == 0 {
            let n = self
                .dctx
                .decompress_to_buffer(compressed, out)
                .map_err(|e| format!("blob {id:?} does not decompress: {e}"))?;
            if n != out.len() {
                return Err(format!("blob {id:?} content does not match its id"));
            }
        } else {
            let here = (loc.pack, loc.offset);
            match self.frames.iter().position(|(at, _)| *at == here) {
                Some(i) => {
                    let hit = self.frames.remove(i);
                    self.frames.push(hit);
                }
                None => {
                    // Reuse the least recently used frame's buffer.
                    let mut buf = if self.frames.len() >= FRAMES_KEPT { self.frames.remove(0).1 } else { Vec::new() };
                    buf.resize(loc.frame_raw as usize, 0);
                    self.decompress_frame(compressed, loc, id, &mut buf)?;
                    self.frames.push((here, buf));
                }
            }
            let frame = &self.frames.last().expect("just pushed").1;
            let from = loc.skip as usize;
            let to = from + out.len();
            if to > frame.len() {
                return Err(format!("blob {id:?} lies outside its shared frame"));
            }
            out.copy_from_slice(&frame[from..to]);
        }
        self.check(key, id, out)
    }
}

/// The stored (compressed) bytes of `loc` in a decrypted pack.
fn stored<'a>(pack: &'a [u8], loc: &BlobLocation, id: &ChunkId) -> Result<&'a [u8], String> {
    let start = loc.offset as usize;
    let end = start + loc.length as usize;
    pack.get(start..end)
        .ok_or_else(|| format!("blob {id:?} at {start}..{end} lies outside the pack ({} bytes)", pack.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key, a frame, where its pages are, and the pages.
    type Framed = (DedupKey, Vec<u8>, Vec<(ChunkId, BlobLocation)>, Vec<Vec<u8>>);

    /// Three pages in one shared frame, the way backup writes them.
    fn framed() -> Framed {
        let key = DedupKey::generate();
        let pages: Vec<Vec<u8>> = (0..3u8).map(|i| format!("page {i} ").repeat(1000).into_bytes()).collect();
        let raw: Vec<u8> = pages.concat();
        let frame = zstd::bulk::compress(&raw, 3).unwrap();
        let mut pack = b"xx".to_vec();
        pack.extend_from_slice(&frame);
        let pack_id = ChunkId([9; 32]);
        let mut skip = 0;
        let locs = pages
            .iter()
            .map(|p| {
                let loc = BlobLocation {
                    pack: pack_id,
                    offset: 2,
                    length: frame.len() as u32,
                    raw_length: p.len() as u32,
                    frame_raw: raw.len() as u32,
                    skip,
                };
                skip += p.len() as u32;
                (key.chunk_id(p), loc)
            })
            .collect();
        (key, pack, locs, pages)
    }

    #[test]
    fn pages_of_a_shared_frame_decode_in_any_order() {
        let (key, pack, locs, pages) = framed();
        let mut d = BlobDecoder::new().unwrap();
        for i in [2, 0, 1, 1] {
            let mut out = vec![0; pages[i].len()];
            d.decode_into(&pack, &locs[i].1, &locs[i].0, Some(&key), &mut out).unwrap();
            assert_eq!(out, pages[i]);
        }
        assert_eq!(d.frames_decompressed, 1);
    }

    #[test]
    fn a_whole_frame_decodes_in_place_and_checks_every_page() {
        let (key, pack, locs, pages) = framed();
        let mut d = BlobDecoder::new().unwrap();
        let mut out = vec![0; pages.concat().len()];
        assert!(d.decode_frame_into(&pack, &locs, Some(&key), &mut out).unwrap());
        assert_eq!(out, pages.concat());
        // Not the whole frame, or out of order: declined, for the page-by-page path.
        assert!(!d.decode_frame_into(&pack, &locs[..2], Some(&key), &mut out[..pages[0].len() * 2]).unwrap());
        let swapped = [locs[1], locs[0], locs[2]];
        assert!(!d.decode_frame_into(&pack, &swapped, Some(&key), &mut out).unwrap());
        // A page whose id does not match what decompresses: refused.
        let mut wrong = locs.clone();
        wrong[2].0 = wrong[0].0;
        assert!(
            d.decode_frame_into(&pack, &wrong, Some(&key), &mut out).unwrap_err().contains("does not match its id")
        );
        // A flipped byte in the frame: refused one way or the other.
        let mut bad = pack.clone();
        bad[2 + locs[0].1.length as usize / 2] ^= 0x40;
        assert!(d.decode_frame_into(&bad, &locs, Some(&key), &mut out).is_err());
    }

    /// A later snapshot's new pages (their own frame) interleaved with
    /// unchanged pages of an older frame: each frame decompresses once.
    #[test]
    fn interleaved_frames_decompress_once_each() {
        let (key, old_pack, old, old_pages) = framed();
        let (_, mut new_pack, mut new, new_pages) = framed();
        // The second frame: other pages of the same sizes, in another pack.
        let new_pages: Vec<Vec<u8>> = new_pages.iter().map(|p| p.iter().rev().copied().collect()).collect();
        let raw: Vec<u8> = new_pages.concat();
        new_pack.truncate(2);
        new_pack.extend_from_slice(&zstd::bulk::compress(&raw, 3).unwrap());
        for (i, (id, loc)) in new.iter_mut().enumerate() {
            *id = key.chunk_id(&new_pages[i]);
            loc.pack = ChunkId([8; 32]);
            loc.length = new_pack.len() as u32 - 2;
        }
        let mut d = BlobDecoder::new().unwrap();
        for round in 0..3 {
            for i in 0..3 {
                let (pack, (id, loc), page) = if (i + round) % 2 == 0 {
                    (&old_pack, &old[i], &old_pages[i])
                } else {
                    (&new_pack, &new[i], &new_pages[i])
                };
                let mut out = vec![0; page.len()];
                d.decode_into(pack, loc, id, Some(&key), &mut out).unwrap();
                assert_eq!(&out, page);
            }
        }
        assert_eq!(d.frames_decompressed, 2);
    }

    #[test]
    fn a_damaged_or_misdescribed_frame_is_refused() {
        let (key, pack, locs, _) = framed();
        let decode = |pack: &[u8], loc: &BlobLocation, id: &ChunkId| {
            let mut out = vec![0; loc.raw_length as usize];
            BlobDecoder::new().unwrap().decode_into(pack, loc, id, Some(&key), &mut out)
        };
        let (id, loc) = locs[1];
        // A flipped byte in the compressed frame: the frame may still
        // decompress, but some page's keyed hash cannot match.
        let mut bad = pack.clone();
        bad[2 + loc.length as usize / 2] ^= 0x40;
        assert!(locs.iter().any(|(id, loc)| decode(&bad, loc, id).is_err()));
        // An index entry that claims the wrong frame size, skip, or page.
        assert!(
            decode(&pack, &BlobLocation { frame_raw: loc.frame_raw + 1, ..loc }, &id)
                .unwrap_err()
                .contains("shared frame")
        );
        assert!(decode(&pack, &BlobLocation { skip: loc.frame_raw, ..loc }, &id).unwrap_err().contains("outside"));
        assert!(decode(&pack, &BlobLocation { skip: 0, ..loc }, &id).unwrap_err().contains("does not match its id"));
        assert!(decode(&pack, &BlobLocation { length: 10_000, ..loc }, &id).unwrap_err().contains("outside the pack"));
    }
}
