//! Restarting with a warm arena (`arena.keep_on_restart`). At the end of a
//! graceful stop, once every write-back shard is on its drive, the daemon
//! hands two descriptors to systemd's file descriptor store (`FDSTORE=1`,
//! which the unit allows with `FileDescriptorStoreMax=`): the arena's memfd
//! ([`ARENA_NAME`]) and a sealed memfd holding the index of the shards in
//! it ([`INDEX_NAME`]). systemd keeps them while the daemon is down and
//! passes them to the next start (`$LISTEN_FDS`, `$LISTEN_FDNAMES`), which
//! maps the same memory again, takes back each shard the drive still holds
//! unchanged and whose bytes match the drive's checksums, and once it
//! serves tells systemd to drop its copies (`FDSTOREREMOVE=1`): a start
//! that fails before that leaves them to the next. An arena this configuration
//! cannot use (another size, chunk size or kind of pages), or an index that
//! is damaged, is let go and the daemon starts cold, saying why.
//!
//! The index: [`MAGIC`], the format version (u32), the CRC32C of the body
//! (u32) and its length (u64), all little-endian, then the body
//! ([`KeptIndex`], bincode).

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use crate::arena::{Arena, ArenaConfig};
use crate::cache::Cache;
use crate::cache::keep::KeptShard;
use crate::notify;

/// The name the arena's memfd is stored under.
pub const ARENA_NAME: &str = "shardd-arena";
/// The name the index of its shards is stored under.
pub const INDEX_NAME: &str = "shardd-arena-index";

/// First bytes of an index.
const MAGIC: &[u8; 8] = b"SHRDKEEP";
/// Its format version: changed with [`KeptIndex`], [`KeptShard`] or
/// `ShardMeta`, so that a daemon never misreads an older one's index (it
/// starts cold instead, saying so).
const FORMAT: u32 = 1;
/// Bytes before the body.
const HEADER: usize = 8 + 4 + 4 + 8;
/// Largest index read back: about 4 million shards of long keys.
const MAX_INDEX: u64 = 1 << 30;

/// What the index holds.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct KeptIndex {
    /// Bytes of the arena (its memfd's size).
    arena_bytes: u64,
    /// Its largest block (the chunk size it was made for).
    max_block: u32,
    /// The shards resident in it, on the drive.
    shards: Vec<KeptShard>,
}

/// The descriptors systemd passed back at start.
#[derive(Debug)]
pub struct Handed {
    arena: OwnedFd,
    index: OwnedFd,
}

/// Set once the descriptors passed at start were looked at: only the
/// first daemon of a process may take them.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// Set when systemd passed a kept arena that it still holds a copy of.
static HELD: AtomicBool = AtomicBool::new(false);

/// The kept arena systemd passed to this process, if any: `None` when it
/// passed nothing of ours, an error when what it passed is incomplete.
/// Descriptors of other names are closed. systemd keeps its copies until
/// [`release_handed`]: a start that fails before serving leaves them for
/// the next.
pub fn take_handed() -> Option<Result<Handed, String>> {
    if TAKEN.swap(true, Ordering::SeqCst) {
        return None;
    }
    let fds = passed_fds()?;
    let (mut arena, mut index) = (None, None);
    for (name, fd) in fds {
        match name.as_str() {
            ARENA_NAME => arena = Some(fd),
            INDEX_NAME => index = Some(fd),
            other => tracing::warn!(
                name = other,
                "closing a descriptor systemd passed that is not the daemon's"
            ),
        }
    }
    if arena.is_none() && index.is_none() {
        return None;
    }
    HELD.store(true, Ordering::SeqCst);
    Some(match (arena, index) {
        (Some(arena), Some(index)) => Ok(Handed { arena, index }),
        (Some(_), None) => Err("systemd passed the arena without the index of its shards".into()),
        _ => Err("systemd passed the index of a kept arena without the arena".into()),
    })
}

/// Tells systemd to drop its copies of a kept arena passed at start, once
/// the daemon serves: from then on the index no longer says what the arena
/// holds.
pub fn release_handed() {
    if HELD.swap(false, Ordering::SeqCst) {
        for name in [ARENA_NAME, INDEX_NAME] {
            notify::send(&format!("FDSTOREREMOVE=1\nFDNAME={name}"));
        }
    }
}

/// The descriptors passed by socket activation's protocol (`$LISTEN_PID`,
/// `$LISTEN_FDS` from descriptor 3 on, named by `$LISTEN_FDNAMES`), each
/// made close-on-exec; `None` if there are none for this process.
fn passed_fds() -> Option<Vec<(String, OwnedFd)>> {
    let pid = std::env::var("LISTEN_PID").ok()?;
    if pid.parse::<u32>().ok() != Some(std::process::id()) {
        return None;
    }
    let count: i32 = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    let mut names = names.split(':');
    let fds = (0..count.clamp(0, 1024))
        .filter_map(|i| {
            let raw = 3 + i;
            let name = names.next().unwrap_or("unknown").to_string();
            // SAFETY: fcntl on a descriptor number; fails harmlessly (EBADF)
            // if it is not open.
            if unsafe { libc::fcntl(raw, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
                return None;
            }
            // SAFETY: systemd passed descriptors 3.. to this process for it to
            // own (`$LISTEN_PID` is ours), and nothing else here takes them:
            // `TAKEN` lets this run once.
            Some((name, unsafe { OwnedFd::from_raw_fd(raw) }))
        })
        .collect();
    Some(fds)
}

/// Maps the arena in `handed` for `config` and reads its index; or why it
/// cannot be used (the caller then starts cold).
pub fn adopt(handed: Handed, config: ArenaConfig) -> Result<(Arena, Vec<KeptShard>), String> {
    let index = read_index(&handed.index)?;
    let size = config.size / config.max_block as u64 * config.max_block as u64;
    if index.arena_bytes != size {
        return Err(format!(
            "arena.size changed: the kept arena holds {} bytes, this configuration asks for {size}",
            index.arena_bytes
        ));
    }
    if index.max_block != config.max_block {
        return Err(format!(
            "storage.chunk_size changed: the kept arena has blocks of {} bytes, this configuration {}",
            index.max_block, config.max_block
        ));
    }
    let arena = Arena::adopt(config, handed.arena).map_err(|e| format!("the kept arena's memfd: {e}"))?;
    Ok((arena, index.shards))
}

/// At the end of a stop: hands the arena and the index of `cache`'s clean
/// shards to systemd's file descriptor store. Returns what it handed over,
/// or why nothing was.
pub fn hand_over(cache: &Cache) -> Result<String, String> {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return Err("the daemon was not started by systemd (no $NOTIFY_SOCKET) to keep it".into());
    }
    if std::env::var("FDSTORE").is_ok_and(|max| max.trim() == "0") {
        return Err(
            "the unit keeps no descriptors: set FileDescriptorStoreMax= (deploy/systemd/shardd.service)".into(),
        );
    }
    let arena = cache.arena();
    let arena_fd = arena.kept_fd().ok_or("the arena was not made to be kept")?;
    let (shards, left_out) = cache.kept_shards();
    let (count, bytes) = (shards.len(), shards.iter().map(|s| s.meta.len).sum::<u64>());
    let index = KeptIndex {
        arena_bytes: arena.capacity(),
        max_block: arena.max_block(),
        shards,
    };
    let index_fd = write_index(&index).map_err(|e| format!("cannot write the index of the arena: {e}"))?;
    // The arena first: a daemon that finds it without the index starts cold.
    for (name, fd) in [(ARENA_NAME, arena_fd), (INDEX_NAME, index_fd.as_fd())] {
        notify::send_with_fd(&format!("FDSTORE=1\nFDNAME={name}"), fd)
            .map_err(|e| format!("cannot hand {name} to systemd: {e}"))?;
    }
    let mut said = format!("{count} shards ({bytes} bytes) in the arena handed to systemd for the next start");
    if left_out > 0 {
        said.push_str(&format!("; {left_out} not on a drive are not kept"));
    }
    Ok(said)
}

/// The index in a new memfd, sealed against any change.
fn write_index(index: &KeptIndex) -> std::io::Result<OwnedFd> {
    let body = bincode::serde::encode_to_vec(index, bincode::config::standard()).map_err(std::io::Error::other)?;
    let mut bytes = Vec::with_capacity(HEADER + body.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&FORMAT.to_le_bytes());
    bytes.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&body);
    let name = c"shardd-arena-index";
    // SAFETY: plain syscall with a valid NUL-terminated name; checked below.
    let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that we own from here on.
    let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(raw) });
    file.write_all_at(&bytes, 0)?;
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on a descriptor we own; no pointers involved.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(OwnedFd::from(file))
}

/// Reads and checks an index written by [`write_index`].
fn read_index(fd: &OwnedFd) -> Result<KeptIndex, String> {
    let file = std::fs::File::from(fd.try_clone().map_err(|e| format!("the index: {e}"))?);
    let len = file.metadata().map_err(|e| format!("the index: {e}"))?.len();
    if !(HEADER as u64..=MAX_INDEX).contains(&len) {
        return Err(format!("the index of the kept arena is {len} bytes long"));
    }
    let mut bytes = vec![0u8; len as usize];
    file.read_exact_at(&mut bytes, 0)
        .map_err(|e| format!("cannot read the index of the kept arena: {e}"))?;
    decode_index(&bytes)
}

fn decode_index(bytes: &[u8]) -> Result<KeptIndex, String> {
    let damaged = |what: &str| format!("the index of the kept arena is damaged ({what})");
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err(damaged("not an index"));
    }
    let word = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let format = word(8);
    if format != FORMAT {
        return Err(format!(
            "the index of the kept arena has format {format}; this daemon reads {FORMAT}"
        ));
    }
    let crc = word(12);
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[16..24]);
    let body = &bytes[HEADER..];
    if u64::from_le_bytes(len) != body.len() as u64 {
        return Err(damaged("wrong length"));
    }
    if crc32c::crc32c(body) != crc {
        return Err(damaged("wrong checksum"));
    }
    let (index, read) =
        bincode::serde::decode_from_slice(body, bincode::config::standard()).map_err(|e| damaged(&e.to_string()))?;
    if read != body.len() {
        return Err(damaged("bytes after the end"));
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardd_protocol::{DType, Key, Namespace, ShardMeta};

    fn index() -> KeptIndex {
        KeptIndex {
            arena_bytes: 64 << 20,
            max_block: 1 << 20,
            shards: vec![KeptShard {
                meta: ShardMeta {
                    namespace: Namespace::new("job").unwrap(),
                    key: Key::new("layers.0.weight").unwrap(),
                    version: 7,
                    dtype: DType::BF16,
                    shape: vec![1024, 768],
                    len: 3 << 19,
                    crc32c: 0x1234_5678,
                    created_unix_ms: 1,
                },
                chunk_size: 1 << 20,
                blocks: vec![(0, 1 << 20), (1 << 20, 1 << 20)],
            }],
        }
    }

    #[test]
    fn an_index_reads_back_as_written_and_damage_is_named() {
        let fd = write_index(&index()).unwrap();
        assert_eq!(read_index(&fd).unwrap(), index());
        // Sealed: nobody changes it while systemd holds it.
        let file = std::fs::File::from(fd.try_clone().unwrap());
        assert!(file.write_all_at(b"x", 30).is_err());

        let mut bytes = vec![0u8; file.metadata().unwrap().len() as usize];
        file.read_exact_at(&mut bytes, 0).unwrap();
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(decode_index(&flipped).unwrap_err().contains("wrong checksum"));
        assert!(
            decode_index(&bytes[..bytes.len() - 1])
                .unwrap_err()
                .contains("wrong length")
        );
        assert!(decode_index(&bytes[..10]).unwrap_err().contains("not an index"));
        let mut newer = bytes.clone();
        newer[8] = 2;
        assert!(decode_index(&newer).unwrap_err().contains("format 2"));
    }

    #[test]
    fn an_arena_of_another_size_or_chunk_size_is_not_adopted() {
        let config = ArenaConfig {
            size: 64 << 20,
            max_block: 1 << 20,
            huge_pages: crate::arena::HugePages::Off,
            kept: true,
        };
        let kept = Arena::create(config).unwrap();
        let handed = |arena: &Arena| Handed {
            arena: arena.kept_fd().unwrap().try_clone_to_owned().unwrap(),
            index: write_index(&index()).unwrap(),
        };
        let bigger = ArenaConfig {
            size: 128 << 20,
            ..config
        };
        let why = adopt(handed(&kept), bigger).unwrap_err();
        assert!(why.contains("arena.size changed"), "{why}");
        let smaller_chunks = ArenaConfig {
            max_block: 1 << 19,
            ..config
        };
        let why = adopt(handed(&kept), smaller_chunks).unwrap_err();
        assert!(why.contains("storage.chunk_size changed"), "{why}");
        let (arena, shards) = adopt(handed(&kept), config).unwrap();
        assert_eq!(shards, index().shards);
        assert_eq!(arena.capacity(), 64 << 20);

        // An arena made not to be kept carries the write seal: the next
        // daemon could not write it, and refuses it.
        let sealed = Arena::create(ArenaConfig { kept: false, ..config }).unwrap();
        let fd = sealed.shared_fd().unwrap().try_clone_to_owned().unwrap();
        let why = Arena::adopt(config, fd).unwrap_err();
        assert!(why.contains("not those of a kept arena"), "{why}");
    }
}
