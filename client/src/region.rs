//! Regions: memory a trainer allocates once, uses as its own, and names as
//! the destination of fetches.
//!
//! A [`Region`] is a memfd, page aligned, sealed against shrinking and
//! mapped by this process; its pages are all in memory (and, if asked,
//! locked there). Registered on a connection ([`crate::Client::register_region`]),
//! a fetch names `(region, offset)` for each shard's bytes: over a Unix
//! socket the daemon maps the same memfd and writes the bytes itself (no
//! payload on the socket); over TCP the connection's receiver writes each
//! payload straight to its place as it arrives. The shape of RDMA's
//! registered memory regions (see `docs/RDMA.md`).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;

/// Memory of a region: a shared mapping of its memfd.
#[derive(Debug)]
struct Memory {
    fd: OwnedFd,
    base: NonNull<u8>,
    len: usize,
    pinned: bool,
}

// SAFETY: the mapping is plain memory owned by this value; access to it
// goes through `Region`, whose methods say who may touch it when.
unsafe impl Send for Memory {}
// SAFETY: as above.
unsafe impl Sync for Memory {}

impl Drop for Memory {
    fn drop(&mut self) {
        // SAFETY: `base` and `len` are what mmap returned, unmapped once
        // (munmap also undoes mlock).
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// How to allocate a region.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegionOptions {
    /// Lock the pages in memory (mlock), as pinned memory for a GPU copy
    /// wants; needs `RLIMIT_MEMLOCK` room for the whole region.
    pub pinned: bool,
}

/// Memory that fetches can fill in place. Clones share the memory.
///
/// While a fetch into a region is under way, the daemon (or, over TCP, the
/// connection's receiver) writes the places it names: read them once the
/// fetch has returned. A fetch that is dropped before it returns may still
/// be writing its places until its answer arrives.
#[derive(Clone, Debug)]
pub struct Region {
    memory: Arc<Memory>,
}

impl Region {
    /// A region of at least `len` bytes (rounded up to whole pages).
    pub fn new(len: usize) -> io::Result<Region> {
        Region::with_options(len, RegionOptions::default())
    }

    /// A region of at least `len` bytes, allocated as `options` says.
    pub fn with_options(len: usize, options: RegionOptions) -> io::Result<Region> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a region needs at least one byte",
            ));
        }
        let page = page_size();
        let len = len.div_ceil(page) * page;
        let name = CString::new("shardd-region").expect("no NUL in the name");
        // SAFETY: plain syscall with a valid name; checked below.
        let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor, ours alone.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let file = std::fs::File::from(fd);
        file.set_len(len as u64)?;
        // Sealed against shrinking: the daemon's mapping of it can never
        // lose pages under it.
        // SAFETY: fcntl on our descriptor.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh shared mapping of a file of `len` bytes that
        // cannot shrink; MAP_POPULATE puts every page in memory now, as the
        // daemon requires of a region it writes into.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let memory = Memory {
            fd: file.into(),
            base: NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?,
            len,
            pinned: false,
        };
        let mut memory = memory;
        if options.pinned {
            // SAFETY: locks our own mapping.
            if unsafe { libc::mlock(ptr, len) } != 0 {
                let e = io::Error::last_os_error();
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot lock the region's {len} bytes in memory ({e}): raise RLIMIT_MEMLOCK"),
                ));
            }
            memory.pinned = true;
        }
        Ok(Region {
            memory: Arc::new(memory),
        })
    }

    /// Bytes of the region (a whole number of pages).
    pub fn len(&self) -> usize {
        self.memory.len
    }

    /// Whether the region has no bytes (never).
    pub fn is_empty(&self) -> bool {
        self.memory.len == 0
    }

    /// Whether its pages are locked in memory.
    pub fn is_pinned(&self) -> bool {
        self.memory.pinned
    }

    /// Where the region starts in this process (page aligned), e.g. to
    /// hand it to a framework as a tensor's storage.
    pub fn as_ptr(&self) -> *mut u8 {
        self.memory.base.as_ptr()
    }

    /// The region's bytes. See the type's docs for when fetches write them.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is `len` bytes, alive as long as `self`.
        unsafe { std::slice::from_raw_parts(self.memory.base.as_ptr(), self.memory.len) }
    }

    /// The region's bytes, to write. See the type's docs for when fetches
    /// write them too.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as `as_slice`; `&mut self` keeps this handle from reading
        // meanwhile (clones share the memory, as shared memory does).
        unsafe { std::slice::from_raw_parts_mut(self.memory.base.as_ptr(), self.memory.len) }
    }

    /// Whether `other` is the same memory.
    pub fn same_as(&self, other: &Region) -> bool {
        Arc::ptr_eq(&self.memory, &other.memory)
    }
}

impl AsFd for Region {
    /// The region's memfd (what a Unix registration sends the daemon).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.memory.fd.as_fd()
    }
}

/// A region as the destination of a fetch over TCP: the connection's
/// receiver writes payloads straight into it.
pub(crate) struct RegionBuf(pub(crate) Region);

impl AsMut<[u8]> for RegionBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        self.0.as_mut_slice()
    }
}

/// Bytes of a region, as the payload of a put over TCP (sent from the
/// region, not copied out of it).
pub(crate) struct RegionBytes {
    region: Region,
    range: std::ops::Range<usize>,
}

impl RegionBytes {
    /// `range` of `region` (checked by the caller to lie in it).
    pub(crate) fn new(region: Region, range: std::ops::Range<usize>) -> RegionBytes {
        RegionBytes { region, range }
    }
}

impl AsRef<[u8]> for RegionBytes {
    fn as_ref(&self) -> &[u8] {
        &self.region.as_slice()[self.range.clone()]
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if page > 0 { page as usize } else { 4096 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_region_is_page_aligned_sealed_and_in_memory() {
        let mut region = Region::new(5000).unwrap();
        assert_eq!(region.len(), 8192);
        assert_eq!(region.as_ptr() as usize % 4096, 0);
        region.as_mut_slice()[8191] = 7;
        assert_eq!(region.as_slice()[8191], 7);
        // SAFETY: fcntl on the region's descriptor.
        let seals = unsafe { libc::fcntl(region.as_fd().as_raw_fd(), libc::F_GET_SEALS) };
        assert_ne!(seals & libc::F_SEAL_SHRINK, 0);
        assert!(Region::new(0).is_err());
        let clone = region.clone();
        assert!(clone.same_as(&region) && !clone.same_as(&Region::new(1).unwrap()));
    }
}
