//! Content-defined chunking (FastCDC, 2020 variant).
//!
//! Chunk boundaries depend on content, not offsets, so inserting bytes in a
//! dump only changes the chunks around the insertion. The size parameters
//! live in the repository config so that every writer cuts the same way;
//! docs/FORMAT.md records the measurement behind the defaults.

use std::io::Read;

use bytes::{Bytes, BytesMut};

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

/// How much is read from the source at a time, and the size of the blocks
/// chunks are cut from.
const READ_SIZE: usize = 1024 * 1024;
const BLOCK_SIZE: usize = 8 * 1024 * 1024;

/// Iterate over the chunks of a reader; memory is bounded by `max_size`
/// plus one block.
///
/// Cut points are exactly those of `fastcdc::v2020::StreamCDC` (the same
/// `cut` over the same `max_size` window), so repositories written before
/// keep deduplicating. What differs is the buffering: StreamCDC copies every
/// chunk out of its buffer, shifts the rest down and zero-fills the tail,
/// about 5 % of a backup's CPU; here reads land in a reused scratch buffer,
/// are appended to an 8 MiB block, and chunks are zero-copy views of it
/// ([`Bytes`]). (Reading straight into the block would zero-fill its free
/// space before every read, and a pipe returns 64 KiB per read.)
pub fn chunks<R: Read>(reader: R, p: ChunkerParams) -> Chunks<R> {
    Chunks { reader, p, buf: BytesMut::new(), scratch: vec![0; READ_SIZE], eof: false }
}

pub struct Chunks<R> {
    reader: R,
    p: ChunkerParams,
    buf: BytesMut,
    scratch: Vec<u8>,
    eof: bool,
}

impl<R: Read> Chunks<R> {
    /// Read until a whole `max_size` window is buffered, or the source ends.
    fn fill(&mut self) -> std::io::Result<()> {
        let want = self.p.max_size as usize;
        while !self.eof && self.buf.len() < want {
            match self.reader.read(&mut self.scratch) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    // A fresh block when this one is full; earlier chunks keep theirs alive.
                    if self.buf.capacity() - self.buf.len() < n {
                        self.buf.reserve(BLOCK_SIZE.max(want + READ_SIZE));
                    }
                    self.buf.extend_from_slice(&self.scratch[..n]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl<R: Read> Iterator for Chunks<R> {
    type Item = std::io::Result<Bytes>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Err(e) = self.fill() {
            return Some(Err(e));
        }
        if self.buf.is_empty() {
            return None;
        }
        let window = &self.buf[..self.buf.len().min(self.p.max_size as usize)];
        let cdc = fastcdc::v2020::FastCDC::new(window, self.p.min_size, self.p.avg_size, self.p.max_size);
        let (_, end) = cdc.cut(0, window.len());
        Some(Ok(self.buf.split_to(end.max(1)).freeze()))
    }
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
        let a: Vec<Bytes> = chunks(&data[..], p).collect::<Result<_, _>>().unwrap();
        assert_eq!(a.concat(), data);
        let mut edited = data.clone();
        edited.splice(4 << 20..4 << 20, vec![b'x'; 1024]);
        let b: Vec<Bytes> = chunks(&edited[..], p).collect::<Result<_, _>>().unwrap();
        let set: std::collections::HashSet<&Bytes> = a.iter().collect();
        let changed = b.iter().filter(|c| !set.contains(c)).count();
        assert!(changed <= 3, "{changed} chunks changed after a 1 KiB insert");
    }

    /// A reader that returns at most `n` bytes per call, to exercise refills.
    struct Dribble<'a>(&'a [u8], usize);
    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.1).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn cut_points_equal_fastcdc_streamcdc() {
        // Repetitive text with random stretches: natural cuts and forced max-size cuts.
        let mut data = Vec::new();
        let mut x: u64 = 7;
        while data.len() < 20 << 20 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            if (x >> 60) < 3 {
                data.extend(std::iter::repeat_n(b'z', 3 << 20));
            } else {
                data.extend_from_slice(format!("{} row {}\n", x >> 20, x % 977).as_bytes());
            }
        }
        for p in
            [ChunkerParams::default(), ChunkerParams { min_size: 16 * 1024, avg_size: 64 * 1024, max_size: 256 * 1024 }]
        {
            let theirs: Vec<usize> = fastcdc::v2020::StreamCDC::new(&data[..], p.min_size, p.avg_size, p.max_size)
                .map(|c| c.unwrap().length)
                .collect();
            for step in [usize::MAX, 1 << 20, 12_345] {
                let ours: Vec<usize> = chunks(Dribble(&data, step), p).map(|c| c.unwrap().len()).collect();
                assert_eq!(ours, theirs, "read size {step}");
            }
        }
        assert_eq!(chunks(&b""[..], ChunkerParams::default()).count(), 0);
        let one: Vec<Bytes> = chunks(&b"x"[..], ChunkerParams::default()).map(|c| c.unwrap()).collect();
        assert_eq!(one, vec![Bytes::from_static(b"x")]);
    }
}
