//! Bucket names, keys and node ids from request paths: validation never panics, and what
//! it accepts is what the API documents.
#![no_main]

use dynamo_core::ids::validate_key;
use dynamo_core::{BucketName, NodeId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let name_ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    assert_eq!(BucketName::new(s).is_ok(), name_ok, "bucket {s:?}");
    assert_eq!(NodeId::new(s).is_ok(), name_ok, "node id {s:?}");
    assert_eq!(
        validate_key(s).is_ok(),
        !s.is_empty() && s.len() <= 1024,
        "key of {} bytes",
        s.len()
    );
});
