//! `/v1/admin/tokens`: creating, listing and revoking API tokens.

use super::*;

/// `POST /v1/admin/tokens` (admin).
#[utoipa::path(post, path = "/v1/admin/tokens", tag = "admin", request_body = TokenRequest,
    responses(
        (status = 201, description = "Created; the secret is in the answer, once", body = NewToken),
        (status = 400, description = "A body that is not the schema (`invalid_json`) or did not arrive in time (`request_timeout`); no permission, a `ttl_s` or `rate_limit_rps` out of range, no bucket or more than 1000 (`invalid_request`)", body = ErrorBody),
        (status = 403, description = "The token lacks cluster-wide `admin`", body = ErrorBody),
        (status = 413, description = "The body is larger than the request limit (`body_too_large`)", body = ErrorBody),
        (status = 415, description = "The body is not `application/json` (`unsupported_media_type`)", body = ErrorBody),
        (status = 429, description = "The cluster already stores as many tokens as it may (`rate_limited`)", body = ErrorBody),
        (status = 503, description = "The ring service did not answer (`ring_unavailable`)", body = ErrorBody)))]
pub async fn create_token(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Json(req): Json<TokenRequest>,
) -> Result<Response, ApiError> {
    if let Err(e) = principal.require(Permission::Admin, None) {
        audit_line(&principal, "token.create", "", "refused", e.code.as_str());
        return Err(e);
    }
    let mut permissions = req.permissions;
    permissions.sort();
    permissions.dedup();
    if permissions.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "a token needs at least one permission",
        ));
    }
    let expires_ms = match req.ttl_s {
        None => None,
        Some(ttl) if (1..=MAX_TOKEN_TTL_S).contains(&ttl) => Some(ttl * 1000),
        Some(_) => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("ttl_s must be 1 to {MAX_TOKEN_TTL_S} (ten years)"),
            ));
        }
    };
    if let Some(rps) = req.rate_limit_rps
        && !(1..=MAX_TOKEN_RATE_LIMIT_RPS).contains(&rps)
    {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("rate_limit_rps must be 1 to {MAX_TOKEN_RATE_LIMIT_RPS}"),
        ));
    }
    let (id, token) = auth::new_token();
    let created_ms = dynamo_server::clock::now_ms();
    let record = TokenRecord {
        id: id.clone(),
        sha256: auth::token_sha256(&token),
        buckets: req.buckets.clone(),
        permissions: permissions.clone(),
        created_ms,
        expires_ms: expires_ms.map(|ttl| created_ms + ttl),
        rate_limit_rps: req.rate_limit_rps,
    };
    let created = ring_change(&state, routes::ring::TOKENS, |url| {
        state.client.post(url).json(&record)
    })
    .await;
    audit(&principal, "token.create", &id, &created);
    created?;
    Ok((
        StatusCode::CREATED,
        Json(NewToken {
            id,
            token,
            buckets: req.buckets,
            permissions,
            expires: record.expires_ms.map(rfc3339_from_ms),
            rate_limit_rps: record.rate_limit_rps,
        }),
    )
        .into_response())
}

/// `GET /v1/admin/tokens` (admin).
#[utoipa::path(get, path = "/v1/admin/tokens", tag = "admin",
    responses(
        (status = 200, description = "Every token, without secrets", body = TokenList),
        (status = 403, description = "The token lacks cluster-wide `admin`", body = ErrorBody)))]
pub async fn list_tokens(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<TokenList>, ApiError> {
    principal.require(Permission::Admin, None)?;
    let s = state.cache.current()?;
    Ok(Json(TokenList {
        tokens: s
            .tokens
            .iter()
            .map(|t| TokenInfo {
                id: t.id.clone(),
                buckets: t.buckets.clone(),
                permissions: t.permissions.clone(),
                created: rfc3339_from_ms(t.created_ms),
                expires: t.expires_ms.map(rfc3339_from_ms),
                rate_limit_rps: t.rate_limit_rps,
            })
            .collect(),
    }))
}

/// `DELETE /v1/admin/tokens/{id}` (admin).
#[utoipa::path(delete, path = "/v1/admin/tokens/{id}", tag = "admin",
    params(("id" = String, Path, description = "The token's public id (1-64 ASCII letters and digits; any other is no token)")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "A path that is not UTF-8 once decoded (`invalid_request`)", body = ErrorBody),
        (status = 403, description = "The token lacks cluster-wide `admin`", body = ErrorBody),
        (status = 404, description = "No such token (`token_not_found`)", body = ErrorBody),
        (status = 503, description = "The ring service did not answer (`ring_unavailable`)", body = ErrorBody)))]
pub async fn delete_token(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if let Err(e) = principal.require(Permission::Admin, None) {
        audit_line(&principal, "token.delete", &id, "refused", e.code.as_str());
        return Err(e);
    }
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(ApiError::new(ErrorCode::TokenNotFound, "no such token"));
    }
    let deleted = ring_change(&state, &routes::ring::token(&id), |url| state.client.delete(url)).await;
    audit(&principal, "token.delete", &id, &deleted);
    deleted?;
    Ok(StatusCode::NO_CONTENT)
}
