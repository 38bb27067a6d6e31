//! Frames on their way out, and the reads a connection makes to take frames in.

use std::io;
use std::time::Duration;

use serde::Serialize;
use shardd_protocol::{ErrorResponse, FrameHeader, HEADER_LEN, Opcode, Status, codec};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use crate::metrics::Gauged;
use crate::service::Piece;

/// A response frame, ready to be written.
#[derive(Debug)]
pub struct OutFrame {
    header: [u8; HEADER_LEN],
    control: Vec<u8>,
    payload: Option<Piece>,
    /// What it answers, for the metrics of the request it ends.
    pub opcode: Opcode,
    /// The request's id.
    pub request_id: u64,
    /// Its status.
    pub status: Status,
    /// Whether more frames of the answer follow.
    pub more: bool,
    /// Counts the payload as in flight until the frame is written or dropped.
    inflight: Option<Gauged>,
}

impl OutFrame {
    /// A frame with a control message and optionally a piece of a shard as payload.
    pub fn new(
        opcode: Opcode,
        request_id: u64,
        status: Status,
        more: bool,
        control: Vec<u8>,
        payload: Option<Piece>,
    ) -> OutFrame {
        let payload_len = payload.as_ref().map_or(0, |p| p.bytes().len() as u64);
        let header = FrameHeader::response(opcode, request_id, status, more, control.len() as u32, payload_len);
        OutFrame {
            header: header.encode(),
            control,
            payload,
            opcode,
            request_id,
            status,
            more,
            inflight: None,
        }
    }

    /// Bytes of payload it carries.
    pub fn payload_len(&self) -> usize {
        self.payload.as_ref().map_or(0, |p| p.bytes().len())
    }

    /// Counts its payload in `inflight` until it is written or dropped.
    pub fn track(&mut self, inflight: Gauged) {
        self.inflight = Some(inflight);
    }

    /// A final `ok` frame carrying `message`.
    pub fn ok<T: Serialize>(opcode: Opcode, request_id: u64, message: &T) -> OutFrame {
        match codec::encode(message) {
            Ok(control) => OutFrame::new(opcode, request_id, Status::Ok, false, control, None),
            Err(e) => OutFrame::error(
                opcode,
                request_id,
                Status::Internal,
                format!("cannot encode the answer: {e}"),
                None,
            ),
        }
    }

    /// A final `ok` frame without a control message.
    pub fn empty_ok(opcode: Opcode, request_id: u64) -> OutFrame {
        OutFrame::new(opcode, request_id, Status::Ok, false, Vec::new(), None)
    }

    /// A final error frame.
    pub fn error(
        opcode: Opcode,
        request_id: u64,
        status: Status,
        message: String,
        current_version: Option<u64>,
    ) -> OutFrame {
        let body = ErrorResponse {
            message,
            current_version,
        };
        // An ErrorResponse always encodes unless its message is absurdly long.
        let control = codec::encode(&body).unwrap_or_default();
        OutFrame::new(opcode, request_id, status, false, control, None)
    }

    /// Bytes of the whole frame.
    pub fn len(&self) -> usize {
        HEADER_LEN + self.control.len() + self.payload.as_ref().map_or(0, |p| p.bytes().len())
    }

    /// Whether the frame is empty (never: a frame has a header).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Writes the frame; the payload goes straight from its buffer.
    pub async fn write_to<W: AsyncWrite + Unpin>(&self, out: &mut W) -> io::Result<()> {
        out.write_all(&self.header).await?;
        if !self.control.is_empty() {
            out.write_all(&self.control).await?;
        }
        if let Some(payload) = &self.payload {
            out.write_all(payload.bytes()).await?;
        }
        Ok(())
    }
}

/// How a wait for the next frame ended.
#[derive(Debug)]
pub enum NextFrame {
    /// A header arrived.
    Header([u8; HEADER_LEN]),
    /// The peer closed the connection between frames.
    Closed,
}

/// Waits (without a time limit) for the first byte of the next frame, then
/// reads the rest of the header, each read bounded by `timeout`.
pub async fn read_header<R: AsyncRead + Unpin>(reader: &mut BufReader<R>, timeout: Duration) -> io::Result<NextFrame> {
    if reader.fill_buf().await?.is_empty() {
        return Ok(NextFrame::Closed);
    }
    let mut header = [0u8; HEADER_LEN];
    read_exact(reader, &mut header, timeout).await?;
    Ok(NextFrame::Header(header))
}

/// `read_exact` that fails with `TimedOut` if the peer stalls.
pub async fn read_exact<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    buf: &mut [u8],
    timeout: Duration,
) -> io::Result<()> {
    // Pipelined requests are usually buffered already: no timer for those.
    if reader.buffer().len() >= buf.len() {
        buf.copy_from_slice(&reader.buffer()[..buf.len()]);
        reader.consume(buf.len());
        return Ok(());
    }
    match tokio::time::timeout(timeout, reader.read_exact(buf)).await {
        Ok(result) => result.map(|_| ()),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("peer sent nothing for {timeout:?} in the middle of a frame"),
        )),
    }
}

/// Reads and throws away `len` bytes (the payload of a refused request).
pub async fn discard<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    mut len: u64,
    timeout: Duration,
) -> io::Result<()> {
    while len > 0 {
        let available = match tokio::time::timeout(timeout, reader.fill_buf()).await {
            Ok(result) => result?.len(),
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("peer sent nothing for {timeout:?} in the middle of a frame"),
                ));
            }
        };
        if available == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let n = available.min(len as usize);
        reader.consume(n);
        len -= n as u64;
    }
    Ok(())
}
