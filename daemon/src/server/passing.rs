//! The reading half of a Unix connection, which also takes in the
//! descriptors a client sends (a region's memfd comes with the first byte
//! of its registration's frame). A plain read would close them unseen.

use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use shardd_protocol::fdpass::{Received, recv_with_fds};
use tokio::io::{AsyncRead, Interest, ReadBuf};
use tokio::net::unix::OwnedReadHalf;

use crate::service::regions::{MAX_PASSED_FDS, PassedFds};

/// Reads with `recvmsg`, keeping the descriptors that come.
#[derive(Debug)]
pub struct PassingReader {
    half: OwnedReadHalf,
    passed: Arc<PassedFds>,
}

impl PassingReader {
    /// Reads `half`, keeping descriptors in `passed`.
    pub fn new(half: OwnedReadHalf, passed: Arc<PassedFds>) -> PassingReader {
        PassingReader { half, passed }
    }
}

impl AsyncRead for PassingReader {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let stream = this.half.as_ref();
        loop {
            ready!(stream.poll_read_ready(cx))?;
            let socket = stream.as_raw_fd();
            let mut received = Received::default();
            let unfilled = buf.initialize_unfilled();
            match stream.try_io(Interest::READABLE, || recv_with_fds(socket, unfilled, &mut received)) {
                Ok(n) => {
                    buf.advance(n);
                    if received.truncated {
                        return Poll::Ready(Err(io::Error::other(
                            "the client sent more descriptors at once than a region registration brings",
                        )));
                    }
                    if !received.fds.is_empty() && !this.passed.push(received.fds) {
                        return Poll::Ready(Err(io::Error::other(format!(
                            "the client sent more than {MAX_PASSED_FDS} descriptors without registering regions"
                        ))));
                    }
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}
