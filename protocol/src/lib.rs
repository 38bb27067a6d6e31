//! The wire format of shardd, shared by the daemon and the client crate.
//!
//! Every message is a frame: a fixed 32-byte little-endian [`FrameHeader`],
//! then a small control message (encoded by [`codec`]), then a raw payload
//! that is never re-encoded. Requests are pipelined: a client may have many
//! in flight on one connection and the daemon answers each by its request id,
//! possibly out of order. The full specification is `docs/PROTOCOL.md`.
//!
//! This crate holds no I/O policy: it turns bytes into typed values and back,
//! and says which lengths are acceptable before anything is allocated. Its
//! `io` feature adds the one async frame reader the daemon, the client and
//! the tests share.
//!
//! # Layout
//!
//! * [`header`]: the frame header, its flags and golden-byte tests.
//! * [`frame`]: the frame codec: header and control message encoded in one
//!   go, a frame's start parsed in two steps, and (feature `io`) frames read
//!   off a stream within limits and timeouts.
//! * [`opcode`] and [`status`]: the codes carried in the header.
//! * [`message`]: the control messages of each operation.
//! * [`codec`]: the one module that knows the control encoding (bincode 2).
//! * [`names`]: validation of namespaces and keys.
//! * [`dtype`]: element types and shape checks.
//! * [`limits`]: length limits.
//! * [`error`]: the protocol error type, [`ProtocolError`].
//! * `fdpass` (feature `io`): descriptors passed over a Unix socket.
//! * `auth` (feature `auth`): pre-shared keys and the proofs of the TCP
//!   key exchange.

#[cfg(feature = "auth")]
pub mod auth;
pub mod codec;
pub mod dtype;
pub mod error;
#[cfg(feature = "io")]
pub mod fdpass;
pub mod frame;
pub mod header;
pub mod limits;
pub mod message;
pub mod names;
pub mod opcode;
pub mod status;

pub use dtype::DType;
pub use error::ProtocolError;
pub use header::{FrameHeader, HEADER_LEN, MAGIC, PROTOCOL_VERSION};
pub use limits::{
    DEFAULT_MAX_PAYLOAD_LEN, Limits, MAX_CHOSEN_VERSION, MAX_CONTROL_LEN, MAX_LIST_LIMIT, MAX_SHAPE_DIMS,
};
pub use message::*;
pub use names::{Key, MAX_KEY_LEN, MAX_NAMESPACE_LEN, NameError, Namespace, ShardIndex};
pub use opcode::Opcode;
pub use status::Status;
