//! Extractors whose rejections answer with the common JSON error body, so a malformed
//! request never gets axum's plain-text default.

use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use dynamo_core::ErrorCode;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ApiError;

/// Returns whether reading the body failed because the client did not send it within
/// `--body-read-timeout-ms` (the body timeout layer's error, somewhere in the chain).
fn body_timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

fn timeout_error() -> ApiError {
    ApiError::new(
        ErrorCode::RequestTimeout,
        "the request body did not arrive within the server's body read timeout",
    )
}

fn body_error(status: StatusCode, text: String) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            ErrorCode::BodyTooLarge,
            "request body is larger than this endpoint accepts",
        )
    } else if status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
        ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "expected Content-Type: application/json",
        )
    } else {
        ApiError::new(ErrorCode::InvalidJson, text)
    }
}

/// JSON body extractor and responder; rejections become `invalid_json`, `body_too_large`
/// or `unsupported_media_type`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(e @ JsonRejection::JsonDataError(_)) | Err(e @ JsonRejection::JsonSyntaxError(_)) => {
                Err(ApiError::new(ErrorCode::InvalidJson, e.body_text()))
            }
            Err(e) if body_timed_out(&e) => Err(timeout_error()),
            Err(e) => Err(body_error(e.status(), e.body_text())),
        }
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Raw body extractor; a body over the limit becomes `body_too_large`.
#[derive(Debug, Clone)]
pub struct Body(pub bytes::Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        bytes::Bytes::from_request(req, state)
            .await
            .map(Body)
            .map_err(|e: BytesRejection| {
                if body_timed_out(&e) {
                    timeout_error()
                } else {
                    body_error(e.status(), e.body_text())
                }
            })
    }
}

/// Reads a whole body of at most `limit` bytes, refusing as [`Body`] does
/// (`body_too_large`, `request_timeout`), for middleware that must see the body before
/// the handler does.
///
/// # Errors
/// [`ApiError`] `body_too_large`, `request_timeout` or `invalid_request`.
pub async fn read_body(body: axum::body::Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(c) = cause {
            if c.is::<http_body_util::LengthLimitError>() {
                return body_error(StatusCode::PAYLOAD_TOO_LARGE, String::new());
            }
            cause = c.source();
        }
        if body_timed_out(&e) {
            timeout_error()
        } else {
            ApiError::new(ErrorCode::InvalidRequest, "the request body could not be read")
        }
    })
}

/// Path extractor; a malformed segment becomes `invalid_request`.
#[derive(Debug, Clone)]
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| Path(v))
            .map_err(|e: PathRejection| ApiError::new(ErrorCode::InvalidRequest, e.body_text()))
    }
}

/// Query-string extractor; a malformed query becomes `invalid_parameter`.
#[derive(Debug, Clone)]
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| Query(v))
            .map_err(|e: QueryRejection| ApiError::new(ErrorCode::InvalidParameter, e.body_text()))
    }
}
