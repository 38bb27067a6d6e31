//! The header of a shard file, as recovery reads it from a drive: any
//! bytes are refused or decoded into a header that encodes back to them.
//! Half the inputs have their header checksum set right first, so that the
//! fuzzer reaches the fields the checksum guards.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardd::store::format::{checksum_offset, decode_header, encode_header, header_len_from_prefix};

fn check(bytes: &[u8]) {
    let _ = header_len_from_prefix(bytes);
    if let Ok((meta, layout)) = decode_header(bytes) {
        let again = encode_header(&meta, &layout).expect("a decoded header encodes");
        // Up to and with the header's checksum; the padding after it to
        // the payload's alignment is not read.
        let used = checksum_offset(bytes).unwrap() + 4;
        assert_eq!(again[..used], bytes[..used], "{meta:?} has another header");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&fix, bytes)) = data.split_first() else {
        return;
    };
    let mut bytes = bytes.to_vec();
    if fix & 1 == 1
        && let Some(at) = checksum_offset(&bytes).filter(|at| at + 4 <= bytes.len())
    {
        let crc = crc32c::crc32c(&bytes[..at]);
        bytes[at..at + 4].copy_from_slice(&crc.to_le_bytes());
    }
    check(&bytes);
});
