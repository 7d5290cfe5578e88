//! `/v1/kv/{bucket}/{key}`: reads, writes and deletes, with their contexts and
//! `Idempotency-Key`s.

use super::*;

/// Query of a read.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ReadParams {
    /// Read quorum for this request (1 ≤ r ≤ n).
    pub r: Option<u8>,
    /// Most milliseconds to wait for the quorum (capped by the server).
    pub timeout_ms: Option<u64>,
}

/// Query of a write.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct WriteParams {
    /// Write quorum for this request (1 ≤ w ≤ n).
    pub w: Option<u8>,
    /// Most milliseconds to wait for the quorum (capped by the server).
    pub timeout_ms: Option<u64>,
    /// Answer `200` with the stored object instead of `204`.
    pub returnbody: Option<bool>,
}

fn object_target(
    state: &AppState,
    principal: &Principal,
    bucket: String,
    key: String,
    permission: Permission,
) -> Result<(BucketName, String, BucketProps, bool), ApiError> {
    let bucket = bucket_name(bucket)?;
    validate_key(&key).map_err(ApiError::from)?;
    principal.require(permission, Some(&bucket))?;
    let (props, has_data) = state.cache.bucket(&bucket, &state.config.default_props());
    if props.conflict == ConflictMode::Crdt {
        return Err(ApiError::new(
            ErrorCode::WrongBucketType,
            format!("bucket {bucket} holds CRDTs; CRDT operations are not served by this version"),
        ));
    }
    Ok((bucket, key, props, has_data))
}

/// `GET /v1/kv/{bucket}/{key}`.
#[utoipa::path(get, path = "/v1/kv/{bucket}/{key}", tag = "objects",
    params(("bucket" = String, Path), ("key" = String, Path), ReadParams),
    responses(
        (status = 200, description = "One value (raw body), or the envelope with `Accept: application/json`"),
        (status = 300, description = "Siblings", body = SiblingsEnvelope),
        (status = 404, description = "No live value (may carry `X-Dynamo-Context`)", body = ErrorBody),
        (status = 503, description = "Fewer than R replicas answered", body = ErrorBody)))]
pub async fn get_object(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path((bucket, key)): Path<(String, String)>,
    Query(params): Query<ReadParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let r = async {
        let (bucket, key, props, _) = object_target(&state, &principal, bucket, key, Permission::Read)?;
        let r = quorum(params.r, props.r, props.n, "r")?;
        let t = timeout(&state.config, params.timeout_ms)?;
        state
            .coord
            .read(bucket.clone(), key.clone(), &props, r, t)
            .await
            .map(|o| (o, bucket, key))
    }
    .await;
    observe(&state.metrics, "get", start, &r);
    let (obj, bucket, key) = r?;
    let contexts = KeyContexts::new(&state, &bucket, &key);
    let obj = match obj {
        Some(o) if !o.is_deleted() => o,
        found => {
            let missing = ApiError::new(
                ErrorCode::NotFound,
                format!("no value in bucket {bucket} under the key ({} bytes)", key.len()),
            )
            .into_response();
            // A tombstone's context lets the client write "after the delete".
            return Ok(match found {
                Some(tomb) => contexts.attach(missing, tomb.context()),
                None => missing,
            });
        }
    };
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
        return Ok(contexts.attach(
            (status, Json(contexts.envelope(&obj, &ctx))).into_response(),
            &ctx,
        ));
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
    Ok(contexts.attach(resp, &ctx))
}

fn mark_written(state: &AppState, bucket: &BucketName, has_data: bool) {
    if has_data
        || !state
            .marked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(bucket.clone())
    {
        return;
    }
    let url = routes::url(state.cache.ring_url(), &routes::ring::bucket_written(bucket));
    let client = state.client.clone();
    let marked = state.marked.clone();
    let bucket = bucket.clone();
    state.coord.tracker.spawn(async move {
        // Best effort: a missed report only means `n` stays changeable a little longer;
        // the bucket is forgotten here so the next write reports it again.
        let ok = client
            .post(url)
            .timeout(RING_CALL_TIMEOUT)
            .send()
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
/// context header and body, each length-prefixed so that no two requests share one).
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
    Ok(Some(IdempotencyClaim {
        id: digest(&[principal.scope().as_bytes(), k]),
        fingerprint: digest(&[
            method.as_bytes(),
            bucket.as_str().as_bytes(),
            key.as_bytes(),
            header(header::CONTENT_TYPE.as_str()),
            header(CONTEXT_HEADER),
            body.unwrap_or_default(),
        ]),
    }))
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
    let (bucket, key, props, has_data) = object_target(state, principal, bucket, key, Permission::Write)?;
    let method = if value.is_some() { "PUT" } else { "DELETE" };
    let idempotency = idempotency_claim(headers, principal, method, &bucket, &key, value.as_deref())?;
    let w = quorum(params.w, props.w, props.n, "w")?;
    let t = timeout(&state.config, params.timeout_ms)?;
    let tombstone = value.is_none();
    let context = match (headers.get(CONTEXT_HEADER), tombstone) {
        // A DELETE without a context deletes what a quorum read finds (as Riak's client
        // does): the caller explicitly asked for the key to go, so this is not a silent
        // replacement, and a blind tombstone would leave the value visible as a sibling.
        (None, true) => {
            let r = usize::from(props.r);
            match state
                .coord
                .read(bucket.clone(), key.clone(), &props, r, t)
                .await?
            {
                Some(found) => found.context().clone(),
                None => DotSet::new(),
            }
        }
        _ => KeyContexts::new(state, &bucket, &key).open(headers)?,
    };
    let value = value.map(|b| b.to_vec()).unwrap_or_default();
    if value.len() > MAX_VALUE_BYTES {
        return Err(ApiError::new(
            ErrorCode::ValueTooLarge,
            format!("value is {} bytes; the limit is {MAX_VALUE_BYTES}", value.len()),
        ));
    }
    let content_type = match headers.get(header::CONTENT_TYPE) {
        None => "application/octet-stream".to_owned(),
        Some(v) => v
            .to_str()
            .ok()
            .filter(|s| s.len() <= MAX_CONTENT_TYPE_BYTES)
            .map(str::to_owned)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidRequest,
                    "Content-Type must be ASCII, at most 255 bytes",
                )
            })?,
    };
    let sealed_key = key.clone();
    let contexts = KeyContexts::new(state, &bucket, &sealed_key);
    let req = WriteRequest {
        bucket: bucket.clone(),
        key,
        context,
        value,
        content_type: if tombstone { String::new() } else { content_type },
        tombstone,
        idempotency,
    };
    let outcome = state.coord.write(req, &props, w, t).await?;
    mark_written(state, &bucket, has_data);
    if params.returnbody.unwrap_or(false) && !tombstone {
        let ctx = outcome.object.context().clone();
        return Ok(contexts.attach(
            (StatusCode::OK, Json(contexts.envelope(&outcome.object, &ctx))).into_response(),
            &ctx,
        ));
    }
    Ok(contexts.attach(StatusCode::NO_CONTENT.into_response(), &outcome.context))
}

/// `PUT /v1/kv/{bucket}/{key}`.
#[utoipa::path(put, path = "/v1/kv/{bucket}/{key}", tag = "objects",
    params(("bucket" = String, Path), ("key" = String, Path), WriteParams,
        ("Idempotency-Key" = Option<String>, Header, description = "1-128 visible ASCII: a repeat of the same request within the window answers as the first did and applies nothing")),
    request_body(content = Vec<u8>, description = "The value, at most 1 MiB", content_type = "application/octet-stream"),
    responses(
        (status = 204, description = "Stored; `X-Dynamo-Context` covers what the writer had seen plus this write"),
        (status = 200, description = "Stored, with `?returnbody=true`", body = SiblingsEnvelope),
        (status = 409, description = "Too many siblings: read, resolve, write with the context", body = ErrorBody),
        (status = 413, description = "Value larger than 1 MiB", body = ErrorBody),
        (status = 422, description = "The Idempotency-Key was used for another request within its window", body = ErrorBody),
        (status = 503, description = "Fewer than W replicas stored it", body = ErrorBody)))]
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
    params(("bucket" = String, Path), ("key" = String, Path), WriteParams,
        ("Idempotency-Key" = Option<String>, Header, description = "1-128 visible ASCII: a repeat of the same request within the window answers as the first did and applies nothing")),
    responses(
        (status = 204, description = "A tombstone was written"),
        (status = 422, description = "The Idempotency-Key was used for another request within its window", body = ErrorBody),
        (status = 503, description = "Fewer than W replicas stored it", body = ErrorBody)))]
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
