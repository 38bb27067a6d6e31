//! What the fuzz targets share: every control message decoder, from the
//! list the protocol crate's property tests use.

#[path = "../../protocol/tests/support/messages.rs"]
mod messages;

pub use messages::{DECODERS, decode_control};
