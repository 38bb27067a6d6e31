//! The arena's memory: a memfd (so it can be handed to local clients),
//! mapped shared and read-write, populated piece by piece
//! ([`ArenaMemory::populate`]: locked into RAM as far as the memlock limit
//! allows, its pages faulted in otherwise).
//!
//! Clients get a read-only descriptor of it and nothing more: once mapped,
//! the memfd is sealed against shrinking, growing and any new write access
//! (`F_SEAL_FUTURE_WRITE`: no `write`, no writable shared mapping, no hole
//! punching, whatever descriptor is used, even one reopened read-write
//! through `/proc`). The daemon's own mapping, made before the seal, stays
//! the only way to change the arena.
//!
//! An arena kept across restarts ([`ArenaMemory::create`] with `kept`) must
//! be mapped writable again by the next daemon, which that seal forbids: it
//! is sealed against resizing only, and made readable and writable by the
//! daemon's user alone (mode 0600). Clients still get a read-only
//! descriptor; one running as another user cannot reopen it writable, one
//! running as the daemon's user (or root) can. See docs/SECURITY.md.

use std::ffi::CString;
use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::Context;
use serde::Deserialize;

/// The arena memfd's name (`/memfd:shardd-arena` in a process's maps).
pub const MEMFD_NAME: &str = "shardd-arena";

/// Huge pages for the arena.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HugePages {
    /// Normal 4 KiB pages.
    #[default]
    Off,
    /// Ask for transparent huge pages (`madvise`); the kernel decides.
    Transparent,
    /// Pages from the hugetlb pool (`vm.nr_hugepages`); start fails if the
    /// pool cannot hold the arena.
    Hugetlb,
}

/// How much of the arena is locked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Locked {
    /// Bytes locked in RAM.
    pub bytes: u64,
    /// RLIMIT_MEMLOCK (soft), in bytes; `u64::MAX` for unlimited.
    pub limit: u64,
}

/// The mapped memfd.
#[derive(Debug)]
pub struct ArenaMemory {
    /// The memfd, writable: what is handed to the next daemon when the
    /// arena is kept across a restart.
    fd: OwnedFd,
    /// Whether it is sealed to be kept (see the module doc).
    kept: bool,
    /// The descriptor for clients: the sealed memfd reopened read-only; or
    /// why the arena cannot be shared.
    shared_fd: Result<OwnedFd, String>,
    base: NonNull<u8>,
    len: usize,
    /// Bytes locked so far, and RLIMIT_MEMLOCK.
    locked: AtomicU64,
    limit: u64,
    /// Set once an mlock failed: the limit is reached, later pieces are
    /// only faulted in.
    lock_refused: AtomicBool,
    /// Whether the arena has 4 KiB pages (no huge pages asked for, or
    /// transparent ones the kernel does not give shared memory).
    small_pages: bool,
}

// SAFETY: the mapping is plain shared memory; `ArenaMemory` only hands out
// raw pointers, whose use is governed by the allocator's exclusive blocks.
unsafe impl Send for ArenaMemory {}
// SAFETY: as above; no method mutates through `&self`.
unsafe impl Sync for ArenaMemory {}

impl ArenaMemory {
    /// Creates and maps `len` bytes (a multiple of the page size); nothing
    /// is locked or faulted in until [`ArenaMemory::populate`]. `kept`: to
    /// be handed to the next daemon at a restart (sealed as the module doc
    /// says).
    pub fn create(len: usize, huge: HugePages, kept: bool) -> anyhow::Result<ArenaMemory> {
        let fd = memfd(huge).context("create the arena's memfd")?;
        let file = std::fs::File::from(fd);
        file.set_len(len as u64)
            .with_context(|| format!("size the arena to {len} bytes"))?;
        ArenaMemory::map(OwnedFd::from(file), len, huge, kept).map_err(|e| anyhow::anyhow!(e))
    }

    /// Maps the memfd of an arena a previous daemon kept (`fd`, writable),
    /// if it is one this configuration can use: a memfd of exactly `len`
    /// bytes of the same kind of pages, sealed to be kept and nothing more.
    /// Otherwise says why not.
    pub fn adopt(fd: OwnedFd, len: usize, huge: HugePages) -> Result<ArenaMemory, String> {
        let file = std::fs::File::from(fd);
        let meta = file.metadata().map_err(|e| format!("cannot stat it ({e})"))?;
        if meta.len() != len as u64 {
            return Err(format!("it holds {} bytes and arena.size asks for {len}", meta.len()));
        }
        // SAFETY: fcntl on a descriptor we own; no pointers involved.
        let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 {
            return Err("it is not a memfd".into());
        }
        if seals & KEPT_SEALS != KEPT_SEALS || seals & WRITE_SEALS != 0 {
            return Err(format!("its seals ({seals:#x}) are not those of a kept arena"));
        }
        // SAFETY: fstatfs on a descriptor we own into a zeroed out-struct.
        let hugetlb = unsafe {
            let mut fs: libc::statfs = std::mem::zeroed();
            libc::fstatfs(file.as_raw_fd(), &mut fs) == 0 && fs.f_type == libc::HUGETLBFS_MAGIC
        };
        if hugetlb != (huge == HugePages::Hugetlb) {
            return Err("its pages (hugetlb or not) differ from arena.huge_pages".into());
        }
        ArenaMemory::map(OwnedFd::from(file), len, huge, true)
    }

    /// Maps `fd` (a memfd of `len` bytes) shared and writable, then seals it.
    fn map(fd: OwnedFd, len: usize, huge: HugePages, kept: bool) -> Result<ArenaMemory, String> {
        // SAFETY: a new shared mapping of our memfd; the kernel picks the
        // address. The result is checked against MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            if huge == HugePages::Hugetlb {
                return Err(format!(
                    "map a {len}-byte arena of huge pages: {e}; reserve enough huge pages \
                     (vm.nr_hugepages) or set arena.huge_pages = \"off\""
                ));
            }
            return Err(format!("map a {len}-byte arena: {e}"));
        }
        let base = NonNull::new(ptr.cast::<u8>()).ok_or("mmap returned a null arena")?;
        let small_pages = match huge {
            HugePages::Off => true,
            HugePages::Hugetlb => false,
            HugePages::Transparent => {
                // SAFETY: advice on our own mapping; failure only means no huge pages.
                let rc = unsafe { libc::madvise(ptr, len, libc::MADV_HUGEPAGE) };
                if rc != 0 {
                    tracing::warn!(error = %io::Error::last_os_error(), "transparent huge pages unavailable for the arena");
                    true
                } else {
                    warn_if_shmem_thp_off(std::fs::read_to_string(SHMEM_THP).ok().as_deref())
                }
            }
        };
        // Sealed only now: the daemon's writable mapping exists, and (unless
        // kept) no other can be made from here on.
        let shared_fd = if kept { seal_kept(&fd) } else { seal(&fd) }.and_then(|()| reopen_read_only(&fd));
        Ok(ArenaMemory {
            fd,
            kept,
            shared_fd,
            base,
            len,
            locked: AtomicU64::new(0),
            limit: memlock_limit(),
            lock_refused: AtomicBool::new(false),
            small_pages,
        })
    }

    /// Makes `range` (page aligned, inside the mapping) resident before any
    /// block in it is handed out: locks it if the memlock limit allows (a
    /// process with CAP_IPC_LOCK, or a large enough limit), else as much of
    /// it as the limit leaves, and faults the rest in (`MADV_POPULATE_WRITE`,
    /// Linux 5.14; on older kernels the pages fault in on first use).
    /// Takes about a second per GiB of small pages: run it off the serving
    /// path. Nothing else may use the range meanwhile.
    pub fn populate(&self, range: Range<usize>) {
        debug_assert!(range.end <= self.len);
        let page = 4096usize;
        let mut locked_to = range.start;
        if !self.lock_refused.load(Ordering::Relaxed) {
            if self.lock(range.clone()) {
                return;
            }
            self.lock_refused.store(true, Ordering::Relaxed);
            // Leave a little of the limit to what else the process locks.
            let budget = self
                .limit
                .saturating_sub(1 << 20)
                .saturating_sub(self.locked.load(Ordering::Relaxed));
            let part = (budget as usize).min(range.len()) / page * page;
            if part > 0 && self.lock(range.start..range.start + part) {
                locked_to = range.start + part;
            }
        }
        if locked_to < range.end {
            // Fails (EINVAL) only on a kernel before 5.14, where the pages
            // fault in on first use instead.
            // SAFETY: advice on a range of our own mapping; the kernel only
            // faults the pages in (they read as zeros, as before).
            unsafe {
                libc::madvise(
                    self.base.as_ptr().add(locked_to).cast(),
                    range.end - locked_to,
                    libc::MADV_POPULATE_WRITE,
                )
            };
        }
    }

    /// Locks `range`; whether it could.
    fn lock(&self, range: Range<usize>) -> bool {
        // SAFETY: `range` lies inside our mapping.
        let rc = unsafe { libc::mlock(self.base.as_ptr().add(range.start).cast(), range.len()) };
        if rc == 0 {
            self.locked.fetch_add(range.len() as u64, Ordering::Relaxed);
        }
        rc == 0
    }

    /// Start of the mapping.
    pub fn base(&self) -> NonNull<u8> {
        self.base
    }

    /// Length of the mapping.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: an arena has at least one block).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How much is locked so far.
    pub fn locked(&self) -> Locked {
        Locked {
            bytes: self.locked.load(Ordering::Relaxed),
            limit: self.limit,
        }
    }

    /// Whether the arena has 4 KiB pages rather than huge ones.
    pub fn small_pages(&self) -> bool {
        self.small_pages
    }

    /// The writable memfd, to hand to the next daemon; `None` unless the
    /// arena was made to be kept.
    pub fn kept_fd(&self) -> Option<BorrowedFd<'_>> {
        self.kept.then(|| self.fd.as_fd())
    }

    /// The read-only descriptor of the sealed memfd, to hand to local
    /// clients; or why there is none (the arena cannot be shared safely).
    pub fn shared_fd(&self) -> Result<BorrowedFd<'_>, &str> {
        self.shared_fd.as_ref().map(|fd| fd.as_fd()).map_err(String::as_str)
    }
}

/// The seals clients can rely on: the arena never changes size (so a
/// mapping of it never faults) and nobody but the daemon's own mapping
/// writes to it.
const SHARED_SEALS: libc::c_int =
    libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_FUTURE_WRITE | libc::F_SEAL_SEAL;

/// The seals of an arena kept across restarts: it never changes size, and
/// no seal can be added (a kept arena stays one the next daemon can map).
const KEPT_SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

/// Seals against writes; a kept arena has neither.
const WRITE_SEALS: libc::c_int = libc::F_SEAL_WRITE | libc::F_SEAL_FUTURE_WRITE;

/// A new memfd that can be sealed; not executable where the kernel knows
/// how to say so (`MFD_NOEXEC_SEAL`, Linux 6.3, required where
/// `vm.memfd_noexec = 2`).
fn memfd(huge: HugePages) -> io::Result<OwnedFd> {
    let name = CString::new(MEMFD_NAME).unwrap_or_default();
    let mut flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    if huge == HugePages::Hugetlb {
        flags |= libc::MFD_HUGETLB;
    }
    let create = |flags: libc::c_uint| {
        // SAFETY: plain syscall with a valid NUL-terminated name; checked below.
        let raw = unsafe { libc::memfd_create(name.as_ptr(), flags) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that we own from here on.
        Ok(unsafe { OwnedFd::from_raw_fd(raw) })
    };
    match create(flags | libc::MFD_NOEXEC_SEAL) {
        // Older kernels refuse the flag they do not know.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => create(flags),
        created => created,
    }
}

/// Seals the memfd with [`SHARED_SEALS`].
fn seal(fd: &OwnedFd) -> Result<(), String> {
    // SAFETY: fcntl on a descriptor we own; no pointers involved.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, SHARED_SEALS) };
    if rc != 0 {
        return Err(format!(
            "the arena's memfd cannot be sealed against writes and resizing ({}; \
             F_SEAL_FUTURE_WRITE needs Linux 5.1)",
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Seals a kept arena's memfd with [`KEPT_SEALS`] (if not sealed so
/// already: one adopted from a previous daemon is) and makes it readable and
/// writable by the daemon's user alone, so that clients running as other
/// users cannot reopen it writable through `/proc`.
fn seal_kept(fd: &OwnedFd) -> Result<(), String> {
    // SAFETY: fcntl and fchmod on a descriptor we own; no pointers involved.
    let (seals, chmod) = unsafe {
        let current = libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS);
        let sealed = if current >= 0 && current & KEPT_SEALS == KEPT_SEALS {
            0
        } else {
            libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, KEPT_SEALS)
        };
        (sealed, libc::fchmod(fd.as_raw_fd(), 0o600))
    };
    if seals != 0 || chmod != 0 {
        return Err(format!(
            "the arena's memfd cannot be sealed against resizing and made private to the daemon's user ({})",
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// The memfd opened again, read-only, through `/proc/self/fd`: the
/// descriptor clients get, so they hold no write access at all.
fn reopen_read_only(fd: &OwnedFd) -> Result<OwnedFd, String> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    std::fs::OpenOptions::new()
        .read(true)
        .open(&path)
        .map(OwnedFd::from)
        .map_err(|e| format!("the arena's memfd cannot be reopened read-only through {path} ({e})"))
}

impl Drop for ArenaMemory {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping once; no block outlives the arena
        // (blocks hold an `Arc` of it).
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// Where the kernel says whether shared memory (the arena's memfd) may get
/// transparent huge pages.
const SHMEM_THP: &str = "/sys/kernel/mm/transparent_hugepage/shmem_enabled";

/// Where the kernel says whether private anonymous memory (the daemon's
/// chunk buffers) may get transparent huge pages.
const ANON_THP: &str = "/sys/kernel/mm/transparent_hugepage/enabled";

/// Whether the daemon's chunk buffers, which ask for transparent huge pages
/// (`madvise`), can get them.
pub fn anonymous_huge_pages() -> bool {
    anon_thp_allowed(std::fs::read_to_string(ANON_THP).ok().as_deref())
}

fn anon_thp_allowed(contents: Option<&str>) -> bool {
    matches!(contents.and_then(selected_mode), Some("always" | "madvise"))
}

/// The selected mode in the contents of [`SHMEM_THP`] or [`ANON_THP`], e.g.
/// `always within_size advise [never] deny force` gives `never`.
fn selected_mode(contents: &str) -> Option<&str> {
    contents
        .split_whitespace()
        .find_map(|word| word.strip_prefix('[')?.strip_suffix(']'))
}

/// Says once, at start, when `huge_pages = "transparent"` cannot take effect:
/// the advice on a memfd mapping is ignored unless the kernel allows huge
/// pages for shared memory, which many distributions do not by default.
fn warn_if_shmem_thp_off(contents: Option<&str>) -> bool {
    let mode = contents.and_then(selected_mode);
    let off = matches!(mode, None | Some("never") | Some("deny"));
    if off {
        tracing::warn!(
            shmem_enabled = mode.unwrap_or("unknown"),
            "arena.huge_pages = \"transparent\", but the kernel gives shared memory no transparent huge \
             pages: the arena has 4 KiB pages; write `advise` to {SHMEM_THP}, or use \
             arena.huge_pages = \"hugetlb\""
        );
    }
    off
}

/// The soft RLIMIT_MEMLOCK in bytes (`u64::MAX` when unlimited).
fn memlock_limit() -> u64 {
    // SAFETY: zeroed rlimit is a valid out-parameter.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: valid resource and out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return 0;
    }
    if limit.rlim_cur == libc::RLIM_INFINITY {
        u64::MAX
    } else {
        limit.rlim_cur
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_selected_shmem_huge_page_mode_is_the_bracketed_one() {
        assert_eq!(
            selected_mode("always within_size advise [never] deny force\n"),
            Some("never")
        );
        assert_eq!(
            selected_mode("always within_size [advise] never deny force"),
            Some("advise")
        );
        assert_eq!(selected_mode("always never"), None);
    }

    #[test]
    fn chunk_buffers_get_huge_pages_where_anonymous_memory_may_have_them() {
        assert!(anon_thp_allowed(Some("always [madvise] never\n")));
        assert!(anon_thp_allowed(Some("[always] madvise never\n")));
        assert!(!anon_thp_allowed(Some("always madvise [never]\n")));
        assert!(!anon_thp_allowed(None));
    }

    #[test]
    fn transparent_huge_pages_warn_unless_the_kernel_allows_them_for_shared_memory() {
        assert!(warn_if_shmem_thp_off(Some(
            "always within_size advise [never] deny force"
        )));
        assert!(warn_if_shmem_thp_off(Some(
            "always within_size advise never [deny] force"
        )));
        assert!(warn_if_shmem_thp_off(None));
        assert!(!warn_if_shmem_thp_off(Some(
            "always within_size [advise] never deny force"
        )));
        assert!(!warn_if_shmem_thp_off(Some(
            "[always] within_size advise never deny force"
        )));
        assert!(!warn_if_shmem_thp_off(Some(
            "always [within_size] advise never deny force"
        )));
    }
}
