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

/// A list encoded item by item into one buffer as the items come, giving
/// what [`encode`] gives for a `Vec` of them: a sender that gathers many
/// small items into a frame encodes each in place, without a buffer of
/// its own.
#[derive(Debug)]
pub struct ListEncoder {
    /// The list's length (filled in by [`ListEncoder::finish`]), then the
    /// items.
    bytes: Vec<u8>,
    items: u64,
}

impl Default for ListEncoder {
    fn default() -> ListEncoder {
        let mut bytes = Vec::with_capacity(TYPICAL_CONTROL_LEN);
        bytes.extend_from_slice(&0u64.to_le_bytes());
        ListEncoder { bytes, items: 0 }
    }
}

impl ListEncoder {
    /// Appends `item`; on an error (or past the control limit) the list is
    /// as it was.
    pub fn push<T: Serialize>(&mut self, item: &T) -> Result<(), ProtocolError> {
        let before = self.bytes.len();
        let written = bincode::serde::encode_into_std_write(item, &mut self.bytes, config())
            .map_err(|e| ProtocolError::Encode(e.to_string()));
        if let Err(e) = written {
            self.bytes.truncate(before);
            return Err(e);
        }
        if self.bytes.len() > MAX_CONTROL_LEN as usize {
            let len = self.bytes.len();
            self.bytes.truncate(before);
            return Err(ProtocolError::Encode(format!(
                "{len} bytes exceed the control limit of {MAX_CONTROL_LEN}"
            )));
        }
        self.items += 1;
        Ok(())
    }

    /// Bytes of the encoding so far.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether no item was pushed.
    pub fn is_empty(&self) -> bool {
        self.items == 0
    }

    /// The encoded list.
    pub fn finish(mut self) -> Vec<u8> {
        // Fixed-width integers: the list's length is a u64, then the items.
        self.bytes[..8].copy_from_slice(&self.items.to_le_bytes());
        self.bytes
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_encoded_in_place_is_the_encoding_of_the_list_and_a_failed_item_leaves_no_trace() {
        let items = vec!["a".to_string(), String::new(), "three".to_string()];
        let mut list = ListEncoder::default();
        assert!(list.is_empty());
        for item in &items {
            list.push(item).unwrap();
        }
        // An item past the control limit is refused, and leaves nothing behind.
        let huge = "x".repeat(MAX_CONTROL_LEN as usize);
        assert!(matches!(list.push(&huge), Err(ProtocolError::Encode(_))));
        assert_eq!(list.len(), encode(&items).unwrap().len());
        let encoded = list.finish();
        assert_eq!(encoded, encode(&items).unwrap());
        assert_eq!(decode::<Vec<String>>(&encoded).unwrap(), items);
        assert_eq!(ListEncoder::default().finish(), encode(&Vec::<String>::new()).unwrap());
    }
}
