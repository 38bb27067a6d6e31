//! The one place that knows how control messages are encoded.
//!
//! Control messages are bincode 2 with little-endian fixed-width integers
//! (see `docs/PROTOCOL.md` for the byte-level rules). Everything else goes
//! through [`encode`] and [`decode`], so the encoding can be replaced
//! without touching callers.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{MAX_CONTROL_LEN, ProtocolError};

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
        .with_limit::<{ MAX_CONTROL_LEN as usize }>()
}

/// Room reserved up front for an encoded message: most requests and
/// answers fit, so encoding one costs a single allocation instead of a
/// series of regrowths.
const TYPICAL_CONTROL_LEN: usize = 256;

/// Encodes a control message.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, ProtocolError> {
    let mut bytes = Vec::with_capacity(TYPICAL_CONTROL_LEN);
    bincode::serde::encode_into_std_write(value, &mut bytes, config())
        .map_err(|e| ProtocolError::Encode(e.to_string()))?;
    if bytes.len() > MAX_CONTROL_LEN as usize {
        return Err(ProtocolError::Encode(format!(
            "{} bytes exceed the control limit of {MAX_CONTROL_LEN}",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// Decodes a control message; trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ProtocolError> {
    let (value, used) =
        bincode::serde::decode_from_slice(bytes, config()).map_err(|e| ProtocolError::Decode(e.to_string()))?;
    if used != bytes.len() {
        return Err(ProtocolError::Decode(format!(
            "{} trailing bytes after the message",
            bytes.len() - used
        )));
    }
    Ok(value)
}
