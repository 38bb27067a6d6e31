//! The start of a frame as a reader takes it off a stream: at every length
//! read so far, the two-step parse either asks for more (never for fewer
//! bytes than it has, never beyond the limits), or gives a header within
//! the limits, or an error; then the control message is decoded as each
//! message in turn.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardd_protocol::frame::{Start, parse_start};
use shardd_protocol::{FrameHeader, HEADER_LEN, Limits};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_control_len: 4096,
        max_payload_len: 1 << 30,
    };
    for have in 0..=data.len().min(HEADER_LEN + 4096) {
        match parse_start(&data[..have], &limits) {
            Ok(Start::Need(n)) => assert!(n > have && n <= HEADER_LEN + 4096, "need {n} with {have}"),
            Ok(Start::Whole(header)) => {
                assert!(header.control_len <= limits.max_control_len && header.payload_len <= limits.max_payload_len);
                let fixed: &[u8; HEADER_LEN] = data[..HEADER_LEN].try_into().unwrap();
                assert_eq!(FrameHeader::decode(fixed).unwrap().encode(), *fixed);
                let control = &data[HEADER_LEN..HEADER_LEN + header.control_len as usize];
                for selector in 0..shardd_fuzz::DECODERS {
                    shardd_fuzz::decode_control(selector, control);
                }
                return;
            }
            Err(_) => assert!(have >= HEADER_LEN),
        }
    }
});
