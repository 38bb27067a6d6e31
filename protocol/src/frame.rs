//! The one frame codec: a frame's header and control message encoded in one
//! go, a frame's start parsed in two steps ("need more bytes" apart from
//! "malformed"), and, with the `io` feature, [`io::FrameReader`], which
//! takes frames off a stream and checks each header against the limits
//! before it reads or allocates anything else.
//!
//! The daemon, the client and the tests' raw clients all use it. Tests that
//! send malformed frames on purpose build them from [`FrameHeader`] itself.

use serde::Serialize;

use crate::{FrameHeader, HEADER_LEN, Limits, Opcode, ProtocolError, codec};

#[cfg(feature = "io")]
pub mod io;

/// The bytes of a frame's header and control message (its payload, if
/// any, follows them on the wire).
pub fn encode(header: &FrameHeader, control: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(HEADER_LEN + control.len());
    frame.extend_from_slice(&header.encode());
    frame.extend_from_slice(control);
    frame
}

/// A request frame carrying `message`, announcing `payload_len` bytes of
/// payload to follow: its header and control message.
pub fn request<T: Serialize>(
    opcode: Opcode,
    request_id: u64,
    message: &T,
    payload_len: u64,
) -> Result<Vec<u8>, ProtocolError> {
    let control = codec::encode(message)?;
    let header = FrameHeader::request(opcode, request_id, control.len() as u32, payload_len);
    Ok(encode(&header, &control))
}

/// How far the start of a frame (header and control message) is in
/// `bytes`, read so far from a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// More bytes are needed: this many in all (header and control).
    Need(usize),
    /// The header, checked against the limits, and the control message
    /// bytes (`bytes[HEADER_LEN..HEADER_LEN + control_len]`).
    Whole(FrameHeader),
}

/// Parses the start of a frame from `bytes`: the header is decoded and its
/// lengths checked against `limits` as soon as it is all there, so that a
/// reader learns how much to read (and that it may) before it reserves it.
pub fn parse_start(bytes: &[u8], limits: &Limits) -> Result<Start, ProtocolError> {
    let Some(fixed) = bytes.first_chunk::<HEADER_LEN>() else {
        return Ok(Start::Need(HEADER_LEN));
    };
    let header = FrameHeader::decode(fixed)?;
    header.check_limits(limits)?;
    let whole = HEADER_LEN + header.control_len as usize;
    if bytes.len() < whole {
        return Ok(Start::Need(whole));
    }
    Ok(Start::Whole(header))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HelloRequest, PROTOCOL_VERSION};

    #[test]
    fn a_request_parses_back_in_two_steps() {
        let hello = HelloRequest {
            min_version: PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            client: "test".into(),
            want_arena: true,
            auth: None,
        };
        let bytes = request(Opcode::Hello, 7, &hello, 0).unwrap();
        let limits = Limits::default();
        assert_eq!(parse_start(&bytes[..10], &limits).unwrap(), Start::Need(HEADER_LEN));
        let Start::Need(whole) = parse_start(&bytes[..HEADER_LEN], &limits).unwrap() else {
            panic!("the control message is still to come");
        };
        assert_eq!(whole, bytes.len());
        let Start::Whole(header) = parse_start(&bytes, &limits).unwrap() else {
            panic!("the whole start is there");
        };
        assert_eq!(
            (header.opcode, header.request_id, header.payload_len),
            (Opcode::Hello, 7, 0)
        );
        let back: HelloRequest = codec::decode(&bytes[HEADER_LEN..whole]).unwrap();
        assert_eq!(back, hello);
    }

    #[test]
    fn lengths_over_the_limits_are_refused_before_the_control_message() {
        let header = FrameHeader::request(Opcode::Put, 1, 64, 1 << 40);
        let bytes = header.encode();
        let limits = Limits {
            max_control_len: 1 << 20,
            max_payload_len: 1 << 30,
        };
        assert!(matches!(
            parse_start(&bytes, &limits),
            Err(ProtocolError::PayloadTooLarge { .. })
        ));
        let mut bad = bytes;
        bad[0] = b'X';
        assert!(matches!(parse_start(&bad, &limits), Err(ProtocolError::BadMagic(_))));
    }
}
