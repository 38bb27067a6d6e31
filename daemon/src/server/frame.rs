//! Frames on their way out. Frames come in through the protocol crate's
//! reader ([`shardd_protocol::frame::io::FrameReader`]).

use std::io;

use serde::Serialize;
use shardd_protocol::{ErrorResponse, FrameHeader, HEADER_LEN, Opcode, Status, codec};
use tokio::io::{AsyncWrite, AsyncWriteExt};

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

    /// The control message.
    #[cfg(test)]
    pub fn control(&self) -> &[u8] {
        &self.control
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
