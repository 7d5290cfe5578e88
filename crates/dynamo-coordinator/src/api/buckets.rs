//! `/v1/buckets/{bucket}`: a bucket's properties.

use super::*;

/// `GET /v1/buckets/{bucket}`.
#[utoipa::path(get, path = "/v1/buckets/{bucket}", tag = "buckets",
    params(("bucket" = String, Path, pattern = "^[a-z0-9._-]{1,63}$")),
    responses(
        (status = 200, description = "Effective properties, defaults included", body = BucketProps),
        (status = 400, description = "Bad bucket name (`invalid_bucket`, `invalid_request`)", body = ErrorBody),
        (status = 403, description = "The token lacks `read` on the bucket", body = ErrorBody)))]
pub async fn get_bucket(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(bucket): Path<String>,
) -> Result<Json<BucketProps>, ApiError> {
    let bucket = bucket_name(bucket)?;
    principal.require(Permission::Read, Some(&bucket))?;
    Ok(Json(state.cache.bucket(&bucket, &state.config.default_props()).0))
}

/// `PUT /v1/buckets/{bucket}` (admin): a partial update of the properties.
#[utoipa::path(put, path = "/v1/buckets/{bucket}", tag = "buckets",
    params(("bucket" = String, Path, pattern = "^[a-z0-9._-]{1,63}$")),
    request_body = BucketPropsPatch,
    responses(
        (status = 200, description = "The new effective properties", body = BucketProps),
        (status = 400, description = "Bad bucket name (`invalid_bucket`, `invalid_request`), a body that is not the schema (`invalid_json`) or did not arrive in time (`request_timeout`)", body = ErrorBody),
        (status = 403, description = "The token lacks `admin` on the bucket", body = ErrorBody),
        (status = 409, description = "`n` (`bucket_n_immutable`), or whether the bucket is a CRDT bucket and of which type (`bucket_type_immutable`), cannot change once it holds data", body = ErrorBody),
        (status = 413, description = "The body is larger than the request limit (`body_too_large`)", body = ErrorBody),
        (status = 415, description = "The body is not `application/json` (`unsupported_media_type`)", body = ErrorBody),
        (status = 422, description = "Invalid properties (`invalid_bucket_properties`: r or w above n, `crdt` without a `crdt_type`, a `crdt_type` without `crdt`)", body = ErrorBody),
        (status = 429, description = "The cluster already stores properties for as many buckets as it may (`rate_limited`)", body = ErrorBody),
        (status = 503, description = "The ring service did not answer (`ring_unavailable`)", body = ErrorBody)))]
pub async fn put_bucket(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(bucket): Path<String>,
    Json(patch): Json<BucketPropsPatch>,
) -> Result<Json<BucketProps>, ApiError> {
    let name = bucket.clone();
    let outcome = async {
        let bucket = bucket_name(bucket)?;
        principal.require(Permission::Admin, Some(&bucket))?;
        let (current, _) = state.cache.bucket(&bucket, &state.config.default_props());
        let next = current.apply(&patch).map_err(ApiError::from)?;
        // The ring service stores exactly the effective properties, so every coordinator
        // serves the same ones whatever its own defaults.
        let full = BucketPropsPatch {
            n: Some(next.n),
            r: Some(next.r),
            w: Some(next.w),
            conflict: Some(next.conflict),
            crdt_type: next.crdt_type,
            max_siblings: Some(next.max_siblings),
        };
        ring_change(&state, &routes::ring::bucket(&bucket), |url| {
            state.client.put(url).json(&full)
        })
        .await?;
        Ok(Json(next))
    }
    .await;
    audit(&principal, "bucket.props", &name, &outcome);
    outcome
}
