//! Descriptors passed over a Unix socket (SCM_RIGHTS): the daemon hands a
//! client its arena, a client hands the daemon a region of its memory.
//! One `sendmsg` or `recvmsg` each, for callers that wait for readiness
//! themselves (`try_io` on a tokio socket).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// The descriptors that came with bytes read.
#[derive(Debug, Default)]
pub struct Received {
    /// Each one, owned (closed when dropped, so none leaks).
    pub fds: Vec<OwnedFd>,
    /// The kernel cut some off (more than the room given for them).
    pub truncated: bool,
}

/// One `sendmsg` of `bytes` with `fd` as SCM_RIGHTS; returns bytes sent.
pub fn send_with_fd(socket: RawFd, bytes: &[u8], fd: RawFd) -> io::Result<usize> {
    // Room for one cmsghdr carrying one descriptor, aligned for cmsghdr.
    let mut control = [0u64; 4];
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    debug_assert!(space <= std::mem::size_of_val(&control));
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr().cast_mut().cast(),
        iov_len: bytes.len(),
    };
    // SAFETY: an all-zero msghdr is valid; the fields set below point to
    // live locals (`iov`, `control`) for the duration of the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `msg` has a control buffer of `space` bytes, enough for one
    // header with one descriptor, so CMSG_FIRSTHDR is non-null and
    // CMSG_DATA points inside the buffer; the data is written unaligned.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
    }
    // SAFETY: a valid socket and a fully initialised msghdr.
    let n = unsafe { libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// One `recvmsg` into `buf`; returns the bytes read, and adds the
/// descriptors that came with them (all of them, each owned, so none leaks)
/// to `received`.
pub fn recv_with_fds(socket: RawFd, buf: &mut [u8], received: &mut Received) -> io::Result<usize> {
    // Room for a few descriptors: more than the one expected, so that a
    // surplus is seen (and closed) rather than silently cut off.
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid; the fields set below point to
    // live locals for the duration of the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: a valid socket and msghdr; MSG_CMSG_CLOEXEC marks received
    // descriptors close-on-exec.
    let n = unsafe { libc::recvmsg(socket, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        received.truncated = true;
    }
    let fd_len = std::mem::size_of::<RawFd>();
    // SAFETY: the kernel filled `msg.msg_control` with `msg_controllen`
    // bytes of well-formed cmsg headers; we walk them with the CMSG macros
    // and read each descriptor unaligned, within its header's length.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let header = data.offset_from(cmsg.cast::<u8>()) as usize;
                let count = ((*cmsg).cmsg_len as usize).saturating_sub(header) / fd_len;
                for i in 0..count {
                    let raw = std::ptr::read_unaligned(data.add(i * fd_len).cast::<RawFd>());
                    // We own every descriptor the kernel installed for us.
                    received.fds.push(OwnedFd::from_raw_fd(raw));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(n as usize)
}
