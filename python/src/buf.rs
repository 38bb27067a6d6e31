//! Memory that Python owns (a numpy array, a torch tensor's storage, a
//! bytearray), lent to the client for the length of a request: the address
//! and length the Python layer (`shardd._buffers`) took from the object,
//! and the object itself, held so that the memory outlives the request.
//!
//! The native API is private (`shardd._native`): only `shardd`'s own Python
//! code calls it, and it passes the address of a live, contiguous CPU
//! buffer of at least `len` bytes, writable where the request writes.

use pyo3::prelude::*;

/// `len` bytes at `ptr`, kept alive by `owner`.
#[derive(Debug)]
pub struct Lent {
    ptr: *mut u8,
    len: usize,
    owner: Py<PyAny>,
}

// SAFETY: the memory belongs to `owner`, a Python object that lives as long
// as this does; nothing here depends on the thread it is used from, and the
// reference to `owner` may be dropped from any thread (PyO3 defers the
// decrement until a thread holds the interpreter).
unsafe impl Send for Lent {}
// SAFETY: through `&Lent` the memory is only read (`as_ref`); writes need
// `&mut Lent`.
unsafe impl Sync for Lent {}

impl Lent {
    /// The memory of `owner` at `ptr`, `len` bytes.
    ///
    /// # Safety
    /// `ptr..ptr + len` must stay valid, and not be freed or moved, while
    /// `owner` lives; writable if the request writes to it.
    pub unsafe fn new(ptr: usize, len: usize, owner: Py<PyAny>) -> Lent {
        Lent {
            ptr: ptr as *mut u8,
            len,
            owner,
        }
    }

    /// Gives the owner back.
    pub fn into_owner(self) -> Py<PyAny> {
        self.owner
    }
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: valid for `len` bytes while `owner` lives (the contract of
        // `new`), and `owner` lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl AsMut<[u8]> for Lent {
    fn as_mut(&mut self) -> &mut [u8] {
        if self.len == 0 {
            return &mut [];
        }
        // SAFETY: as in `as_ref`; the Python layer lends only writable
        // memory to requests that write.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}
