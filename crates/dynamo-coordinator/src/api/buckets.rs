//! `/v1/buckets/{bucket}`: a bucket's properties.

use super::*;

/// `GET /v1/buckets/{bucket}`.
#[utoipa::path(get, path = "/v1/buckets/{bucket}", tag = "buckets",
    params(("bucket" = String, Path)),
    responses((status = 200, description = "Effective properties, defaults included", body = BucketProps)))]
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
    params(("bucket" = String, Path)),
    request_body = BucketPropsPatch,
    responses(
        (status = 200, description = "The new effective properties", body = BucketProps),
        (status = 409, description = "`n` cannot change once the bucket holds data", body = ErrorBody),
        (status = 422, description = "Invalid properties", body = ErrorBody)))]
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
        ring_change(
            &state,
            state
                .client
                .put(routes::url(
                    state.cache.ring_url(),
                    &routes::ring::bucket(&bucket),
                ))
                .json(&full),
        )
        .await?;
        Ok(Json(next))
    }
    .await;
    audit(&principal, "bucket.props", &name, &outcome);
    outcome
}
