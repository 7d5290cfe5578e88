//! `/v1/kv/{bucket}/{key}`: reads, writes and deletes, with their contexts and
//! `Idempotency-Key`s.

use super::*;

/// Query of a read.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReadParams {
    /// Read quorum for this request (1 ≤ r ≤ n; more than the bucket's `n` is `400
    /// invalid_quorum`).
    #[param(minimum = 1, maximum = 7)]
    pub r: Option<u8>,
    /// Most milliseconds to wait for the quorum (capped by the server).
    #[param(minimum = 1)]
    pub timeout_ms: Option<u64>,
}

/// Query of a write.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WriteParams {
    /// Write quorum for this request (1 ≤ w ≤ n; more than the bucket's `n` is `400
    /// invalid_quorum`).
    #[param(minimum = 1, maximum = 7)]
    pub w: Option<u8>,
    /// Most milliseconds to wait for the quorum (capped by the server).
    #[param(minimum = 1)]
    pub timeout_ms: Option<u64>,
    /// Answer `200` with the stored object instead of `204`.
    pub returnbody: Option<bool>,
}

/// Checks a key's target (names, permission) and looks up its bucket, of any type.
pub(crate) fn checked_target(
    state: &AppState,
    principal: &Principal,
    bucket: String,
    key: String,
    permission: Permission,
) -> Result<Target, ApiError> {
    let bucket = bucket_name(bucket)?;
    validate_key(&key).map_err(ApiError::from)?;
    principal.require(permission, Some(&bucket))?;
    let (props, has_data) = state.cache.bucket(&bucket, &state.config.default_props());
    Ok((bucket, key, props, has_data))
}

/// Checks the target of an object call: a CRDT bucket's keys change only through
/// `/v1/crdt` (a plain value there would not be a state its operations can merge).
pub(crate) fn object_target(
    state: &AppState,
    principal: &Principal,
    bucket: String,
    key: String,
    permission: Permission,
) -> Result<Target, ApiError> {
    let target = checked_target(state, principal, bucket, key, permission)?;
    if target.2.conflict == ConflictMode::Crdt {
        return Err(ApiError::new(
            ErrorCode::WrongBucketType,
            format!(
                "bucket {} holds CRDTs: change its keys with POST /v1/crdt/{}/..., read them with GET",
                target.0, target.0
            ),
        ));
    }
    Ok(target)
}

/// A key's target, checked: the bucket, the key, the bucket's properties and whether it
/// holds data.
pub(crate) type Target = (BucketName, String, BucketProps, bool);

/// Reads a key through a quorum of `r` (the bucket's R when absent), as a `GET` does.
pub(crate) async fn read_object(
    state: &AppState,
    target: &Target,
    r: Option<u8>,
    timeout_ms: Option<u64>,
) -> Result<Option<VersionedObject>, ApiError> {
    let (bucket, key, props, _) = target;
    let r = quorum(r, props.r, props.n, "r")?;
    let t = timeout(&state.config, timeout_ms)?;
    state.coord.read(bucket.clone(), key.clone(), props, r, t).await
}

pub(crate) fn not_found(bucket: &BucketName, key: &str) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("no value in bucket {bucket} under the key ({} bytes)", key.len()),
    )
}

/// Sets the answer's `ETag`.
pub(crate) fn attach_etag(mut resp: Response, etag: ETag) -> Response {
    if let Ok(v) = HeaderValue::from_str(&etag.to_string()) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

/// `GET /v1/kv/{bucket}/{key}`.
#[utoipa::path(get, path = "/v1/kv/{bucket}/{key}", tag = "objects",
    params(("bucket" = String, Path, pattern = "^[a-z0-9._-]{1,63}$"), ("key" = String, Path, min_length = 1, max_length = 1024, description = "1-1024 bytes of UTF-8, percent-encoded; may hold `/`"), ReadParams),
    responses(
        (status = 200, description = "One value: the raw bytes with the media type they were written with; the envelope (`SiblingsEnvelope`) with `Accept: application/json`; on a CRDT bucket, the merged value as JSON (as `GET /v1/crdt/{bucket}/{key}` answers)",
            content(("*/*")),
            headers(("ETag" = String, description = "Strong validator of the version set read (quoted)"),
                    ("X-Dynamo-Context" = String, description = "The context to write with"))),
        (status = 300, description = "Siblings", body = SiblingsEnvelope,
            headers(("ETag" = String, description = "Strong validator of the version set read (quoted)"),
                    ("X-Dynamo-Context" = String, description = "The context covering every sibling"))),
        (status = 400, description = "Bad bucket, key or query (`invalid_bucket`, `invalid_key`, `invalid_quorum`, `invalid_parameter`, `invalid_request`)", body = ErrorBody),
        (status = 403, description = "The token lacks `read` on the bucket", body = ErrorBody),
        (status = 404, description = "No live value (`not_found`; over a tombstone it carries `X-Dynamo-Context` and `ETag`)", body = ErrorBody,
            headers(("ETag" = String, description = "The tombstone's version set (quoted)"),
                    ("X-Dynamo-Context" = String, description = "The tombstone's context: a write with it replaces the delete"))),
        (status = 409, description = "A CRDT bucket's key holds a value that is not a state of its type (`wrong_bucket_type`)", body = ErrorBody),
        (status = 503, description = "Fewer than R replicas answered (`quorum_unavailable`)", body = ErrorBody)))]
pub async fn get_object(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path((bucket, key)): Path<(String, String)>,
    Query(params): Query<ReadParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let r = async {
        let target = checked_target(&state, &principal, bucket, key, Permission::Read)?;
        if let (ConflictMode::Crdt, Some(t)) = (target.2.conflict, target.2.crdt_type) {
            return read_crdt(&state, target, t, params.r, params.timeout_ms)
                .await
                .map(Err);
        }
        let found = read_object(&state, &target, params.r, params.timeout_ms).await?;
        Ok::<_, ApiError>(Ok((target, found)))
    }
    .await;
    observe(&state.metrics, "get", start, &r);
    let ((bucket, key, _, _), obj) = match r? {
        Ok(read) => read,
        // A CRDT bucket's key: its merged value, answered whole.
        Err(answer) => return Ok(answer),
    };
    let contexts = KeyContexts::new(&state, &bucket, &key);
    let obj = match obj {
        Some(o) if !o.is_deleted() => o,
        found => {
            let missing = not_found(&bucket, &key).into_response();
            // A tombstone's context lets the client write "after the delete", and its
            // ETag makes that write conditional on nothing having changed since.
            return Ok(match found {
                Some(tomb) => attach_etag(contexts.attach(missing, tomb.context()), ETag::of(&tomb)),
                None => missing,
            });
        }
    };
    let etag = ETag::of(&obj);
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    let ctx = obj.context().clone();
    let live: Vec<_> = obj.live_siblings().collect();
    state.metrics.read_siblings.observe(live.len() as f64);
    if wants_json || live.len() > 1 {
        let status = if live.len() > 1 {
            StatusCode::MULTIPLE_CHOICES
        } else {
            StatusCode::OK
        };
        let resp = (status, Json(contexts.envelope(&obj, &ctx))).into_response();
        return Ok(attach_etag(contexts.attach(resp, &ctx), etag));
    }
    let s = live[0];
    let ct = if s.content_type.is_empty() {
        "application/octet-stream"
    } else {
        &s.content_type
    };
    let mut resp = (StatusCode::OK, s.value.clone()).into_response();
    if let Ok(v) = HeaderValue::from_str(ct) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    Ok(attach_etag(contexts.attach(resp, &ctx), etag))
}

pub(crate) fn mark_written(state: &AppState, bucket: &BucketName, has_data: bool) {
    if has_data
        || !state
            .marked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(bucket.clone())
    {
        return;
    }
    let route = routes::ring::bucket_written(bucket);
    let urls = state.cache.ring_urls().clone();
    let client = state.client.clone();
    let marked = state.marked.clone();
    let bucket = bucket.clone();
    state.coord.tracker.spawn(async move {
        // Best effort: a missed report only means `n` stays changeable a little longer;
        // the bucket is forgotten here so the next write reports it again. A replica
        // that could not be connected to is passed for the next, as every write to the
        // ring service is.
        let ok = urls
            .call(
                |base| {
                    client
                        .post(routes::url(base, &route))
                        .timeout(RING_CALL_TIMEOUT)
                        .send()
                },
                SendError::is_connect,
            )
            .await
            .is_ok_and(|r| r.status().is_success());
        if !ok {
            tracing::debug!(bucket = %bucket, "could not report the bucket's first write");
            marked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&bucket);
        }
    });
}

/// The `Idempotency-Key` header.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// Most bytes of an `Idempotency-Key` (API.md: 1–128 visible ASCII).
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 128;

/// Reads the `Idempotency-Key` of a write into the claim its coordinate carries: `id`
/// scopes the key to the caller (SHA-256 of the caller and the key), `fingerprint`
/// names exactly what was asked (SHA-256 of the method, bucket, key, content type,
/// context header and body, each length-prefixed so that no two requests share one,
/// then `If-Match` and `If-None-Match` when present: a conditional write and the same
/// write unconditional are two requests).
///
/// # Errors
/// `400 invalid_request` for a key that is not 1–128 visible ASCII characters.
pub fn idempotency_claim(
    headers: &HeaderMap,
    principal: &Principal,
    method: &str,
    bucket: &BucketName,
    key: &str,
    body: Option<&[u8]>,
) -> Result<Option<IdempotencyClaim>, ApiError> {
    use sha2::{Digest, Sha256};
    let Some(raw) = headers.get(IDEMPOTENCY_HEADER) else {
        return Ok(None);
    };
    let k = raw.as_bytes();
    if k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY_BYTES || !k.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY_BYTES} visible ASCII characters"),
        ));
    }
    let digest = |parts: &[&[u8]]| {
        let mut h = Sha256::new();
        for p in parts {
            h.update((p.len() as u64).to_le_bytes());
            h.update(p);
        }
        let d = h.finalize();
        let mut first = [0u8; 16];
        first.copy_from_slice(&d[..16]);
        u128::from_le_bytes(first)
    };
    let header = |name: &str| headers.get(name).map_or(&[][..], |v| v.as_bytes());
    let mut parts = vec![
        method.as_bytes(),
        bucket.as_str().as_bytes(),
        key.as_bytes(),
        header(header::CONTENT_TYPE.as_str()),
        header(CONTEXT_HEADER),
        body.unwrap_or_default(),
    ];
    // Appended only when present, so that the fingerprint of an unconditional write is
    // what it was before conditional writes (a repeat across an upgrade still matches).
    // Length prefixes keep the two forms apart: the part count differs.
    for name in ["if-match", "if-none-match"] {
        if let Some(v) = headers.get(name) {
            parts.push(name.as_bytes());
            parts.push(v.as_bytes());
        }
    }
    Ok(Some(IdempotencyClaim {
        id: digest(&[principal.scope().as_bytes(), k]),
        fingerprint: digest(&parts),
    }))
}

/// Parses a write's `If-Match` and `If-None-Match` headers.
///
/// # Errors
/// `400 invalid_request` for a header that is not ASCII or not of the documented forms.
pub fn preconditions(headers: &HeaderMap) -> Result<Preconditions, ApiError> {
    let text = |name: header::HeaderName| -> Result<Option<&str>, ApiError> {
        headers
            .get(&name)
            .map(|v| {
                v.to_str()
                    .map_err(|_| ApiError::new(ErrorCode::InvalidRequest, format!("{name} is not ASCII")))
            })
            .transpose()
    };
    Preconditions::parse(text(header::IF_MATCH)?, text(header::IF_NONE_MATCH)?)
        .map_err(|e| ApiError::new(e.code(), e.to_string()))
}

/// What a write asks beyond its target and value: from the headers of a `PUT` or a
/// `DELETE`, or from the fields of a batch operation.
#[derive(Debug, Default)]
pub(crate) struct WriteInput<'a> {
    /// The `X-Dynamo-Context` token sent, unopened.
    pub context: Option<&'a str>,
    /// The value's media type (a put's; absent: `application/octet-stream`).
    pub content_type: Option<&'a str>,
    /// The `Idempotency-Key`, hashed.
    pub idempotency: Option<IdempotencyClaim>,
    /// `If-Match` / `If-None-Match: *`.
    pub preconditions: Preconditions,
}

/// A write, done: the object as the coordinating replica stored it and the answered
/// context.
pub(crate) struct Written {
    pub outcome: crate::kv::WriteOutcome,
}

impl Written {
    /// The `ETag` of what the coordinating replica holds after the write.
    pub fn etag(&self) -> ETag {
        ETag::of(&self.outcome.object)
    }
}

/// Writes `value` (a delete when `None`) to `target` through a quorum of `w`.
///
/// With a precondition, the key is first read through the bucket's R (as a `GET`
/// would). When it holds, the write carries that read's context, so it replaces exactly
/// the version set the precondition matched; when it does not, the answer is `412`,
/// unless the write carries an `Idempotency-Key`: then it may repeat a conditional write
/// that succeeded (and changed what the precondition sees), so the replica that
/// coordinates it is asked to answer that write's outcome again, and answers `412` when
/// it remembers none. Checks every input before anything is read or written.
///
/// # Errors
/// `412 precondition_failed`; the errors of a `PUT` or `DELETE` (`docs/api.md`).
pub(crate) async fn write_object(
    state: &AppState,
    target: Target,
    w: Option<u8>,
    timeout_ms: Option<u64>,
    input: WriteInput<'_>,
    value: Option<Vec<u8>>,
) -> Result<Written, ApiError> {
    let (bucket, key, props, has_data) = target;
    let w = quorum(w, props.w, props.n, "w")?;
    let t = timeout(&state.config, timeout_ms)?;
    let tombstone = value.is_none();
    let value = value.unwrap_or_default();
    if value.len() > MAX_VALUE_BYTES {
        return Err(ApiError::new(
            ErrorCode::ValueTooLarge,
            format!("value is {} bytes; the limit is {MAX_VALUE_BYTES}", value.len()),
        ));
    }
    let content_type = match input.content_type {
        _ if tombstone => String::new(),
        None => "application/octet-stream".to_owned(),
        Some(ct) if ct.len() <= MAX_CONTENT_TYPE_BYTES && ct.is_ascii() => ct.to_owned(),
        Some(_) => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "Content-Type must be ASCII, at most 255 bytes",
            ));
        }
    };
    let sent = {
        let contexts = KeyContexts::new(state, &bucket, &key);
        input.context.map(|c| contexts.open_token(c)).transpose()?
    };
    let (context, replay_only) = if !input.preconditions.is_empty() {
        let found = state
            .coord
            .read(bucket.clone(), key.clone(), &props, usize::from(props.r), t)
            .await?;
        if input.preconditions.holds(found.as_ref()) {
            // The matched version set's own context, not the one the client sent: the
            // write replaces exactly what the precondition was checked against.
            (found.map(|o| o.context().clone()).unwrap_or_default(), false)
        } else if input.idempotency.is_some() {
            (DotSet::new(), true)
        } else {
            return Err(precondition_failed(&props));
        }
    } else {
        match (sent, tombstone) {
            // A DELETE without a context deletes what a quorum read finds (as Riak's
            // client does): the caller explicitly asked for the key to go, so this is not
            // a silent replacement, and a blind tombstone would leave the value visible
            // as a sibling.
            (None, true) => {
                let r = usize::from(props.r);
                match state
                    .coord
                    .read(bucket.clone(), key.clone(), &props, r, t)
                    .await?
                {
                    Some(found) => (found.context().clone(), false),
                    None => (DotSet::new(), false),
                }
            }
            (sent, _) => (sent.unwrap_or_default(), false),
        }
    };
    let req = WriteRequest {
        bucket: bucket.clone(),
        key,
        context,
        value,
        content_type,
        tombstone,
        idempotency: input.idempotency,
        replay_only,
        crdt: None,
    };
    let outcome = state.coord.write(req, &props, w, t).await?;
    mark_written(state, &bucket, has_data);
    Ok(Written { outcome })
}

fn precondition_failed(props: &BucketProps) -> ApiError {
    ApiError::new(
        ErrorCode::PreconditionFailed,
        format!(
            "the precondition does not hold for the version set read from {} replicas; nothing was changed",
            props.r
        ),
    )
}

async fn write(
    state: &AppState,
    principal: &Principal,
    bucket: String,
    key: String,
    params: WriteParams,
    headers: &HeaderMap,
    value: Option<bytes::Bytes>,
) -> Result<Response, ApiError> {
    let target = object_target(state, principal, bucket, key, Permission::Write)?;
    let method = if value.is_some() { "PUT" } else { "DELETE" };
    let idempotency = idempotency_claim(headers, principal, method, &target.0, &target.1, value.as_deref())?;
    let preconditions = preconditions(headers)?;
    let context = headers
        .get(CONTEXT_HEADER)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::new(ErrorCode::InvalidContext, "context is not ASCII"))
        })
        .transpose()?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| {
            v.to_str().map_err(|_| {
                ApiError::new(
                    ErrorCode::InvalidRequest,
                    "Content-Type must be ASCII, at most 255 bytes",
                )
            })
        })
        .transpose()?;
    let tombstone = value.is_none();
    let (bucket, key) = (target.0.clone(), target.1.clone());
    let input = WriteInput {
        context,
        content_type,
        idempotency,
        preconditions,
    };
    let value = value.map(|b| b.to_vec());
    let written = write_object(state, target, params.w, params.timeout_ms, input, value).await?;
    let contexts = KeyContexts::new(state, &bucket, &key);
    let etag = written.etag();
    let outcome = written.outcome;
    if params.returnbody.unwrap_or(false) && !tombstone {
        let ctx = outcome.object.context().clone();
        let resp = (StatusCode::OK, Json(contexts.envelope(&outcome.object, &ctx))).into_response();
        return Ok(attach_etag(contexts.attach(resp, &ctx), etag));
    }
    Ok(attach_etag(
        contexts.attach(StatusCode::NO_CONTENT.into_response(), &outcome.context),
        etag,
    ))
}

/// `PUT /v1/kv/{bucket}/{key}`.
#[utoipa::path(put, path = "/v1/kv/{bucket}/{key}", tag = "objects",
    params(("bucket" = String, Path, pattern = "^[a-z0-9._-]{1,63}$"), ("key" = String, Path, min_length = 1, max_length = 1024, description = "1-1024 bytes of UTF-8, percent-encoded; may hold `/`"), WriteParams,
        ("X-Dynamo-Context" = Option<String>, Header, nullable = false, pattern = "^[A-Za-z0-9_-]{1,4096}$", description = "The context of a previous read: the write replaces exactly the siblings it saw"),
        ("Idempotency-Key" = Option<String>, Header, nullable = false, pattern = "^[!-~]{1,128}$", description = "1-128 visible ASCII: a repeat of the same request within the window answers as the first did and applies nothing"),
        ("If-Match" = Option<String>, Header, nullable = false, pattern = r#"^(\*|(W/)?"[!#-~]*"([ \t]*,[ \t]*(W/)?"[!#-~]*")*)$"#, description = "`*` or a list of quoted ETags: applied only if the version set read from R replicas has one of them (`*`: a live value exists), else 412"),
        ("If-None-Match" = Option<String>, Header, nullable = false, pattern = "^\\*$", description = "Only `*`: applied only if no live value exists (tombstones do not count), else 412")),
    request_body(content = Vec<u8>, description = "The value, at most 1 MiB", content_type = "application/octet-stream"),
    responses(
        (status = 204, description = "Stored",
            headers(("X-Dynamo-Context" = String, description = "Covers what the writer had seen plus this write"),
                    ("ETag" = String, description = "The version set as the coordinating replica stored it (quoted)"))),
        (status = 200, description = "Stored, with `?returnbody=true`", body = SiblingsEnvelope,
            headers(("X-Dynamo-Context" = String), ("ETag" = String))),
        (status = 400, description = "Bad bucket, key, query, context, Content-Type, Idempotency-Key, If-Match or If-None-Match, or a body that did not arrive in time (`request_timeout`)", body = ErrorBody),
        (status = 403, description = "The token lacks `write` on the bucket", body = ErrorBody),
        (status = 409, description = "Too many siblings (`too_many_siblings`: read, resolve, write with the context), or a CRDT bucket (`wrong_bucket_type`)", body = ErrorBody),
        (status = 412, description = "The If-Match or If-None-Match precondition does not hold; nothing changed", body = ErrorBody),
        (status = 413, description = "Value larger than 1 MiB (`value_too_large`), or a body over the request limit (`body_too_large`)", body = ErrorBody),
        (status = 422, description = "The Idempotency-Key was used for another request within its window", body = ErrorBody),
        (status = 503, description = "Fewer than W replicas stored it (`quorum_unavailable`)", body = ErrorBody)))]
pub async fn put_object(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path((bucket, key)): Path<(String, String)>,
    Query(params): Query<WriteParams>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let r = write(&state, &principal, bucket, key, params, &headers, Some(body)).await;
    observe(&state.metrics, "put", start, &r);
    r
}

/// `DELETE /v1/kv/{bucket}/{key}`.
#[utoipa::path(delete, path = "/v1/kv/{bucket}/{key}", tag = "objects",
    params(("bucket" = String, Path, pattern = "^[a-z0-9._-]{1,63}$"), ("key" = String, Path, min_length = 1, max_length = 1024, description = "1-1024 bytes of UTF-8, percent-encoded; may hold `/`"), WriteParams,
        ("X-Dynamo-Context" = Option<String>, Header, nullable = false, pattern = "^[A-Za-z0-9_-]{1,4096}$", description = "The context of a previous read; without one the coordinator reads the key first and deletes what it found"),
        ("Idempotency-Key" = Option<String>, Header, nullable = false, pattern = "^[!-~]{1,128}$", description = "1-128 visible ASCII: a repeat of the same request within the window answers as the first did and applies nothing"),
        ("If-Match" = Option<String>, Header, nullable = false, pattern = r#"^(\*|(W/)?"[!#-~]*"([ \t]*,[ \t]*(W/)?"[!#-~]*")*)$"#, description = "`*` or a list of quoted ETags: applied only if the version set read from R replicas has one of them (`*`: a live value exists), else 412"),
        ("If-None-Match" = Option<String>, Header, nullable = false, pattern = "^\\*$", description = "Only `*`: applied only if no live value exists, else 412")),
    responses(
        (status = 204, description = "A tombstone was written",
            headers(("X-Dynamo-Context" = String, description = "Covers what the writer had seen plus the tombstone"),
                    ("ETag" = String, description = "The version set as the coordinating replica stored it (quoted)"))),
        (status = 400, description = "Bad bucket, key, query, context, Idempotency-Key, If-Match or If-None-Match", body = ErrorBody),
        (status = 403, description = "The token lacks `write` on the bucket", body = ErrorBody),
        (status = 409, description = "Too many siblings (`too_many_siblings`), or a CRDT bucket (`wrong_bucket_type`)", body = ErrorBody),
        (status = 412, description = "The If-Match or If-None-Match precondition does not hold; nothing changed", body = ErrorBody),
        (status = 422, description = "The Idempotency-Key was used for another request within its window", body = ErrorBody),
        (status = 503, description = "Fewer than R replicas answered the read that finds what to delete, or fewer than W stored the tombstone (`quorum_unavailable`)", body = ErrorBody)))]
pub async fn delete_object(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path((bucket, key)): Path<(String, String)>,
    Query(params): Query<WriteParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let r = write(&state, &principal, bucket, key, params, &headers, None).await;
    observe(&state.metrics, "delete", start, &r);
    r
}
