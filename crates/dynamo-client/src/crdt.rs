//! CRDT buckets: `GET` and `POST /v1/crdt/{bucket}/{key}`.
//!
//! A bucket whose `conflict` is `crdt` holds one counter, set, register or map per key
//! (its `crdt_type`), which replicas merge without siblings. [`Client::crdt`] returns a
//! [`CrdtBucket`] for one such bucket: [`CrdtBucket::get`] reads a key's merged value,
//! [`CrdtBucket::apply`] sends any [`CrdtOp`], and the helpers ([`CrdtBucket::increment`],
//! [`CrdtBucket::add`], [`CrdtBucket::remove`], [`CrdtBucket::assign`],
//! [`CrdtBucket::update`], [`CrdtBucket::remove_fields`]) build the op for you.
//!
//! ```no_run
//! # async fn demo() -> Result<(), dynamo_client::ClientError> {
//! use dynamo_client::{Client, CrdtOp};
//!
//! let client = Client::new("http://127.0.0.1:8080", "root-token")?;
//! // A bucket with {"conflict": "crdt", "crdt_type": "counter"}.
//! let likes = client.crdt("likes");
//! let total: i64 = likes.increment("post-1", 1).await?;
//!
//! // A set: the remove reads the key and removes what that read saw, in one call.
//! let tags = client.crdt("tags");
//! tags.add("post-1", ["rust", "dynamo"]).await?;
//! let now = tags.remove("post-1", ["dynamo"]).await?;
//! assert_eq!(now.as_set(), Some(vec!["rust"]));
//!
//! // A map: each field's op picks its kind (here a counter and a register).
//! let profiles = client.crdt("profiles");
//! profiles
//!     .update("alice", [("visits", CrdtOp::Increment(1)), ("name", CrdtOp::Assign("Alice".into()))])
//!     .await?;
//! # let _ = total;
//! # Ok(()) }
//! ```
//!
//! # Removes need the observed context
//! A `remove` or `remove_fields` (also nested in a map `update`) removes only what the
//! writer observed: the server needs the `X-Dynamo-Context` of a read of the key, so an
//! add the writer never saw survives. [`CrdtBucket::apply`] and the helpers read the key
//! first and send that read's context; when the coordinator's replicas have not seen it
//! yet (`context_not_seen`: the read was served by replicas it cannot reach now) they read
//! again and retry, at most the client's `update_attempts` times (default
//! [`crate::client::DEFAULT_UPDATE_ATTEMPTS`]). To remove exactly what an earlier read
//! saw, pass its context to [`CrdtBucket::apply_with_context`].
//!
//! # A retried operation is applied once
//! Every request carries an `Idempotency-Key` of its own, the same on each retry of a
//! transient failure (a `503 quorum_unavailable` after the coordinating replica applied
//! the op, a lost answer), so the server answers a retry as the first attempt and an
//! increment is never counted twice, as long as that replica stays up. A read-then-remove
//! attempt after `context_not_seen` is a new request with a new key: its context differs,
//! and `context_not_seen` means nothing was applied.

use std::collections::BTreeMap;

use dynamo_core::ErrorCode;
use dynamo_core::crdt::{CrdtOp, CrdtType};
use reqwest::Method;
use reqwest::header::ETAG;
use serde_json::Value as Json;

use crate::client::{CONTEXT_HEADER, CRDT_TYPE_HEADER, Call, Client, Reply};
use crate::error::ClientError;
use crate::object::{Context, ETag, Precondition, RequestOptions, key_path, with_precondition};

/// The route of CRDT keys: `/v1/crdt/{bucket}/{key}`.
const CRDT_ROUTE: &str = "/v1/crdt";

/// The keys of one CRDT bucket, with the per-request options its calls send.
///
/// Cheap to clone, like [`Client`]. The bucket name is checked on each call (as every
/// [`Client`] call checks its bucket), so building one never fails.
///
/// ```no_run
/// # async fn demo(client: dynamo_client::Client) -> Result<(), dynamo_client::ClientError> {
/// use dynamo_client::RequestOptions;
///
/// let counters = client.crdt("counters").with_options(RequestOptions::new().w(3));
/// let value = counters.increment("visits", 1).await?;
/// # let _ = value;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct CrdtBucket {
    client: Client,
    bucket: String,
    opts: RequestOptions,
}

/// A CRDT's value as a read or an operation answered it.
#[derive(Debug, Clone, PartialEq)]
pub struct CrdtValue {
    /// The value as JSON: a counter is an integer, a set a sorted array of strings, a
    /// register its value (or `null`), a map an object of its fields' values (a name used
    /// with two kinds shows as `name_counter`, `name_set`, ...).
    pub value: Json,
    /// The CRDT's type (`X-Dynamo-Crdt-Type`).
    pub crdt_type: CrdtType,
    /// The CRDT's causal context: what a remove sent with it may remove. Opaque.
    pub context: Context,
    /// The `ETag` of the key's version set, for [`Precondition::IfMatch`].
    pub etag: ETag,
}

impl CrdtValue {
    /// Returns a counter's value, or `None` when the value is not an integer.
    pub fn as_counter(&self) -> Option<i64> {
        self.value.as_i64()
    }

    /// Returns a set's elements (sorted, as the server sends them), or `None` when the
    /// value is not an array of strings.
    pub fn as_set(&self) -> Option<Vec<&str>> {
        self.value.as_array()?.iter().map(Json::as_str).collect()
    }
}

impl Client {
    /// Returns the keys of the CRDT bucket `bucket`, with no per-request options.
    ///
    /// Nothing is sent: the bucket's name is checked, and its type found out, by the
    /// calls on the result. Calls on a bucket that is not a CRDT bucket answer
    /// `wrong_bucket_type`.
    pub fn crdt(&self, bucket: impl Into<String>) -> CrdtBucket {
        CrdtBucket {
            client: self.clone(),
            bucket: bucket.into(),
            opts: RequestOptions::default(),
        }
    }
}

impl CrdtBucket {
    /// Returns the same bucket with per-request options: reads send `r`, operations `w`,
    /// both `timeout_ms`.
    pub fn with_options(mut self, opts: RequestOptions) -> CrdtBucket {
        self.opts = opts;
        self
    }

    /// Returns the bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Reads a key's value, merged from R replicas: `None` when it has no value.
    ///
    /// # Errors
    /// [`ClientError::InvalidInput`] for an invalid bucket or key; [`ClientError::Api`]
    /// for an error answer (after transient ones were retried), `wrong_bucket_type` when
    /// the bucket is not a CRDT bucket; transport and decoding errors.
    pub async fn get(&self, key: &str) -> Result<Option<CrdtValue>, ClientError> {
        let mut call = Call::new(Method::GET, key_path(CRDT_ROUTE, &self.bucket, key)?)
            .accept_json()
            .not_found_ok()
            .timeout_ms(self.opts.timeout_ms);
        if let Some(r) = self.opts.r {
            call = call.query("r", r);
        }
        let reply = self.client.send(call).await?;
        if reply.status == 404 {
            return Ok(None);
        }
        crdt_value(&reply).map(Some)
    }

    /// Applies one operation to a key and returns the value as the replica that applied
    /// it holds it afterwards (other replicas may hold more: [`CrdtBucket::get`] merges).
    ///
    /// An op that removes ([`CrdtOp::needs_context`]) is sent with the context of a read
    /// made just before it, and read and sent again on `context_not_seen` (see the
    /// [module docs](crate::crdt)). The request carries an `Idempotency-Key`, the same on
    /// its retries.
    ///
    /// Not cancel-safe in effect: dropping the future after the request went out leaves
    /// the op applied or not, as for any write.
    ///
    /// # Errors
    /// As [`CrdtBucket::get`]; `invalid_crdt_operation` for an op that does not fit the
    /// bucket's type, or a remove of an element or field the read did not see (also
    /// [`ClientError::InvalidInput`] with that code when the key has no value to remove
    /// from); `context_not_seen` once the attempts are spent; `value_too_large` when the
    /// state would pass 1 MiB.
    pub async fn apply(&self, key: &str, op: &CrdtOp) -> Result<CrdtValue, ClientError> {
        self.apply_checked(key, op, None).await
    }

    /// [`CrdtBucket::apply`], applied only if `precondition` holds for the version set
    /// the coordinator reads from R replicas; otherwise nothing changes and the answer is
    /// `precondition_failed`. [`Precondition::IfAbsent`] creates a key only if it has no
    /// value; [`Precondition::IfMatch`] takes the [`CrdtValue::etag`] of a read.
    ///
    /// # Errors
    /// As [`CrdtBucket::apply`]; [`ErrorCode::PreconditionFailed`].
    pub async fn apply_if(
        &self,
        key: &str,
        op: &CrdtOp,
        precondition: &Precondition,
    ) -> Result<CrdtValue, ClientError> {
        self.apply_checked(key, op, Some(precondition)).await
    }

    /// Applies one operation with the context of an earlier read, so a remove removes
    /// exactly what that read saw. Nothing is read first and `context_not_seen` is not
    /// retried: re-reading would change what the remove means, so that is the caller's
    /// call ([`CrdtBucket::apply`] makes it for you).
    ///
    /// # Errors
    /// As [`CrdtBucket::apply`]; [`ErrorCode::ContextNotSeen`] when no replica the
    /// coordinator reached has seen `context` yet: read again.
    pub async fn apply_with_context(
        &self,
        key: &str,
        op: &CrdtOp,
        context: &Context,
    ) -> Result<CrdtValue, ClientError> {
        self.send_op(key, op, Some(context), None).await
    }

    /// Adds `by` to a counter (negative subtracts) and returns its value as the applying
    /// replica holds it afterwards.
    ///
    /// # Errors
    /// As [`CrdtBucket::apply`]; [`ClientError::Decode`] when the answer is not an
    /// integer.
    pub async fn increment(&self, key: &str, by: i64) -> Result<i64, ClientError> {
        let answer = self.apply(key, &CrdtOp::Increment(by)).await?;
        answer.as_counter().ok_or_else(|| ClientError::Decode {
            status: 200,
            message: format!("a counter's value is an integer, got {}", answer.value),
        })
    }

    /// Adds elements to a set.
    ///
    /// # Errors
    /// As [`CrdtBucket::apply`].
    pub async fn add<I, S>(&self, key: &str, elements: I) -> Result<CrdtValue, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.apply(key, &CrdtOp::Add(strings(elements))).await
    }

    /// Removes elements from a set: reads the key and removes what that read saw of them
    /// (an add the read did not see survives).
    ///
    /// # Errors
    /// As [`CrdtBucket::apply`]: `invalid_crdt_operation` when an element is not in the
    /// set as read, or the key has no value.
    pub async fn remove<I, S>(&self, key: &str, elements: I) -> Result<CrdtValue, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.apply(key, &CrdtOp::Remove(strings(elements))).await
    }

    /// Writes a register (last writer wins).
    ///
    /// # Errors
    /// As [`CrdtBucket::apply`].
    pub async fn assign(&self, key: &str, value: impl Into<Json>) -> Result<CrdtValue, ClientError> {
        self.apply(key, &CrdtOp::Assign(value.into())).await
    }

    /// Applies an op to each named field of a map; the op's kind picks the field's kind
    /// (`Increment` a counter, `Add`/`Remove` a set, `Assign` a register,
    /// `Update`/`RemoveFields` a nested map). A name given twice keeps its last op. When
    /// a field's op removes, the key is read first, as for [`CrdtBucket::remove`].
    ///
    /// # Errors
    /// As [`CrdtBucket::apply`].
    pub async fn update<I, S>(&self, key: &str, fields: I) -> Result<CrdtValue, ClientError>
    where
        I: IntoIterator<Item = (S, CrdtOp)>,
        S: Into<String>,
    {
        let fields: BTreeMap<String, CrdtOp> =
            fields.into_iter().map(|(name, op)| (name.into(), op)).collect();
        self.apply(key, &CrdtOp::Update(fields)).await
    }

    /// Removes fields from a map: reads the key and removes what that read saw of them
    /// (a concurrent update the read did not see keeps its change).
    ///
    /// # Errors
    /// As [`CrdtBucket::remove`].
    pub async fn remove_fields<I, S>(&self, key: &str, names: I) -> Result<CrdtValue, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.apply(key, &CrdtOp::RemoveFields(strings(names))).await
    }

    /// Sends `op`, first reading the key for its context when the op removes.
    async fn apply_checked(
        &self,
        key: &str,
        op: &CrdtOp,
        precondition: Option<&Precondition>,
    ) -> Result<CrdtValue, ClientError> {
        if !op.needs_context() {
            return self.send_op(key, op, None, precondition).await;
        }
        let attempts = self.client.update_attempts();
        let mut attempt = 1;
        loop {
            let Some(read) = self.get(key).await? else {
                // Without a value there is no context to send and nothing to remove; the
                // server would refuse the op the same way (nothing observed).
                return Err(ClientError::InvalidInput {
                    code: ErrorCode::InvalidCrdtOperation,
                    message: format!("nothing to remove: {}/{key} has no value", self.bucket),
                });
            };
            match self.send_op(key, op, Some(&read.context), precondition).await {
                // The replicas the coordinator reached have not seen what this read saw
                // (it was served by others): nothing was applied, so read what they hold
                // now and remove that.
                Err(e) if e.code() == Some(ErrorCode::ContextNotSeen) && attempt < attempts => {
                    attempt += 1;
                }
                answer => return answer,
            }
        }
    }

    /// Sends one operation request (retried by the client's policy under one
    /// `Idempotency-Key`).
    async fn send_op(
        &self,
        key: &str,
        op: &CrdtOp,
        context: Option<&Context>,
        precondition: Option<&Precondition>,
    ) -> Result<CrdtValue, ClientError> {
        let mut call = Call::new(Method::POST, key_path(CRDT_ROUTE, &self.bucket, key)?)
            .accept_json()
            .timeout_ms(self.opts.timeout_ms)
            .json(op)?;
        if let Some(w) = self.opts.w {
            call = call.query("w", w);
        }
        if let Some(context) = context {
            call = call.header(CONTEXT_HEADER, context.header_value()?);
        }
        if let Some(precondition) = precondition {
            call = with_precondition(call, precondition)?;
        }
        crdt_value(&self.client.send(call.idempotent()).await?)
    }
}

fn strings<I, S>(items: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    items.into_iter().map(Into::into).collect()
}

/// Decodes a CRDT answer: `200`, the JSON value, and the type, context and `ETag`
/// headers the API promises.
fn crdt_value(reply: &Reply) -> Result<CrdtValue, ClientError> {
    if reply.status != 200 {
        return Err(reply.unexpected("expected 200 with the CRDT's value"));
    }
    let crdt_type = match reply.header(&CRDT_TYPE_HEADER) {
        Some(name) => CrdtType::ALL
            .into_iter()
            .find(|t| t.as_str() == name)
            .ok_or_else(|| reply.unexpected(format!("unknown CRDT type {name:?}")))?,
        None => return Err(reply.unexpected("the answer has no X-Dynamo-Crdt-Type")),
    };
    let context = reply
        .header(&CONTEXT_HEADER)
        .map(Context::new)
        .ok_or_else(|| reply.unexpected("the answer has no X-Dynamo-Context"))?;
    let etag = reply
        .header(&ETAG)
        .map(ETag::new)
        .ok_or_else(|| reply.unexpected("the answer has no ETag"))?;
    Ok(CrdtValue {
        value: reply.json()?,
        crdt_type,
        context,
        etag,
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use reqwest::header::{HeaderMap, HeaderValue};
    use serde_json::json;

    use super::*;

    fn reply(status: u16, headers: &[(&'static str, &'static str)], body: &'static str) -> Reply {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, HeaderValue::from_static(value));
        }
        Reply {
            status,
            headers: map,
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    const ALL_HEADERS: [(&str, &str); 3] = [
        ("x-dynamo-crdt-type", "set"),
        ("x-dynamo-context", "ctx"),
        ("etag", "\"t1\""),
    ];

    #[test]
    fn answers_decode_with_their_type_context_and_etag() {
        let v = crdt_value(&reply(200, &ALL_HEADERS, r#"["a","b"]"#)).expect("decodes");
        assert_eq!(v.crdt_type, CrdtType::Set);
        assert_eq!(v.context, Context::new("ctx"));
        assert_eq!(v.etag, ETag::new("\"t1\""));
        assert_eq!(v.as_set(), Some(vec!["a", "b"]));
        assert_eq!(v.as_counter(), None);
    }

    #[test]
    fn answers_without_the_promised_headers_are_decode_errors() {
        // Goal: every header the API promises is required, and an unknown type is not
        // taken for a known one. Method: drop each header in turn.
        for skip in 0..ALL_HEADERS.len() {
            let headers: Vec<_> = ALL_HEADERS
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, h)| *h)
                .collect();
            let e = crdt_value(&reply(200, &headers, "[]")).expect_err("refused");
            assert!(matches!(e, ClientError::Decode { status: 200, .. }), "{e:?}");
        }
        let mut unknown = ALL_HEADERS;
        unknown[0] = ("x-dynamo-crdt-type", "list");
        assert!(crdt_value(&reply(200, &unknown, "[]")).is_err());
        assert!(crdt_value(&reply(204, &ALL_HEADERS, "")).is_err());
        assert!(crdt_value(&reply(200, &ALL_HEADERS, "not json")).is_err());
    }

    #[test]
    fn accessors_refuse_values_of_another_shape() {
        let v = |value| CrdtValue {
            value,
            crdt_type: CrdtType::Register,
            context: Context::new("c"),
            etag: ETag::new("\"t\""),
        };
        assert_eq!(v(json!(-3)).as_counter(), Some(-3));
        assert_eq!(v(json!(1.5)).as_counter(), None);
        assert_eq!(v(json!(["a", 1])).as_set(), None);
        assert_eq!(v(json!([])).as_set(), Some(vec![]));
    }
}
