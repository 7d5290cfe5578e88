//! The `x-dynamo-signature` header of internal requests: parsing never panics, and a
//! header that parses prints back to itself; checking it against a request never panics.
#![no_main]

use dynamo_core::keys::{Key, KeyRing};
use dynamo_core::signature::{Role, Signature, SignedParts, Verifier, body_digest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(header) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(sig) = Signature::parse(header) else { return };
    assert_eq!(sig.to_header(), header, "a parsed header is canonical");
    let ring = KeyRing::new(vec![Key::new(1, &[7; 32]).expect("a 32-byte key")]).expect("one key");
    let mut v = Verifier::new(ring.clone(), Some(ring), u64::MAX, 16);
    let parts = SignedParts {
        method: "POST",
        path_and_query: "/internal/v1/replicas",
        body_digest: body_digest(data),
    };
    if let Ok(s) = v.precheck(Some(header), sig.ts_ms) {
        // Without the key a fuzzer cannot forge a tag.
        assert!(v.verify(&s, &parts, Role::Member, sig.ts_ms).is_err());
    }
});
