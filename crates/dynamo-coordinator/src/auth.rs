//! Authentication and authorisation of the public API.
//!
//! Every `/v1` request carries `Authorization: Bearer <token>`. The root token (from the
//! configuration) may do anything. Scoped tokens are created through the admin API as
//! `dk_<id>_<secret>`; the cluster stores only the SHA-256 of the whole token, looked up
//! by id and compared in constant time. Tokens are 256-bit random secrets, so a plain hash
//! is enough (no password-stretching needed). Missing or unknown token: `401
//! unauthorized`; a token without the permission or the bucket: `403 forbidden`.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dynamo_core::wire::cluster::{Permission, TokenRecord};
use dynamo_core::{BucketName, ErrorCode};
use dynamo_server::ApiError;
use dynamo_server::clock::now_ms;
use dynamo_server::worker::{Next as WorkerNext, Worker};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::config::Secret;
use crate::rate::RateLimits;
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
pub struct AuthState {
    /// SHA-256 of each root token accepted (two while the root token rotates), replaced
    /// when `--root-token-file` changes ([`RootTokenReload`]).
    root_sha256: RwLock<Vec<String>>,
    /// The cluster cache holding the scoped tokens.
    pub cache: ClusterCache,
    /// Every caller's rate limit.
    pub rates: RateLimits,
    /// How long scoped tokens are trusted without an answer from the ring service.
    max_ring_silence: Duration,
}

impl AuthState {
    /// An auth state accepting `root` tokens and the cache's scoped tokens, limited by
    /// `rates`; scoped tokens only while the ring service answered within
    /// `max_ring_silence`.
    pub fn new(
        root: &[Secret],
        cache: ClusterCache,
        rates: RateLimits,
        max_ring_silence: Duration,
    ) -> AuthState {
        AuthState {
            root_sha256: RwLock::new(root.iter().map(|t| token_sha256(&t.0)).collect()),
            cache,
            rates,
            max_ring_silence,
        }
    }

    /// Replaces the root tokens; returns whether they changed.
    pub fn set_root(&self, root: &[Secret]) -> bool {
        let new: Vec<String> = root.iter().map(|t| token_sha256(&t.0)).collect();
        let mut current = self.root_sha256.write().unwrap_or_else(|p| p.into_inner());
        let changed = *current != new;
        *current = new;
        changed
    }

    fn is_root(&self, sha: &str) -> bool {
        let root = self.root_sha256.read().unwrap_or_else(|p| p.into_inner());
        // Every candidate is compared, so the time taken does not say which matched.
        root.iter().fold(false, |hit, r| {
            constant_time_eq(sha.as_bytes(), r.as_bytes()) | hit
        })
    }
}

/// Resolves the bearer token into a [`Principal`] request extension, or answers 401; a
/// caller over its rate limit gets 429.
pub async fn authenticate(State(auth): State<Arc<AuthState>>, mut req: Request, next: Next) -> Response {
    match principal(&auth, &req).and_then(|p| auth.rates.check(&p).map(|()| p)) {
        Ok(p) => {
            req.extensions_mut().insert(p);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// The `root-token-reload` worker: reads `--root-token-file` every interval and, when it
/// holds other valid tokens, accepts those from then on (rotation without a restart). A
/// file that cannot be read or holds no valid token changes nothing (the error is logged).
pub struct RootTokenReload {
    /// The file.
    pub path: PathBuf,
    /// Where the tokens are replaced.
    pub auth: Arc<AuthState>,
    /// Pause between reads.
    pub every: Duration,
}

/// Why a reload of the root token file was not taken.
#[derive(Debug, thiserror::Error)]
#[error("the root token file {path} was not reloaded: {reason}")]
pub struct ReloadError {
    path: String,
    reason: String,
}

impl Worker for RootTokenReload {
    type Error = ReloadError;

    fn name(&self) -> &'static str {
        "root-token-reload"
    }

    async fn work(&mut self, _stop: &CancellationToken) -> Result<WorkerNext, ReloadError> {
        let err = |reason: String| ReloadError {
            path: self.path.display().to_string(),
            reason,
        };
        let path = self.path.clone();
        let text = tokio::task::spawn_blocking(move || std::fs::read_to_string(path))
            .await
            .map_err(|e| err(e.to_string()))?
            .map_err(|e| err(e.to_string()))?;
        let tokens = crate::config::parse_root_token_file(&text).map_err(err)?;
        if self.auth.set_root(&tokens) {
            tracing::info!(target: "audit", tokens = tokens.len(), "root token file changed: the tokens it holds are now accepted");
        }
        Ok(WorkerNext::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(self.every).await;
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
    if auth.is_root(&sha) {
        return Ok(Principal::Root);
    }
    let id = token
        .strip_prefix("dk_")
        .and_then(|rest| rest.split_once('_'))
        .map(|(id, _)| id)
        .ok_or_else(|| unauthorized("unknown token"))?;
    // Fail closed: a token revoked while this coordinator cannot hear the ring service
    // must not live on in its cache, so past the bound no scoped token is confirmed.
    if let Some(silence) = auth.cache.silence()
        && silence > auth.max_ring_silence
    {
        return Err(ApiError::new(
            ErrorCode::RingUnavailable,
            format!(
                "the ring service has not answered for {} s, so tokens cannot be confirmed (the root token still works)",
                silence.as_secs()
            ),
        )
        .retry_after(1));
    }
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
            rate_limit_rps: None,
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
            rate_limit_rps: None,
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
