//! The body of `POST /internal/v1/replicas` (after the signature check): decoding never
//! panics, and whatever decodes encodes and decodes back to itself.
#![no_main]

use dynamo_core::wire::internal::ReplicaBatch;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(batch) = serde_json::from_slice::<ReplicaBatch>(data) else {
        return;
    };
    let encoded = serde_json::to_vec(&batch).expect("a decoded batch encodes");
    let again: ReplicaBatch = serde_json::from_slice(&encoded).expect("an encoded batch decodes");
    assert_eq!(again, batch);
});
