//! The fixed 32-byte frame header that starts every message.
//!
//! ```text
//! offset size field        notes
//!      0    4 magic        b"SHRD"
//!      4    2 version      protocol version of this frame (1)
//!      6    2 opcode       see `Opcode`
//!      8    2 flags        bit 0 RESPONSE, bit 1 MORE; other bits must be 0
//!     10    2 status       0 in requests; a `Status` code in responses
//!     12    4 control_len  bytes of bincode control message that follow
//!     16    8 request_id   chosen by the client, echoed by the daemon
//!     24    8 payload_len  raw payload bytes that follow the control message
//! ```
//!
//! All integers are little-endian. Parsing is split in two steps: the caller
//! first makes sure [`HEADER_LEN`] bytes are buffered, then [`FrameHeader::decode`]
//! validates them. Lengths are checked against [`Limits`] by
//! [`FrameHeader::check_limits`] before anything is allocated for them.

use crate::{Limits, Opcode, ProtocolError, Status};

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 32;

/// The four bytes every frame starts with.
pub const MAGIC: [u8; 4] = *b"SHRD";

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// Frame flag bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flags(u16);

impl Flags {
    /// No flags: a request frame.
    pub const NONE: Flags = Flags(0);
    /// The frame is a response (daemon to client).
    pub const RESPONSE: Flags = Flags(1);
    /// More frames of the same response follow.
    pub const MORE: Flags = Flags(2);
    const KNOWN: u16 = Self::RESPONSE.0 | Self::MORE.0;

    /// The raw bits.
    pub const fn bits(self) -> u16 {
        self.0
    }

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Both sets of bits.
    pub const fn union(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// What the frame asks for (or answers).
    pub opcode: Opcode,
    /// RESPONSE / MORE bits.
    pub flags: Flags,
    /// `Status::Ok` in requests; the outcome in responses.
    pub status: Status,
    /// Length of the bincode control message that follows the header.
    pub control_len: u32,
    /// Chosen by the client; every response frame echoes it.
    pub request_id: u64,
    /// Length of the raw payload that follows the control message.
    pub payload_len: u64,
}

impl FrameHeader {
    /// A request header.
    pub fn request(opcode: Opcode, request_id: u64, control_len: u32, payload_len: u64) -> Self {
        FrameHeader {
            opcode,
            flags: Flags::NONE,
            status: Status::Ok,
            control_len,
            request_id,
            payload_len,
        }
    }

    /// A response header; `more` sets the MORE flag.
    pub fn response(
        opcode: Opcode,
        request_id: u64,
        status: Status,
        more: bool,
        control_len: u32,
        payload_len: u64,
    ) -> Self {
        let flags = if more {
            Flags::RESPONSE.union(Flags::MORE)
        } else {
            Flags::RESPONSE
        };
        FrameHeader {
            opcode,
            flags,
            status,
            control_len,
            request_id,
            payload_len,
        }
    }

    /// Whether this frame is a response.
    pub fn is_response(&self) -> bool {
        self.flags.contains(Flags::RESPONSE)
    }

    /// Whether more frames of the same response follow.
    pub fn has_more(&self) -> bool {
        self.flags.contains(Flags::MORE)
    }

    /// Encodes the header into its 32 wire bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        out[6..8].copy_from_slice(&self.opcode.code().to_le_bytes());
        out[8..10].copy_from_slice(&self.flags.bits().to_le_bytes());
        out[10..12].copy_from_slice(&self.status.code().to_le_bytes());
        out[12..16].copy_from_slice(&self.control_len.to_le_bytes());
        out[16..24].copy_from_slice(&self.request_id.to_le_bytes());
        out[24..32].copy_from_slice(&self.payload_len.to_le_bytes());
        out
    }

    /// Decodes and validates a header: magic, version, opcode, flags and
    /// status must be known. Lengths are checked separately by
    /// [`FrameHeader::check_limits`], because the limits are the receiver's.
    ///
    /// An unknown opcode is reported as [`ProtocolError::UnknownOpcode`] with
    /// the request id and lengths, so a server can skip the frame and answer it.
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<FrameHeader, ProtocolError> {
        let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        let u32_at = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(b)
        };
        if bytes[0..4] != MAGIC {
            return Err(ProtocolError::BadMagic([bytes[0], bytes[1], bytes[2], bytes[3]]));
        }
        let version = u16_at(4);
        if version != PROTOCOL_VERSION {
            return Err(ProtocolError::UnsupportedVersion(version));
        }
        let flags = u16_at(8);
        if flags & !Flags::KNOWN != 0 {
            return Err(ProtocolError::UnknownFlags(flags));
        }
        let status_code = u16_at(10);
        let status = Status::from_code(status_code);
        let control_len = u32_at(12);
        let request_id = u64_at(16);
        let payload_len = u64_at(24);
        let opcode_code = u16_at(6);
        let Some(opcode) = Opcode::from_code(opcode_code) else {
            return Err(ProtocolError::UnknownOpcode {
                opcode: opcode_code,
                request_id,
                control_len,
                payload_len,
            });
        };
        Ok(FrameHeader {
            opcode,
            flags: Flags(flags),
            status,
            control_len,
            request_id,
            payload_len,
        })
    }

    /// Checks the lengths against the receiver's limits. Call this before
    /// reserving any memory for the control message or the payload.
    pub fn check_limits(&self, limits: &Limits) -> Result<(), ProtocolError> {
        if self.control_len > limits.max_control_len {
            return Err(ProtocolError::ControlTooLarge {
                len: self.control_len,
                max: limits.max_control_len,
            });
        }
        if self.payload_len > limits.max_payload_len {
            return Err(ProtocolError::PayloadTooLarge {
                len: self.payload_len,
                max: limits.max_payload_len,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the header layout: a change here is a protocol change.
    #[test]
    fn golden_bytes_of_a_request_header() {
        let header = FrameHeader::request(Opcode::Fetch, 0x0102_0304_0506_0708, 0x1122, 0x33_4455);
        let expected: [u8; HEADER_LEN] = [
            b'S', b'H', b'R', b'D', // magic
            0x01, 0x00, // version 1
            0x04, 0x00, // opcode 4 = fetch
            0x00, 0x00, // flags
            0x00, 0x00, // status ok
            0x22, 0x11, 0x00, 0x00, // control_len
            0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, // request id
            0x55, 0x44, 0x33, 0x00, 0x00, 0x00, 0x00, 0x00, // payload_len
        ];
        assert_eq!(header.encode(), expected);
        assert_eq!(FrameHeader::decode(&expected).unwrap(), header);
    }

    #[test]
    fn golden_bytes_of_a_response_header_with_more() {
        let header = FrameHeader::response(Opcode::Fetch, 7, Status::NotFound, true, 3, 1 << 32);
        let expected: [u8; HEADER_LEN] = [
            b'S', b'H', b'R', b'D', 0x01, 0x00, 0x04, 0x00, // magic, version, opcode
            0x03, 0x00, // flags RESPONSE | MORE
            0x01, 0x00, // status 1 = not found
            0x03, 0x00, 0x00, 0x00, // control_len
            0x07, 0, 0, 0, 0, 0, 0, 0, // request id
            0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, // payload_len 2^32
        ];
        assert_eq!(header.encode(), expected);
        let decoded = FrameHeader::decode(&expected).unwrap();
        assert!(decoded.is_response() && decoded.has_more());
        assert_eq!(decoded.status, Status::NotFound);
    }

    #[test]
    fn rejects_bad_magic_version_and_flags() {
        let mut bytes = FrameHeader::request(Opcode::Ping, 1, 0, 0).encode();
        bytes[0] = b'X';
        assert!(matches!(FrameHeader::decode(&bytes), Err(ProtocolError::BadMagic(_))));

        let mut bytes = FrameHeader::request(Opcode::Ping, 1, 0, 0).encode();
        bytes[4] = 9;
        assert_eq!(FrameHeader::decode(&bytes), Err(ProtocolError::UnsupportedVersion(9)));

        let mut bytes = FrameHeader::request(Opcode::Ping, 1, 0, 0).encode();
        bytes[9] = 0x80;
        assert_eq!(FrameHeader::decode(&bytes), Err(ProtocolError::UnknownFlags(0x8000)));
    }

    #[test]
    fn unknown_opcode_keeps_what_is_needed_to_skip_the_frame() {
        let mut bytes = FrameHeader::request(Opcode::Ping, 42, 5, 6).encode();
        bytes[6] = 0xEE;
        assert_eq!(
            FrameHeader::decode(&bytes),
            Err(ProtocolError::UnknownOpcode {
                opcode: 0xEE,
                request_id: 42,
                control_len: 5,
                payload_len: 6
            })
        );
    }

    #[test]
    fn limits_are_checked_before_allocation() {
        let limits = Limits {
            max_control_len: 100,
            max_payload_len: 1000,
        };
        let ok = FrameHeader::request(Opcode::Put, 1, 100, 1000);
        assert_eq!(ok.check_limits(&limits), Ok(()));
        let big_control = FrameHeader::request(Opcode::Put, 1, 101, 0);
        assert!(matches!(
            big_control.check_limits(&limits),
            Err(ProtocolError::ControlTooLarge { len: 101, max: 100 })
        ));
        let big_payload = FrameHeader::request(Opcode::Put, 1, 0, u64::MAX);
        assert!(matches!(
            big_payload.check_limits(&limits),
            Err(ProtocolError::PayloadTooLarge { .. })
        ));
    }
}
