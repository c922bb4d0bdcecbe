//! zstd for new chunks: a reused context, without zstd 1.5.7's block pre-splitter.
//!
//! From 1.5.7 zstd may cut each 128 KiB block in two before matching
//! (`ZSTD_c_blockSplitterLevel`), which at level 3 cost 5 % of compression
//! time on our database dumps and did not change a single output byte
//! (measured on the bench dump: 257,069,403 compressed bytes either way).
//! The parameter is experimental, so it is set only on zstd versions whose
//! numbering we checked; on any other version the context keeps zstd's
//! defaults. The `zstd` crate does not expose it, hence the raw context.

use std::ptr::NonNull;

use zstd_sys as sys;

/// zstd versions whose `ZSTD_c_experimentalParam20` is `ZSTD_c_blockSplitterLevel`.
const SPLITTER_PARAM_KNOWN: std::ops::RangeInclusive<u32> = 10507..=10600;
/// `ZSTD_c_blockSplitterLevel` = 1: "no splitting".
const NO_SPLITTING: i32 = 1;

pub struct Compressor {
    cx: NonNull<sys::ZSTD_CCtx>,
}

// SAFETY: a ZSTD_CCtx has no thread affinity; `&mut self` serialises its use.
unsafe impl Send for Compressor {}

impl Compressor {
    pub fn new(level: i32) -> Result<Self, String> {
        // SAFETY: plain constructor; a null result is handled.
        let cx = NonNull::new(unsafe { sys::ZSTD_createCCtx() }).ok_or("zstd: cannot allocate a context")?;
        let c = Compressor { cx };
        c.set(sys::ZSTD_cParameter::ZSTD_c_compressionLevel, level)?;
        // SAFETY: no arguments.
        if SPLITTER_PARAM_KNOWN.contains(&unsafe { sys::ZSTD_versionNumber() }) {
            c.set(sys::ZSTD_cParameter::ZSTD_c_experimentalParam20, NO_SPLITTING)?;
        }
        Ok(c)
    }

    fn set(&self, param: sys::ZSTD_cParameter, value: i32) -> Result<(), String> {
        // SAFETY: `cx` is a live context owned by `self`.
        check(unsafe { sys::ZSTD_CCtx_setParameter(self.cx.as_ptr(), param, value) }).map(drop)
    }

    /// `src` as one zstd frame (with its content size, like `zstd::bulk`).
    pub fn compress(&mut self, src: &[u8]) -> Result<Vec<u8>, String> {
        // SAFETY: pure function of a length.
        let bound = unsafe { sys::ZSTD_compressBound(src.len()) };
        let mut out = Vec::<u8>::with_capacity(bound);
        // SAFETY: `out` has `bound` writable bytes, `src` is `src.len()`
        // readable bytes, `cx` is live and used by this thread alone.
        let n = check(unsafe {
            sys::ZSTD_compress2(self.cx.as_ptr(), out.as_mut_ptr().cast(), bound, src.as_ptr().cast(), src.len())
        })?;
        // SAFETY: zstd wrote `n` <= `bound` initialised bytes.
        unsafe { out.set_len(n) };
        Ok(out)
    }
}

impl Drop for Compressor {
    fn drop(&mut self) {
        // SAFETY: created by ZSTD_createCCtx, freed once.
        unsafe { sys::ZSTD_freeCCtx(self.cx.as_ptr()) };
    }
}

fn check(code: usize) -> Result<usize, String> {
    // SAFETY: both take any code and return a static C string.
    if unsafe { sys::ZSTD_isError(code) } != 0 {
        let name = unsafe { std::ffi::CStr::from_ptr(sys::ZSTD_getErrorName(code)) };
        return Err(format!("zstd: {}", name.to_string_lossy()));
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_decode_with_the_zstd_crate_and_match_its_size() {
        let mut data = Vec::new();
        for i in 0..200_000u32 {
            data.extend_from_slice(format!("{i},customer-{},{}\n", i % 977, i.wrapping_mul(2654435761)).as_bytes());
        }
        let mut c = Compressor::new(3).unwrap();
        for src in [&data[..], &data[..1], &[][..], &data[..300_000]] {
            let z = c.compress(src).unwrap();
            assert_eq!(zstd::bulk::decompress(&z, src.len()).unwrap(), src);
            // The splitter never changed a byte on text at level 3; a size
            // far from zstd's own would mean the parameter meant something else.
            let reference = zstd::bulk::compress(src, 3).unwrap();
            assert!(z.len() <= reference.len() + reference.len() / 50 + 16, "{} vs {}", z.len(), reference.len());
        }
    }
}
