//! Every control message decoder: the first byte chooses the message, the
//! rest is its encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((&selector, bytes)) = data.split_first() {
        shardd_fuzz::decode_control(selector, bytes);
    }
});
