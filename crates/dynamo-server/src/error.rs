//! The one mapping from an error code to an HTTP response.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dynamo_core::{ErrorBody, ErrorCode};

tokio::task_local! {
    /// The request id of the request being served, set by
    /// [`crate::serve::request_id_scope`] so error bodies can carry it.
    pub(crate) static REQUEST_ID: String;
}

/// An error answered to a caller: a stable code (which fixes the status) and a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// The machine-readable code.
    pub code: ErrorCode,
    /// The human message.
    pub message: String,
    /// Seconds after which a retry may succeed, sent as `Retry-After` (overload and rate
    /// limits).
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    /// Builds an error from a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            retry_after_s: None,
        }
    }

    /// Adds a `Retry-After` of `seconds` (at least 1) to the answer.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_s = Some(seconds.max(1));
        self
    }

    /// Returns the HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        // Logged at debug only: a 5xx is logged once, with its cause chain, where it is
        // handled (the conversion into `ApiError`), not again here.
        tracing::debug!(code = %self.code, message = %self.message, "answering with an error");
        let mut body = ErrorBody::new(self.code, self.message);
        body.error.request_id = REQUEST_ID.try_with(Clone::clone).ok();
        let bytes = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
        let mut resp = (status, bytes).into_response();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        // The API's contract: every 429 and 503 says when to retry.
        let retry_after = self
            .retry_after_s
            .or_else(|| matches!(status.as_u16(), 429 | 503).then_some(1));
        if let Some(s) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

/// Converts any error type that knows its code (the `code()` convention of the core's
/// error types) into an [`ApiError`] with its `Display` as the message.
#[macro_export]
macro_rules! impl_api_error_from {
    ($($t:ty),+ $(,)?) => {
        $(impl From<$t> for $crate::ApiError {
            fn from(e: $t) -> Self {
                $crate::ApiError::new(e.code(), e.to_string())
            }
        })+
    };
}

impl_api_error_from!(
    dynamo_core::ids::NameError,
    dynamo_core::context::ContextError,
    dynamo_core::version::VersionError,
    dynamo_core::wire::InvalidProps,
    dynamo_core::ring::RingError,
);

/// The fallback for unknown routes: `404 route_not_found` as JSON.
pub async fn route_not_found() -> ApiError {
    ApiError::new(ErrorCode::RouteNotFound, "no such route")
}

/// The fallback for known routes called with the wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(ErrorCode::MethodNotAllowed, "method not allowed on this route")
}
