//! Operations as the REST API sends them.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{Error as _, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::{CrdtError, CrdtType};

/// One operation on a CRDT, in the JSON shapes of `POST /v1/crdt/{bucket}/{key}`:
///
/// | JSON | applies to | effect |
/// |---|---|---|
/// | `{"increment": 5}` | counter | add 5 (negative: subtract) |
/// | `{"add": ["a", "b"]}` | set | add the elements |
/// | `{"remove": ["a"]}` | set | remove what the observed context saw of them |
/// | `{"assign": <any JSON>}` | register | write the value |
/// | `{"update": {"field": <op>, …}}` | map | apply each op to its field |
/// | `{"remove_fields": ["f"]}` | map | remove what the observed context saw of the fields |
///
/// Inside `update`, the op's kind picks the field's kind: `increment` a counter,
/// `add`/`remove` a set, `assign` a register, `update`/`remove_fields` a nested map.
/// Deserializing refuses unknown ops, an object with more than one op, and a repeated
/// field name in one `update`. Sizes and fit to the target are checked when applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrdtOp {
    /// Adds to a counter; negative subtracts.
    Increment(i64),
    /// Adds elements to a set.
    Add(Vec<String>),
    /// Removes elements from a set (needs the observed context).
    Remove(Vec<String>),
    /// Writes a register.
    Assign(Value),
    /// Applies an op to each named field of a map.
    Update(#[serde(deserialize_with = "unique_fields")] BTreeMap<String, CrdtOp>),
    /// Removes fields from a map (needs the observed context).
    RemoveFields(Vec<String>),
}

impl CrdtOp {
    /// Parses an op from a request body.
    ///
    /// # Errors
    /// [`CrdtError::MalformedOp`] when the body is not one of the documented shapes.
    pub fn from_json(body: &[u8]) -> Result<CrdtOp, CrdtError> {
        serde_json::from_slice(body).map_err(|e| CrdtError::MalformedOp {
            message: e.to_string(),
        })
    }

    /// Parses an op from an already-parsed JSON value.
    ///
    /// # Errors
    /// [`CrdtError::MalformedOp`] when the value is not one of the documented shapes.
    pub fn from_value(value: Value) -> Result<CrdtOp, CrdtError> {
        serde_json::from_value(value).map_err(|e| CrdtError::MalformedOp {
            message: e.to_string(),
        })
    }

    /// Returns the op's wire name, e.g. `"remove_fields"`.
    pub fn name(&self) -> &'static str {
        match self {
            CrdtOp::Increment(_) => "increment",
            CrdtOp::Add(_) => "add",
            CrdtOp::Remove(_) => "remove",
            CrdtOp::Assign(_) => "assign",
            CrdtOp::Update(_) => "update",
            CrdtOp::RemoveFields(_) => "remove_fields",
        }
    }

    /// Returns the CRDT type the op applies to (and, inside a map update, the kind of the
    /// field it targets).
    pub fn kind(&self) -> CrdtType {
        match self {
            CrdtOp::Increment(_) => CrdtType::Counter,
            CrdtOp::Add(_) | CrdtOp::Remove(_) => CrdtType::Set,
            CrdtOp::Assign(_) => CrdtType::Register,
            CrdtOp::Update(_) | CrdtOp::RemoveFields(_) => CrdtType::Map,
        }
    }

    /// Returns true when the op removes something, anywhere in it, and so needs the
    /// causal context the client observed.
    pub fn needs_context(&self) -> bool {
        match self {
            CrdtOp::Remove(_) | CrdtOp::RemoveFields(_) => true,
            CrdtOp::Update(fields) => fields.values().any(CrdtOp::needs_context),
            CrdtOp::Increment(_) | CrdtOp::Add(_) | CrdtOp::Assign(_) => false,
        }
    }
}

/// Deserializes an `update` object, refusing a field name given twice (serde_json would
/// silently keep the last, so a client's typo could drop an op).
fn unique_fields<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, CrdtOp>, D::Error> {
    struct Fields;
    impl<'de> Visitor<'de> for Fields {
        type Value = BTreeMap<String, CrdtOp>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object of field name to operation")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((name, op)) = map.next_entry::<String, CrdtOp>()? {
                if out.contains_key(&name) {
                    return Err(A::Error::custom(format!("field {name:?} appears twice")));
                }
                out.insert(name, op);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(s: &str) -> Result<CrdtOp, CrdtError> {
        CrdtOp::from_json(s.as_bytes())
    }

    #[test]
    fn crdt_op_documented_shapes_parse() {
        assert_eq!(parse(r#"{"increment": 5}"#), Ok(CrdtOp::Increment(5)));
        assert_eq!(parse(r#"{"increment": -3}"#), Ok(CrdtOp::Increment(-3)));
        assert_eq!(
            parse(r#"{"add": ["a", "b"]}"#),
            Ok(CrdtOp::Add(vec!["a".into(), "b".into()]))
        );
        assert_eq!(
            parse(r#"{"remove": ["a"]}"#),
            Ok(CrdtOp::Remove(vec!["a".into()]))
        );
        assert_eq!(
            parse(r#"{"assign": {"x": [1, null]}}"#),
            Ok(CrdtOp::Assign(json!({"x": [1, null]})))
        );
        assert_eq!(parse(r#"{"assign": null}"#), Ok(CrdtOp::Assign(Value::Null)));
        assert_eq!(
            parse(r#"{"remove_fields": ["f"]}"#),
            Ok(CrdtOp::RemoveFields(vec!["f".into()]))
        );
        let nested = parse(
            r#"{"update": {"hits": {"increment": 1}, "tags": {"add": ["x"]},
                "name": {"assign": "ann"}, "addr": {"update": {"city": {"assign": "Oslo"}}},
                "old": {"remove_fields": ["zip"]}}}"#,
        )
        .expect("update parses");
        let CrdtOp::Update(fields) = &nested else {
            panic!("not an update: {nested:?}");
        };
        let kinds: Vec<(&str, CrdtType)> = fields.iter().map(|(n, op)| (n.as_str(), op.kind())).collect();
        assert_eq!(
            kinds,
            vec![
                ("addr", CrdtType::Map),
                ("hits", CrdtType::Counter),
                ("name", CrdtType::Register),
                ("old", CrdtType::Map),
                ("tags", CrdtType::Set),
            ]
        );
        assert!(nested.needs_context(), "a nested remove_fields needs the context");
        assert!(
            !parse(r#"{"update": {"a": {"increment": 1}}}"#)
                .expect("parse")
                .needs_context()
        );
    }

    #[test]
    fn crdt_op_serializes_to_the_same_shapes() {
        let op = CrdtOp::Update(BTreeMap::from([(
            "tags".to_string(),
            CrdtOp::Remove(vec!["x".into()]),
        )]));
        assert_eq!(
            serde_json::to_string(&op).expect("serialize"),
            r#"{"update":{"tags":{"remove":["x"]}}}"#
        );
        assert_eq!(
            serde_json::to_string(&CrdtOp::RemoveFields(vec!["f".into()])).expect("serialize"),
            r#"{"remove_fields":["f"]}"#
        );
    }

    #[test]
    fn crdt_op_malformed_shapes_are_refused() {
        let bad = [
            r#"{}"#,
            r#"[]"#,
            r#""increment""#,
            r#"{"increment": "5"}"#,
            r#"{"increment": 1.5}"#,
            r#"{"increment": 9223372036854775808}"#,
            r#"{"increment": 5, "add": ["a"]}"#,
            r#"{"frobnicate": 1}"#,
            r#"{"Increment": 1}"#,
            r#"{"add": "a"}"#,
            r#"{"add": [1]}"#,
            r#"{"remove": null}"#,
            r#"{"update": []}"#,
            r#"{"update": {"f": 1}}"#,
            r#"{"update": {"f": {"bogus": 1}}}"#,
            r#"{"update": {"f": {"increment": 1}, "f": {"increment": 2}}}"#,
            r#"{"remove_fields": "f"}"#,
            r#"{"increment": 1"#,
        ];
        for body in bad {
            let err = parse(body).expect_err(body);
            assert!(matches!(err, CrdtError::MalformedOp { .. }), "{body}: {err:?}");
            assert_eq!(err.code(), crate::ErrorCode::InvalidCrdtOperation);
        }
        assert!(CrdtOp::from_value(json!({"increment": 1, "add": []})).is_err());
        assert_eq!(
            CrdtOp::from_value(json!({"increment": 1})),
            Ok(CrdtOp::Increment(1))
        );
    }
}
