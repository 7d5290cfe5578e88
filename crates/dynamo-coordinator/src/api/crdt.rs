//! `/v1/crdt/{bucket}/{key}`: operations on the keys of CRDT buckets, and their reads
//! (also what `GET /v1/kv/{bucket}/{key}` answers on a CRDT bucket).
//!
//! A read merges the states the replicas hold into one JSON value; an operation is
//! applied by one replica to the merge of what it holds and replicated like a write
//! (`dynamo_core::crdt::stored` has the rules). The context a client gets is the CRDT's
//! own causal context, sealed for the key like an object context: removes need it.

use dynamo_core::crdt::{Crdt, CrdtError, CrdtOp, CrdtType, state_of};

use super::*;
use crate::kv::CrdtWrite;

/// Most bytes of an operation's body: the value limit (a register may hold a value that
/// large) plus room for the JSON around it.
pub const MAX_CRDT_OP_BYTES: usize = MAX_VALUE_BYTES + 4096;

/// Query of a CRDT operation.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CrdtParams {
    /// Write quorum for this request (1 ≤ w ≤ n; more than the bucket's `n` is `400
    /// invalid_quorum`).
    #[param(minimum = 1, maximum = 7)]
    pub w: Option<u8>,
    /// Most milliseconds to wait for the quorum (capped by the server).
    #[param(minimum = 1)]
    pub timeout_ms: Option<u64>,
}

/// Checks the target of a CRDT call: the bucket must be a CRDT bucket.
fn crdt_target(
    state: &AppState,
    principal: &Principal,
    bucket: String,
    key: String,
    permission: Permission,
) -> Result<(Target, CrdtType), ApiError> {
    let target = checked_target(state, principal, bucket, key, permission)?;
    match (target.2.conflict, target.2.crdt_type) {
        (ConflictMode::Crdt, Some(t)) => Ok((target, t)),
        _ => Err(ApiError::new(
            ErrorCode::WrongBucketType,
            format!(
                "bucket {} is not a CRDT bucket: use /v1/kv/{}/... for its objects",
                target.0, target.0
            ),
        )),
    }
}

/// The answer carrying a CRDT's value: `200`, the JSON value as the body, its type in
/// `X-Dynamo-Crdt-Type`, the sealed CRDT context and the `ETag` of the version set.
fn value_answer(state: &AppState, bucket: &BucketName, key: &str, crdt: &Crdt, etag: ETag) -> Response {
    let contexts = KeyContexts::new(state, bucket, key);
    let mut resp = (StatusCode::OK, Json(crdt.value())).into_response();
    resp.headers_mut().insert(
        CRDT_TYPE_HEADER,
        HeaderValue::from_static(crdt.crdt_type().as_str()),
    );
    attach_etag(contexts.attach(resp, &crdt.context()), etag)
}

/// Reads a CRDT key through a quorum of `r` and answers its merged value.
pub(crate) async fn read_crdt(
    state: &AppState,
    target: Target,
    crdt_type: CrdtType,
    r: Option<u8>,
    timeout_ms: Option<u64>,
) -> Result<Response, ApiError> {
    let found = read_object(state, &target, r, timeout_ms).await?;
    let (bucket, key, _, _) = target;
    let Some(obj) = found else {
        return Err(not_found(&bucket, &key));
    };
    let state_value = state_of(&obj, crdt_type).map_err(|e| ApiError::new(e.code(), e.to_string()))?;
    match state_value {
        Some(crdt) => Ok(value_answer(state, &bucket, &key, &crdt, ETag::of(&obj))),
        None => Err(not_found(&bucket, &key)),
    }
}

/// `GET /v1/crdt/{bucket}/{key}`.
#[utoipa::path(get, path = "/v1/crdt/{bucket}/{key}", tag = "crdt",
    params(("bucket" = String, Path, pattern = "^[a-z0-9._-]{1,63}$"), ("key" = String, Path, min_length = 1, max_length = 1024, description = "1-1024 bytes of UTF-8, percent-encoded; may hold `/`"), ReadParams),
    responses(
        (status = 200, description = "The value as JSON: a counter is a number, a set a sorted array of strings, a register its value (or null), a map an object",
            body = serde_json::Value,
            headers(("X-Dynamo-Context" = String, description = "The CRDT's causal context: send it with a remove"),
                    ("X-Dynamo-Crdt-Type" = String, description = "counter, set, register or map"),
                    ("ETag" = String, description = "Strong validator of the version set read (quoted)"))),
        (status = 400, description = "Bad bucket, key or query (`invalid_bucket`, `invalid_key`, `invalid_quorum`, `invalid_parameter`, `invalid_request`)", body = ErrorBody),
        (status = 403, description = "The token lacks `read` on the bucket", body = ErrorBody),
        (status = 404, description = "No value under the key (`not_found`)", body = ErrorBody),
        (status = 409, description = "Not a CRDT bucket, or the key holds a value written before the bucket became one (`wrong_bucket_type`)", body = ErrorBody),
        (status = 503, description = "Fewer than R replicas answered (`quorum_unavailable`)", body = ErrorBody)))]
pub async fn get_crdt(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path((bucket, key)): Path<(String, String)>,
    Query(params): Query<ReadParams>,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let r = async {
        let (target, t) = crdt_target(&state, &principal, bucket, key, Permission::Read)?;
        read_crdt(&state, target, t, params.r, params.timeout_ms).await
    }
    .await;
    observe(&state.metrics, "get", start, &r);
    r
}

/// `POST /v1/crdt/{bucket}/{key}`.
#[utoipa::path(post, path = "/v1/crdt/{bucket}/{key}", tag = "crdt",
    params(("bucket" = String, Path, pattern = "^[a-z0-9._-]{1,63}$"), ("key" = String, Path, min_length = 1, max_length = 1024, description = "1-1024 bytes of UTF-8, percent-encoded; may hold `/`"), CrdtParams,
        ("X-Dynamo-Context" = Option<String>, Header, nullable = false, pattern = "^[A-Za-z0-9_-]{1,4096}$", description = "The context of a previous read of the key; `remove` and `remove_fields` need it"),
        ("Idempotency-Key" = Option<String>, Header, nullable = false, pattern = "^[!-~]{1,128}$", description = "1-128 visible ASCII: a repeat of the same request within the window answers as the first did and applies nothing"),
        ("If-Match" = Option<String>, Header, nullable = false, pattern = r#"^(\*|(W/)?"[!#-~]*"([ \t]*,[ \t]*(W/)?"[!#-~]*")*)$"#, description = "`*` or a list of quoted ETags: applied only if the version set read from R replicas has one of them, else 412"),
        ("If-None-Match" = Option<String>, Header, nullable = false, pattern = "^\\*$", description = "Only `*`: applied only if the key holds no value, else 412")),
    request_body(content = crate::openapi::CrdtOperation, content_type = "application/json",
        description = "One operation: `{\"increment\": 5}` (counter), `{\"add\": [\"a\"]}` or `{\"remove\": [\"a\"]}` (set), `{\"assign\": <any JSON>}` (register), `{\"update\": {\"field\": <operation>}}` or `{\"remove_fields\": [\"f\"]}` (map)"),
    responses(
        (status = 200, description = "Applied: the value as the replica that applied it holds it now (other replicas may hold more: read for the merged value)",
            body = serde_json::Value,
            headers(("X-Dynamo-Context" = String, description = "The CRDT's causal context after the operation"),
                    ("X-Dynamo-Crdt-Type" = String, description = "counter, set, register or map"),
                    ("ETag" = String, description = "The version set as the applying replica stored it (quoted)"))),
        (status = 400, description = "Bad bucket, key, query, context, Idempotency-Key, If-Match or If-None-Match, or a body that did not arrive in time (`request_timeout`)", body = ErrorBody),
        (status = 403, description = "The token lacks `write` on the bucket", body = ErrorBody),
        (status = 409, description = "Not a CRDT bucket (`wrong_bucket_type`), or the remove's context names writes no reachable replica has seen (`context_not_seen`: read again)", body = ErrorBody),
        (status = 412, description = "The If-Match or If-None-Match precondition does not hold; nothing changed", body = ErrorBody),
        (status = 413, description = "The body, or the state after the operation, is larger than 1 MiB (`body_too_large`, `value_too_large`)", body = ErrorBody),
        (status = 415, description = "The body is not `application/json` (`unsupported_media_type`)", body = ErrorBody),
        (status = 422, description = "A malformed operation, one that does not fit the bucket's type, a remove without a context or of something it did not observe (`invalid_crdt_operation`), or a reused Idempotency-Key", body = ErrorBody),
        (status = 503, description = "Fewer than W replicas stored it (`quorum_unavailable`)", body = ErrorBody)))]
pub async fn post_crdt(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path((bucket, key)): Path<(String, String)>,
    Query(params): Query<CrdtParams>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let r = apply(&state, &principal, bucket, key, params, &headers, &body).await;
    observe(&state.metrics, "crdt", start, &r);
    r
}

async fn apply(
    state: &AppState,
    principal: &Principal,
    bucket: String,
    key: String,
    params: CrdtParams,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let ((bucket, key, props, has_data), crdt_type) =
        crdt_target(state, principal, bucket, key, Permission::Write)?;
    if let Some(ct) = headers.get(header::CONTENT_TYPE)
        && !ct.to_str().is_ok_and(is_json)
    {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "a CRDT operation is application/json",
        ));
    }
    if body.len() > MAX_CRDT_OP_BYTES {
        return Err(ApiError::new(
            ErrorCode::BodyTooLarge,
            format!(
                "the operation is {} bytes; the limit is {MAX_CRDT_OP_BYTES}",
                body.len()
            ),
        ));
    }
    let crdt_err = |e: CrdtError| ApiError::new(e.code(), e.to_string());
    let op = CrdtOp::from_json(body).map_err(crdt_err)?;
    if op.kind() != crdt_type {
        return Err(crdt_err(CrdtError::OpMismatch {
            op: op.name(),
            crdt_type,
        }));
    }
    let observed = match headers.get(CONTEXT_HEADER) {
        Some(v) => {
            let token = v
                .to_str()
                .map_err(|_| ApiError::new(ErrorCode::InvalidContext, "context is not ASCII"))?;
            Some(KeyContexts::new(state, &bucket, &key).open_token(token)?)
        }
        None => None,
    };
    if op.needs_context() && observed.is_none() {
        return Err(crdt_err(CrdtError::MissingContext));
    }
    let w = quorum(params.w, props.w, props.n, "w")?;
    let t = timeout(&state.config, params.timeout_ms)?;
    let idempotency = idempotency_claim(headers, principal, "POST", &bucket, &key, Some(body))?;
    let preconditions = preconditions(headers)?;

    let mut merge = None;
    let mut replay_only = false;
    if !preconditions.is_empty() {
        let found = state
            .coord
            .read(bucket.clone(), key.clone(), &props, usize::from(props.r), t)
            .await?;
        if preconditions.holds(found.as_ref()) {
            // The applying replica starts from at least what the precondition matched.
            merge = found;
        } else if idempotency.is_some() {
            replay_only = true;
        } else {
            return Err(ApiError::new(
                ErrorCode::PreconditionFailed,
                format!(
                    "the precondition does not hold for the version set read from {} replicas; nothing was changed",
                    props.r
                ),
            ));
        }
    }
    let request = |merge: Option<VersionedObject>| WriteRequest {
        bucket: bucket.clone(),
        key: key.clone(),
        context: DotSet::new(),
        value: Vec::new(),
        content_type: String::new(),
        tombstone: false,
        idempotency,
        replay_only,
        crdt: Some(CrdtWrite {
            crdt_type,
            op: op.clone(),
            observed: observed.clone(),
            merge,
        }),
    };
    let had_merge = merge.is_some();
    let outcome = match state.coord.write(request(merge), &props, w, t).await {
        // The applying replica has not seen everything the client's context names (the
        // client read from other replicas): merge what a quorum read finds and try once
        // more. Nothing was applied by the refusal.
        Err(e) if e.code == ErrorCode::ContextNotSeen && !had_merge => {
            let found = state
                .coord
                .read(bucket.clone(), key.clone(), &props, usize::from(props.r), t)
                .await?;
            state.coord.write(request(found), &props, w, t).await?
        }
        other => other?,
    };
    mark_written(state, &bucket, has_data);
    let crdt = state_of(&outcome.object, crdt_type)
        .map_err(|e| ApiError::new(e.code(), e.to_string()))?
        .unwrap_or_else(|| Crdt::new(crdt_type));
    Ok(value_answer(
        state,
        &bucket,
        &key,
        &crdt,
        ETag::of(&outcome.object),
    ))
}

/// True for `application/json`, parameters (e.g. a charset) allowed.
fn is_json(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}
