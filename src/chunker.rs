//! Content-defined chunking (FastCDC, 2020 variant).
//!
//! Chunk boundaries depend on content, not offsets, so inserting bytes in a
//! dump only changes the chunks around the insertion. The size parameters
//! live in the repository config so that every writer cuts the same way;
//! docs/FORMAT.md records the measurement behind the defaults.

use std::io::Read;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
}

impl Default for ChunkerParams {
    /// 256 KiB / 1 MiB / 4 MiB: see "Chunk size" in docs/FORMAT.md.
    fn default() -> Self {
        ChunkerParams { min_size: 256 * 1024, avg_size: 1024 * 1024, max_size: 4 * 1024 * 1024 }
    }
}

impl ChunkerParams {
    pub fn validate(&self) -> Result<(), String> {
        use fastcdc::v2020::{AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MINIMUM_MIN};
        if !(self.min_size <= self.avg_size && self.avg_size <= self.max_size) {
            return Err("chunker sizes must satisfy min <= avg <= max".into());
        }
        if self.min_size < MINIMUM_MIN
            || self.max_size > MAXIMUM_MAX
            || self.avg_size < AVERAGE_MIN
            || self.avg_size > AVERAGE_MAX
        {
            return Err("chunker sizes out of FastCDC's range".into());
        }
        Ok(())
    }
}

/// Iterate over the chunks of a reader; memory is bounded by `max_size`.
pub fn chunks<R: Read>(reader: R, p: ChunkerParams) -> impl Iterator<Item = std::io::Result<Vec<u8>>> {
    fastcdc::v2020::StreamCDC::new(reader, p.min_size, p.avg_size, p.max_size).map(|r| {
        r.map(|c| c.data).map_err(|e| match e {
            fastcdc::v2020::Error::IoError(io) => io,
            other => std::io::Error::other(other.to_string()),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_reassemble_and_resync_after_insert() {
        let mut data = Vec::new();
        let mut x: u64 = 1;
        for _ in 0..(8 << 20) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            data.push((x >> 33) as u8);
        }
        let p = ChunkerParams { min_size: 16 * 1024, avg_size: 64 * 1024, max_size: 256 * 1024 };
        let a: Vec<Vec<u8>> = chunks(&data[..], p).collect::<Result<_, _>>().unwrap();
        assert_eq!(a.concat(), data);
        let mut edited = data.clone();
        edited.splice(4 << 20..4 << 20, vec![b'x'; 1024]);
        let b: Vec<Vec<u8>> = chunks(&edited[..], p).collect::<Result<_, _>>().unwrap();
        let set: std::collections::HashSet<&Vec<u8>> = a.iter().collect();
        let changed = b.iter().filter(|c| !set.contains(c)).count();
        assert!(changed <= 3, "{changed} chunks changed after a 1 KiB insert");
    }
}
