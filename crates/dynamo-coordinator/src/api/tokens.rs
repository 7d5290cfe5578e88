//! `/v1/admin/tokens`: creating, listing and revoking API tokens.

use super::*;

/// `POST /v1/admin/tokens` (admin).
#[utoipa::path(post, path = "/v1/admin/tokens", tag = "admin", request_body = TokenRequest,
    responses((status = 201, description = "Created; the secret is in the answer, once", body = NewToken)))]
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
    let created = ring_change(
        &state,
        state
            .client
            .post(routes::url(state.cache.ring_url(), routes::ring::TOKENS))
            .json(&record),
    )
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
    responses((status = 200, description = "Every token, without secrets", body = TokenList)))]
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
#[utoipa::path(delete, path = "/v1/admin/tokens/{id}", tag = "admin", params(("id" = String, Path)),
    responses((status = 204, description = "Deleted"), (status = 404, description = "No such token", body = ErrorBody)))]
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
    let deleted = ring_change(
        &state,
        state
            .client
            .delete(routes::url(state.cache.ring_url(), &routes::ring::token(&id))),
    )
    .await;
    audit(&principal, "token.delete", &id, &deleted);
    deleted?;
    Ok(StatusCode::NO_CONTENT)
}
