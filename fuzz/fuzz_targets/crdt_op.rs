//! CRDT operations as a client sends them: parsing never panics; an operation applied to
//! an empty value of every type either applies or is refused with nothing changed, and
//! the result merges with itself to itself.
#![no_main]

use dynamo_core::crdt::{Crdt, CrdtOp, CrdtType};
use dynamo_core::{ActorId, DotSet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(op) = CrdtOp::from_json(data) else { return };
    for t in [
        CrdtType::Counter,
        CrdtType::Set,
        CrdtType::Register,
        CrdtType::Map,
    ] {
        let mut c = Crdt::new(t);
        let before = c.clone();
        if c.apply(&op, ActorId(1), Some(&DotSet::new()), 1).is_err() {
            assert_eq!(c, before, "a refused operation changes nothing");
        }
        let mut twice = c.clone();
        twice.merge(&c).expect("same type");
        assert_eq!(twice, c, "merge is idempotent");
        let _ = c.value();
    }
});
