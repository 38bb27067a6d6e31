//! Telling systemd (`Type=notify`) that the daemon is ready, alive, or
//! stopping, and handing it descriptors to keep (its file descriptor
//! store): a datagram to `$NOTIFY_SOCKET`. Without that variable (not
//! started by systemd) nothing is sent.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use tokio::task::JoinHandle;

/// Sends `state` (e.g. `READY=1`) to systemd, if it asked for notifications.
/// Returns whether it was sent.
pub fn send(state: &str) -> bool {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(path) => send_to(&path.to_string_lossy(), state),
        None => false,
    }
}

/// Sends `state` with the descriptor `fd` (e.g. `FDSTORE=1`, for systemd
/// to keep it until the daemon's next start); an error if the daemon was not
/// started with a notification socket or the message could not be sent.
pub fn send_with_fd(state: &str, fd: BorrowedFd<'_>) -> io::Result<()> {
    let path = std::env::var_os("NOTIFY_SOCKET")
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "$NOTIFY_SOCKET is not set"))?;
    let socket = UnixDatagram::unbound()?;
    socket.connect_addr(&address(&path.to_string_lossy())?)?;
    shardd_protocol::fdpass::send_with_fd(socket.as_raw_fd(), state.as_bytes(), fd.as_raw_fd())?;
    Ok(())
}

/// The address of the notification socket `path` (`@name` for an abstract
/// socket).
fn address(path: &str) -> io::Result<SocketAddr> {
    match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(path),
    }
}

/// Sends `state` to the notification socket `path`.
fn send_to(path: &str, state: &str) -> bool {
    let sent = address(path).and_then(|addr| {
        let socket = UnixDatagram::unbound()?;
        socket.send_to_addr(state.as_bytes(), &addr)
    });
    match sent {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(socket = %path, error = %e, "cannot notify systemd");
            false
        }
    }
}

/// The index is recovered and the listeners are up.
pub fn ready() {
    send("READY=1\nSTATUS=serving");
}

/// A graceful stop has begun.
pub fn stopping() {
    send("STOPPING=1\nSTATUS=finishing requests in flight");
}

/// Pets systemd's watchdog at half its interval (`$WATCHDOG_USEC`), from
/// the async runtime, so a daemon whose runtime hangs is restarted.
pub fn watchdog() -> Option<JoinHandle<()>> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    // Only for this process (systemd sets WATCHDOG_PID when it matters).
    if let Some(pid) = std::env::var("WATCHDOG_PID").ok().and_then(|p| p.parse::<u32>().ok())
        && pid != std::process::id()
    {
        return None;
    }
    let period = Duration::from_micros(usec / 2).max(Duration::from_millis(100));
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            send("WATCHDOG=1");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_reaches_the_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        assert!(send_to(path.to_str().unwrap(), "READY=1"));
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
