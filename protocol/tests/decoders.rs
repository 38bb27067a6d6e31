//! Properties of every decoder a peer's bytes reach, over inputs proptest
//! generates: no input panics a decoder, whatever decodes has exactly one
//! encoding (so what a receiver acts on is what the sender meant), and
//! every value a sender builds decodes back to itself.
//!
//! Two kinds of input: arbitrary bytes, and real messages with bytes
//! changed, cut or added (arbitrary bytes rarely get past a message's
//! first field; a changed real message reaches the ones after it).

use proptest::prelude::*;
use shardd_protocol::frame::{self, Start};
use shardd_protocol::*;

#[path = "support/messages.rs"]
mod messages;

/// Every control message decoder on `bytes`.
fn decode_every_message(bytes: &[u8]) {
    for selector in 0..messages::DECODERS {
        messages::decode_control(selector, bytes);
    }
}

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9._-]{0,23}"
}

fn offer() -> impl Strategy<Value = AuthOffer> {
    (name(), any::<[u8; 8]>(), any::<[u8; 32]>()).prop_map(|(key_id, fingerprint, nonce)| AuthOffer {
        key_id,
        fingerprint,
        nonce,
    })
}

fn meta() -> impl Strategy<Value = ShardMeta> {
    (
        name(),
        name(),
        any::<u64>(),
        proptest::collection::vec(any::<u64>(), 0..4),
        any::<u64>(),
        any::<u32>(),
        any::<u64>(),
    )
        .prop_map(
            |(namespace, key, version, shape, len, crc32c, created_unix_ms)| ShardMeta {
                namespace: Namespace::new(namespace).unwrap(),
                key: Key::new(key).unwrap(),
                version,
                dtype: DType::U8,
                shape,
                len,
                crc32c,
                created_unix_ms,
            },
        )
}

fn fetch() -> impl Strategy<Value = FetchRequest> {
    (
        name(),
        name(),
        proptest::option::of((any::<u64>(), any::<u64>())),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(|(namespace, key, range, max_len)| FetchRequest {
            namespace: Namespace::new(namespace).unwrap(),
            key: Key::new(key).unwrap(),
            range: range.map(|(offset, len)| ByteRange { offset, len }),
            max_len,
        })
}

fn place() -> impl Strategy<Value = RegionPlace> {
    (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(region, offset, len)| RegionPlace { region, offset, len })
}

fn part() -> impl Strategy<Value = BatchPart> {
    prop_oneof![
        (any::<u32>(), meta(), any::<u64>(), any::<u64>()).prop_map(|(index, meta, offset, len)| BatchPart::Head {
            index,
            head: FetchResponse { meta, offset, len },
        }),
        (any::<u32>(), any::<u64>()).prop_map(|(index, at)| BatchPart::Data { index, at }),
        (any::<u32>(), meta(), any::<u64>(), any::<u64>()).prop_map(|(index, meta, offset, len)| {
            BatchPart::Placed {
                index,
                head: PlacedHead::of(&meta, offset, len),
            }
        }),
        (any::<u32>(), meta()).prop_map(|(index, meta)| BatchPart::Stored { index, meta }),
    ]
}

/// Real messages of the kinds with the most structure (names, options,
/// lists, enums), encoded.
fn real_message() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        fetch().prop_map(|m| codec::encode(&m).unwrap()),
        (
            proptest::collection::vec(fetch(), 0..4),
            proptest::collection::vec(place(), 0..4)
        )
            .prop_map(|(members, places)| codec::encode(&FetchBatchRequest { members, places }).unwrap()),
        proptest::collection::vec(part(), 0..4).prop_map(|parts| codec::encode(&parts).unwrap()),
        meta().prop_map(|meta| codec::encode(&PutResponse { meta }).unwrap()),
        (meta(), proptest::option::of(place()), any::<u64>()).prop_map(|(meta, source, len)| {
            let put = PutRequest {
                namespace: meta.namespace,
                key: meta.key,
                version: Some(meta.version),
                dtype: meta.dtype,
                shape: meta.shape,
                crc32c: None,
                durability: Durability::default(),
            };
            codec::encode(&PutBatchRequest {
                members: vec![PutMember { put, len, source }],
            })
            .unwrap()
        }),
        (name(), any::<bool>(), proptest::option::of(offer())).prop_map(|(client, want_arena, auth)| {
            codec::encode(&HelloRequest {
                min_version: 1,
                max_version: 1,
                client,
                want_arena,
                auth,
            })
            .unwrap()
        }),
        (any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(nonce, proof)| {
            let challenge = AuthChallenge { nonce, proof };
            codec::encode(&Some(challenge)).unwrap()
        }),
        any::<[u8; 32]>().prop_map(|proof| codec::encode(&AuthenticateRequest { proof }).unwrap()),
        name().prop_map(|identity| codec::encode(&AuthenticateResponse { identity }).unwrap()),
    ]
}

/// A real message with some of its bytes changed, some cut off the end,
/// or some added to it.
fn changed_message() -> impl Strategy<Value = Vec<u8>> {
    (
        real_message(),
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        // Mostly whole: a message cut or grown fails at its end, so the
        // changes inside it would be left unchecked.
        prop_oneof![4 => Just(0usize), 1 => 1usize..3],
        prop_oneof![4 => Just(Vec::new()), 1 => proptest::collection::vec(any::<u8>(), 1..3)],
    )
        .prop_map(|(mut bytes, changes, cut, added)| {
            if !bytes.is_empty() {
                for (at, byte) in changes {
                    let at = at.index(bytes.len());
                    bytes[at] = byte;
                }
            }
            bytes.truncate(bytes.len().saturating_sub(cut));
            bytes.extend(added);
            bytes
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn no_bytes_panic_a_control_decoder_and_what_decodes_has_one_encoding(
        bytes in proptest::collection::vec(any::<u8>(), 0..96),
    ) {
        decode_every_message(&bytes);
    }

    #[test]
    fn no_change_to_a_real_message_panics_a_control_decoder(bytes in changed_message()) {
        decode_every_message(&bytes);
    }

    #[test]
    fn messages_decode_to_what_was_encoded(
        fetch in fetch(),
        parts in proptest::collection::vec(part(), 0..6),
        places in proptest::collection::vec(place(), 0..3),
        offer in offer(),
    ) {
        let hello = HelloRequest { min_version: 1, max_version: 1, client: "c".into(), want_arena: false, auth: Some(offer) };
        prop_assert_eq!(codec::decode::<HelloRequest>(&codec::encode(&hello).unwrap()).unwrap(), hello);
        let batch = FetchBatchRequest { members: vec![fetch.clone(); 3], places };
        prop_assert_eq!(codec::decode::<FetchRequest>(&codec::encode(&fetch).unwrap()).unwrap(), fetch);
        prop_assert_eq!(codec::decode::<FetchBatchRequest>(&codec::encode(&batch).unwrap()).unwrap(), batch);
        // A batch answer's parts encoded one by one into their list.
        let mut list = codec::ListEncoder::default();
        for part in &parts {
            list.push(part).unwrap();
        }
        prop_assert_eq!(codec::decode::<Vec<BatchPart>>(&list.finish()).unwrap(), parts);
    }

    #[test]
    fn headers_decode_to_what_was_encoded(
        opcode in proptest::sample::select(Opcode::ALL.to_vec()),
        response in any::<bool>(),
        more in any::<bool>(),
        status in proptest::sample::select(Status::NAMED.to_vec()),
        control_len in any::<u32>(),
        request_id in any::<u64>(),
        payload_len in any::<u64>(),
    ) {
        let header = if response {
            FrameHeader::response(opcode, request_id, status, more, control_len, payload_len)
        } else {
            FrameHeader::request(opcode, request_id, control_len, payload_len)
        };
        prop_assert_eq!(FrameHeader::decode(&header.encode()).unwrap(), header);
    }

    #[test]
    fn no_bytes_panic_the_header_decoder_and_what_decodes_has_one_encoding(
        bytes in proptest::array::uniform32(any::<u8>()),
        // Most arbitrary headers fail at the magic; half start with it.
        magic in any::<bool>(),
    ) {
        let mut bytes = bytes;
        if magic {
            bytes[..4].copy_from_slice(&MAGIC);
            bytes[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        }
        if let Ok(header) = FrameHeader::decode(&bytes) {
            prop_assert_eq!(header.encode(), bytes);
        }
    }

    #[test]
    fn a_frames_start_is_parsed_without_panics_and_within_the_limits(
        header in proptest::array::uniform32(any::<u8>()),
        rest in proptest::collection::vec(any::<u8>(), 0..64),
        max_control_len in 0u32..128,
        max_payload_len in any::<u64>(),
    ) {
        let mut bytes = header.to_vec();
        bytes[..4].copy_from_slice(&MAGIC);
        bytes[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        bytes.extend(rest);
        let limits = Limits { max_control_len, max_payload_len };
        for cut in 0..=bytes.len() {
            match frame::parse_start(&bytes[..cut], &limits) {
                Ok(Start::Need(n)) => {
                    prop_assert!(n > cut, "asked for {} bytes with {} there", n, cut);
                    prop_assert!(n <= HEADER_LEN + max_control_len as usize);
                }
                Ok(Start::Whole(h)) => {
                    prop_assert!(h.control_len <= max_control_len && h.payload_len <= max_payload_len);
                    prop_assert!(cut >= HEADER_LEN + h.control_len as usize);
                }
                Err(_) => prop_assert!(cut >= HEADER_LEN, "an error before the header was all there"),
            }
        }
    }

    #[test]
    fn a_name_is_what_it_was_made_from_or_refused(value in "\\PC{0,40}|[a-z0-9._/-]{0,300}") {
        if let Ok(namespace) = Namespace::new(value.clone()) {
            prop_assert_eq!(namespace.as_str(), value.as_str());
            let bytes = codec::encode(&namespace).unwrap();
            prop_assert_eq!(codec::decode::<Namespace>(&bytes).unwrap(), namespace);
        } else {
            // Refused when made is refused when decoded.
            prop_assert!(codec::decode::<Namespace>(&codec::encode(&value).unwrap()).is_err());
        }
        if let Ok(key) = Key::new(value.clone()) {
            prop_assert_eq!(key.as_str(), value.as_str());
            let bytes = codec::encode(&key).unwrap();
            prop_assert_eq!(codec::decode::<Key>(&bytes).unwrap(), key);
        } else {
            prop_assert!(codec::decode::<Key>(&codec::encode(&value).unwrap()).is_err());
        }
    }
}
