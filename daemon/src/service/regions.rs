//! Regions of a client's memory registered as destinations of fetches.
//!
//! Over a Unix socket a region is a memfd the client made and sealed
//! against shrinking: the daemon checks the seal (a region that could
//! shrink under the daemon's mapping would make its writes fault), maps it
//! and writes fetched bytes into it itself. Over TCP only its length is
//! known here: the bytes go in payloads and the client places them. Either
//! way every place a request names is checked against the registration,
//! and the regions go with their connection.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use shardd_client::copy::copy_nonoverlapping_streaming;
use shardd_protocol::{RegionPlace, Status};

use crate::store::StoreError;

/// Descriptors that came over a Unix connection, waiting for the region
/// registration they were sent with.
#[derive(Debug, Default)]
pub struct PassedFds(Mutex<std::collections::VecDeque<OwnedFd>>);

/// Most descriptors that may wait at once: each registration brings one,
/// and it is taken as soon as the registration's frame is read.
pub const MAX_PASSED_FDS: usize = 4;

impl PassedFds {
    /// Keeps descriptors that arrived; false if too many are waiting (the
    /// connection is then closed: a client sends one per registration).
    pub fn push(&self, fds: Vec<OwnedFd>) -> bool {
        let mut queue = self.0.lock().unwrap_or_else(|p| p.into_inner());
        queue.extend(fds);
        queue.len() <= MAX_PASSED_FDS
    }

    /// The oldest descriptor waiting.
    pub fn pop(&self) -> Option<OwnedFd> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).pop_front()
    }
}

/// A client's region as the daemon holds it.
#[derive(Debug)]
pub struct Region {
    len: u64,
    /// The daemon's mapping, over a Unix socket.
    mapped: Option<Mapping>,
}

/// A shared, writable mapping of a client's sealed memfd.
#[derive(Debug)]
struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; `Region::write` copies into
// it through a raw pointer within its bounds, from any thread.
unsafe impl Send for Mapping {}
// SAFETY: as above; nothing in it is tied to a thread.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base` and `len` are what mmap returned, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

impl Region {
    /// A region of `len` bytes that stays in the client (TCP).
    pub fn remote(len: u64) -> Region {
        Region { len, mapped: None }
    }

    /// Maps the client's memfd `fd` as a region of `len` bytes, after
    /// checking that it is a memfd sealed against shrinking, at least `len`
    /// long, writable, and wholly in memory. Blocks (mmap, mincore).
    pub fn map(fd: OwnedFd, len: u64) -> Result<Region, String> {
        if len == 0 {
            return Err("a region needs at least one byte".into());
        }
        let raw = fd.as_raw_fd();
        // SAFETY: fcntl on a descriptor we own.
        let seals = unsafe { libc::fcntl(raw, libc::F_GET_SEALS) };
        if seals < 0 {
            return Err(
                "the region is not a memory file that can be sealed (memfd_create with MFD_ALLOW_SEALING)".into(),
            );
        }
        if seals & libc::F_SEAL_SHRINK == 0 {
            return Err("the region's memfd is not sealed against shrinking (F_SEAL_SHRINK)".into());
        }
        if seals & (libc::F_SEAL_WRITE | libc::F_SEAL_FUTURE_WRITE) != 0 {
            return Err("the region's memfd is sealed against writes: the daemon could not place bytes in it".into());
        }
        let file = std::fs::File::from(fd);
        let size = file
            .metadata()
            .map_err(|e| format!("cannot stat the region's memfd: {e}"))?
            .len();
        if size < len {
            return Err(format!(
                "the region's memfd holds {size} bytes, fewer than the {len} registered"
            ));
        }
        let map_len = usize::try_from(len).map_err(|_| format!("a region of {len} bytes cannot be mapped"))?;
        // SAFETY: a fresh shared mapping of a file we hold, of a length the
        // file has and cannot lose (sealed against shrinking); checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            let e = std::io::Error::last_os_error();
            return Err(format!("cannot map the region's memfd for writing: {e}"));
        }
        let mapping = Mapping {
            base: NonNull::new(ptr.cast::<u8>()).ok_or("mmap returned a null region")?,
            len: map_len,
        };
        let missing = pages_not_in_memory(&mapping)?;
        if missing > 0 {
            return Err(format!(
                "{missing} pages of the region are not in memory: populate it before registering it \
                 (the daemon's writes would otherwise allocate them)"
            ));
        }
        // The pages are the client's and in memory: map them all now rather
        // than one fault at a time under the first writes (where the kernel
        // cannot, the faults come as they would).
        // SAFETY: advice on our own mapping, whose pages all exist.
        unsafe { libc::madvise(mapping.base.as_ptr().cast(), mapping.len, libc::MADV_POPULATE_WRITE) };
        Ok(Region {
            len,
            mapped: Some(mapping),
        })
    }

    /// Bytes of the region.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the region has no bytes (never: registrations need one).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the daemon writes into it itself.
    pub fn is_mapped(&self) -> bool {
        self.mapped.is_some()
    }

    /// Copies `bytes` to `offset` of the region. The caller checked the
    /// place against the region ([`Regions::place`]).
    ///
    /// # Panics
    /// If the bytes do not fit, or the region is not mapped.
    pub fn write(&self, offset: u64, bytes: &[u8]) {
        let mapping = self.mapped.as_ref().expect("writes go to mapped regions");
        let end = offset as usize + bytes.len();
        assert!(
            end <= mapping.len,
            "write of {}..{end} past a {}-byte region",
            offset,
            mapping.len
        );
        // Streaming stores for large pieces: the daemon never reads them back.
        // SAFETY: within the mapping (checked above), which lives as long
        // as `self`; the source is a separate buffer of the daemon's. The
        // client may touch the same bytes meanwhile: it is its memory, and
        // shared memory is only ever copied into, never read as a typed value.
        unsafe {
            copy_nonoverlapping_streaming(bytes.as_ptr(), mapping.base.as_ptr().add(offset as usize), bytes.len());
        }
    }
}

impl Region {
    /// Copies `dest.len()` bytes from `offset` of the region into `dest`
    /// (the source of a put). The caller checked the place.
    ///
    /// # Panics
    /// If the bytes lie outside the region, or the region is not mapped.
    pub fn read(&self, offset: u64, dest: &mut [u8]) {
        let mapping = self.mapped.as_ref().expect("reads come from mapped regions");
        let end = offset as usize + dest.len();
        assert!(
            end <= mapping.len,
            "read of {offset}..{end} past a {}-byte region",
            mapping.len
        );
        // SAFETY: within the mapping (checked above), alive as long as
        // `self`; `dest` is the daemon's own buffer. The client may write
        // the same bytes meanwhile: the put then stores what was copied,
        // checksummed after the copy, so it is consistent with itself.
        unsafe {
            std::ptr::copy_nonoverlapping(
                mapping.base.as_ptr().add(offset as usize),
                dest.as_mut_ptr(),
                dest.len(),
            );
        }
    }
}

/// Pages of `mapping` that are not in memory.
fn pages_not_in_memory(mapping: &Mapping) -> Result<usize, String> {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
    let mut residency = vec![0u8; mapping.len.div_ceil(page)];
    // SAFETY: the mapping is ours and page aligned; the vector has one byte
    // per page of it.
    let rc = unsafe { libc::mincore(mapping.base.as_ptr().cast(), mapping.len, residency.as_mut_ptr()) };
    if rc != 0 {
        return Err(format!(
            "cannot check the region's pages: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(residency.iter().filter(|&&r| r & 1 == 0).count())
}

/// How many regions, and how many bytes of them, one connection may hold.
#[derive(Clone, Copy, Debug)]
pub struct RegionLimits {
    /// Regions at once (`server.max_regions`).
    pub count: u32,
    /// Bytes of them (`server.max_region_bytes`).
    pub bytes: u64,
}

/// One connection's registered regions.
#[derive(Debug)]
pub struct Regions {
    by_id: Mutex<HashMap<u32, Arc<Region>>>,
    next: std::sync::atomic::AtomicU32,
    limits: RegionLimits,
}

impl Regions {
    /// None yet, within `limits`.
    pub fn new(limits: RegionLimits) -> Regions {
        Regions {
            by_id: Mutex::new(HashMap::new()),
            next: std::sync::atomic::AtomicU32::new(1),
            limits,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Arc<Region>>> {
        self.by_id.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether one more region of `len` bytes stays within the limits.
    pub fn check_room(&self, len: u64) -> Result<(), StoreError> {
        let regions = self.lock();
        let held: u64 = regions.values().map(|r| r.len).sum();
        if regions.len() >= self.limits.count as usize {
            return Err(busy(format!(
                "this connection holds {} regions, the most it may (server.max_regions): release one first",
                regions.len()
            )));
        }
        if held + len > self.limits.bytes {
            return Err(busy(format!(
                "this connection's regions hold {held} bytes; {len} more would pass server.max_region_bytes ({})",
                self.limits.bytes
            )));
        }
        Ok(())
    }

    /// Registers `region`; its id.
    pub fn add(&self, region: Region) -> Result<u32, StoreError> {
        self.check_room(region.len)?;
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.lock().insert(id, Arc::new(region));
        Ok(id)
    }

    /// Forgets region `id`; whether it was registered.
    pub fn remove(&self, id: u32) -> bool {
        self.lock().remove(&id).is_some()
    }

    /// The region a place names, once the place is checked to lie in it.
    pub fn place(&self, place: &RegionPlace) -> Result<Arc<Region>, StoreError> {
        self.batch().place(place)
    }

    /// A checker of one batch's places, which looks each region up once.
    pub fn batch(&self) -> BatchPlaces<'_> {
        BatchPlaces {
            regions: self,
            last: None,
        }
    }
}

/// The places of one batch, checked as [`Regions::place`] does; a batch's
/// members mostly share one region, which is looked up (under the lock)
/// once for all of them rather than once each.
#[derive(Debug)]
pub struct BatchPlaces<'a> {
    regions: &'a Regions,
    last: Option<(u32, Arc<Region>)>,
}

impl BatchPlaces<'_> {
    /// The region a place names, once the place is checked to lie in it.
    pub fn place(&mut self, place: &RegionPlace) -> Result<Arc<Region>, StoreError> {
        let region = match &self.last {
            Some((id, region)) if *id == place.region => region.clone(),
            _ => {
                let region = self.regions.lock().get(&place.region).cloned().ok_or_else(|| {
                    StoreError::BadRequest(format!(
                        "region {} is not registered on this connection (regions end with their connection)",
                        place.region
                    ))
                })?;
                self.last = Some((place.region, region.clone()));
                region
            }
        };
        let end = place.offset.checked_add(place.len);
        if end.is_none_or(|end| end > region.len) {
            return Err(StoreError::BadRequest(format!(
                "place {}..{} is outside region {} of {} bytes",
                place.offset,
                place.offset.saturating_add(place.len),
                place.region,
                region.len
            )));
        }
        Ok(region)
    }
}

/// A refusal for a per-connection limit: `busy`, with why.
pub(super) fn busy(message: String) -> StoreError {
    StoreError::Other {
        status: Status::Busy,
        message,
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::FromRawFd;

    use super::*;

    fn memfd(len: u64, seals: libc::c_int) -> OwnedFd {
        let name = std::ffi::CString::new("test-region").unwrap();
        // SAFETY: plain syscall with a valid name; checked below.
        let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
        assert!(raw >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: a fresh descriptor, ours.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let file = std::fs::File::from(fd);
        file.set_len(len).unwrap();
        // Populate it, as a client's allocator does.
        std::os::unix::fs::FileExt::write_all_at(&file, &vec![1u8; len as usize], 0).unwrap();
        // SAFETY: fcntl on our descriptor.
        assert_eq!(unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) }, 0);
        file.into()
    }

    #[test]
    fn only_a_writable_memfd_sealed_against_shrinking_is_mapped() {
        let region = Region::map(memfd(8192, libc::F_SEAL_SHRINK), 8192).unwrap();
        region.write(4096, b"abc");
        assert!(region.is_mapped());
        let unsealed = Region::map(memfd(8192, 0), 8192).unwrap_err();
        assert!(unsealed.contains("F_SEAL_SHRINK"), "{unsealed}");
        let small = Region::map(memfd(4096, libc::F_SEAL_SHRINK), 8192).unwrap_err();
        assert!(small.contains("fewer than the 8192 registered"), "{small}");
        let frozen = Region::map(memfd(4096, libc::F_SEAL_SHRINK | libc::F_SEAL_WRITE), 4096).unwrap_err();
        assert!(frozen.contains("sealed against writes"), "{frozen}");
        let file = tempfile::tempfile().unwrap();
        file.set_len(4096).unwrap();
        let plain = Region::map(file.into(), 4096).unwrap_err();
        assert!(plain.contains("not a memory file that can be sealed"), "{plain}");
    }

    #[test]
    fn a_region_not_in_memory_is_refused() {
        let name = std::ffi::CString::new("test-region").unwrap();
        // SAFETY: plain syscall with a valid name; checked below.
        let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
        assert!(raw >= 0);
        // SAFETY: a fresh descriptor, ours.
        let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(raw) });
        file.set_len(1 << 20).unwrap();
        // SAFETY: fcntl on our descriptor.
        let sealed = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
        assert_eq!(sealed, 0);
        let err = Region::map(file.into(), 1 << 20).unwrap_err();
        assert!(err.contains("256 pages of the region are not in memory"), "{err}");
    }

    #[test]
    fn places_are_checked_against_their_region_and_the_limits_hold() {
        let regions = Regions::new(RegionLimits {
            count: 2,
            bytes: 10_000,
        });
        let id = regions.add(Region::remote(4096)).unwrap();
        let place = |offset, len| RegionPlace {
            region: id,
            offset,
            len,
        };
        regions.place(&place(0, 4096)).unwrap();
        let outside = regions.place(&place(4000, 97)).unwrap_err().to_string();
        assert!(outside.contains("outside region"), "{outside}");
        assert!(regions.place(&place(u64::MAX, 2)).is_err());
        let unknown = regions
            .place(&RegionPlace {
                region: 99,
                offset: 0,
                len: 1,
            })
            .unwrap_err();
        assert!(unknown.to_string().contains("not registered"), "{unknown}");
        let too_big = regions.add(Region::remote(6000)).unwrap_err().to_string();
        assert!(too_big.contains("server.max_region_bytes"), "{too_big}");
        regions.add(Region::remote(10)).unwrap();
        let too_many = regions.add(Region::remote(10)).unwrap_err().to_string();
        assert!(too_many.contains("server.max_regions"), "{too_many}");
        assert!(regions.remove(id));
        assert!(regions.place(&place(0, 1)).is_err());
    }

    #[test]
    fn a_batch_checks_every_place_against_its_own_region() {
        let regions = Regions::new(RegionLimits {
            count: 4,
            bytes: 1 << 20,
        });
        let small = regions.add(Region::remote(4096)).unwrap();
        let large = regions.add(Region::remote(65536)).unwrap();
        let place = |region, offset, len| RegionPlace { region, offset, len };
        let mut batch = regions.batch();
        // Alternating regions, and places that fit only the larger one:
        // each is checked against the region it names, not the last one.
        assert_eq!(batch.place(&place(large, 60000, 5536)).unwrap().len(), 65536);
        let outside = batch.place(&place(small, 60000, 5536)).unwrap_err().to_string();
        assert!(
            outside.contains(&format!("outside region {small} of 4096 bytes")),
            "{outside}"
        );
        assert_eq!(batch.place(&place(small, 0, 4096)).unwrap().len(), 4096);
        assert!(batch.place(&place(small, 0, 4097)).is_err());
        assert_eq!(batch.place(&place(large, 0, 4097)).unwrap().len(), 65536);
        let unknown = batch.place(&place(99, 0, 1)).unwrap_err().to_string();
        assert!(unknown.contains("region 99 is not registered"), "{unknown}");
        assert_eq!(batch.place(&place(large, 0, 1)).unwrap().len(), 65536);
    }
}
