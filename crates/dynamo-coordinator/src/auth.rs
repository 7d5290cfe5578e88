//! Authentication and authorisation of the public API.
//!
//! Every `/v1` request carries `Authorization: Bearer <token>`. The root token (from the
//! configuration) may do anything. Scoped tokens are created through the admin API as
//! `dk_<id>_<secret>`; the cluster stores only the SHA-256 of the whole token, looked up
//! by id and compared in constant time. Tokens are 256-bit random secrets, so a plain hash
//! is enough (no password-stretching needed). Missing or unknown token: `401
//! unauthorized`; a token without the permission or the bucket: `403 forbidden`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dynamo_core::wire::cluster::{Permission, TokenRecord};
use dynamo_core::{BucketName, ErrorCode};
use dynamo_server::ApiError;
use sha2::{Digest, Sha256};

use crate::state::ClusterCache;

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Principal {
    /// The root token.
    Root,
    /// A scoped token.
    Token(TokenRecord),
}

impl Principal {
    /// A stable name for the caller, distinct for every token: what scopes its
    /// idempotency keys (one caller cannot replay another's writes by guessing a key).
    pub fn scope(&self) -> &str {
        match self {
            Principal::Root => "",
            Principal::Token(t) => &t.id,
        }
    }

    /// The caller as the audit log names it: `root`, or the token's public id.
    pub fn name(&self) -> &str {
        match self {
            Principal::Root => "root",
            Principal::Token(t) => &t.id,
        }
    }

    /// Checks that the caller may use `permission` on `bucket` (or cluster-wide when
    /// `bucket` is `None`, which scoped tokens may only do for `read`).
    ///
    /// # Errors
    /// `403 forbidden` naming what is missing.
    pub fn require(&self, permission: Permission, bucket: Option<&BucketName>) -> Result<(), ApiError> {
        let Principal::Token(t) = self else { return Ok(()) };
        let has = t.permissions.contains(&permission);
        let covers = match bucket {
            Some(b) => t.buckets.covers(b),
            None => matches!(t.buckets, dynamo_core::wire::cluster::BucketScope::All(_)),
        };
        if has && covers {
            Ok(())
        } else {
            let what = match bucket {
                Some(b) => format!("{permission:?} on bucket {b}"),
                None => format!("cluster-wide {permission:?}"),
            };
            Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("the token lacks {}", what.to_lowercase()),
            ))
        }
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Hex SHA-256 of a token.
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Compares two byte strings in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Makes a new scoped token: `(id, secret token)`.
pub fn new_token() -> (String, String) {
    let id = hex::encode(rand::random::<[u8; 8]>());
    let secret = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let token = format!("dk_{id}_{secret}");
    (id, token)
}

/// What the auth middleware needs.
#[derive(Clone)]
pub struct AuthState {
    /// SHA-256 of the root token.
    pub root_sha256: String,
    /// The cluster cache holding the scoped tokens.
    pub cache: ClusterCache,
}

/// Resolves the bearer token into a [`Principal`] request extension, or answers 401.
pub async fn authenticate(State(auth): State<Arc<AuthState>>, mut req: Request, next: Next) -> Response {
    match principal(&auth, &req) {
        Ok(p) => {
            req.extensions_mut().insert(p);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

fn principal(auth: &AuthState, req: &Request) -> Result<Principal, ApiError> {
    let unauthorized = |m: &str| ApiError::new(ErrorCode::Unauthorized, m);
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .ok_or_else(|| unauthorized("missing bearer token"))?;
    let token = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 512)
        .ok_or_else(|| unauthorized("the Authorization header must be 'Bearer <token>'"))?;
    let sha = token_sha256(token);
    if constant_time_eq(sha.as_bytes(), auth.root_sha256.as_bytes()) {
        return Ok(Principal::Root);
    }
    let id = token
        .strip_prefix("dk_")
        .and_then(|rest| rest.split_once('_'))
        .map(|(id, _)| id)
        .ok_or_else(|| unauthorized("unknown token"))?;
    let state = auth.cache.current()?;
    let t = state
        .tokens
        .iter()
        .find(|t| t.id == id && constant_time_eq(t.sha256.as_bytes(), sha.as_bytes()))
        .ok_or_else(|| unauthorized("unknown token"))?;
    if t.is_expired(now_ms()) {
        return Err(unauthorized("the token has expired"));
    }
    Ok(Principal::Token(t.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamo_core::wire::cluster::{AllBuckets, BucketScope};

    #[test]
    fn scoped_tokens_are_limited_to_their_buckets_and_permissions() {
        let b = BucketName::new("b").expect("bucket");
        let other = BucketName::new("other").expect("bucket");
        let t = Principal::Token(TokenRecord {
            id: "x".into(),
            sha256: String::new(),
            buckets: BucketScope::Only(vec![b.clone()]),
            permissions: vec![Permission::Read],
            created_ms: 0,
            expires_ms: None,
        });
        assert!(t.require(Permission::Read, Some(&b)).is_ok());
        assert_eq!(
            t.require(Permission::Write, Some(&b)).map_err(|e| e.code),
            Err(ErrorCode::Forbidden)
        );
        assert_eq!(
            t.require(Permission::Read, Some(&other)).map_err(|e| e.code),
            Err(ErrorCode::Forbidden)
        );
        assert!(
            t.require(Permission::Read, None).is_err(),
            "bucket-scoped tokens are not cluster-wide"
        );
        let all = Principal::Token(TokenRecord {
            id: "y".into(),
            sha256: String::new(),
            buckets: BucketScope::All(AllBuckets::Star),
            permissions: vec![Permission::Read, Permission::Admin],
            created_ms: 0,
            expires_ms: None,
        });
        assert!(all.require(Permission::Admin, None).is_ok());
        assert!(Principal::Root.require(Permission::Admin, Some(&other)).is_ok());
    }

    #[test]
    fn tokens_have_their_id_and_are_hashed() {
        let (id, token) = new_token();
        assert!(token.starts_with(&format!("dk_{id}_")));
        assert_eq!(token_sha256(&token).len(), 64);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
