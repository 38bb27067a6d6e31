//! Copies of large pieces into memory the copying thread does not read
//! again: a region the daemon fills for a trainer, a trainer's buffer a
//! layer is gathered into.
//!
//! A plain copy (`memcpy`) first reads each destination line into the
//! cache (the read for ownership) and leaves it there. For a layer's worth
//! of shards that is wasted work twice over: the lines are overwritten
//! whole, and they evict what the cache held before anyone reads them
//! again. On CPUs with AVX-512, pieces of [`STREAM_MIN`] bytes and more are
//! written with streaming (non-temporal) stores of whole 64-byte lines,
//! which skip both. glibc switches to such stores only above a threshold
//! it derives from the last-level cache's size, which virtual machines
//! often report as the whole host's. Narrower streaming stores (AVX2,
//! SSE2) write half or quarter lines and were measured no faster than
//! `memcpy`, so they are not used. The source is prefetched a
//! page ahead of the copy, since the hardware's prefetchers stop at page
//! boundaries and an arena's pages lie anywhere in physical memory.
//!
//! Elsewhere, and for smaller pieces, the copy is a plain one.

/// Pieces of at least this many bytes are written with streaming stores
/// where the CPU has AVX-512.
pub const STREAM_MIN: usize = 256 << 10;

/// Copies `src` to the start of `dest`, with streaming stores when `src`
/// is at least [`STREAM_MIN`] bytes and the CPU has AVX-512.
///
/// # Panics
/// If `dest` is shorter than `src`.
pub fn copy_streaming(dest: &mut [u8], src: &[u8]) {
    let dest = &mut dest[..src.len()];
    // SAFETY: both slices are valid for `src.len()` bytes, and a `&mut`
    // cannot overlap a `&`.
    unsafe { copy_nonoverlapping_streaming(src.as_ptr(), dest.as_mut_ptr(), src.len()) }
}

/// [`std::ptr::copy_nonoverlapping`] of `len` bytes, with streaming stores
/// when `len` is at least [`STREAM_MIN`] and the CPU has AVX-512. The bytes
/// are visible to other threads and processes once it returns, as after a
/// plain copy.
///
/// # Safety
/// As for [`std::ptr::copy_nonoverlapping`]: `src` valid for reads and
/// `dst` for writes of `len` bytes, the two ranges apart.
pub unsafe fn copy_nonoverlapping_streaming(src: *const u8, dst: *mut u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    if len >= STREAM_MIN && std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the caller's contract; AVX-512F is present (checked).
        unsafe { x86::stream_avx512(src, dst, len) };
        return;
    }
    // SAFETY: the caller's contract.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, len) }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{__m512i, _MM_HINT_T0, _mm_prefetch, _mm_sfence, _mm512_loadu_si512, _mm512_stream_si512};

    const LINE: usize = 64;
    /// How far ahead of the copy the source is prefetched: a page, so that
    /// the next page of the source is on its way when the copy reaches it
    /// (the hardware's prefetchers stop at page boundaries, and a shard's
    /// 4 KiB pages lie anywhere in physical memory).
    const AHEAD: usize = 4096;

    /// Copies the bytes before `dst`'s first 64-byte boundary plainly,
    /// the whole lines after it with streaming stores (four a round), then
    /// the rest plainly, and fences the streaming stores.
    ///
    /// # Safety
    /// As for `copy_nonoverlapping`, and the CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn stream_avx512(src: *const u8, dst: *mut u8, len: usize) {
        let head = dst.align_offset(LINE).min(len);
        // SAFETY: within both ranges (`head <= len`); the caller's contract.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, head) };
        let mut at = head;
        while len - at >= 4 * LINE {
            if len - at >= AHEAD + 4 * LINE {
                // SAFETY: a hint, within the source (checked); it reads nothing.
                unsafe {
                    let ahead = src.add(at + AHEAD).cast::<i8>();
                    _mm_prefetch::<_MM_HINT_T0>(ahead);
                    _mm_prefetch::<_MM_HINT_T0>(ahead.add(LINE));
                    _mm_prefetch::<_MM_HINT_T0>(ahead.add(2 * LINE));
                    _mm_prefetch::<_MM_HINT_T0>(ahead.add(3 * LINE));
                }
            }
            // SAFETY: the four lines lie within both ranges (`at + 256 <=
            // len`); the loads are unaligned ones, the stores are at
            // `dst + at`, a 64-byte boundary (`head` reached one and `at`
            // moves by whole lines).
            unsafe {
                let s = src.add(at).cast::<__m512i>();
                let d = dst.add(at).cast::<__m512i>();
                let (a, b, c, e) = (
                    _mm512_loadu_si512(s),
                    _mm512_loadu_si512(s.add(1)),
                    _mm512_loadu_si512(s.add(2)),
                    _mm512_loadu_si512(s.add(3)),
                );
                _mm512_stream_si512(d, a);
                _mm512_stream_si512(d.add(1), b);
                _mm512_stream_si512(d.add(2), c);
                _mm512_stream_si512(d.add(3), e);
            }
            at += 4 * LINE;
        }
        while len - at >= LINE {
            // SAFETY: as above, for one line.
            unsafe { _mm512_stream_si512(dst.add(at).cast(), _mm512_loadu_si512(src.add(at).cast())) };
            at += LINE;
        }
        // Streaming stores are weakly ordered: the fence makes them visible
        // before any store that follows (the answer saying they are done).
        _mm_sfence();
        // SAFETY: the rest of both ranges.
        unsafe { std::ptr::copy_nonoverlapping(src.add(at), dst.add(at), len - at) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lengths around the streaming threshold and the line, with source
    /// and destination on and off line boundaries, copy exactly their
    /// bytes and nothing around them.
    #[test]
    fn copies_exactly_the_bytes_at_any_alignment_and_length() {
        let lengths = [
            0,
            1,
            63,
            64,
            65,
            STREAM_MIN - 1,
            STREAM_MIN,
            STREAM_MIN + 1,
            STREAM_MIN + 255,
            STREAM_MIN + 256 + 64 + 3,
        ];
        let source: Vec<u8> = (0..STREAM_MIN + 1024).map(|i| (i * 31 + i / 251) as u8).collect();
        for &len in &lengths {
            for (src_skew, dst_skew) in [(0, 0), (1, 0), (0, 1), (17, 45), (63, 63), (5, 64)] {
                let mut dest = vec![0xAAu8; len + dst_skew + 128];
                copy_streaming(&mut dest[dst_skew..], &source[src_skew..src_skew + len]);
                assert_eq!(
                    &dest[dst_skew..dst_skew + len],
                    &source[src_skew..src_skew + len],
                    "{len} bytes, skews {src_skew}/{dst_skew}"
                );
                assert!(dest[..dst_skew].iter().all(|&b| b == 0xAA), "bytes before, {len} bytes");
                assert!(
                    dest[dst_skew + len..].iter().all(|&b| b == 0xAA),
                    "bytes after, {len} bytes"
                );
            }
        }
    }

    #[test]
    #[should_panic]
    fn a_destination_shorter_than_the_source_panics() {
        copy_streaming(&mut [0u8; 3], &[1u8; 4]);
    }
}
