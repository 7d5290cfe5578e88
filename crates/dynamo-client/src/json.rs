//! Typed JSON values: [`Client::get_json`] decodes every sibling of a key as `T`,
//! [`Client::put_json`] writes a `T` as `application/json`.
//!
//! The store keeps bytes; these calls only move the (de)serialization into the SDK. A
//! sibling that is not JSON of type `T` is an error ([`ClientError::ValueDecode`]), never
//! skipped: a caller that merged the other siblings and wrote back with the read's
//! context would delete it.
//!
//! ```no_run
//! # async fn demo(client: dynamo_client::Client) -> Result<(), dynamo_client::ClientError> {
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! struct Profile {
//!     name: String,
//!     visits: u64,
//! }
//!
//! client
//!     .put_json("profiles", "alice", &Profile { name: "Alice".into(), visits: 1 }, None)
//!     .await?;
//! if let Some(read) = client.get_json::<Profile>("profiles", "alice").await? {
//!     // One value in the common case; several after concurrent writes.
//!     for profile in read.values() {
//!         println!("{profile:?}");
//!     }
//! }
//! # Ok(()) }
//! ```

use bytes::Bytes;
use dynamo_core::ErrorCode;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::client::Client;
use crate::error::ClientError;
use crate::object::{Context, ETag, Object, Sibling, Value};
use crate::resolve::Merge;

/// The media type [`Client::put_json`] writes.
const JSON: &str = "application/json";

/// A key read as JSON: every sibling decoded as `T`, with the read's context and `ETag`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonObject<T> {
    /// Hand this back with the next write to replace every sibling below.
    pub context: Context,
    /// The live siblings, decoded: one in the common case, several after concurrent
    /// writes.
    pub siblings: Vec<JsonSibling<T>>,
    /// The version set's `ETag`, for a conditional write.
    pub etag: Option<ETag>,
}

/// One sibling of a [`JsonObject`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonSibling<T> {
    /// The decoded value.
    pub value: T,
    /// The value's media type, as its writer sent it (not checked: any bytes that decode
    /// as `T` are accepted).
    pub content_type: String,
    /// When the write was accepted, RFC 3339.
    pub last_modified: String,
}

impl<T> JsonObject<T> {
    /// Returns true when concurrent writes left more than one sibling.
    pub fn has_siblings(&self) -> bool {
        self.siblings.len() > 1
    }

    /// Returns the only value, or `None` when there are several to resolve.
    pub fn single(&self) -> Option<&T> {
        match self.siblings.as_slice() {
            [only] => Some(&only.value),
            _ => None,
        }
    }

    /// Returns every sibling's value, in the read's order.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.siblings.iter().map(|s| &s.value)
    }

    /// Returns the siblings' values folded into one with [`Merge::merge`], or `None` when
    /// there is no sibling (never for a read that found the key).
    pub fn into_merged(self) -> Option<T>
    where
        T: Merge,
    {
        self.siblings.into_iter().map(|s| s.value).reduce(Merge::merge)
    }
}

impl<T: DeserializeOwned> JsonObject<T> {
    /// Decodes every sibling of `object` as `T`.
    ///
    /// # Errors
    /// [`ClientError::ValueDecode`] for the first sibling that is not JSON of type `T`.
    pub fn decode(object: &Object) -> Result<JsonObject<T>, ClientError> {
        let siblings = object
            .siblings
            .iter()
            .enumerate()
            .map(|(i, s)| {
                Ok(JsonSibling {
                    value: decode_sibling(i, s)?,
                    content_type: s.content_type.clone(),
                    last_modified: s.last_modified.clone(),
                })
            })
            .collect::<Result<_, ClientError>>()?;
        Ok(JsonObject {
            context: object.context.clone(),
            siblings,
            etag: object.etag.clone(),
        })
    }
}

/// Decodes sibling number `index` as `T`.
pub(crate) fn decode_sibling<T: DeserializeOwned>(index: usize, sibling: &Sibling) -> Result<T, ClientError> {
    serde_json::from_slice(&sibling.value).map_err(|source| ClientError::ValueDecode {
        sibling: index,
        content_type: sibling.content_type.clone(),
        source,
    })
}

/// Encodes `value` as an `application/json` [`Value`].
pub(crate) fn json_value<T: Serialize + ?Sized>(value: &T) -> Result<Value, ClientError> {
    Value::json(value).map_err(|e| ClientError::InvalidInput {
        code: ErrorCode::InvalidJson,
        message: format!("the value cannot be encoded as JSON: {e}"),
    })
}

impl Client {
    /// Reads a key and decodes every sibling as `T`: `None` when the key has no live
    /// value.
    ///
    /// # Errors
    /// As [`Client::get`]; [`ClientError::ValueDecode`] when a sibling is not JSON of
    /// type `T` (read it with [`Client::get`] to see its bytes).
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Option<JsonObject<T>>, ClientError> {
        match self.get(bucket, key).await? {
            Some(object) => JsonObject::decode(&object).map(Some),
            None => Ok(None),
        }
    }

    /// Writes `value` as `application/json` and returns the new context; as
    /// [`Client::put`], `context` from a read replaces what that read saw, and without one
    /// the write is blind (a sibling of whatever is stored).
    ///
    /// # Errors
    /// As [`Client::put`]; [`ClientError::InvalidInput`] with `invalid_json` when `value`
    /// cannot be JSON (e.g. a map with non-string keys), before anything is sent.
    pub async fn put_json<T: Serialize + ?Sized>(
        &self,
        bucket: &str,
        key: &str,
        value: &T,
        context: Option<&Context>,
    ) -> Result<Context, ClientError> {
        let value = json_value(value)?;
        self.put(bucket, key, Bytes::from(value.bytes), JSON, context)
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn sib(value: &str, content_type: &str) -> Sibling {
        Sibling {
            value: value.as_bytes().to_vec(),
            content_type: content_type.into(),
            last_modified: "2025-01-01T00:00:00.000Z".into(),
        }
    }

    fn object(siblings: Vec<Sibling>) -> Object {
        Object {
            context: Context::new("ctx"),
            siblings,
            etag: None,
        }
    }

    // Goal: every sibling is decoded, in order, keeping its metadata; a sibling of another
    // shape is a typed error naming it, not a shorter list.
    #[test]
    fn every_sibling_decodes_or_the_read_fails() {
        let read = object(vec![sib(r#"["a"]"#, JSON), sib(r#"["b","c"]"#, "text/plain")]);
        let decoded: JsonObject<Vec<String>> = JsonObject::decode(&read).expect("decodes");
        assert!(decoded.has_siblings());
        assert_eq!(decoded.single(), None);
        assert_eq!(decoded.siblings[1].content_type, "text/plain");
        assert_eq!(decoded.values().map(Vec::len).sum::<usize>(), 3);

        let bad = object(vec![sib(r#"["a"]"#, JSON), sib("not json", "text/plain")]);
        let e = JsonObject::<Vec<String>>::decode(&bad).expect_err("refused");
        assert!(
            matches!(&e, ClientError::ValueDecode { sibling: 1, content_type, .. } if content_type == "text/plain"),
            "{e:?}"
        );
        assert!(
            std::error::Error::source(&e).is_some(),
            "the decoder's error is the cause"
        );
        assert_eq!(e.code(), None);
    }

    #[test]
    fn merged_folds_every_sibling() {
        let read = object(vec![sib(r#"["b","a"]"#, JSON), sib(r#"["c","a"]"#, JSON)]);
        let decoded: JsonObject<BTreeSet<String>> = JsonObject::decode(&read).expect("decodes");
        let merged: Vec<String> = decoded.into_merged().expect("siblings").into_iter().collect();
        assert_eq!(merged, ["a", "b", "c"]);
    }

    #[test]
    fn values_that_cannot_be_json_are_refused_before_sending() {
        let mut map = std::collections::HashMap::new();
        map.insert((1, 2), "v");
        let e = json_value(&map).expect_err("non-string keys");
        assert_eq!(e.code(), Some(ErrorCode::InvalidJson));
    }
}
