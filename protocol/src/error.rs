//! Errors of the wire format itself.

/// A frame or control message that cannot be accepted. Each one means the
/// peer speaks something else or is broken: the connection cannot continue,
/// except after [`ProtocolError::UnknownOpcode`], whose frame can be skipped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The frame does not start with `SHRD`: not a shardd peer, or the
    /// stream lost its framing.
    #[error("bad magic {0:02x?}: not a shardd frame")]
    BadMagic([u8; 4]),
    /// The frame's protocol version is not one this side speaks.
    #[error("protocol version {0} is not supported (this side speaks 1)")]
    UnsupportedVersion(u16),
    /// Reserved flag bits are set.
    #[error("unknown flag bits {0:#06x}")]
    UnknownFlags(u16),
    /// The opcode is not known; the frame is well formed and can be skipped.
    #[error("unknown opcode {opcode}")]
    UnknownOpcode {
        /// The raw opcode.
        opcode: u16,
        /// The frame's request id, to answer it.
        request_id: u64,
        /// Control bytes to skip.
        control_len: u32,
        /// Payload bytes to skip.
        payload_len: u64,
    },
    /// The control message is longer than the receiver accepts.
    #[error("control message of {len} bytes exceeds the limit of {max}")]
    ControlTooLarge {
        /// Declared length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// The payload is longer than the receiver accepts.
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    PayloadTooLarge {
        /// Declared length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A control message could not be encoded (too large).
    #[error("cannot encode control message: {0}")]
    Encode(String),
    /// A control message could not be decoded.
    #[error("malformed control message: {0}")]
    Decode(String),
}
