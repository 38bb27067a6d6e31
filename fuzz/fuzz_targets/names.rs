//! Namespaces and keys: made from any string, and decoded from any bytes,
//! a name is either refused or exactly what it was made from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardd_protocol::{Key, Namespace, codec};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(namespace) = Namespace::new(text) {
            assert_eq!(namespace.as_str(), text);
        }
        if let Ok(key) = Key::new(text) {
            assert_eq!(key.as_str(), text);
        }
    }
    if let Ok(namespace) = codec::decode::<Namespace>(data) {
        assert_eq!(codec::encode(&namespace).unwrap(), data);
    }
    if let Ok(key) = codec::decode::<Key>(data) {
        assert_eq!(codec::encode(&key).unwrap(), data);
    }
});
