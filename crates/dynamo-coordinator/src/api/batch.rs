//! `POST /v1/batch`: many object calls in one request, each answered as its own call
//! would be, run concurrently within a bound. Not atomic: each operation succeeds or
//! fails on its own.

use futures::StreamExt;

use super::*;

/// Most operations of one batch running at once: enough to overlap their quorum rounds,
/// few enough that one batch cannot take a coordinator's whole concurrency.
pub const BATCH_CONCURRENCY: usize = 16;

/// `POST /v1/batch`.
#[utoipa::path(post, path = "/v1/batch", tag = "objects",
    request_body(content = BatchRequest, description = "1 to 100 operations; the body at most the request limit (`--max-body-bytes`)"),
    responses(
        (status = 200, description = "One result per operation, in order; each with the status its own call would answer", body = BatchResponse),
        (status = 400, description = "A malformed batch (not the JSON schema, no or more than 100 operations, a bad bucket or key, a field the operation does not take), or a body that did not arrive in time (`request_timeout`); nothing was run", body = ErrorBody),
        (status = 413, description = "The body is larger than the request limit (`body_too_large`)", body = ErrorBody),
        (status = 415, description = "The body is not `application/json` (`unsupported_media_type`)", body = ErrorBody)))]
pub async fn batch(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Json(req): Json<BatchRequest>,
) -> Result<Json<BatchResponse>, ApiError> {
    let start = Instant::now();
    let r = async {
        validate_batch(&req)?;
        let (state, principal) = (&*state, &principal);
        // `buffered` keeps the operations' order in the results while up to
        // BATCH_CONCURRENCY of them run.
        let results = futures::stream::iter(req.ops)
            .map(|op| run(state, principal, op))
            .buffered(BATCH_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        Ok::<_, ApiError>(BatchResponse { results })
    }
    .await;
    // The batch itself (whose operations are also counted as their own calls).
    observe(&state.metrics, "batch", start, &r);
    r.map(Json)
}

/// Checks the whole batch before any operation runs: the count, each operation's names
/// and the fields it may carry.
fn validate_batch(req: &BatchRequest) -> Result<(), ApiError> {
    let max = dynamo_core::limits::MAX_BATCH_REQUEST_OPS;
    if req.ops.is_empty() || req.ops.len() > max {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("a batch holds 1 to {max} operations, got {}", req.ops.len()),
        ));
    }
    for (i, op) in req.ops.iter().enumerate() {
        let at = |e: ApiError| ApiError::new(e.code, format!("ops[{i}]: {}", e.message));
        BucketName::new(op.bucket.as_str()).map_err(|e| at(e.into()))?;
        validate_key(&op.key).map_err(|e| at(e.into()))?;
        let refuse = |what: &str| at(ApiError::new(ErrorCode::InvalidRequest, what.to_owned()));
        match op.op {
            BatchOpKind::Put if op.value.is_none() => return Err(refuse("a put needs a `value`")),
            BatchOpKind::Get | BatchOpKind::Delete if op.value.is_some() || op.content_type.is_some() => {
                return Err(refuse("only a put takes `value` and `content_type`"));
            }
            BatchOpKind::Get if op.context.is_some() => {
                return Err(refuse("a get takes no `context`"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Runs one operation as its own call would, counted in the metrics as that call.
async fn run(state: &AppState, principal: &Principal, op: BatchOp) -> BatchResult {
    let start = Instant::now();
    match op.op {
        BatchOpKind::Get => {
            let r = async {
                let target = object_target(state, principal, op.bucket, op.key, Permission::Read)?;
                let found = read_object(state, &target, None, None).await?;
                Ok::<_, ApiError>((target, found))
            }
            .await;
            observe(&state.metrics, "get", start, &r);
            match r {
                Ok(((bucket, key, _, _), found)) => read_result(state, &bucket, &key, found),
                Err(e) => failed(e),
            }
        }
        BatchOpKind::Put | BatchOpKind::Delete => {
            let what = if op.op == BatchOpKind::Put {
                "put"
            } else {
                "delete"
            };
            let r = async {
                let target = object_target(state, principal, op.bucket, op.key, Permission::Write)?;
                let (bucket, key) = (target.0.clone(), target.1.clone());
                let input = WriteInput {
                    context: op.context.as_deref(),
                    content_type: op.content_type.as_deref(),
                    ..WriteInput::default()
                };
                let written = write_object(state, target, None, None, input, op.value).await?;
                Ok::<_, ApiError>((bucket, key, written))
            }
            .await;
            observe(&state.metrics, what, start, &r);
            match r {
                Ok((bucket, key, written)) => {
                    let contexts = KeyContexts::new(state, &bucket, &key);
                    BatchResult {
                        status: StatusCode::NO_CONTENT.as_u16(),
                        context: Some(contexts.seal(&written.outcome.context)),
                        etag: Some(written.etag().to_string()),
                        siblings: None,
                        error: None,
                    }
                }
                Err(e) => failed(e),
            }
        }
    }
}

/// A get's result: as `GET` with `Accept: application/json` answers (the envelope's
/// fields), or its `404` (with the tombstone's context and ETag when one was found).
fn read_result(
    state: &AppState,
    bucket: &BucketName,
    key: &str,
    found: Option<VersionedObject>,
) -> BatchResult {
    let contexts = KeyContexts::new(state, bucket, key);
    match found {
        Some(obj) if !obj.is_deleted() => {
            let siblings = sibling_views(&obj);
            let status = if siblings.len() > 1 {
                StatusCode::MULTIPLE_CHOICES
            } else {
                StatusCode::OK
            };
            BatchResult {
                status: status.as_u16(),
                context: Some(contexts.seal(obj.context())),
                etag: Some(ETag::of(&obj).to_string()),
                siblings: Some(siblings),
                error: None,
            }
        }
        found => BatchResult {
            context: found.as_ref().map(|t| contexts.seal(t.context())),
            etag: found.as_ref().map(|t| ETag::of(t).to_string()),
            ..failed(not_found(bucket, key))
        },
    }
}

/// The result of a failed operation: its status and error body.
fn failed(e: ApiError) -> BatchResult {
    BatchResult {
        status: e.status().as_u16(),
        context: None,
        etag: None,
        siblings: None,
        error: Some(dynamo_core::error::ErrorDetail {
            code: e.code,
            message: e.message,
            request_id: None,
        }),
    }
}
