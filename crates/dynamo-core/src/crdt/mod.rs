//! CRDT types: counters, sets, registers and maps whose replicas merge without siblings.
//!
//! A bucket whose `crdt_type` is set stores one [`Crdt`] per key instead of siblings.
//! States merge with [`Crdt::merge`], which is commutative, associative and idempotent
//! (property-tested in this module), so replicas converge whatever the order of
//! delivery. `POST /v1/crdt/{bucket}/{key}` sends a [`CrdtOp`]; the coordinating storage
//! node applies it with [`Crdt::apply`], passing its copy's minting actor, the context the
//! client observed and the time, then the state is replicated. How states sit inside a
//! key's version set, and who merges them when, is [`stored`]'s.
//!
//! This module owns the types, their merges, their JSON views and state formats, the op
//! shapes and their validation. It does not own the bucket property, the context token or
//! the HTTP mapping (services do, through [`CrdtError::code`]).
//!
//! # Semantics
//! - **Counter** ([`PnCounter`]): per-actor increment and decrement totals (`u64`),
//!   merged by maximum. The value is their difference, saturated into `i64`.
//! - **Set** ([`OrSet`]): add-wins, over dots with a causal context. An add mints a dot;
//!   a remove drops only the dots of the named elements that the client's observed
//!   context contains, so an add the client did not see survives the remove.
//! - **Register** ([`LwwRegister`]): last writer wins by `(timestamp_ms, actor)`, the
//!   timestamp given by the caller; an exact tie breaks on a hash of the value's
//!   canonical JSON (then the JSON itself), so a merge never depends on order.
//! - **Map** ([`OrMap`]): fields keyed by (name, kind), so the same name as a counter on
//!   one replica and as a set on another is two fields. Presence is add-wins: an update
//!   mints a dot; `remove_fields` is a reset-remove of what the client observed of each
//!   field (presence and state), and a concurrent update keeps its own change.
//!
//! # Removes need the observed context
//! `remove` and `remove_fields`, also nested in a map `update`, take the context the
//! client read ([`Crdt::context`]) and are refused, with nothing changed, when:
//! - no context is given ([`CrdtError::MissingContext`]);
//! - this replica has not seen every dot of it ([`CrdtError::ContextNotSeen`]): it could
//!   miss an add the client meant to remove, and a remove that silently missed it would
//!   let the element come back. The service merges a fresher replica's state (say, the
//!   one its read returned) and retries;
//! - a named element or field holds no dot the context contains
//!   ([`CrdtError::ElementNotObserved`], [`CrdtError::FieldNotObserved`]): it is absent,
//!   or present only through writes the client has not seen (Riak's precondition). The
//!   client reads again. We refuse rather than ignore, so a client learns its remove had
//!   no effect.
//!
//! Rejected alternative: Riak's deferred removes (keep the remove until the adds it saw
//! arrive) avoid `ContextNotSeen`, but add state that every replica carries and merges
//! until then, with its own bound.
//!
//! # Bounds
//! | bound | value | at the bound |
//! |---|---|---|
//! | set element | [`MAX_SET_ELEMENT_BYTES`] | op refused ([`CrdtError::ElementTooLong`]); state refused on deserialization |
//! | elements per set | [`MAX_SET_ELEMENTS`] | an add of new elements refused ([`CrdtError::TooManyElements`]) |
//! | field name | 1 to [`MAX_FIELD_NAME_BYTES`] | op refused ([`CrdtError::InvalidFieldName`]); state refused on deserialization |
//! | fields per map (each level) | [`MAX_MAP_FIELDS`] | an update adding fields refused ([`CrdtError::TooManyFields`]) |
//! | map nesting | [`MAX_MAP_DEPTH`] | op refused ([`CrdtError::NestingTooDeep`]); state refused on deserialization |
//!
//! Merges never refuse, so concurrent adds on different replicas can leave a set or map
//! above its count bound (as `max_siblings` can be passed); then only ops that add
//! nothing new pass until removes bring it back. A register value's size, and the whole
//! state's, are bounded by the service's value limit. Counter and context entries are
//! per actor, and actors are storage-node incarnations, so they stay few.
//!
//! # Actors
//! `actor` is always the replica applying the op (its current incarnation), never a
//! client: dots are minted as `(actor, largest counter seen + 1)`, which is unique only
//! when each actor mints on the one state that holds all its earlier writes (the same
//! rule as [`crate::version`] puts).
//!
//! # State format
//! States are stored and replicated as JSON, pinned by golden tests: a [`Crdt`] is
//! `{"counter": …}`, `{"set": …}`, `{"register": …}` or `{"map": …}` (its type is the
//! key), each type's layout is on its doc. Dots are `[actor, counter]` pairs and contexts
//! are [`DotSet`]s. Deserializing checks the invariants a peer could break (every dot in
//! the context, no zero counters, element and name sizes, nesting depth, no unknown
//! fields); a bad state is refused, never repaired.

mod counter;
mod dot_store;
mod map;
mod op;
mod register;
mod set;
pub mod stored;

#[cfg(test)]
mod laws;

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use counter::PnCounter;
pub use map::OrMap;
pub use op::CrdtOp;
pub use register::{Assignment, LwwRegister};
pub use set::OrSet;
pub use stored::{CRDT_CONTENT_TYPE, CrdtOutcome, CrdtWriteError, state_of};

use crate::dots::DotSet;
use crate::ids::ActorId;

/// Longest set element, in bytes of UTF-8.
pub const MAX_SET_ELEMENT_BYTES: usize = 1024;

/// Most elements an add may leave in a set.
pub const MAX_SET_ELEMENTS: usize = 10_000;

/// Longest map field name, in bytes of UTF-8 (names are never empty).
pub const MAX_FIELD_NAME_BYTES: usize = 256;

/// Most fields (each (name, kind) counts once) an update may leave in one map, at each
/// nesting level.
pub const MAX_MAP_FIELDS: usize = 1_000;

/// Deepest map nesting: a top-level map is depth 1, a map field of it depth 2.
pub const MAX_MAP_DEPTH: usize = 4;

/// The kind of a CRDT: the bucket property `crdt_type` and the kind of a map field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CrdtType {
    /// A [`PnCounter`].
    Counter,
    /// An [`OrSet`].
    Set,
    /// An [`LwwRegister`].
    Register,
    /// An [`OrMap`].
    Map,
}

impl CrdtType {
    /// Every type, in declaration order.
    pub const ALL: [CrdtType; 4] = [
        CrdtType::Counter,
        CrdtType::Set,
        CrdtType::Register,
        CrdtType::Map,
    ];

    /// Returns the wire name, e.g. `"counter"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            CrdtType::Counter => "counter",
            CrdtType::Set => "set",
            CrdtType::Register => "register",
            CrdtType::Map => "map",
        }
    }
}

impl fmt::Display for CrdtType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a CRDT operation or merge was refused. A refused operation changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CrdtError {
    /// The body is not one of the documented operation shapes.
    #[error("malformed crdt operation: {message}")]
    MalformedOp {
        /// The parser's description of the problem.
        message: String,
    },
    /// The operation does not apply to this CRDT type.
    #[error("a {op} operation does not apply to a {crdt_type}")]
    OpMismatch {
        /// The operation's wire name.
        op: &'static str,
        /// The type it was applied to.
        crdt_type: CrdtType,
    },
    /// Two states of different types were merged: replicas disagree on the key's type.
    #[error("cannot merge a {theirs} into a {ours}")]
    TypeMismatch {
        /// The type of the state merged into.
        ours: CrdtType,
        /// The type of the state merged in.
        theirs: CrdtType,
    },
    /// A set element is longer than [`MAX_SET_ELEMENT_BYTES`].
    #[error("set element is {len} bytes; the limit is {max}")]
    ElementTooLong {
        /// The element's length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The operation names more elements, or would leave more in the set, than
    /// [`MAX_SET_ELEMENTS`].
    #[error("set would hold {count} elements; the limit is {max}")]
    TooManyElements {
        /// The count the operation would reach.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A field name is empty or longer than [`MAX_FIELD_NAME_BYTES`].
    #[error("field name is {len} bytes; names are 1 to {max} bytes")]
    InvalidFieldName {
        /// The name's length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The operation names more fields, or would leave more in a map, than
    /// [`MAX_MAP_FIELDS`].
    #[error("map would hold {count} fields; the limit is {max}")]
    TooManyFields {
        /// The count the operation would reach.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A map update nests maps deeper than [`MAX_MAP_DEPTH`].
    #[error("maps nest at most {max} deep")]
    NestingTooDeep {
        /// The limit.
        max: usize,
    },
    /// A `remove` or `remove_fields` came without the context the client observed.
    #[error("a remove needs the context the client observed")]
    MissingContext,
    /// The observed context holds dots this replica has not seen yet, so a remove could
    /// miss what the client meant to remove.
    #[error("the replica has not yet seen everything in the observed context")]
    ContextNotSeen,
    /// A removed element holds no dot the observed context contains.
    #[error("set element {element:?} is not in the observed context")]
    ElementNotObserved {
        /// The element.
        element: String,
    },
    /// No field of a removed name holds a dot the observed context contains.
    #[error("map field {field:?} is not in the observed context")]
    FieldNotObserved {
        /// The field name.
        field: String,
    },
}

impl CrdtError {
    /// Returns the wire error code: [`crate::ErrorCode::InvalidCrdtOperation`] for a
    /// refused operation (the client's to fix), [`crate::ErrorCode::ContextNotSeen`] for
    /// [`CrdtError::ContextNotSeen`] (the service's to retry after merging a fresher
    /// replica, then the client's to read again), and [`crate::ErrorCode::Internal`] for
    /// [`CrdtError::TypeMismatch`], which no request can cause: it means replicas hold
    /// different types for one key.
    pub fn code(&self) -> crate::ErrorCode {
        match self {
            CrdtError::TypeMismatch { .. } => crate::ErrorCode::Internal,
            CrdtError::ContextNotSeen => crate::ErrorCode::ContextNotSeen,
            _ => crate::ErrorCode::InvalidCrdtOperation,
        }
    }
}

/// A deserialized state that breaks an invariant (reported through serde's error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid crdt state: {0}")]
pub struct InvalidState(&'static str);

/// A CRDT of any type: the value stored under a key of a CRDT bucket.
///
/// Serialized with its type as the key: `{"counter": …}`, `{"set": …}`,
/// `{"register": …}`, `{"map": …}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Crdt {
    /// A PN-counter.
    Counter(PnCounter),
    /// An add-wins set.
    Set(OrSet),
    /// A last-writer-wins register.
    Register(LwwRegister),
    /// An add-wins map.
    Map(OrMap),
}

impl Crdt {
    /// Returns an empty CRDT of type `crdt_type` (zero, empty set, unassigned register,
    /// empty map).
    pub fn new(crdt_type: CrdtType) -> Self {
        match crdt_type {
            CrdtType::Counter => Crdt::Counter(PnCounter::new()),
            CrdtType::Set => Crdt::Set(OrSet::new()),
            CrdtType::Register => Crdt::Register(LwwRegister::new()),
            CrdtType::Map => Crdt::Map(OrMap::new()),
        }
    }

    /// Returns the type.
    pub fn crdt_type(&self) -> CrdtType {
        match self {
            Crdt::Counter(_) => CrdtType::Counter,
            Crdt::Set(_) => CrdtType::Set,
            Crdt::Register(_) => CrdtType::Register,
            Crdt::Map(_) => CrdtType::Map,
        }
    }

    /// Merges `other` into `self`. Commutative, associative and idempotent.
    ///
    /// # Errors
    /// [`CrdtError::TypeMismatch`] when the types differ; `self` is unchanged.
    pub fn merge(&mut self, other: &Crdt) -> Result<(), CrdtError> {
        match (self, other) {
            (Crdt::Counter(a), Crdt::Counter(b)) => a.merge(b),
            (Crdt::Set(a), Crdt::Set(b)) => a.merge(b),
            (Crdt::Register(a), Crdt::Register(b)) => a.merge(b),
            (Crdt::Map(a), Crdt::Map(b)) => a.merge(b),
            (ours, theirs) => {
                return Err(CrdtError::TypeMismatch {
                    ours: ours.crdt_type(),
                    theirs: theirs.crdt_type(),
                });
            }
        }
        Ok(())
    }

    /// Applies `op` on behalf of `actor`, the replica holding this state. `observed` is
    /// the context the client read (needed by removes, ignored otherwise); `now_ms`
    /// stamps register assignments.
    ///
    /// # Errors
    /// [`CrdtError::OpMismatch`] when the op does not fit the type, and the errors of the
    /// type's own operations ([`OrSet::add`], [`OrSet::remove`], [`OrMap::update`],
    /// [`OrMap::remove_fields`]). The op is checked whole before any change: on error
    /// nothing changes.
    pub fn apply(
        &mut self,
        op: &CrdtOp,
        actor: ActorId,
        observed: Option<&DotSet>,
        now_ms: u64,
    ) -> Result<(), CrdtError> {
        match (self, op) {
            (Crdt::Counter(c), CrdtOp::Increment(n)) => {
                c.apply(*n, actor);
                Ok(())
            }
            (Crdt::Set(s), CrdtOp::Add(elements)) => s.add(elements, actor),
            (Crdt::Set(s), CrdtOp::Remove(elements)) => {
                s.remove(elements, observed.ok_or(CrdtError::MissingContext)?)
            }
            (Crdt::Register(r), CrdtOp::Assign(value)) => {
                r.assign(value.clone(), now_ms, actor);
                Ok(())
            }
            (Crdt::Map(m), CrdtOp::Update(ops)) => m.update(ops, actor, observed, now_ms),
            (Crdt::Map(m), CrdtOp::RemoveFields(names)) => {
                m.remove_fields(names, observed.ok_or(CrdtError::MissingContext)?)
            }
            (this, op) => Err(CrdtError::OpMismatch {
                op: op.name(),
                crdt_type: this.crdt_type(),
            }),
        }
    }

    /// Returns the JSON view answered to clients: counter → number, set → sorted array
    /// of strings, register → its value or `null`, map → object (see [`OrMap::value`]).
    pub fn value(&self) -> Value {
        match self {
            Crdt::Counter(c) => Value::from(c.value()),
            Crdt::Set(s) => s.value(),
            Crdt::Register(r) => r.value().cloned().unwrap_or(Value::Null),
            Crdt::Map(m) => m.value(),
        }
    }

    /// Returns the causal context a client hands back to remove what it read: the set's
    /// or map's context; empty for a counter or register, which have no removes.
    pub fn context(&self) -> DotSet {
        match self {
            Crdt::Set(s) => s.context().clone(),
            Crdt::Map(m) => m.context().clone(),
            Crdt::Counter(_) | Crdt::Register(_) => DotSet::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn crdt_type_wire_names_match_the_bucket_property() {
        for t in CrdtType::ALL {
            let json = serde_json::to_string(&t).expect("serialize");
            assert_eq!(json, format!("\"{}\"", t.as_str()));
            assert_eq!(serde_json::from_str::<CrdtType>(&json).expect("parse"), t);
            assert_eq!(Crdt::new(t).crdt_type(), t);
        }
        assert!(serde_json::from_str::<CrdtType>("\"Counter\"").is_err());
    }

    #[test]
    fn crdt_golden_json_of_each_type() {
        let a = ActorId(1);
        let mut counter = Crdt::new(CrdtType::Counter);
        counter
            .apply(&CrdtOp::Increment(2), a, None, 0)
            .expect("increment");
        let mut set = Crdt::new(CrdtType::Set);
        set.apply(&CrdtOp::Add(vec!["x".into()]), a, None, 0)
            .expect("add");
        let mut register = Crdt::new(CrdtType::Register);
        register
            .apply(&CrdtOp::Assign(json!(7)), a, None, 42)
            .expect("assign");
        let mut map = Crdt::new(CrdtType::Map);
        map.apply(
            &CrdtOp::from_value(json!({"update": {"n": {"increment": 1}}})).expect("op"),
            a,
            None,
            0,
        )
        .expect("update");
        let golden = [
            (&counter, r#"{"counter":{"inc":[[1,2]],"dec":[]}}"#, json!(2)),
            (
                &set,
                r#"{"set":{"entries":{"x":[[1,1]]},"context":{"vv":[[1,1]]}}}"#,
                json!(["x"]),
            ),
            (
                &register,
                r#"{"register":{"timestamp_ms":42,"actor":1,"value":7}}"#,
                json!(7),
            ),
            (
                &map,
                r#"{"map":{"fields":{"counters":{"n":{"presence":[[1,1]],"state":[[1,1,[1,0]]]}}},"context":{"vv":[[1,1]]}}}"#,
                json!({"n": 1}),
            ),
        ];
        for (crdt, json, value) in golden {
            assert_eq!(serde_json::to_string(crdt).expect("serialize"), json);
            assert_eq!(&serde_json::from_str::<Crdt>(json).expect("parse"), crdt);
            assert_eq!(crdt.value(), value);
        }
        assert_eq!(Crdt::new(CrdtType::Register).value(), Value::Null);
        assert_eq!(
            serde_json::to_string(&Crdt::new(CrdtType::Register)).expect("serialize"),
            r#"{"register":null}"#
        );
        assert!(serde_json::from_str::<Crdt>(r#"{"counter":{},"set":{}}"#).is_err());
        assert!(serde_json::from_str::<Crdt>(r#"{"list":[]}"#).is_err());
    }

    #[test]
    fn crdt_ops_that_do_not_fit_the_type_are_refused() {
        // Goal: every (type, op) pair that does not fit is a typed error and changes
        // nothing. Method: try each op on each type.
        let ops = [
            CrdtOp::Increment(1),
            CrdtOp::Add(vec!["a".into()]),
            CrdtOp::Remove(vec!["a".into()]),
            CrdtOp::Assign(json!(1)),
            CrdtOp::Update(Default::default()),
            CrdtOp::RemoveFields(vec!["a".into()]),
        ];
        for t in CrdtType::ALL {
            for op in &ops {
                if op.kind() == t {
                    continue;
                }
                let mut crdt = Crdt::new(t);
                let before = crdt.clone();
                let err = crdt
                    .apply(op, ActorId(1), Some(&DotSet::new()), 0)
                    .expect_err("mismatched op");
                assert_eq!(
                    err,
                    CrdtError::OpMismatch {
                        op: op.name(),
                        crdt_type: t
                    }
                );
                assert_eq!(err.code(), crate::ErrorCode::InvalidCrdtOperation);
                assert_eq!(crdt, before);
            }
        }
    }

    #[test]
    fn crdt_merge_of_different_types_is_an_error() {
        let mut c = Crdt::new(CrdtType::Counter);
        let err = c.merge(&Crdt::new(CrdtType::Set)).expect_err("mismatch");
        assert_eq!(
            err,
            CrdtError::TypeMismatch {
                ours: CrdtType::Counter,
                theirs: CrdtType::Set
            }
        );
        assert_eq!(err.code(), crate::ErrorCode::Internal);
        assert_eq!(err.to_string(), "cannot merge a set into a counter");
    }

    #[test]
    fn crdt_removes_need_a_context() {
        let mut s = Crdt::new(CrdtType::Set);
        s.apply(&CrdtOp::Add(vec!["a".into()]), ActorId(1), None, 0)
            .expect("add");
        let before = s.clone();
        assert_eq!(
            s.apply(&CrdtOp::Remove(vec!["a".into()]), ActorId(1), None, 0),
            Err(CrdtError::MissingContext)
        );
        let mut m = Crdt::new(CrdtType::Map);
        assert_eq!(
            m.apply(&CrdtOp::RemoveFields(vec!["a".into()]), ActorId(1), None, 0),
            Err(CrdtError::MissingContext)
        );
        assert_eq!(s, before);
        let ctx = s.context();
        s.apply(&CrdtOp::Remove(vec!["a".into()]), ActorId(1), Some(&ctx), 0)
            .expect("remove with the observed context");
        assert_eq!(s.value(), json!([]));
    }
}
