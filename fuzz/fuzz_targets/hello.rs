//! The hello's key exchange, as the daemon reads it from a TCP peer. The
//! first byte chooses what the rest is: a key file (which must be refused
//! or read back the same from the text it writes), or a hello followed by
//! the client's proof. A proof holds exactly when it is the HMAC the key
//! makes over the transcript, so no input proves a key without its secret;
//! and no input panics.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use shardd_fuzz::{Exchange, fuzz_key, transcript};
use shardd_protocol::auth::{AuthKey, Side};
use shardd_protocol::{AuthenticateRequest, HelloRequest, codec};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    if selector % 2 == 0 {
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        if let Ok(key) = AuthKey::parse(text, Path::new("fuzz.key")) {
            let again = AuthKey::parse(&key.to_file_text(), Path::new("fuzz.key")).expect("a written key reads back");
            assert_eq!(again, key);
        }
        return;
    }
    let Some(exchange) = Exchange::from_input(rest) else {
        return;
    };
    let Ok(hello) = codec::decode::<HelloRequest>(&exchange.hello) else {
        return;
    };
    let Ok(request) = codec::decode::<AuthenticateRequest>(&exchange.proof) else {
        return;
    };
    let key = fuzz_key();
    let Some(offer) = hello.auth.as_ref().filter(|offer| key.is_offered(offer)) else {
        return;
    };
    let t = transcript(offer, &hello.client);
    let holds = key.holds(Side::Client, &t, &request.proof);
    assert_eq!(holds, request.proof == key.prove(Side::Client, &t));
    // The daemon's own proof never passes for the client's.
    assert!(!key.holds(Side::Client, &t, &key.prove(Side::Server, &t)));
});
