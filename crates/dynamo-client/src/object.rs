//! Reading, writing and deleting keys, and resolving siblings.
//!
//! Reads always send `Accept: application/json`, so the coordinator answers with the
//! siblings envelope (`200` for one value, `300` for siblings) and no sibling is ever
//! hidden behind a single-value answer. A write carries the [`Context`] of the read it
//! follows: it then replaces exactly the siblings that read saw. A write without one (a
//! blind write) becomes a sibling of whatever is stored. A conditional write
//! ([`Client::put_if`]) applies only while the key's [`ETag`] is as read, or only while
//! it has no live value; [`Client::batch`] runs many calls in one request.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use dynamo_core::ErrorCode;
use dynamo_core::ids::{BucketName, validate_key};
use dynamo_core::wire::public::{BatchOp, BatchResponse, BatchResult};
use dynamo_core::wire::{SiblingView, SiblingsEnvelope};
use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, ETAG, HeaderValue, IF_MATCH, IF_NONE_MATCH};
use serde::{Deserialize, Serialize};

use crate::client::{CONTEXT_HEADER, Call, Client, Reply, segment};
use crate::error::ClientError;

/// The opaque causal context (`X-Dynamo-Context`) of a read, to hand back with the next
/// write of the same key.
///
/// The SDK never parses it: the format belongs to the server and may change.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Context(String);

impl Context {
    /// Wraps a token received out of band (from a CLI flag, a file, another process).
    pub fn new(token: impl Into<String>) -> Context {
        Context(token.into())
    }

    /// Returns the token.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Returns the token, consuming the context.
    pub fn into_string(self) -> String {
        self.0
    }

    pub(crate) fn header_value(&self) -> Result<HeaderValue, ClientError> {
        HeaderValue::from_str(&self.0).map_err(|_| ClientError::InvalidInput {
            code: ErrorCode::InvalidContext,
            message: "the context is not a valid header value".into(),
        })
    }
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Context {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Context, Self::Err> {
        Ok(Context(s.to_owned()))
    }
}

/// The `ETag` of a key's version set, as a read or a write answered it (quoted, e.g.
/// `"9f…"`): hand it to [`Client::put_if_match`] or [`Client::delete_if_match`] to write
/// only if the key has not changed since. Opaque, like [`Context`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ETag(String);

impl ETag {
    /// Wraps a tag received out of band (from a CLI flag, another process), quoted as
    /// the server sends it.
    pub fn new(tag: impl Into<String>) -> ETag {
        ETag(tag.into())
    }

    /// Returns the tag as the header carries it (with its quotes).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn header_value(&self) -> Result<HeaderValue, ClientError> {
        HeaderValue::from_str(&self.0).map_err(|_| ClientError::InvalidInput {
            code: ErrorCode::InvalidRequest,
            message: "the ETag is not a valid header value".into(),
        })
    }
}

impl fmt::Display for ETag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ETag {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<ETag, Self::Err> {
        Ok(ETag(s.to_owned()))
    }
}

/// When a conditional write may apply (checked by the coordinator against the version
/// set it reads from R replicas; not a lock: `docs/api.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// `If-Match`: only while the key's version set still has this tag.
    IfMatch(ETag),
    /// `If-None-Match: *`: only while the key has no live value (a tombstone does not
    /// count), e.g. a create-only write.
    IfAbsent,
}

/// What a conditional write answered: the new context and the `ETag` of the version set
/// the coordinating replica stored (absent from servers older than conditional writes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The context covering what the writer had seen plus this write.
    pub context: Context,
    /// The new version set's tag, for the next conditional write.
    pub etag: Option<ETag>,
}

/// One version of a key's value, as a read returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sibling {
    /// The value's bytes.
    pub value: Vec<u8>,
    /// The value's media type, as its writer sent it.
    pub content_type: String,
    /// When the write was accepted, RFC 3339 (e.g. `2025-01-31T12:00:00.000Z`).
    pub last_modified: String,
}

impl Sibling {
    /// Returns the value as text when it is UTF-8.
    pub fn text(&self) -> Option<&str> {
        std::str::from_utf8(&self.value).ok()
    }

    /// Returns this sibling's value and media type, ready to write back.
    pub fn to_value(&self) -> Value {
        Value::new(self.value.clone(), self.content_type.clone())
    }
}

impl From<SiblingView> for Sibling {
    fn from(v: SiblingView) -> Sibling {
        Sibling {
            value: v.value,
            content_type: v.content_type,
            last_modified: v.last_modified,
        }
    }
}

/// What a read found: the live siblings of a key and the context covering all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// Hand this back with the next write to replace every sibling below.
    pub context: Context,
    /// The live siblings: one in the common case, several after concurrent writes.
    pub siblings: Vec<Sibling>,
    /// The version set's `ETag`, for a conditional write ([`Client::put_if_match`]);
    /// absent from servers older than conditional writes.
    pub etag: Option<ETag>,
}

impl Object {
    /// Returns true when concurrent writes left more than one sibling.
    pub fn has_siblings(&self) -> bool {
        self.siblings.len() > 1
    }

    /// Returns the only sibling, or `None` when there are several to resolve.
    pub fn single(&self) -> Option<&Sibling> {
        match self.siblings.as_slice() {
            [only] => Some(only),
            _ => None,
        }
    }

    /// Returns the value chosen by `resolve` from every sibling (one or more): pick one,
    /// or merge them. Write it back with [`Object::context`] and the siblings are
    /// replaced by it; [`Client::update`] does both in one call.
    ///
    /// `resolve` is called even for a single sibling, so the same code path always runs.
    pub fn resolve_with<F>(&self, resolve: F) -> Value
    where
        F: FnOnce(&[Sibling]) -> Value,
    {
        resolve(&self.siblings)
    }

    fn from_envelope(envelope: SiblingsEnvelope) -> Object {
        Object {
            context: Context(envelope.context),
            siblings: envelope.siblings.into_iter().map(Sibling::from).collect(),
            etag: envelope.etag.map(ETag),
        }
    }
}

/// A value to write: its bytes and its media type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    /// The bytes (at most 1 MiB).
    pub bytes: Vec<u8>,
    /// The media type readers will see, e.g. `application/json`.
    pub content_type: String,
}

impl Value {
    /// Builds a value of any media type.
    pub fn new(bytes: impl Into<Vec<u8>>, content_type: impl Into<String>) -> Value {
        Value {
            bytes: bytes.into(),
            content_type: content_type.into(),
        }
    }

    /// Builds a `text/plain; charset=utf-8` value.
    pub fn text(text: impl Into<String>) -> Value {
        Value::new(text.into().into_bytes(), "text/plain; charset=utf-8")
    }

    /// Builds an `application/json` value.
    ///
    /// # Errors
    /// The serializer's error when `value` cannot be JSON (e.g. a map with non-string
    /// keys).
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Value, serde_json::Error> {
        Ok(Value::new(serde_json::to_vec(value)?, "application/json"))
    }
}

/// The full outcome of a read: a value, or nothing with perhaps a tombstone's context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The key has one or more live siblings.
    Found(Object),
    /// No live value. `context` is set when a delete left a tombstone: a write carrying
    /// it supersedes the delete instead of being concurrent with it.
    NotFound {
        /// The tombstone's context, if the coordinator found one.
        context: Option<Context>,
        /// The tombstone's `ETag`, if the coordinator found one: a write with
        /// [`Precondition::IfMatch`] on it applies only while the key stays deleted as seen.
        etag: Option<ETag>,
    },
}

impl Lookup {
    /// Returns the object, if one was found.
    pub fn into_object(self) -> Option<Object> {
        match self {
            Lookup::Found(object) => Some(object),
            Lookup::NotFound { .. } => None,
        }
    }

    /// Returns the context to write with: the object's, or the tombstone's.
    pub fn context(&self) -> Option<&Context> {
        match self {
            Lookup::Found(object) => Some(&object.context),
            Lookup::NotFound { context, .. } => context.as_ref(),
        }
    }
}

/// Per-request overrides (`?r=`, `?w=`, `?timeout_ms=`). Reads send `r`, writes send
/// `w`; both send `timeout_ms`. Unset fields use the bucket's and the server's defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestOptions {
    /// The read quorum (1 ≤ r ≤ n).
    pub r: Option<u8>,
    /// The write quorum (1 ≤ w ≤ n).
    pub w: Option<u8>,
    /// How long the coordinator may wait for its replicas (capped by the server). The
    /// client waits this plus a second before giving up itself.
    pub timeout_ms: Option<u64>,
}

impl RequestOptions {
    /// Returns options with nothing overridden.
    pub fn new() -> RequestOptions {
        RequestOptions::default()
    }

    /// Sets the read quorum.
    pub fn r(mut self, r: u8) -> RequestOptions {
        self.r = Some(r);
        self
    }

    /// Sets the write quorum.
    pub fn w(mut self, w: u8) -> RequestOptions {
        self.w = Some(w);
        self
    }

    /// Sets the server-side timeout.
    pub fn timeout_ms(mut self, ms: u64) -> RequestOptions {
        self.timeout_ms = Some(ms);
        self
    }
}

/// The encoded path of a key, after checking the bucket and key as the server would.
fn object_path(bucket: &str, key: &str) -> Result<String, ClientError> {
    key_path("/v1/kv", bucket, key)
}

/// The encoded path `{route}/{bucket}/{key}` of a key under a per-key route (`/v1/kv`,
/// `/v1/crdt`), after checking the bucket and key as the server would.
pub(crate) fn key_path(route: &str, bucket: &str, key: &str) -> Result<String, ClientError> {
    BucketName::new(bucket).map_err(|e| ClientError::InvalidInput {
        code: e.code(),
        message: e.to_string(),
    })?;
    validate_key(key).map_err(|e| ClientError::InvalidInput {
        code: e.code(),
        message: e.to_string(),
    })?;
    // URL parsers (WHATWG, which reqwest follows) drop `.` and `..` path segments, even
    // percent-encoded, so these two keys cannot be addressed by any URL-based client.
    if key == "." || key == ".." {
        return Err(ClientError::InvalidInput {
            code: ErrorCode::InvalidKey,
            message: format!("the key {key:?} cannot be sent in a URL path"),
        });
    }
    Ok(format!("{route}/{}/{}", segment(bucket), segment(key)))
}

/// Decodes a `200`/`300` envelope answer.
fn envelope(reply: &Reply) -> Result<Object, ClientError> {
    if !matches!(reply.status, 200 | 300) {
        return Err(reply.unexpected("expected 200 or 300 with the siblings envelope"));
    }
    let mut object = Object::from_envelope(reply.json::<SiblingsEnvelope>()?);
    if object.etag.is_none() {
        object.etag = reply.header(&ETAG).map(ETag::new);
    }
    Ok(object)
}

impl Client {
    /// Reads a key: `Some` with its siblings (one or more) and their context, or `None`
    /// when it has no live value.
    ///
    /// # Errors
    /// [`ClientError::InvalidInput`] for an invalid bucket or key, [`ClientError::Api`]
    /// for an error answer (after transient ones were retried), transport and decoding
    /// errors.
    pub async fn get(&self, bucket: &str, key: &str) -> Result<Option<Object>, ClientError> {
        Ok(self
            .lookup(bucket, key, &RequestOptions::default())
            .await?
            .into_object())
    }

    /// Reads a key with per-request options, keeping a deleted key's tombstone context.
    ///
    /// # Errors
    /// As [`Client::get`].
    pub async fn lookup(
        &self,
        bucket: &str,
        key: &str,
        opts: &RequestOptions,
    ) -> Result<Lookup, ClientError> {
        let mut call = Call::new(Method::GET, object_path(bucket, key)?)
            .accept_json()
            .not_found_ok()
            .timeout_ms(opts.timeout_ms);
        if let Some(r) = opts.r {
            call = call.query("r", r);
        }
        let reply = self.send(call).await?;
        if reply.status == 404 {
            let context = reply.header(&CONTEXT_HEADER).map(Context::new);
            let etag = reply.header(&ETAG).map(ETag::new);
            return Ok(Lookup::NotFound { context, etag });
        }
        let object = envelope(&reply)?;
        if object.siblings.is_empty() {
            // Defensive: an envelope without siblings is a tombstone by another name.
            return Ok(Lookup::NotFound {
                context: Some(object.context),
                etag: object.etag,
            });
        }
        Ok(Lookup::Found(object))
    }

    /// Writes a value and returns the new context: what `context` covered plus this write,
    /// never a concurrent sibling this writer has not seen.
    ///
    /// With `context` from a read, the write replaces exactly the siblings that read saw;
    /// without one it becomes a sibling of whatever is stored (unless the bucket resolves
    /// conflicts itself).
    ///
    /// `value` is anything that converts into [`Bytes`] without copying: a `Vec<u8>`, a
    /// `String`, a `&'static str` or `[u8]`, or `Bytes` itself.
    ///
    /// Every write carries an `Idempotency-Key` of its own, kept across its retries, so a
    /// write retried after a transient `quorum_unavailable` (or a lost answer) is stored
    /// once: the retry is answered as the first attempt was. The one exception is the
    /// server's stated limit: a first attempt stored only by a node that is still down
    /// when the retry arrives; the retry then adds a sibling with the same value, never
    /// loses one.
    ///
    /// # Errors
    /// As [`Client::get`]; `value_too_large` above 1 MiB, `too_many_siblings` when a
    /// blind write would pass the bucket's `max_siblings`.
    pub async fn put(
        &self,
        bucket: &str,
        key: &str,
        value: impl Into<Bytes>,
        content_type: &str,
        context: Option<&Context>,
    ) -> Result<Context, ClientError> {
        self.put_with(
            bucket,
            key,
            value,
            content_type,
            context,
            &RequestOptions::default(),
        )
        .await
    }

    /// [`Client::put`] with per-request options.
    ///
    /// # Errors
    /// As [`Client::put`].
    pub async fn put_with(
        &self,
        bucket: &str,
        key: &str,
        value: impl Into<Bytes>,
        content_type: &str,
        context: Option<&Context>,
        opts: &RequestOptions,
    ) -> Result<Context, ClientError> {
        let call = self.write_call(Method::PUT, bucket, key, context, opts)?;
        let call = call
            .header(CONTENT_TYPE, content_type_header(content_type)?)
            .body(value.into());
        let reply = self.send(call).await?;
        match reply.header(&CONTEXT_HEADER) {
            Some(token) => Ok(Context::new(token)),
            None => Err(reply.unexpected("the write answer has no X-Dynamo-Context")),
        }
    }

    /// Writes a value and returns the stored object (`?returnbody=true`): every sibling
    /// now under the key, with the context covering them all. More than one sibling means
    /// a concurrent write this writer had not seen.
    ///
    /// # Errors
    /// As [`Client::put`].
    pub async fn put_returning_body(
        &self,
        bucket: &str,
        key: &str,
        value: impl Into<Bytes>,
        content_type: &str,
        context: Option<&Context>,
        opts: &RequestOptions,
    ) -> Result<Object, ClientError> {
        let call = self
            .write_call(Method::PUT, bucket, key, context, opts)?
            .query("returnbody", "true")
            .accept_json()
            .header(CONTENT_TYPE, content_type_header(content_type)?)
            .body(value.into());
        let reply = self.send(call).await?;
        envelope(&reply)
    }

    /// Deletes a key by writing a tombstone. With `context`, exactly the siblings that
    /// read saw are deleted; a concurrent sibling survives.
    ///
    /// Without a context the delete is blind: like any blind write it replaces nothing,
    /// so its tombstone only joins the stored siblings and their values stay visible.
    /// Read first ([`Client::lookup`]) and delete with that context to remove them.
    ///
    /// # Errors
    /// As [`Client::get`].
    pub async fn delete(
        &self,
        bucket: &str,
        key: &str,
        context: Option<&Context>,
    ) -> Result<(), ClientError> {
        self.delete_with(bucket, key, context, &RequestOptions::default())
            .await
    }

    /// [`Client::delete`] with per-request options.
    ///
    /// # Errors
    /// As [`Client::get`].
    pub async fn delete_with(
        &self,
        bucket: &str,
        key: &str,
        context: Option<&Context>,
        opts: &RequestOptions,
    ) -> Result<(), ClientError> {
        self.send(self.write_call(Method::DELETE, bucket, key, context, opts)?)
            .await?;
        Ok(())
    }

    /// Writes a value only if `precondition` holds for the version set the coordinator
    /// reads from R replicas at write time; returns the new context and `ETag`. When it
    /// holds, the write replaces exactly that version set (the read's context is used,
    /// whatever `context` says); when it does not, nothing changes and the answer is
    /// `precondition_failed`.
    ///
    /// The write carries an `Idempotency-Key` like every write, so a retry after a lost
    /// answer is answered as the first attempt (not `412` because the first attempt
    /// changed the key).
    ///
    /// # Errors
    /// As [`Client::put`]; [`ErrorCode::PreconditionFailed`] when the precondition does
    /// not hold.
    #[allow(clippy::too_many_arguments)]
    pub async fn put_if(
        &self,
        bucket: &str,
        key: &str,
        value: impl Into<Bytes>,
        content_type: &str,
        context: Option<&Context>,
        precondition: &Precondition,
        opts: &RequestOptions,
    ) -> Result<Written, ClientError> {
        let call = self.write_call(Method::PUT, bucket, key, context, opts)?;
        let call = with_precondition(call, precondition)?
            .header(CONTENT_TYPE, content_type_header(content_type)?)
            .body(value.into());
        written(&self.send(call).await?)
    }

    /// Writes a value only while the key's version set still has `etag` (from a read, a
    /// write, or a tombstone's `404`). See [`Client::put_if`].
    ///
    /// # Errors
    /// As [`Client::put_if`].
    pub async fn put_if_match(
        &self,
        bucket: &str,
        key: &str,
        value: impl Into<Bytes>,
        content_type: &str,
        etag: &ETag,
    ) -> Result<Written, ClientError> {
        let precondition = Precondition::IfMatch(etag.clone());
        self.put_if(
            bucket,
            key,
            value,
            content_type,
            None,
            &precondition,
            &RequestOptions::default(),
        )
        .await
    }

    /// Writes a value only if the key has no live value (a create-only write; a
    /// tombstone does not count). See [`Client::put_if`].
    ///
    /// # Errors
    /// As [`Client::put_if`].
    pub async fn put_if_absent(
        &self,
        bucket: &str,
        key: &str,
        value: impl Into<Bytes>,
        content_type: &str,
    ) -> Result<Written, ClientError> {
        self.put_if(
            bucket,
            key,
            value,
            content_type,
            None,
            &Precondition::IfAbsent,
            &RequestOptions::default(),
        )
        .await
    }

    /// Deletes a key only if `precondition` holds (as [`Client::put_if`]); the tombstone
    /// replaces exactly the version set the precondition was checked against.
    ///
    /// # Errors
    /// As [`Client::put_if`].
    pub async fn delete_if(
        &self,
        bucket: &str,
        key: &str,
        precondition: &Precondition,
        opts: &RequestOptions,
    ) -> Result<Written, ClientError> {
        let call = self.write_call(Method::DELETE, bucket, key, None, opts)?;
        written(&self.send(with_precondition(call, precondition)?).await?)
    }

    /// Deletes a key only while its version set still has `etag`.
    ///
    /// # Errors
    /// As [`Client::put_if`].
    pub async fn delete_if_match(
        &self,
        bucket: &str,
        key: &str,
        etag: &ETag,
    ) -> Result<Written, ClientError> {
        let precondition = Precondition::IfMatch(etag.clone());
        self.delete_if(bucket, key, &precondition, &RequestOptions::default())
            .await
    }

    /// Runs up to 100 reads, writes and deletes in one request (`POST /v1/batch`),
    /// concurrently on the server; returns one result per operation, in order, each as
    /// its own call would answer (`status`, `context`, `etag`, `siblings`, `error`).
    /// Not atomic: each operation succeeds or fails alone. Build operations with
    /// [`BatchOp::get`], [`BatchOp::put`] and [`BatchOp::delete`].
    ///
    /// # Errors
    /// [`ClientError::Api`] with `invalid_request` (or a more specific code) for a
    /// malformed batch, which runs nothing; transport and decoding errors. A failed
    /// operation is not an error: see its result's `status` and `error`.
    pub async fn batch(&self, ops: &[BatchOp]) -> Result<Vec<BatchResult>, ClientError> {
        // The request body borrows the operations: `BatchRequest` would clone every value.
        #[derive(Serialize)]
        struct Body<'a> {
            ops: &'a [BatchOp],
        }
        let call = Call::new(Method::POST, "/v1/batch".to_owned()).json(&Body { ops })?;
        let reply = self.send(call).await?;
        if reply.status != 200 {
            return Err(reply.unexpected("expected 200 with the batch's results"));
        }
        let results = reply.json::<BatchResponse>()?.results;
        if results.len() != ops.len() {
            return Err(reply.unexpected(format!("{} results for {} operations", results.len(), ops.len())));
        }
        Ok(results)
    }

    /// Reads a key, lets `merge` compute its new value from everything stored, and writes
    /// that back with the read's context; returns the stored object.
    ///
    /// `merge` gets `None` for a key without a live value, else the object with **all**
    /// its siblings: nothing is dropped behind its back. If a concurrent write slipped in
    /// between the read and the write (the stored object has siblings again), `merge`
    /// runs again on the new siblings, which include its own last result, and the result
    /// is written with the new context; at most the client's `update_attempts` writes
    /// (default 5). Should writers keep colliding past that, the returned object still
    /// has siblings: check [`Object::has_siblings`]. A deleted key's tombstone context is
    /// carried, so the write supersedes the delete.
    ///
    /// [`crate::resolve`] has ready-made resolvers: [`crate::resolve::lww`] keeps the
    /// newest sibling, [`crate::resolve::union`] merges JSON sets, and
    /// [`Client::update_merge`] decodes every sibling as a type that knows how to
    /// [`crate::resolve::Merge`] itself.
    ///
    /// # Errors
    /// As [`Client::put`]; an error from any read or write ends the update (earlier
    /// writes stay stored).
    pub async fn update<F>(&self, bucket: &str, key: &str, merge: F) -> Result<Object, ClientError>
    where
        F: FnMut(Option<&Object>) -> Value,
    {
        self.update_with(bucket, key, &RequestOptions::default(), merge)
            .await
    }

    /// [`Client::update`] with per-request options for its reads and writes.
    ///
    /// # Errors
    /// As [`Client::update`].
    pub async fn update_with<F>(
        &self,
        bucket: &str,
        key: &str,
        opts: &RequestOptions,
        mut merge: F,
    ) -> Result<Object, ClientError>
    where
        F: FnMut(Option<&Object>) -> Value,
    {
        self.try_update_with(bucket, key, opts, |current| Ok(merge(current)))
            .await
    }

    /// The loop of [`Client::update_with`], for a `merge` that may refuse what it reads
    /// (a sibling that does not decode, [`Client::update_merge`]): its error ends the
    /// update before that round writes anything.
    pub(crate) async fn try_update_with<F>(
        &self,
        bucket: &str,
        key: &str,
        opts: &RequestOptions,
        mut merge: F,
    ) -> Result<Object, ClientError>
    where
        F: FnMut(Option<&Object>) -> Result<Value, ClientError>,
    {
        let mut current = self.lookup(bucket, key, opts).await?;
        let mut attempt = 1;
        loop {
            let value = match &current {
                Lookup::Found(object) => merge(Some(object))?,
                Lookup::NotFound { .. } => merge(None)?,
            };
            let stored = self
                .put_returning_body(
                    bucket,
                    key,
                    value.bytes,
                    &value.content_type,
                    current.context(),
                    opts,
                )
                .await?;
            if !stored.has_siblings() || attempt >= self.update_attempts() {
                return Ok(stored);
            }
            attempt += 1;
            current = Lookup::Found(stored);
        }
    }

    fn write_call(
        &self,
        method: Method,
        bucket: &str,
        key: &str,
        context: Option<&Context>,
        opts: &RequestOptions,
    ) -> Result<Call, ClientError> {
        let mut call = Call::new(method, object_path(bucket, key)?).timeout_ms(opts.timeout_ms);
        if let Some(w) = opts.w {
            call = call.query("w", w);
        }
        if let Some(context) = context {
            call = call.header(CONTEXT_HEADER, context.header_value()?);
        }
        Ok(call.idempotent())
    }
}

pub(crate) fn with_precondition(call: Call, precondition: &Precondition) -> Result<Call, ClientError> {
    Ok(match precondition {
        Precondition::IfMatch(etag) => call.header(IF_MATCH, etag.header_value()?),
        Precondition::IfAbsent => call.header(IF_NONE_MATCH, HeaderValue::from_static("*")),
    })
}

/// Decodes a write's answer: its context and `ETag` headers.
fn written(reply: &Reply) -> Result<Written, ClientError> {
    match reply.header(&CONTEXT_HEADER) {
        Some(token) => Ok(Written {
            context: Context::new(token),
            etag: reply.header(&ETAG).map(ETag::new),
        }),
        None => Err(reply.unexpected("the write answer has no X-Dynamo-Context")),
    }
}

fn content_type_header(content_type: &str) -> Result<HeaderValue, ClientError> {
    HeaderValue::from_str(content_type).map_err(|_| ClientError::InvalidInput {
        code: ErrorCode::UnsupportedMediaType,
        message: format!("{content_type:?} is not a valid Content-Type"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sib(v: &str) -> Sibling {
        Sibling {
            value: v.as_bytes().to_vec(),
            content_type: "text/plain".into(),
            last_modified: "2025-01-01T00:00:00.000Z".into(),
        }
    }

    #[test]
    fn paths_are_checked_and_encoded() {
        assert_eq!(object_path("b", "a/b c").expect("valid"), "/v1/kv/b/a%2Fb%20c");
        for (bucket, key, code) in [
            ("B", "k", ErrorCode::InvalidBucket),
            ("b", "", ErrorCode::InvalidKey),
            ("b", ".", ErrorCode::InvalidKey),
            ("b", "..", ErrorCode::InvalidKey),
        ] {
            let e = object_path(bucket, key).expect_err("refused");
            assert_eq!(e.code(), Some(code), "{bucket:?} {key:?}");
        }
        assert!(object_path("b", &"k".repeat(1025)).is_err());
        assert!(object_path("b", "...").is_ok());
    }

    #[test]
    fn resolve_with_sees_every_sibling() {
        let object = Object {
            context: Context::new("c"),
            siblings: vec![sib("a"), sib("b")],
            etag: None,
        };
        assert!(object.has_siblings());
        assert_eq!(object.single(), None);
        let merged = object.resolve_with(|s| {
            let mut parts: Vec<&str> = s.iter().filter_map(Sibling::text).collect();
            parts.sort_unstable();
            Value::text(parts.join(","))
        });
        assert_eq!(merged.bytes, b"a,b");
    }

    #[test]
    fn contexts_that_cannot_be_headers_are_refused() {
        let e = Context::new("bad\nctx").header_value().expect_err("refused");
        assert_eq!(e.code(), Some(ErrorCode::InvalidContext));
    }
}
