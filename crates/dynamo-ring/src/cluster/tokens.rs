//! The hashed API tokens the coordinators check.

use super::*;

impl Cluster {
    /// Stores a hashed token.
    ///
    /// # Errors
    /// `invalid_request` (malformed, or the id or hash already exists), `rate_limited`
    /// (over [`MAX_TOKENS`]).
    pub fn add_token(&mut self, t: TokenRecord) -> Result<(), ClusterError> {
        validate_token(&t)?;
        if self.state.tokens.iter().any(|x| x.id == t.id) {
            return Err(invalid(format!("token {} already exists", t.id)));
        }
        if self.state.tokens.iter().any(|x| x.sha256 == t.sha256) {
            return Err(invalid("a token with this secret already exists"));
        }
        if self.state.tokens.len() >= MAX_TOKENS {
            return Err(ClusterError::Full {
                what: "tokens",
                max: MAX_TOKENS,
            });
        }
        self.state.tokens.push(t);
        Ok(())
    }

    /// Deletes a token.
    ///
    /// # Errors
    /// `token_not_found`.
    pub fn remove_token(&mut self, id: &str) -> Result<(), ClusterError> {
        let before = self.state.tokens.len();
        self.state.tokens.retain(|t| t.id != id);
        if self.state.tokens.len() == before {
            return Err(ClusterError::TokenNotFound);
        }
        Ok(())
    }
}
