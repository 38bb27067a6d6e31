//! The configuration file: any text is a configuration or an error, never
//! a panic (it is read at start and on every SIGHUP).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardd::config::{Config, Overrides};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::from_toml(text, Overrides::default());
    }
});
