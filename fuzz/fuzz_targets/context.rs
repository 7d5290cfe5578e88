//! Context tokens as a client sends them in `X-Dynamo-Context`: opening never panics, a
//! token that opens is the one canonical token of its dots, and the unverified reader
//! (tools, tests) agrees with the verified one.
#![no_main]

use dynamo_core::context::{ContextKeys, read_unverified};
use dynamo_core::keys::Key;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let keys = ContextKeys::new(vec![Key::new(1, &[7; 32]).expect("a 32-byte key")]).expect("one key");
    let unverified = read_unverified(token);
    if let Ok(set) = keys.open(token, "b", "k") {
        assert_eq!(keys.seal(&set, "b", "k"), token, "an opened token is canonical");
        assert_eq!(unverified, Ok(set));
    }
    if let Ok(set) = unverified {
        // Whatever parses can be sealed and opened again.
        let resealed = keys.seal(&set, "b", "k");
        assert_eq!(keys.open(&resealed, "b", "k"), Ok(set));
    }
});
