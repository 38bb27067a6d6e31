//! The hello exchange and, over a Unix socket, the daemon's arena: its
//! memfd arrives with the hello answer (SCM_RIGHTS) and is mapped read-only,
//! so that zero-copy fetches read shards where the daemon keeps them. All
//! connections of a process to one daemon share one mapping.
//!
//! Before mapping, the client checks what it received: exactly one
//! descriptor, nothing cut off, a memfd of the announced size sealed
//! against resizing and writes (so a mapping of it can never fault nor
//! change under a lease). Anything else is refused with the reason, and the
//! connection fetches by copy instead.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, Weak};

use shardd_protocol::fdpass::{Received, recv_with_fds};
use shardd_protocol::frame::{self, Start};
use shardd_protocol::{
    ErrorResponse, HEADER_LEN, HelloRequest, HelloResponse, Limits, MAX_CONTROL_LEN, Opcode, Status, codec,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::UnixStream;

use crate::ClientError;
use serde::de::DeserializeOwned;
use shardd_protocol::auth::AuthKey;

/// The daemon's arena, mapped read-only.
#[derive(Debug)]
pub(crate) struct ArenaMap {
    base: NonNull<u8>,
    len: usize,
    /// The memfd, kept to map pieces of it again side by side
    /// ([`ArenaMap::map_pieces`]).
    fd: OwnedFd,
    /// Its page size (the huge page size of a hugetlb arena).
    page: usize,
    /// Pieces mapped side by side lately, most recent last: a training
    /// loop views the same shards step after step, and mapping them again
    /// (and filling the new page tables) costs about as much as reading them.
    laid_out: Mutex<Vec<Arc<PiecesMap>>>,
}

/// Layouts of pieces kept for reuse, at most.
const LAID_OUT_KEPT: usize = 32;
/// Bytes of address space they may span, at most.
const LAID_OUT_BYTES: usize = 4 << 30;

// SAFETY: a read-only shared mapping; nothing is mutated through it.
unsafe impl Send for ArenaMap {}
// SAFETY: as above.
unsafe impl Sync for ArenaMap {}

/// A live mapping, by the identity of the memfd it maps.
struct Mapped {
    dev: u64,
    ino: u64,
    len: usize,
    map: Weak<ArenaMap>,
}

/// The arenas this process has mapped. A mapping keeps its memfd's inode
/// alive, so while one can be upgraded no other memfd has its number.
static MAPPED: Mutex<Vec<Mapped>> = Mutex::new(Vec::new());

impl ArenaMap {
    /// The arena behind `fd`, `len` bytes: a mapping this process already
    /// has of the same memfd (made for another connection to the daemon),
    /// else a new one. One mapping per arena spends page tables and TLB
    /// reach once however many connections read it: with 4 KiB pages a
    /// 64 GiB arena takes 128 MiB of page tables per mapping.
    fn shared(fd: OwnedFd, len: usize) -> Result<Arc<ArenaMap>, String> {
        let file = std::fs::File::from(fd);
        let meta = file
            .metadata()
            .map_err(|e| format!("the arena's descriptor cannot be examined ({e})"))?;
        check_arena(&meta, seals(&file), len as u64)?;
        let (dev, ino) = (meta.dev(), meta.ino());
        let mut mapped = MAPPED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        mapped.retain(|m| m.map.strong_count() > 0);
        let live = mapped
            .iter()
            .filter(|m| m.dev == dev && m.ino == ino && m.len == len)
            .find_map(|m| m.map.upgrade());
        if let Some(map) = live {
            return Ok(map);
        }
        let map = ArenaMap::map(OwnedFd::from(file), len)
            .map_err(|e| format!("the arena ({len} bytes) cannot be mapped ({e})"))?;
        let map = Arc::new(map);
        mapped.push(Mapped {
            dev,
            ino,
            len,
            map: Arc::downgrade(&map),
        });
        Ok(map)
    }

    fn map(fd: OwnedFd, len: usize) -> io::Result<ArenaMap> {
        // SAFETY: a new read-only shared mapping of the memfd the daemon
        // sent; the kernel picks the address; checked against MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        // A hugetlb memfd reports its huge page size as its block size.
        let page = std::fs::File::from(fd.try_clone()?).metadata()?.blksize().max(4096) as usize;
        Ok(ArenaMap {
            base,
            len,
            fd,
            page,
            laid_out: Mutex::new(Vec::new()),
        })
    }

    /// Maps `pieces` (arena offset, length) of the arena next to each other
    /// into one new read-only range of this process's address space: the
    /// same pages, no copy. Every piece but the first must start on a page,
    /// and every piece but the last must end on one; the first may start
    /// inside a page (its mapping then starts at that page). Returns the
    /// mapping and where the first piece's first byte is in it.
    pub(crate) fn map_pieces(&self, pieces: &[(u64, u64)]) -> io::Result<(Arc<PiecesMap>, usize)> {
        let mut kept = self.laid_out.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = kept.iter().position(|m| m.pieces == pieces) {
            let map = kept.remove(at);
            kept.push(map.clone());
            return Ok((map.clone(), map.lead));
        }
        let map = Arc::new(self.map_pieces_anew(pieces)?);
        kept.push(map.clone());
        while kept.len() > LAID_OUT_KEPT || kept.iter().map(|m| m.len).sum::<usize>() > LAID_OUT_BYTES {
            kept.remove(0);
        }
        let lead = map.lead;
        Ok((map, lead))
    }

    fn map_pieces_anew(&self, pieces: &[(u64, u64)]) -> io::Result<PiecesMap> {
        let page = self.page as u64;
        let unaligned = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
        let Some(&(first, _)) = pieces.first() else {
            return Err(unaligned("no pieces"));
        };
        let lead = first % page;
        let mut at = 0u64;
        let mut places = Vec::with_capacity(pieces.len());
        for (i, &(offset, len)) in pieces.iter().enumerate() {
            let start = if i == 0 { offset - lead } else { offset };
            if start % page != 0 {
                return Err(unaligned("a piece does not start on a page"));
            }
            let end = offset + len;
            if i + 1 < pieces.len() && end % page != 0 {
                return Err(unaligned("a piece does not end on a page"));
            }
            let span = end.next_multiple_of(page).min(self.len as u64) - start;
            places.push((at, start, span));
            at += span;
        }
        let total = at as usize;
        // SAFETY: a new private anonymous reservation, inaccessible until
        // the pieces are mapped over it; checked against MAP_FAILED.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let map = PiecesMap {
            base,
            len: total,
            pieces: pieces.to_vec(),
            lead: lead as usize,
        };
        for (at, offset, span) in places {
            // SAFETY: replaces a page-aligned part of our own reservation
            // (`at + span <= total`) with a read-only shared mapping of the
            // arena's memfd at a page-aligned offset inside it.
            let placed = unsafe {
                libc::mmap(
                    base.cast::<u8>().add(at as usize).cast(),
                    span as usize,
                    libc::PROT_READ,
                    libc::MAP_SHARED | libc::MAP_FIXED | libc::MAP_POPULATE,
                    self.fd.as_raw_fd(),
                    offset as libc::off_t,
                )
            };
            if placed == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(map)
    }

    /// The `len` bytes at `offset`, if they lie inside the arena.
    ///
    /// # Safety
    /// The caller must hold a lease on these bytes: while it does, the
    /// daemon neither frees nor writes them, so they do not change under
    /// the returned slice.
    pub(crate) unsafe fn bytes(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let end = offset.checked_add(len)?;
        if end > self.len as u64 {
            return None;
        }
        // SAFETY: inside the mapping (checked above), readable, and stable
        // for the lease's duration (the caller's contract).
        Some(unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(offset as usize), len as usize) })
    }
}

/// Pieces of an arena mapped side by side ([`ArenaMap::map_pieces`]);
/// unmapped when dropped. Its bytes are the arena's at those offsets,
/// whatever shard holds them now: a view that uses it holds a lease on them.
#[derive(Debug)]
pub(crate) struct PiecesMap {
    base: *mut libc::c_void,
    len: usize,
    /// What it maps: (arena offset, length) of each piece.
    pieces: Vec<(u64, u64)>,
    /// Where the first piece's first byte is in it.
    lead: usize,
}

// SAFETY: a read-only mapping owned by this value; nothing in it depends on
// the thread it is used from.
unsafe impl Send for PiecesMap {}
// SAFETY: as above; no method mutates through `&self`.
unsafe impl Sync for PiecesMap {}

impl PiecesMap {
    /// Its first byte.
    pub(crate) fn base(&self) -> *const u8 {
        self.base.cast()
    }
}

impl Drop for PiecesMap {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping once.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

impl Drop for ArenaMap {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping once; views hold an `Arc` of it.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// The seals a memfd must carry for this process to map it: without
/// them the daemon (or anyone holding a writable descriptor) could shrink it
/// under the mapping, which then faults (SIGBUS), or change leased bytes.
const REQUIRED_SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
/// One of these: nobody can write to it but through a mapping made before
/// the seal (the daemon's own). An arena kept across the daemon's restarts
/// has none, and mode 0600 instead.
const WRITE_SEALS: libc::c_int = libc::F_SEAL_WRITE | libc::F_SEAL_FUTURE_WRITE;

/// The seals of `file`, or why there are none (not a memfd).
fn seals(file: &std::fs::File) -> Result<libc::c_int, String> {
    // SAFETY: fcntl on a descriptor `file` owns; no pointers involved.
    let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 {
        let e = io::Error::last_os_error();
        return Err(format!("the arena's descriptor is not a sealable memfd ({e})"));
    }
    Ok(seals)
}

/// Whether a received descriptor (its `meta` and `seals`) is the arena the
/// daemon announced (`len` bytes), safe to map.
fn check_arena(meta: &std::fs::Metadata, seals: Result<libc::c_int, String>, len: u64) -> Result<(), String> {
    if len == 0 {
        return Err("the daemon announced an empty arena".into());
    }
    if !meta.file_type().is_file() {
        return Err("the arena's descriptor is not a memory file".into());
    }
    if meta.len() != len {
        return Err(format!(
            "the arena's memfd holds {} bytes, the daemon announced {len}",
            meta.len()
        ));
    }
    let seals = seals?;
    // A daemon that keeps its arena across restarts cannot seal it against
    // writes (its successor maps it writable again): the memfd is then the
    // daemon user's alone (mode 0600), so other users cannot reopen it
    // writable.
    let private = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o077 == 0;
    if seals & REQUIRED_SEALS != REQUIRED_SEALS || (seals & WRITE_SEALS == 0 && !private) {
        return Err(format!(
            "the arena's memfd is not sealed against resizing and writes (seals {seals:#x}); \
             the daemon may be older than this client"
        ));
    }
    Ok(())
}

/// The arena a daemon offered with its hello: mapped, or why not (the
/// connection then fetches by copy).
pub(crate) type ArenaOffer = Option<Result<Arc<ArenaMap>, String>>;

/// Sends the hello and reads its answer on the raw stream, before the
/// connection starts pipelining. Over a Unix socket the answer may carry
/// the arena's memfd, which is then checked and mapped.
pub(crate) async fn hello_unix(
    stream: &mut UnixStream,
    hello: &HelloRequest,
    endpoint: &str,
) -> Result<(HelloResponse, ArenaOffer), ClientError> {
    let sent = send_hello(stream, hello, endpoint).await;
    first_reason(sent, read_hello_unix(stream, endpoint).await)
}

/// The answer, or why there is none. A daemon that refuses a connection
/// (at its connection limit) answers and closes at once, so sending the
/// hello may fail although the answer, saying why, is there to read.
fn first_reason<T>(sent: Result<(), ClientError>, answer: Result<T, ClientError>) -> Result<T, ClientError> {
    match (sent, answer) {
        (Err(e), Err(ClientError::Disconnected { .. })) => Err(e),
        (_, answer) => answer,
    }
}

async fn read_hello_unix(stream: &mut UnixStream, endpoint: &str) -> Result<(HelloResponse, ArenaOffer), ClientError> {
    let socket = stream.as_raw_fd();
    let mut bytes = Vec::new();
    let mut received = Received::default();
    while let Start::Need(want) = start(&bytes, endpoint)? {
        stream.readable().await.map_err(|e| disconnected(endpoint, &e))?;
        let mut chunk = vec![0u8; want - bytes.len()];
        match stream.try_io(Interest::READABLE, || recv_with_fds(socket, &mut chunk, &mut received)) {
            Ok(0) => return Err(disconnected(endpoint, &io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(disconnected(endpoint, &e)),
        }
    }
    let response: HelloResponse = parse_answer(&bytes, endpoint)?;
    let offer = response.arena.map(|grant| {
        let fd = received.the_one()?;
        let len = usize::try_from(grant.size).map_err(|_| format!("an arena of {} bytes", grant.size))?;
        ArenaMap::shared(fd, len)
    });
    Ok((response, offer))
}

/// The one descriptor of the arena that came with the hello answer, or
/// what was wrong.
trait TheOne {
    fn the_one(self) -> Result<OwnedFd, String>;
}

impl TheOne for Received {
    fn the_one(self) -> Result<OwnedFd, String> {
        if self.truncated {
            return Err("the descriptors sent with the hello answer were cut off (MSG_CTRUNC)".into());
        }
        let count = self.fds.len();
        let mut fds = self.fds.into_iter();
        match (fds.next(), count) {
            (Some(fd), 1) => Ok(fd),
            (None, _) => Err("the daemon offered its arena but sent no descriptor".into()),
            (_, n) => Err(format!(
                "the daemon sent {n} descriptors with the hello answer, where one was expected"
            )),
        }
    }
}

/// The hello over TCP (no arena).
/// The hello over TCP (or TLS), and the key exchange when `key` is given
/// (see [`crate::auth`]); `verified`: the daemon proved who it is already
/// (its TLS certificate).
pub(crate) async fn hello_tcp<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    hello: &HelloRequest,
    key: Option<&AuthKey>,
    verified: bool,
    endpoint: &str,
) -> Result<HelloResponse, ClientError> {
    let sent = send_hello(stream, hello, endpoint).await;
    let answer: HelloResponse = first_reason(sent, read_answer_tcp(stream, endpoint).await)?;
    crate::auth::prove(stream, hello, &answer, key, verified, endpoint).await?;
    Ok(answer)
}

/// The next frame's control message, which must be an answer without
/// payload: `T`, or the daemon's error.
pub(crate) async fn read_answer_tcp<T: DeserializeOwned, S: AsyncRead + Unpin>(
    stream: &mut S,
    endpoint: &str,
) -> Result<T, ClientError> {
    let mut bytes = Vec::new();
    while let Start::Need(want) = start(&bytes, endpoint)? {
        let have = bytes.len();
        bytes.resize(want, 0);
        stream
            .read_exact(&mut bytes[have..])
            .await
            .map_err(|e| disconnected(endpoint, &e))?;
    }
    parse_answer(&bytes, endpoint)
}

async fn send_hello<S: tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    hello: &HelloRequest,
    endpoint: &str,
) -> Result<(), ClientError> {
    send_request(stream, Opcode::Hello, 1, hello, endpoint).await
}

/// Writes one request of the hello (no payload).
pub(crate) async fn send_request<S: tokio::io::AsyncWrite + Unpin, T: serde::Serialize>(
    stream: &mut S,
    op: Opcode,
    id: u64,
    message: &T,
    endpoint: &str,
) -> Result<(), ClientError> {
    let frame = frame::request(op, id, message, 0).map_err(|source| ClientError::Protocol {
        endpoint: endpoint.to_string(),
        source,
    })?;
    stream.write_all(&frame).await.map_err(|e| disconnected(endpoint, &e))
}

fn disconnected(endpoint: &str, e: &io::Error) -> ClientError {
    ClientError::Disconnected {
        endpoint: endpoint.to_string(),
        reason: format!("during the hello: {e}"),
    }
}

/// How far the hello answer in `bytes` is: its header (a hello answer has
/// no payload) and control length are checked before more is read.
fn start(bytes: &[u8], endpoint: &str) -> Result<Start, ClientError> {
    let limits = Limits {
        max_control_len: MAX_CONTROL_LEN,
        max_payload_len: 0,
    };
    frame::parse_start(bytes, &limits).map_err(|source| ClientError::Protocol {
        endpoint: endpoint.to_string(),
        source,
    })
}

fn parse_answer<T: DeserializeOwned>(bytes: &[u8], endpoint: &str) -> Result<T, ClientError> {
    let Start::Whole(header) = start(bytes, endpoint)? else {
        return Err(disconnected(endpoint, &io::ErrorKind::UnexpectedEof.into()));
    };
    let control = &bytes[HEADER_LEN..];
    if header.status != Status::Ok {
        let message = codec::decode::<ErrorResponse>(control)
            .map(|e| e.message)
            .unwrap_or_else(|_| header.status.to_string());
        return Err(ClientError::Remote {
            status: header.status,
            message,
            current_version: None,
        });
    }
    codec::decode(control).map_err(|source| ClientError::Protocol {
        endpoint: endpoint.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::FromRawFd;

    use super::*;

    fn memfd(len: u64, seals: libc::c_int) -> std::fs::File {
        let name = std::ffi::CString::new("test-arena").unwrap();
        // SAFETY: plain syscall with a valid name; checked below.
        let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
        assert!(raw >= 0, "{}", io::Error::last_os_error());
        // SAFETY: a fresh descriptor, ours.
        let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(raw) });
        file.set_len(len).unwrap();
        // SAFETY: fcntl on our descriptor.
        assert_eq!(unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) }, 0);
        file
    }

    fn check(file: &std::fs::File, len: u64) -> Result<(), String> {
        check_arena(&file.metadata().unwrap(), seals(file), len)
    }

    #[test]
    fn only_a_sealed_memfd_of_the_announced_size_is_mapped() {
        let sealed = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_FUTURE_WRITE;
        assert_eq!(check(&memfd(8192, sealed), 8192), Ok(()));
        let small = check(&memfd(4096, sealed), 8192).unwrap_err();
        assert!(small.contains("holds 4096 bytes, the daemon announced 8192"), "{small}");
        let unsealed = check(&memfd(8192, 0), 8192).unwrap_err();
        assert!(unsealed.contains("not sealed"), "{unsealed}");
        let shrinkable = check(&memfd(8192, libc::F_SEAL_GROW | libc::F_SEAL_FUTURE_WRITE), 8192).unwrap_err();
        assert!(shrinkable.contains("not sealed"), "{shrinkable}");
        let writable = check(&memfd(8192, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW), 8192).unwrap_err();
        assert!(writable.contains("not sealed"), "{writable}");
        // A kept arena: sealed against resizing, writable by its owner only.
        let kept = memfd(8192, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW);
        kept.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        assert_eq!(check(&kept, 8192), Ok(()));
        assert!(check(&memfd(0, sealed), 0).unwrap_err().contains("empty"));

        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&[0u8; 8192]).unwrap();
        let plain = check(&file, 8192).unwrap_err();
        assert!(plain.contains("not a sealable memfd"), "{plain}");
    }

    #[test]
    fn one_descriptor_is_expected_with_the_arena() {
        let none = Received::default().the_one().unwrap_err();
        assert!(none.contains("no descriptor"), "{none}");
        let two = Received {
            fds: vec![memfd(1, 0).into(), memfd(1, 0).into()],
            truncated: false,
        };
        assert!(two.the_one().unwrap_err().contains("2 descriptors"));
        let cut = Received {
            fds: vec![memfd(1, 0).into()],
            truncated: true,
        };
        assert!(cut.the_one().unwrap_err().contains("MSG_CTRUNC"));
    }
}
