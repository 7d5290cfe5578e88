//! Scoped tokens: `POST`, `GET /v1/admin/tokens` and `DELETE /v1/admin/tokens/{id}`
//! (all need `admin`).
//!
//! A token's secret is shown once, when it is created; the cluster keeps only its hash,
//! so a listing shows ids and scopes, never secrets.

use dynamo_core::wire::public::TokenList;
pub use dynamo_core::wire::public::{NewToken, TokenInfo, TokenRequest};
use reqwest::Method;

use crate::client::{Call, Client, segment};
use crate::error::ClientError;

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
