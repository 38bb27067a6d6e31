//! One caller buffer lent out as disjoint parts, each an owned value that
//! can travel to a connection's reader task (which needs `'static` buffers),
//! so that many fetches fill one contiguous buffer at once without copies.
//!
//! The buffer is boxed and held by raw pointer from the start; every part
//! keeps it alive, so a gather that is cancelled while fetches are in flight
//! leaves them writing into memory that still exists. The buffer comes back
//! once every part is dropped.

use std::ops::Range;
use std::sync::Arc;

use crate::FetchBuf;

/// The lent buffer.
#[derive(Debug)]
struct Lent<B> {
    /// The boxed buffer, from `Box::into_raw`; reclaimed exactly once, by
    /// `SplitBuf::into_inner` or by `drop`.
    owner: *mut B,
    /// Its bytes, taken once from `AsMut` before anything was lent out.
    ptr: *mut u8,
    len: usize,
}

// SAFETY: `Lent` owns a `B: Send` (through `owner`) and lends out disjoint
// byte ranges of it; sending it to another thread sends that ownership.
unsafe impl<B: Send> Send for Lent<B> {}
// SAFETY: shared references to `Lent` give no access to the bytes; only a
// `Part` (one per disjoint range, each used through `&mut`) writes them.
unsafe impl<B: Send> Sync for Lent<B> {}

impl<B> Drop for Lent<B> {
    fn drop(&mut self) {
        if !self.owner.is_null() {
            // SAFETY: `owner` came from `Box::into_raw` and was not reclaimed
            // (it is nulled when it is); no part is left (this is the last
            // reference to the `Lent`).
            drop(unsafe { Box::from_raw(self.owner) });
        }
    }
}

/// A buffer split into parts.
#[derive(Debug)]
pub(crate) struct SplitBuf<B> {
    lent: Arc<Lent<B>>,
}

impl<B: FetchBuf> SplitBuf<B> {
    /// Lends out `buf`.
    pub fn new(buf: B) -> SplitBuf<B> {
        let owner = Box::into_raw(Box::new(buf));
        // SAFETY: `owner` is a valid, unique pointer to the boxed buffer; the
        // slice taken here is the only view of its bytes ever made until the
        // buffer is reclaimed, and the box does not move the buffer.
        let bytes = unsafe { (*owner).as_mut() };
        let (ptr, len) = (bytes.as_mut_ptr(), bytes.len());
        SplitBuf {
            lent: Arc::new(Lent { owner, ptr, len }),
        }
    }

    /// Parts for `ranges`, which must be in order, disjoint and within the
    /// buffer (checked: a violation panics, as the caller computed them).
    pub fn parts(&self, ranges: &[Range<usize>]) -> Vec<Part<B>> {
        let mut end = 0;
        for range in ranges {
            assert!(
                range.start >= end && range.start <= range.end && range.end <= self.lent.len,
                "parts must be in order, disjoint and within the buffer"
            );
            end = range.end;
        }
        ranges
            .iter()
            .map(|range| Part {
                lent: self.lent.clone(),
                range: range.clone(),
            })
            .collect()
    }

    /// The buffer back, once every part is dropped (else `self` again).
    pub fn into_inner(self) -> Result<B, SplitBuf<B>> {
        match Arc::try_unwrap(self.lent) {
            Ok(mut lent) => {
                let owner = std::mem::replace(&mut lent.owner, std::ptr::null_mut());
                // SAFETY: `owner` came from `Box::into_raw` and is reclaimed
                // here once (nulled so `drop` does not); no part exists, so
                // nothing else refers to the bytes.
                Ok(*unsafe { Box::from_raw(owner) })
            }
            Err(lent) => Err(SplitBuf { lent }),
        }
    }
}

/// One disjoint range of a [`SplitBuf`], usable as a fetch buffer.
#[derive(Debug)]
pub(crate) struct Part<B> {
    lent: Arc<Lent<B>>,
    range: Range<usize>,
}

impl<B> AsMut<[u8]> for Part<B> {
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: the range lies within the buffer's bytes (checked when the
        // parts were made) and overlaps no other part's; the bytes live as
        // long as `self.lent`; `&mut self` makes this the only live slice of
        // the range.
        unsafe {
            std::slice::from_raw_parts_mut(self.lent.ptr.add(self.range.start), self.range.end - self.range.start)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_fill_disjoint_ranges_and_the_buffer_comes_back() {
        let split = SplitBuf::new(vec![0u8; 10]);
        let mut parts = split.parts(&[0..3, 3..3, 5..10]);
        let threads: Vec<_> = parts
            .drain(..)
            .enumerate()
            .map(|(n, mut part)| std::thread::spawn(move || part.as_mut().fill(n as u8 + 1)))
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let buf = split.into_inner().unwrap();
        assert_eq!(buf, [1, 1, 1, 0, 0, 3, 3, 3, 3, 3]);
    }

    #[test]
    fn the_buffer_stays_lent_while_a_part_lives() {
        let split = SplitBuf::new([7u8; 4]);
        let part = split.parts(&[1..2, 3..4]).swap_remove(0);
        let split = split.into_inner().unwrap_err();
        drop(part);
        assert_eq!(split.into_inner().unwrap(), [7; 4]);
    }

    #[test]
    #[should_panic(expected = "disjoint")]
    fn overlapping_parts_are_refused() {
        SplitBuf::new(vec![0u8; 8]).parts(&[0..4, 3..8]);
    }
}
