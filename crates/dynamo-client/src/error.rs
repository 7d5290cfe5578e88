//! [`ClientError`]: what can go wrong when talking to a coordinator.

use dynamo_core::ErrorCode;

/// An error from a [`crate::Client`] call.
///
/// `Display` is one phrase without the cause chain; walk [`std::error::Error::source`] for
/// the transport's detail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered with an error (a JSON error body, or a bare HTTP error status
    /// mapped to the closest code).
    #[error("{code}: {message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The stable error code. An answer without a code this SDK knows (a proxy's
        /// error page, a newer server) gets the closest code for its status, and the raw
        /// code, if any, leads the message.
        code: ErrorCode,
        /// The server's human message.
        message: String,
        /// The server's request id, for correlating with its logs.
        request_id: Option<String>,
    },
    /// The SDK refused the call before sending it: the input can never succeed (an
    /// invalid bucket name or key, a context that cannot be a header value, a CRDT
    /// remove from a key its read found without a value).
    #[error("{message}")]
    InvalidInput {
        /// The code the server would have answered.
        code: ErrorCode,
        /// What is wrong with the input.
        message: String,
    },
    /// The request did not complete within its timeout. It may or may not have been
    /// applied, so it is never retried automatically.
    #[error("request timed out")]
    Timeout {
        /// The transport's error.
        #[source]
        source: reqwest::Error,
    },
    /// The request failed below HTTP: connection refused or reset, DNS, I/O.
    #[error("request failed")]
    Transport {
        /// The transport's error.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered, but not with what the API promises (a missing header, a body
    /// that does not decode, an oversized body).
    #[error("unexpected response (HTTP {status}): {message}")]
    Decode {
        /// The HTTP status of the answer.
        status: u16,
        /// What did not match.
        message: String,
    },
    /// A stored value is not what the caller asked to read it as: a sibling that is not
    /// JSON of the requested type ([`crate::Client::get_json`],
    /// [`crate::Client::update_merge`], [`crate::resolve::union`]). Never silently
    /// skipped: a sibling dropped from a merge would be lost by the write that follows.
    #[error("sibling {sibling} ({content_type}) does not decode as the requested type")]
    ValueDecode {
        /// The sibling's index in the read's siblings (0 for the first).
        sibling: usize,
        /// The sibling's media type, as its writer sent it.
        content_type: String,
        /// What the JSON decoder refused.
        #[source]
        source: serde_json::Error,
    },
    /// The client was configured wrongly (an endpoint that is not an `http(s)` URL, a
    /// zero timeout).
    #[error("invalid client configuration: {message}")]
    Config {
        /// What is wrong.
        message: String,
    },
}

impl ClientError {
    /// Returns the error code: the server's for [`ClientError::Api`], the one the server
    /// would have answered for [`ClientError::InvalidInput`], and `None` when no server
    /// verdict exists (transport, decoding, configuration).
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { code, .. } | ClientError::InvalidInput { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Returns the HTTP status the server answered, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } | ClientError::Decode { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Returns the server's request id, when it sent one.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            ClientError::Api { request_id, .. } => request_id.as_deref(),
            _ => None,
        }
    }

    /// Returns true when the same request may succeed if retried unchanged: a transient
    /// code ([`ErrorCode::is_transient`]) or a connection that was refused before the
    /// request was sent. The client has already spent its retry budget on these.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Api { code, .. } => code.is_transient(),
            ClientError::Transport { source } => source.is_connect(),
            _ => false,
        }
    }

    /// Returns true for `404 not_found`: no live value under the key.
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(ErrorCode::NotFound)
    }

    /// Maps a transport error, keeping timeouts apart (they are never retried).
    pub(crate) fn from_transport(source: reqwest::Error) -> ClientError {
        if source.is_timeout() {
            ClientError::Timeout { source }
        } else {
            ClientError::Transport { source }
        }
    }
}

/// The closest code for an HTTP error status that came without a code this SDK knows.
///
/// A bare 404 is `route_not_found`, never `not_found`: only the server's own JSON body
/// may say that a key has no value. Gateway errors (502, 503, 504) map to `overloaded`,
/// so they are retried like the coordinator's own 503s.
pub(crate) fn code_for_status(status: u16) -> ErrorCode {
    match status {
        401 => ErrorCode::Unauthorized,
        403 => ErrorCode::Forbidden,
        404 => ErrorCode::RouteNotFound,
        405 => ErrorCode::MethodNotAllowed,
        413 => ErrorCode::BodyTooLarge,
        414 => ErrorCode::UriTooLong,
        415 => ErrorCode::UnsupportedMediaType,
        429 => ErrorCode::RateLimited,
        502..=504 => ErrorCode::Overloaded,
        500..=599 => ErrorCode::Internal,
        _ => ErrorCode::InvalidRequest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_statuses_map_to_codes_that_keep_the_retry_split() {
        assert_eq!(code_for_status(404), ErrorCode::RouteNotFound);
        assert!(code_for_status(503).is_transient());
        assert!(code_for_status(502).is_transient());
        assert!(code_for_status(429).is_transient());
        assert!(!code_for_status(500).is_transient());
        assert!(!code_for_status(400).is_transient());
        assert!(!code_for_status(409).is_transient());
    }

    #[test]
    fn accessors_expose_the_server_verdict() {
        let e = ClientError::Api {
            status: 503,
            code: ErrorCode::QuorumUnavailable,
            message: "1 of 2".into(),
            request_id: Some("r-1".into()),
        };
        assert_eq!(e.code(), Some(ErrorCode::QuorumUnavailable));
        assert_eq!(e.status(), Some(503));
        assert_eq!(e.request_id(), Some("r-1"));
        assert!(e.is_transient());
        assert_eq!(e.to_string(), "quorum_unavailable: 1 of 2");
    }
}
