//! Frames off an async stream (the `io` feature, with tokio).
//!
//! Between frames a peer may stay quiet as long as it likes; inside a frame
//! every read must make progress within the reader's timeout, so a peer
//! that stalls halfway never holds a connection forever.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

use crate::{FrameHeader, HEADER_LEN, Limits, ProtocolError};

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Nothing arrived for the timeout in the middle of a frame.
    #[error("the peer sent nothing for {0:?} in the middle of a frame")]
    Stalled(Duration),
    /// The stream ended in the middle of a frame.
    #[error("the connection ended in the middle of a frame")]
    Ended,
    /// The header is malformed or over the limits.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// Reads frames from a stream, buffered.
#[derive(Debug)]
pub struct FrameReader<R> {
    reader: BufReader<R>,
    limits: Limits,
    timeout: Duration,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader of `stream` with a buffer of `capacity` bytes, accepting
    /// frames within `limits`, allowing `timeout` for progress inside one.
    pub fn new(stream: R, capacity: usize, limits: Limits, timeout: Duration) -> FrameReader<R> {
        FrameReader {
            reader: BufReader::with_capacity(capacity, stream),
            limits,
            timeout,
        }
    }

    /// The limits frames are checked against.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Waits, without a time limit, until the next frame starts to arrive;
    /// `false` if the peer closed the stream instead. Cancel-safe: nothing
    /// is consumed, so a caller may stop waiting and wait again.
    pub async fn wait_for_frame(&mut self) -> Result<bool, FrameError> {
        Ok(!self.reader.fill_buf().await?.is_empty())
    }

    /// Waits, without a time limit, for the first byte of the next frame,
    /// then reads its header bytes; `None` if the peer closed the stream
    /// between frames. The caller decodes them (see
    /// [`FrameReader::next_header`] for the usual case).
    pub async fn next_header_bytes(&mut self) -> Result<Option<[u8; HEADER_LEN]>, FrameError> {
        if self.reader.fill_buf().await?.is_empty() {
            return Ok(None);
        }
        let mut header = [0u8; HEADER_LEN];
        self.read_exact(&mut header).await?;
        Ok(Some(header))
    }

    /// The next frame's header, decoded and checked against the limits;
    /// `None` if the peer closed the stream between frames.
    pub async fn next_header(&mut self) -> Result<Option<FrameHeader>, FrameError> {
        let Some(bytes) = self.next_header_bytes().await? else {
            return Ok(None);
        };
        let header = FrameHeader::decode(&bytes)?;
        header.check_limits(&self.limits)?;
        Ok(Some(header))
    }

    /// The control message of the frame whose (checked) header was just read.
    pub async fn control(&mut self, header: &FrameHeader) -> Result<Vec<u8>, FrameError> {
        header.check_limits(&self.limits)?;
        let mut control = vec![0u8; header.control_len as usize];
        self.read_exact(&mut control).await?;
        Ok(control)
    }

    /// Fills `buf` from inside a frame.
    pub async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), FrameError> {
        // Pipelined frames are often buffered already: no timer for those.
        if self.reader.buffer().len() >= buf.len() {
            buf.copy_from_slice(&self.reader.buffer()[..buf.len()]);
            self.reader.consume(buf.len());
            return Ok(());
        }
        match tokio::time::timeout(self.timeout, self.reader.read_exact(buf)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(FrameError::Ended),
            Ok(Err(e)) => Err(FrameError::Io(e)),
            Err(_) => Err(FrameError::Stalled(self.timeout)),
        }
    }

    /// Reads and throws away `len` bytes from inside a frame (a payload
    /// refused, or answering a request its caller gave up on).
    pub async fn skip(&mut self, mut len: u64) -> Result<(), FrameError> {
        while len > 0 {
            let available = match tokio::time::timeout(self.timeout, self.reader.fill_buf()).await {
                Ok(result) => result?.len(),
                Err(_) => return Err(FrameError::Stalled(self.timeout)),
            };
            if available == 0 {
                return Err(FrameError::Ended);
            }
            let n = available.min(len as usize);
            self.reader.consume(n);
            len -= n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::request;
    use crate::{Opcode, StatRequest};

    fn stat() -> StatRequest {
        StatRequest {
            namespace: crate::Namespace::new("job").unwrap(),
            key: crate::Key::new("w").unwrap(),
        }
    }

    #[tokio::test]
    async fn frames_in_a_row_then_the_end() {
        let mut bytes = request(Opcode::Stat, 1, &stat(), 0).unwrap();
        bytes.extend(request(Opcode::Put, 2, &stat(), 5).unwrap());
        bytes.extend_from_slice(b"hello");
        let mut frames = FrameReader::new(&bytes[..], 64, Limits::default(), Duration::from_secs(1));
        let first = frames.next_header().await.unwrap().unwrap();
        let control = frames.control(&first).await.unwrap();
        assert_eq!(crate::codec::decode::<StatRequest>(&control).unwrap(), stat());
        let second = frames.next_header().await.unwrap().unwrap();
        frames.control(&second).await.unwrap();
        let mut payload = [0u8; 5];
        frames.read_exact(&mut payload).await.unwrap();
        assert_eq!(&payload, b"hello");
        assert!(frames.next_header().await.unwrap().is_none(), "closed between frames");
    }

    #[tokio::test]
    async fn a_frame_cut_short_is_an_error_not_a_close() {
        let bytes = request(Opcode::Stat, 1, &stat(), 0).unwrap();
        let cut = &bytes[..bytes.len() - 3];
        let mut frames = FrameReader::new(cut, 64, Limits::default(), Duration::from_secs(1));
        let header = frames.next_header().await.unwrap().unwrap();
        assert!(matches!(frames.control(&header).await, Err(FrameError::Ended)));
        let mut frames = FrameReader::new(&bytes[..4], 64, Limits::default(), Duration::from_secs(1));
        assert!(matches!(frames.next_header().await, Err(FrameError::Ended)));
    }

    #[tokio::test]
    async fn a_peer_that_stalls_inside_a_frame_is_told_apart_from_one_that_idles() {
        let (mut peer, ours) = tokio::io::duplex(1024);
        let mut frames = FrameReader::new(ours, 64, Limits::default(), Duration::from_millis(50));
        // Quiet between frames: no timeout, the read is still waiting.
        let waiting = tokio::time::timeout(Duration::from_millis(200), frames.next_header()).await;
        assert!(waiting.is_err(), "between frames a peer may idle");
        // Half a header, then nothing: stalled, not closed.
        let bytes = request(Opcode::Stat, 1, &stat(), 0).unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut peer, &bytes[..10])
            .await
            .unwrap();
        assert!(matches!(frames.next_header().await, Err(FrameError::Stalled(_))));
    }
}
