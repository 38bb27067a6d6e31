//! Blocking file-system calls: opening shard files (with O_DIRECT where the
//! file system allows it), atomic renames, directory fsync, free space and
//! the data-directory lock. Callers on the async runtime run these through
//! [`blocking`].

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::{ALIGN, AlignedBuf};

/// Runs a blocking file-system call off the async worker threads.
pub async fn blocking<T, F>(f: F) -> io::Result<T>
where
    F: FnOnce() -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(format!("blocking task failed: {e}"))))
}

fn direct_flag(direct: bool) -> i32 {
    if direct { libc::O_DIRECT } else { 0 }
}

/// Permission bits of the files the daemon creates: its user's only.
pub const PRIVATE_FILE: u32 = 0o600;
/// Permission bits of the directories the daemon creates: its user's only.
pub const PRIVATE_DIR: u32 = 0o700;

/// Creates a new file for writing, readable by the daemon's user only;
/// fails if it exists.
pub fn create_new(path: &Path, direct: bool) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_FILE)
        .custom_flags(libc::O_CLOEXEC | direct_flag(direct))
        .open(path)
}

/// Opens a file for reading.
pub fn open_read(path: &Path, direct: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | direct_flag(direct))
        .open(path)
}

/// Whether files in `dir` can be written and read back with O_DIRECT.
/// File systems such as tmpfs refuse it (EINVAL); those use buffered I/O.
pub fn supports_direct_io(dir: &Path) -> io::Result<bool> {
    let path = dir.join(format!(".direct-probe-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let file = match create_new(&path, true) {
        Ok(file) => file,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut buf = AlignedBuf::new(ALIGN);
    buf.fill_padded(b"shardd direct I/O probe");
    let written = file.write_all_at(&buf.as_mut_capacity()[..ALIGN], 0);
    drop(file);
    let read_back = written.and_then(|()| {
        let file = open_read(&path, true)?;
        let mut back = AlignedBuf::new(ALIGN);
        file.read_exact_at(&mut back.as_mut_capacity()[..ALIGN], 0)
    });
    std::fs::remove_file(&path)?;
    match read_back {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Reserves `len` bytes for `file` so that a full disk is reported before
/// any data is written. File systems without `fallocate` are left alone.
pub fn preallocate(file: &File, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    // SAFETY: plain syscall on a descriptor we own; the result is checked.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => Ok(()),
        _ => Err(err),
    }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// `renameat2(from, to, flags)`: `Ok(true)` once done, `Ok(false)` where
/// the file system or kernel does not support `flags` (EINVAL, ENOSYS).
fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> io::Result<bool> {
    let c_from = c_path(from)?;
    let c_to = c_path(to)?;
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, c_from.as_ptr(), libc::AT_FDCWD, c_to.as_ptr(), flags) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINVAL | libc::ENOSYS) => Ok(false),
        _ => Err(err),
    }
}

/// Renames `from` to `to` unless `to` exists (then `AlreadyExists`).
/// Uses `renameat2(RENAME_NOREPLACE)`, or link + unlink where the file
/// system lacks it; both are atomic.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    if renameat2(from, to, libc::RENAME_NOREPLACE)? {
        return Ok(());
    }
    std::fs::hard_link(from, to)?;
    std::fs::remove_file(from)
}

/// Renames `from` over `to` atomically (replacing it).
pub fn rename_replace(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(from, to)
}

/// Swaps the files at `from` and `to` atomically (`RENAME_EXCHANGE`): `to`
/// then holds the new file and `from` the one it replaced, which the caller
/// removes when it suits it (freeing a large file's blocks takes time).
/// Where the file system cannot exchange, renames over `to` instead and
/// returns `false` (nothing is left at `from`).
pub fn rename_exchange(from: &Path, to: &Path) -> io::Result<bool> {
    if renameat2(from, to, libc::RENAME_EXCHANGE)? {
        return Ok(true);
    }
    rename_replace(from, to)?;
    Ok(false)
}

/// fsyncs a directory, making created, renamed and removed entries durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Size and free space of the file system holding `path`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Space {
    /// Total bytes.
    pub capacity: u64,
    /// Bytes available to unprivileged writers.
    pub available: u64,
}

/// Reads the file system's size and free space.
pub fn space(path: &Path) -> io::Result<Space> {
    let c = c_path(path)?;
    // SAFETY: zeroed statvfs is a valid value for the out-parameter.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid path string and `stat` a valid out-pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let frsize = stat.f_frsize as u64;
    Ok(Space {
        capacity: stat.f_blocks as u64 * frsize,
        available: stat.f_bavail as u64 * frsize,
    })
}

/// Whether the daemon may write in directory `path`: `Err` says why not
/// (read-only filesystem, permissions, gone).
pub fn check_writable(path: &Path) -> io::Result<()> {
    let c = c_path(path)?;
    // SAFETY: zeroed statvfs is a valid value for the out-parameter.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid path string and `stat` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if stat.f_flag & libc::ST_RDONLY != 0 {
        return Err(io::Error::new(
            io::ErrorKind::ReadOnlyFilesystem,
            "read-only filesystem",
        ));
    }
    // SAFETY: `c` is a valid path string; plain syscall, result checked.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Takes an exclusive, non-blocking `flock` on `path` (created if missing).
/// The lock lasts as long as the returned file is open; `WouldBlock` means
/// another process holds it.
pub fn lock_file(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(PRIVATE_FILE)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)?;
    // SAFETY: plain syscall on a descriptor we own; the result is checked.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// Names of the entries of `dir` and whether each is a directory.
pub fn list_dir(dir: &Path) -> io::Result<Vec<(String, bool)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let is_dir = entry.file_type()?.is_dir();
        out.push((entry.file_name().to_string_lossy().into_owned(), is_dir));
    }
    out.sort();
    Ok(out)
}

/// Reads up to `len` bytes at `offset` (blocking), into a buffer suitable for
/// O_DIRECT; returns the buffer with its `len` set to the bytes read.
pub fn read_at(file: &File, offset: u64, len: usize) -> io::Result<AlignedBuf> {
    let mut buf = AlignedBuf::new(len);
    let want = super::align_up(len as u64) as usize;
    let mut done = 0;
    while done < want {
        match file.read_at(&mut buf.as_mut_capacity()[done..want], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.set_len(done.min(len));
    Ok(buf)
}

/// Removes a file; a missing file is not an error.
pub fn remove_file(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// The whole of a small file.
pub fn read_file(path: &Path) -> io::Result<Vec<u8>> {
    std::fs::read(path)
}

/// Replaces the small file at `path` with `contents`, atomically and
/// durably: written to a temp file beside it, fsynced, renamed over it,
/// and its directory fsynced.
pub fn replace_file_synced(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut temp = path.as_os_str().to_owned();
    temp.push(".new");
    let temp = std::path::PathBuf::from(temp);
    write_file_synced(&temp, contents)?;
    std::fs::rename(&temp, path)?;
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

/// Removes `dir` and everything in it.
pub fn remove_dir_all(dir: &Path) -> io::Result<()> {
    std::fs::remove_dir_all(dir)
}

/// Creates `dir` and its missing parents, private to the daemon's user.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(PRIVATE_DIR).create(dir)
}

/// Makes `dir` private to the daemon's user if it is not; returns the
/// mode it had when it was not.
pub fn make_private(dir: &Path) -> io::Result<Option<u32>> {
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(None);
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(PRIVATE_DIR))?;
    Ok(Some(mode))
}

/// Creates (or replaces) a small file with `contents` and fsyncs it.
pub fn write_file_synced(path: &Path, contents: &[u8]) -> io::Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(PRIVATE_FILE)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)?;
    file.write_all_at(contents, 0)?;
    file.sync_all()
}

/// Creates `dir` if it is missing; returns whether it was created.
pub fn create_dir(dir: &Path) -> io::Result<bool> {
    match std::fs::DirBuilder::new().mode(PRIVATE_DIR).create(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}
