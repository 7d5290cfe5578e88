//! Scoped tokens: `POST`, `GET /v1/admin/tokens` and `DELETE /v1/admin/tokens/{id}`
//! (all need `admin`).
//!
//! A token's secret is shown once, when it is created; the cluster keeps only its hash,
//! so a listing shows ids and scopes, never secrets.

use std::fmt;

use dynamo_core::wire::cluster::{AllBuckets, BucketScope, Permission};
use reqwest::Method;
use serde::{Deserialize, Deserializer, Serialize};

use crate::client::{Call, Client, segment};
use crate::error::ClientError;

/// The body of `POST /v1/admin/tokens`: which buckets and what permissions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRequest {
    /// `"*"` for every bucket, or a list of names.
    pub buckets: BucketScope,
    /// Any of `read`, `write`, `admin`.
    pub permissions: Vec<Permission>,
}

impl TokenRequest {
    /// A request for a token covering every bucket.
    pub fn all_buckets(permissions: Vec<Permission>) -> TokenRequest {
        TokenRequest {
            buckets: BucketScope::All(AllBuckets::Star),
            permissions,
        }
    }
}

/// A token just created: its secret is here and nowhere else (`Debug` redacts it).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewToken {
    /// The public id (safe to show and log; used to delete the token).
    pub id: String,
    /// The secret to send as `Authorization: Bearer <token>`. Shown once.
    pub token: String,
    /// The buckets it covers.
    pub buckets: BucketScope,
    /// What it may do there.
    pub permissions: Vec<Permission>,
}

impl fmt::Debug for NewToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewToken")
            .field("id", &self.id)
            .field("token", &"<redacted>")
            .field("buckets", &self.buckets)
            .field("permissions", &self.permissions)
            .finish()
    }
}

/// A token as the listing shows it: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// The public id.
    pub id: String,
    /// The buckets it covers.
    pub buckets: BucketScope,
    /// What it may do there.
    pub permissions: Vec<Permission>,
    /// When it was created: RFC 3339 (a number of milliseconds is shown as its digits).
    #[serde(deserialize_with = "text_or_number")]
    pub created: String,
}

#[derive(Deserialize)]
struct TokenList {
    tokens: Vec<TokenInfo>,
}

// `created` is documented as a time; accepting a bare number as well keeps the listing
// readable whichever form the coordinator settles on.
fn text_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum TextOrNumber {
        Text(String),
        Number(serde_json::Number),
    }
    Ok(match TextOrNumber::deserialize(d)? {
        TextOrNumber::Text(s) => s,
        TextOrNumber::Number(n) => n.to_string(),
    })
}

impl Client {
    /// Creates a scoped token and returns it with its secret, which is never shown again.
    ///
    /// # Errors
    /// [`ClientError::Api`] for an error answer (`forbidden` without `admin`), transport
    /// and decoding errors.
    pub async fn create_token(&self, request: &TokenRequest) -> Result<NewToken, ClientError> {
        let call = Call::new(Method::POST, "/v1/admin/tokens".into())
            .accept_json()
            .json(request)?;
        self.send(call).await?.json()
    }

    /// Lists the cluster's tokens (ids and scopes, no secrets).
    ///
    /// # Errors
    /// As [`Client::create_token`].
    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>, ClientError> {
        let reply = self
            .send(Call::new(Method::GET, "/v1/admin/tokens".into()).accept_json())
            .await?;
        Ok(reply.json::<TokenList>()?.tokens)
    }

    /// Deletes a token by id; requests carrying it are refused from then on.
    ///
    /// # Errors
    /// As [`Client::create_token`]; `token_not_found` for an unknown id.
    pub async fn delete_token(&self, id: &str) -> Result<(), ClientError> {
        let path = format!("/v1/admin/tokens/{}", segment(id));
        self.send(Call::new(Method::DELETE, path).accept_json()).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_json_matches_the_admin_api() {
        let req = TokenRequest::all_buckets(vec![Permission::Read, Permission::Write]);
        assert_eq!(
            serde_json::to_string(&req).expect("encodes"),
            r#"{"buckets":"*","permissions":["read","write"]}"#
        );
        let listed: TokenList = serde_json::from_str(
            r#"{"tokens":[{"id":"t1","buckets":["b1"],"permissions":["admin"],"created":"2025-01-01T00:00:00.000Z"},
                          {"id":"t2","buckets":"*","permissions":[],"created":1700000000000}]}"#,
        )
        .expect("decodes");
        assert_eq!(listed.tokens[0].created, "2025-01-01T00:00:00.000Z");
        assert_eq!(listed.tokens[1].created, "1700000000000");
        assert!(matches!(listed.tokens[1].buckets, BucketScope::All(_)));
    }

    #[test]
    fn new_token_debug_hides_the_secret() {
        let t = NewToken {
            id: "t1".into(),
            token: "s3cret".into(),
            buckets: BucketScope::Only(vec![]),
            permissions: vec![],
        };
        assert!(!format!("{t:?}").contains("s3cret"));
    }
}
