//! The header of a shard file, as recovery reads it from a drive: any
//! bytes are refused or decoded into a header that encodes back to them.
//! Half the inputs have their header checksum set right first, so that the
//! fuzzer reaches the fields the checksum guards.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardd::store::format::{decode_header, encode_header, header_len_from_prefix};

/// Bytes before the metadata: magic, version, lengths.
const FIXED_LEN: usize = 32;

fn u32_at(bytes: &[u8], at: usize) -> usize {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize
}

fn check(bytes: &[u8]) {
    let _ = header_len_from_prefix(bytes);
    if let Ok((meta, layout)) = decode_header(bytes) {
        let again = encode_header(&meta, &layout).expect("a decoded header encodes");
        // Up to and with the header's checksum; the padding after it to
        // the payload's alignment is not read.
        let used = FIXED_LEN + u32_at(bytes, 12) + 4 * u32_at(bytes, 28) + 4;
        assert_eq!(again[..used], bytes[..used], "{meta:?} has another header");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&fix, bytes)) = data.split_first() else {
        return;
    };
    if fix & 1 == 0 || bytes.len() < FIXED_LEN {
        check(bytes);
        return;
    }
    let mut bytes = bytes.to_vec();
    let crcs_end = FIXED_LEN
        .saturating_add(u32_at(&bytes, 12))
        .saturating_add(u32_at(&bytes, 28).saturating_mul(4));
    if crcs_end.saturating_add(4) <= bytes.len() {
        let crc = crc32c::crc32c(&bytes[..crcs_end]);
        bytes[crcs_end..crcs_end + 4].copy_from_slice(&crc.to_le_bytes());
    }
    check(&bytes);
});
