//! Bodies of the public API that have no other home: the ring view, the token calls and
//! batches. The coordinator answers them and the SDK reads them, both with these types.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::SiblingView;
use super::cluster::{AllBuckets, BucketScope, Permission};
use crate::error::ErrorDetail;
use crate::ids::{NodeId, PartitionId, RingEpoch};

/// `GET /v1/ring`: the ring's epoch, its partition count Q, and the owner of each
/// partition. Readers ignore fields they do not know, so the server may add some.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RingView {
    /// The ring's version; it never goes backwards.
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub epoch: RingEpoch,
    /// Q, the number of partitions (a power of two).
    pub partitions: u32,
    /// The owner of each partition, indexed by partition id.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub owners: Vec<NodeId>,
}

impl RingView {
    /// Returns the owner of `partition`, if the ring has it.
    pub fn owner(&self, partition: PartitionId) -> Option<&NodeId> {
        self.owners.get(usize::try_from(partition.0).ok()?)
    }

    /// Returns how many partitions each node owns, by node id.
    pub fn partitions_per_owner(&self) -> BTreeMap<&NodeId, u32> {
        let mut counts = BTreeMap::new();
        for owner in &self.owners {
            *counts.entry(owner).or_insert(0) += 1;
        }
        counts
    }
}

/// The body of `POST /v1/admin/tokens`: which buckets and what permissions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// `"*"` for every bucket, or a list of names.
    pub buckets: BucketScope,
    /// Any of `read`, `write`, `admin`, at least one (repeats are dropped).
    #[cfg_attr(feature = "openapi", schema(min_items = 1))]
    pub permissions: Vec<Permission>,
    /// Seconds until the token stops being accepted (1 to ten years); none for a token
    /// that lives until it is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 315_360_000))]
    pub ttl_s: Option<u64>,
    /// Requests per second the token may make through each coordinator (1 to
    /// 1 000 000); none for the coordinators' default (`--token-rate-limit-rps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1_000_000))]
    pub rate_limit_rps: Option<u32>,
}

impl TokenRequest {
    /// A request for a token covering every bucket.
    pub fn all_buckets(permissions: Vec<Permission>) -> TokenRequest {
        TokenRequest {
            buckets: BucketScope::All(AllBuckets::Star),
            permissions,
            ttl_s: None,
            rate_limit_rps: None,
        }
    }
}

/// The answer to a token creation: the secret is here and nowhere else, shown once
/// (`Debug` redacts it).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewToken {
    /// The public id (safe to show and log; used to delete the token).
    pub id: String,
    /// The secret to send as `Authorization: Bearer <token>`.
    pub token: String,
    /// The buckets it covers.
    pub buckets: BucketScope,
    /// What it may do there.
    pub permissions: Vec<Permission>,
    /// When it expires, RFC 3339 (UTC, milliseconds); absent for a token without a TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub expires: Option<String>,
    /// Its own rate limit, when it was given one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1_000_000))]
    pub rate_limit_rps: Option<u32>,
}

impl fmt::Debug for NewToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewToken")
            .field("id", &self.id)
            .field("token", &"<redacted>")
            .field("buckets", &self.buckets)
            .field("permissions", &self.permissions)
            .field("expires", &self.expires)
            .field("rate_limit_rps", &self.rate_limit_rps)
            .finish()
    }
}

/// A token as the listing shows it: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenInfo {
    /// The public id.
    pub id: String,
    /// The buckets it covers.
    pub buckets: BucketScope,
    /// What it may do there.
    pub permissions: Vec<Permission>,
    /// When it was created, RFC 3339 (UTC, milliseconds).
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub created: String,
    /// When it expires, RFC 3339; absent for a token without a TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub expires: Option<String>,
    /// Its own rate limit (requests per second per coordinator); absent where the
    /// coordinators' default applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1_000_000))]
    pub rate_limit_rps: Option<u32>,
}

/// The answer of `GET /v1/admin/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenList {
    /// Every token.
    pub tokens: Vec<TokenInfo>,
}

/// `POST /v1/batch`: up to [`crate::limits::MAX_BATCH_REQUEST_OPS`] operations, run
/// concurrently, each answered as its own call would be; not atomic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// The operations, 1 to 100.
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 100))]
    pub ops: Vec<BatchOp>,
}

/// What one batch operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum BatchOpKind {
    /// `GET /v1/kv/{bucket}/{key}` (the envelope form).
    Get,
    /// `PUT /v1/kv/{bucket}/{key}`.
    Put,
    /// `DELETE /v1/kv/{bucket}/{key}`.
    Delete,
}

/// One operation of a batch: the fields its own call would take. `value` (required) and
/// `content_type` only on a put, `context` on a put or a delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchOp {
    /// The operation.
    pub op: BatchOpKind,
    /// The bucket.
    pub bucket: String,
    /// The key (UTF-8, not percent-encoded).
    pub key: String,
    /// The value of a put, base64 (at most 1 MiB decoded).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "optional_base64")]
    pub value: Option<Vec<u8>>,
    /// The value's media type (default `application/octet-stream`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// The context of a previous read, as `X-Dynamo-Context` carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
}

/// The schema of a [`BatchOp`]: one object per operation kind, each with exactly the
/// fields that kind takes (a field it does not take may only be `null`, which reads as
/// absent), as the coordinator checks a batch before running it. Written by hand: the
/// derive cannot tie the fields to the kind.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for BatchOp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use crate::limits::{MAX_CONTEXT_TOKEN_BYTES, MAX_KEY_BYTES};
        use utoipa::openapi::schema::{
            AdditionalProperties, KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, SchemaType, Type,
        };
        let string = || ObjectBuilder::new().schema_type(Type::String);
        let or_null = || SchemaType::from_iter([Type::String, Type::Null]);
        let null = || ObjectBuilder::new().schema_type(Type::Null);
        let context = || {
            ObjectBuilder::new()
                .schema_type(or_null())
                .pattern(Some(format!("^[A-Za-z0-9_-]{{1,{MAX_CONTEXT_TOKEN_BYTES}}}$")))
                .description(Some(
                    "The context of a previous read, as `X-Dynamo-Context` carries it",
                ))
        };
        let op = |kind: &str, description: &str| {
            ObjectBuilder::new()
                .description(Some(description))
                .property("op", string().enum_values(Some([kind])))
                .required("op")
                .property(
                    "bucket",
                    string()
                        .pattern(Some(super::BUCKET_NAME_PATTERN))
                        .description(Some("The bucket")),
                )
                .required("bucket")
                .property(
                    "key",
                    string()
                        .min_length(Some(1))
                        .max_length(Some(MAX_KEY_BYTES))
                        .description(Some("The key: 1-1024 bytes of UTF-8, not percent-encoded")),
                )
                .required("key")
                .additional_properties(Some(AdditionalProperties::FreeForm(false)))
        };
        let get = op(
            "get",
            "A read, as `GET /v1/kv/{bucket}/{key}` with `Accept: application/json`",
        )
        .property("value", null())
        .property("content_type", null())
        .property("context", null());
        let put = op("put", "A write, as `PUT /v1/kv/{bucket}/{key}`")
            .property(
                "value",
                string()
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Byte)))
                    .description(Some("The value, base64 (at most 1 MiB decoded)")),
            )
            .required("value")
            .property(
                "content_type",
                ObjectBuilder::new()
                    .schema_type(or_null())
                    .max_length(Some(255))
                    .description(Some(
                        "The value's media type (default `application/octet-stream`)",
                    )),
            )
            .property("context", context());
        let delete = op("delete", "A delete, as `DELETE /v1/kv/{bucket}/{key}`")
            .property("value", null())
            .property("content_type", null())
            .property("context", context());
        OneOfBuilder::new()
            .item(get)
            .item(put)
            .item(delete)
            .description(Some(
                "One operation: the fields its own call would take (`value`, required, and `content_type` only on a put; `context` on a put or a delete)",
            ))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for BatchOp {}

impl BatchOp {
    /// A read of `key`.
    pub fn get(bucket: impl Into<String>, key: impl Into<String>) -> BatchOp {
        BatchOp {
            op: BatchOpKind::Get,
            bucket: bucket.into(),
            key: key.into(),
            value: None,
            content_type: None,
            context: None,
        }
    }

    /// A write of `value` with its media type, after the read whose `context` it carries
    /// (none: a blind write).
    pub fn put(
        bucket: impl Into<String>,
        key: impl Into<String>,
        value: impl Into<Vec<u8>>,
        content_type: impl Into<String>,
        context: Option<String>,
    ) -> BatchOp {
        BatchOp {
            op: BatchOpKind::Put,
            value: Some(value.into()),
            content_type: Some(content_type.into()),
            context,
            ..BatchOp::get(bucket, key)
        }
    }

    /// A delete of what `context` saw (none: what the coordinator's read finds).
    pub fn delete(bucket: impl Into<String>, key: impl Into<String>, context: Option<String>) -> BatchOp {
        BatchOp {
            op: BatchOpKind::Delete,
            context,
            ..BatchOp::get(bucket, key)
        }
    }
}

/// The answer to one batch operation: the status its own call would have answered and
/// the fields it would have carried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BatchResult {
    /// The HTTP status of the operation's own call (`200`, `300`, `204`, `404`, `403`, …).
    pub status: u16,
    /// The context (`X-Dynamo-Context`), where the call would answer one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// The `ETag` (quoted), where the call would answer one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// A get's live siblings (one for a `200`, several for a `300`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub siblings: Option<Vec<SiblingView>>,
    /// The error, for a failed operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

/// The answer of `POST /v1/batch`: one result per operation, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BatchResponse {
    /// The results, in the order of the operations.
    pub results: Vec<BatchResult>,
}

/// Serde helper: an optional value as base64, as [`super::base64_bytes`] writes one.
mod optional_base64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(b) => super::super::base64_bytes::serialize(b, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        #[derive(Deserialize)]
        struct Wrapped(#[serde(with = "super::super::base64_bytes")] Vec<u8>);
        Ok(Option::<Wrapped>::deserialize(d)?.map(|Wrapped(b)| b))
    }
}

/// A page of a listing (`GET /v1/kv/{bucket}?list`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyList {
    /// The keys with a live value, in byte order.
    pub keys: Vec<String>,
    /// Pass as `start_after` for the next page; `null` on the last page. A page may hold
    /// fewer than `limit` keys (even none) and still have a next one.
    pub next: Option<String>,
}

/// One change of the change feed (`GET /v1/feed/{bucket}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FeedChange {
    /// The key.
    pub key: String,
    /// The key's context after the change (as a read of the replica that logged it would
    /// answer): write with it to build on what the change held.
    pub context: String,
    /// True when the key held no live value after the change.
    pub deleted: bool,
}

/// The longest long poll of the change feed (`wait_ms`), at the coordinator and at each
/// storage node.
pub const MAX_FEED_WAIT_MS: u64 = 30_000;

/// A page of the change feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FeedPage {
    /// The changes, each key's in causal order within the page.
    pub changes: Vec<FeedChange>,
    /// Pass as `cursor` for the next page.
    pub cursor: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_tokens_debug_never_shows_the_secret() {
        let t = NewToken {
            id: "ab".into(),
            token: "s3cret-value".into(),
            buckets: BucketScope::All(AllBuckets::Star),
            permissions: vec![Permission::Read],
            expires: None,
            rate_limit_rps: None,
        };
        let shown = format!("{t:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    // Goal: a batch reads as API.md writes it (values base64, optional fields absent),
    // and refuses fields it does not know.
    #[test]
    fn a_batch_reads_as_api_md_writes_it() {
        let j = r#"{"ops": [{"op": "put", "bucket": "b", "key": "k", "value": "aGk=", "content_type": "text/plain"},
                           {"op": "get", "bucket": "b", "key": "k"}]}"#;
        let b: BatchRequest = serde_json::from_str(j).expect("batch");
        assert_eq!(b.ops[0].value.as_deref(), Some(&b"hi"[..]));
        assert_eq!(b.ops[1].op, BatchOpKind::Get);
        assert_eq!(b.ops[1].value, None);
        let back: BatchRequest =
            serde_json::from_str(&serde_json::to_string(&b).expect("json")).expect("again");
        assert_eq!(back, b);
        assert!(
            serde_json::from_str::<BatchRequest>(
                r#"{"ops": [{"op": "get", "bucket": "b", "key": "k", "r": 1}]}"#
            )
            .is_err()
        );
        assert!(
            serde_json::from_str::<BatchRequest>(r#"{"ops": [{"op": "list", "bucket": "b", "key": "k"}]}"#)
                .is_err()
        );
    }

    #[test]
    fn token_bodies_match_the_admin_api() {
        let req = TokenRequest::all_buckets(vec![Permission::Read, Permission::Write]);
        assert_eq!(
            serde_json::to_string(&req).expect("encodes"),
            r#"{"buckets":"*","permissions":["read","write"]}"#
        );
        let listed: TokenList = serde_json::from_str(
            r#"{"tokens":[{"id":"t1","buckets":["b1"],"permissions":["admin"],"created":"2025-01-01T00:00:00.000Z"}]}"#,
        )
        .expect("decodes");
        assert_eq!(listed.tokens[0].created, "2025-01-01T00:00:00.000Z");
        assert!(matches!(&listed.tokens[0].buckets, BucketScope::Only(b) if b.len() == 1));
    }

    #[test]
    fn ring_views_ignore_unknown_fields_and_count_owners() {
        let ring: RingView =
            serde_json::from_str(r#"{"epoch":3,"partitions":4,"owners":["a","b","a","c"],"later":1}"#)
                .expect("decodes");
        assert_eq!(ring.owner(PartitionId(2)).map(NodeId::as_str), Some("a"));
        assert_eq!(ring.owner(PartitionId(9)), None);
        let counts: Vec<(&str, u32)> = ring
            .partitions_per_owner()
            .into_iter()
            .map(|(n, c)| (n.as_str(), c))
            .collect();
        assert_eq!(counts, vec![("a", 2), ("b", 1), ("c", 1)]);
    }

    #[test]
    fn listing_and_feed_pages_golden_json() {
        let list: KeyList = serde_json::from_str(r#"{"keys":["a","b"],"next":"b"}"#).expect("parse");
        assert_eq!(list.next.as_deref(), Some("b"));
        assert_eq!(
            serde_json::to_string(&KeyList {
                keys: vec![],
                next: None
            })
            .expect("serialize"),
            r#"{"keys":[],"next":null}"#
        );
        let page = FeedPage {
            changes: vec![FeedChange {
                key: "k".into(),
                context: "c".into(),
                deleted: true,
            }],
            cursor: "x".into(),
        };
        let json = r#"{"changes":[{"key":"k","context":"c","deleted":true}],"cursor":"x"}"#;
        assert_eq!(serde_json::to_string(&page).expect("serialize"), json);
        assert_eq!(serde_json::from_str::<FeedPage>(json).expect("parse"), page);
    }
}
