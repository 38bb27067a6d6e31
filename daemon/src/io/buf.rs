//! Buffers whose address and capacity satisfy O_DIRECT, and a pool of them.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::any::Any;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

/// Alignment of buffer addresses, file offsets and transfer lengths for
/// O_DIRECT. 4 KiB satisfies every logical block size in use (512 B, 4 KiB).
pub const ALIGN: usize = 4096;

/// Rounds `n` up to a multiple of [`ALIGN`].
pub const fn align_up(n: u64) -> u64 {
    n.div_ceil(ALIGN as u64) * ALIGN as u64
}

/// An owned, initialised buffer whose address and capacity are multiples
/// of [`ALIGN`]. Its first `len` bytes are the valid data.
///
/// The memory comes from the heap (zeroed), from a [`BufferPool`] (and goes
/// back to it when dropped), or from elsewhere, such as a block of the
/// pinned arena ([`AlignedBuf::from_external`]), which then may carry the
/// index of the io_uring fixed buffer it lies in.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    cap: usize,
    len: usize,
    storage: Storage,
    /// io_uring fixed-buffer index of the memory, if registered.
    fixed: Option<u16>,
    /// Released together with the buffer (e.g. a memory-budget permit).
    guard: Option<Box<dyn Any + Send + Sync>>,
}

enum Storage {
    /// Our own allocation, freed on drop.
    Heap,
    /// Goes back to the pool on drop (or is freed if the pool is full).
    Pool(Arc<PoolShared>),
    /// Someone else's memory; dropping the owner gives it back.
    External { _owner: Box<dyn Any + Send + Sync> },
}

// SAFETY: `AlignedBuf` owns its memory exclusively (like `Vec<u8>`; external
// memory is handed over exclusively by `from_external`'s contract), so it may
// move between threads; the pool handle is an `Arc` of a `Mutex`.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only give out `&[u8]`; mutation needs `&mut self`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of at least `capacity` bytes (rounded up to [`ALIGN`]).
    pub fn new(capacity: usize) -> AlignedBuf {
        let cap = align_up(capacity as u64) as usize;
        if cap == 0 {
            return AlignedBuf::empty();
        }
        let layout = Self::layout(cap);
        // SAFETY: `layout` has a non-zero size (cap > 0 here).
        let raw = unsafe { alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout);
        };
        AlignedBuf {
            ptr,
            cap,
            len: 0,
            storage: Storage::Heap,
            fixed: None,
            guard: None,
        }
    }

    /// A buffer with no capacity; allocates nothing.
    pub fn empty() -> AlignedBuf {
        AlignedBuf {
            // An aligned dangling pointer, never dereferenced for cap == 0.
            ptr: NonNull::<[u8; ALIGN]>::dangling().cast(),
            cap: 0,
            len: 0,
            storage: Storage::Heap,
            fixed: None,
            guard: None,
        }
    }

    /// A buffer over memory owned by `owner` (dropped with the buffer),
    /// lying in io_uring fixed buffer `fixed` if given.
    ///
    /// # Safety
    /// `ptr` must be aligned to [`ALIGN`], `cap` a multiple of it, and the
    /// `cap` bytes at `ptr` initialised, valid for reads and writes, and used
    /// by nobody else for as long as `owner` lives.
    pub unsafe fn from_external(
        ptr: NonNull<u8>,
        cap: usize,
        fixed: Option<u16>,
        owner: Box<dyn Any + Send + Sync>,
    ) -> AlignedBuf {
        debug_assert!((ptr.as_ptr() as usize).is_multiple_of(ALIGN) && cap.is_multiple_of(ALIGN));
        AlignedBuf {
            ptr,
            cap,
            len: 0,
            storage: Storage::External { _owner: owner },
            fixed,
            guard: None,
        }
    }

    /// The io_uring fixed-buffer index of the memory, if it has one.
    pub fn fixed_index(&self) -> Option<u16> {
        self.fixed
    }

    fn layout(cap: usize) -> Layout {
        // The only failure is a size overflowing isize, which no shard reaches.
        Layout::from_size_align(cap, ALIGN).expect("buffer size overflows isize")
    }

    /// Attaches something to release when the buffer is dropped or goes
    /// back to its pool, such as the memory-budget permit it was taken under.
    pub fn set_guard(&mut self, guard: impl Any + Send + Sync) {
        self.guard = Some(Box::new(guard));
    }

    /// Capacity in bytes, a multiple of [`ALIGN`].
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Bytes of valid data.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there is no valid data.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sets the length of the valid data; the memory is always initialised,
    /// so any length up to the capacity is sound.
    ///
    /// # Panics
    /// If `len` exceeds the capacity.
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.cap, "len {len} beyond capacity {}", self.cap);
        self.len = len;
    }

    /// The valid data.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `cap >= len` initialised bytes owned by us
        // (or dangling with len == 0, which is valid for an empty slice).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The whole capacity, valid data and padding, for writing out.
    pub fn as_capacity(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `cap` initialised bytes owned by us.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.cap) }
    }

    /// The whole capacity, for filling.
    pub fn as_mut_capacity(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, for `cap` bytes, and `&mut self` makes the
        // borrow exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.cap) }
    }

    /// Start of the memory, for I/O submission. Valid for `capacity()` bytes
    /// while the buffer is alive and not moved out of its owner's control.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Start of the memory, for write submission.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// Copies `data` into the buffer, zero-fills up to the next [`ALIGN`]
    /// boundary and sets `len` to `data.len()`. Returns the padded length.
    ///
    /// # Panics
    /// If `data` does not fit.
    pub fn fill_padded(&mut self, data: &[u8]) -> usize {
        let padded = align_up(data.len() as u64) as usize;
        let memory = self.as_mut_capacity();
        memory[..data.len()].copy_from_slice(data);
        memory[data.len()..padded].fill(0);
        self.len = data.len();
        padded
    }

    /// Zero-fills from `len` up to the next [`ALIGN`] boundary and returns
    /// that padded length; `len` is unchanged.
    pub fn zero_pad(&mut self) -> usize {
        let len = self.len;
        let padded = align_up(len as u64) as usize;
        self.as_mut_capacity()[len..padded].fill(0);
        padded
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.cap == 0 {
            return;
        }
        match std::mem::replace(&mut self.storage, Storage::Heap) {
            // Dropping the owner gives the memory back.
            Storage::External { _owner } => {}
            Storage::Pool(pool) => pool.give_back(self.ptr),
            Storage::Heap => {
                // SAFETY: heap memory came from `alloc_zeroed` with this
                // exact layout and is freed exactly once.
                unsafe { dealloc(self.ptr.as_ptr(), Self::layout(self.cap)) };
            }
        }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("cap", &self.cap)
            .field("len", &self.len)
            .field(
                "storage",
                &match self.storage {
                    Storage::Heap => "heap",
                    Storage::Pool(_) => "pool",
                    Storage::External { .. } => "external",
                },
            )
            .field("fixed", &self.fixed)
            .finish()
    }
}

/// Read-only memory kept alive by a shared owner, for writes that go out
/// straight from where the data lives (e.g. a cached shard being flushed
/// while readers may read it too).
pub struct SharedSlice {
    ptr: NonNull<u8>,
    len: usize,
    fixed: Option<u16>,
    _owner: Arc<dyn Any + Send + Sync>,
}

// SAFETY: the memory is only read through a `SharedSlice`, and `_owner`
// keeps it alive; reading from several threads at once is fine.
unsafe impl Send for SharedSlice {}
// SAFETY: as above; there is no interior mutability.
unsafe impl Sync for SharedSlice {}

impl SharedSlice {
    /// A view of `len` bytes at `ptr`, alive as long as `owner`.
    ///
    /// # Safety
    /// The `len` bytes at `ptr` must be initialised and stay valid and
    /// unmodified for as long as `owner` lives.
    pub unsafe fn new(
        ptr: NonNull<u8>,
        len: usize,
        fixed: Option<u16>,
        owner: Arc<dyn Any + Send + Sync>,
    ) -> SharedSlice {
        SharedSlice {
            ptr,
            len,
            fixed,
            _owner: owner,
        }
    }

    /// Start of the bytes.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// io_uring fixed-buffer index of the memory, if registered.
    pub fn fixed_index(&self) -> Option<u16> {
        self.fixed
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: valid, initialised and unmodified for our lifetime (`new`'s contract).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::fmt::Debug for SharedSlice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSlice")
            .field("len", &self.len)
            .field("fixed", &self.fixed)
            .finish()
    }
}

/// Size of a transparent huge page (x86-64 and aarch64 with 4 KiB base
/// pages); slabs are aligned to it.
pub const HUGE_PAGE: usize = 2 << 20;

/// Keeps released buffers of one size for reuse, so the data path does not
/// pay for page faults and zeroing of fresh memory on every chunk.
///
/// The buffers are carved out of slabs of anonymous memory aligned to
/// [`HUGE_PAGE`] and advised for transparent huge pages: a 1 MiB O_DIRECT
/// transfer into such a buffer spans one physically contiguous page instead
/// of 256 small ones, which devices that take few memory segments per
/// request (a virtio disk takes 254) would otherwise split. Without
/// transparent huge pages (`transparent_hugepage/enabled = never`) the slabs
/// are plain memory.
///
/// Slabs live as long as the pool: it holds as many buffers as were ever in
/// use at once, which its users bound (the daemon's buffer budget).
#[derive(Clone, Debug)]
pub struct BufferPool {
    shared: Arc<PoolShared>,
}

#[derive(Debug)]
struct PoolShared {
    buf_size: usize,
    state: Mutex<PoolState>,
}

#[derive(Debug, Default)]
struct PoolState {
    idle: Vec<IdleBuf>,
    slabs: Vec<Slab>,
}

#[derive(Debug)]
struct IdleBuf(NonNull<u8>);

// SAFETY: an idle buffer is memory of the pool's slabs that no buffer uses.
unsafe impl Send for IdleBuf {}

/// One anonymous mapping, unmapped when the pool goes.
#[derive(Debug)]
struct Slab {
    map: NonNull<u8>,
    map_len: usize,
}

// SAFETY: a slab is plain memory owned by the pool; only the pool unmaps it.
unsafe impl Send for Slab {}

impl Slab {
    /// Maps `len` bytes (a multiple of [`HUGE_PAGE`]) starting at a
    /// [`HUGE_PAGE`] boundary; returns the slab and that start.
    fn map(len: usize) -> std::io::Result<(Slab, NonNull<u8>)> {
        let map_len = len + HUGE_PAGE - ALIGN;
        // SAFETY: a new private anonymous mapping; the kernel picks the
        // address. The result is checked against MAP_FAILED.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let map = NonNull::new(raw.cast::<u8>()).ok_or_else(|| std::io::Error::other("mmap returned null"))?;
        let slab = Slab { map, map_len };
        let skip = (map.as_ptr() as usize).next_multiple_of(HUGE_PAGE) - map.as_ptr() as usize;
        // SAFETY: `skip < HUGE_PAGE`, so `skip + len <= map_len`: in the mapping.
        let start = unsafe { map.add(skip) };
        // SAFETY: advice on our own mapping; failing only means small pages.
        unsafe { libc::madvise(start.as_ptr().cast(), len, libc::MADV_HUGEPAGE) };
        Ok((slab, start))
    }
}

impl Drop for Slab {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once, when no buffer of it is
        // left (buffers hold the pool, which holds the slabs).
        unsafe { libc::munmap(self.map.as_ptr().cast(), self.map_len) };
    }
}

impl BufferPool {
    /// A pool of `buf_size`-byte buffers (rounded up to [`ALIGN`]).
    pub fn new(buf_size: usize) -> BufferPool {
        BufferPool {
            shared: Arc::new(PoolShared {
                buf_size: align_up(buf_size.max(1) as u64) as usize,
                state: Mutex::new(PoolState::default()),
            }),
        }
    }

    /// Size of the pool's buffers.
    pub fn buf_size(&self) -> usize {
        self.shared.buf_size
    }

    /// Bytes of slabs the pool has mapped (idle and in-use buffers).
    pub fn mapped_bytes(&self) -> usize {
        let state = self.shared.state();
        let per_slab = slab_len(self.shared.buf_size);
        state.slabs.len() * per_slab
    }

    /// A buffer of `buf_size()` bytes with `len` 0. Its contents are
    /// whatever the previous user left (initialised memory).
    pub fn take(&self) -> AlignedBuf {
        let size = self.shared.buf_size;
        let ptr = {
            let mut state = self.shared.state();
            match state.idle.pop() {
                Some(IdleBuf(ptr)) => ptr,
                None => {
                    let len = slab_len(size);
                    let (slab, start) = Slab::map(len).unwrap_or_else(|e| {
                        tracing::error!(error = %e, bytes = len, "cannot map buffer memory");
                        std::alloc::handle_alloc_error(AlignedBuf::layout(len))
                    });
                    state.slabs.push(slab);
                    // Fresh anonymous memory reads as zeros: initialised.
                    for i in (1..len / size).rev() {
                        // SAFETY: `i * size + size <= len`: inside the slab.
                        state.idle.push(IdleBuf(unsafe { start.add(i * size) }));
                    }
                    start
                }
            }
        };
        AlignedBuf {
            ptr,
            cap: size,
            len: 0,
            storage: Storage::Pool(self.shared.clone()),
            fixed: None,
            guard: None,
        }
    }
}

/// Bytes per slab for buffers of `buf_size`: at least one huge page, and
/// a whole number of them.
fn slab_len(buf_size: usize) -> usize {
    buf_size.next_multiple_of(HUGE_PAGE)
}

impl PoolShared {
    fn state(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes a buffer of the pool's slabs back.
    fn give_back(&self, ptr: NonNull<u8>) {
        self.state().idle.push(IdleBuf(ptr));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_and_padding() {
        let mut buf = AlignedBuf::new(5000);
        assert_eq!(buf.capacity(), 8192);
        assert_eq!(buf.as_ptr() as usize % ALIGN, 0);
        assert_eq!(buf.fill_padded(b"hello"), 4096);
        assert_eq!(buf.as_slice(), b"hello");
        assert_eq!(align_up(0), 0);
        assert_eq!(align_up(1), 4096);
        assert_eq!(align_up(4096), 4096);
        assert_eq!(AlignedBuf::empty().as_slice(), b"");
    }

    #[test]
    fn pool_buffers_come_from_huge_page_aligned_slabs_and_are_reused() {
        let pool = BufferPool::new(1 << 20);
        let mut a = pool.take();
        a.fill_padded(b"x");
        let a_ptr = a.as_ptr();
        assert_eq!(a_ptr as usize % HUGE_PAGE, 0, "the first buffer starts a huge page");
        let b = pool.take();
        assert_eq!(
            b.as_ptr() as usize,
            a_ptr as usize + (1 << 20),
            "two buffers per 2 MiB slab"
        );
        assert_eq!(pool.mapped_bytes(), HUGE_PAGE);
        let c = pool.take();
        assert_eq!(
            pool.mapped_bytes(),
            2 * HUGE_PAGE,
            "a second slab once the first is in use"
        );
        drop(a);
        let d = pool.take();
        assert_eq!(d.as_ptr(), a_ptr, "a returned buffer is reused before mapping more");
        assert_eq!(d.len(), 0);
        assert_eq!(&d.as_capacity()[..1], b"x", "reused memory keeps what it held");
        assert_eq!(pool.mapped_bytes(), 2 * HUGE_PAGE);
        assert!(c.as_capacity().iter().all(|&b| b == 0), "fresh memory is zeroed");
        drop((b, c, d));

        let large = BufferPool::new(3 << 20);
        assert_eq!(large.take().capacity(), 3 << 20);
        assert_eq!(large.mapped_bytes(), 4 << 20);
    }
}
