//! zstd for new chunks: a reused context, without zstd 1.5.7's block pre-splitter.
//!
//! From 1.5.7 zstd may cut each 128 KiB block in two before matching
//! (`ZSTD_c_blockSplitterLevel`), which at level 3 cost 5 % of compression
//! time on our database dumps and did not change a single output byte
//! (measured on the bench dump: 257,069,403 compressed bytes either way).
//! The parameter is experimental, so it is set only on zstd versions whose
//! numbering we checked, and only if it still has the splitter's range; on
//! any other zstd the context keeps the defaults. The `zstd` crate does not expose it, hence the raw context.

use std::ptr::NonNull;

use zstd_sys as sys;

/// `ZSTD_c_blockSplitterLevel` in zstd.h of 1.5.7 and 1.6.0.
const SPLITTER_LEVEL: sys::ZSTD_cParameter = sys::ZSTD_cParameter::ZSTD_c_experimentalParam20;
/// Its value for "no splitting".
const NO_SPLITTING: i32 = 1;

/// Whether the linked zstd is one whose header we read, and the parameter
/// still has the splitter's range (0 = auto to 6).
fn splitter_param_is_known() -> bool {
    // SAFETY: both are pure queries.
    let (version, bounds) = unsafe { (sys::ZSTD_versionNumber(), sys::ZSTD_cParam_getBounds(SPLITTER_LEVEL)) };
    (10507..=10600).contains(&version)
        && unsafe { sys::ZSTD_isError(bounds.error) } == 0
        && (bounds.lowerBound, bounds.upperBound) == (0, 6)
}

pub struct Compressor {
    cx: NonNull<sys::ZSTD_CCtx>,
    #[cfg_attr(not(test), allow(dead_code))]
    splitter_off: bool,
}

// SAFETY: a ZSTD_CCtx has no thread affinity; `&mut self` serialises its use.
unsafe impl Send for Compressor {}

impl Compressor {
    pub fn new(level: i32) -> Result<Self, String> {
        // SAFETY: plain constructor; a null result is handled.
        let cx = NonNull::new(unsafe { sys::ZSTD_createCCtx() }).ok_or("zstd: cannot allocate a context")?;
        let mut c = Compressor { cx, splitter_off: false };
        c.set(sys::ZSTD_cParameter::ZSTD_c_compressionLevel, level)?;
        if splitter_param_is_known() {
            c.set(SPLITTER_LEVEL, NO_SPLITTING)?;
            c.splitter_off = true;
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
    fn the_splitter_is_off_on_the_bundled_zstd() {
        // If a zstd upgrade falls outside the checked versions, this says so
        // instead of letting backups silently compress slower.
        assert!(splitter_param_is_known(), "zstd {}", unsafe { sys::ZSTD_versionNumber() });
        assert!(Compressor::new(3).unwrap().splitter_off);
    }

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
