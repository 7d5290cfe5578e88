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
/// or `unsupported_media_type`. Every body of the API is a JSON object, and only an
/// object is read: serde would read a struct from an array of its fields' values too
/// (`[null, null]` as a bucket patch), which no client means.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

/// Reads `T` only from a JSON object (see [`Json`]); the object goes to `T` unbuffered.
struct ObjectOnly<T>(T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Object<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Object<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Object(std::marker::PhantomData))
            .map(ObjectOnly)
    }
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<ObjectOnly<T>>::from_request(req, state).await {
            Ok(axum::Json(ObjectOnly(v))) => Ok(Json(v)),
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

/// The page size a paged call asked for (`?limit=`), `default` when it asked none.
///
/// # Errors
/// `400 invalid_parameter` outside `1..=max`.
pub fn page_limit(asked: Option<usize>, default: usize, max: usize) -> Result<usize, ApiError> {
    match asked.unwrap_or(default) {
        limit @ 1.. if limit <= max => Ok(limit),
        limit => Err(ApiError::new(
            ErrorCode::InvalidParameter,
            format!("limit must be 1..={max}, got {limit}"),
        )),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Patch {
        n: Option<u8>,
        r: Option<u8>,
    }

    #[derive(Debug, PartialEq, serde::Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Op {
        Get { key: String },
    }

    fn read<T: DeserializeOwned>(json: &str) -> Result<T, serde_json::Error> {
        serde_json::from_str::<ObjectOnly<T>>(json).map(|o| o.0)
    }

    #[test]
    fn only_a_json_object_is_read_as_a_body() {
        // Goal: serde's struct-from-array reading is closed (a bucket patch of
        // `[null, null]` was accepted), while objects read as before, enums included.
        assert_eq!(
            read::<Patch>(r#"{"n": 3}"#).expect("object"),
            Patch { n: Some(3), r: None }
        );
        assert!(read::<Patch>("[null, null]").is_err());
        assert!(read::<Patch>("[3, 2]").is_err());
        assert!(read::<Patch>("null").is_err());
        assert!(
            read::<Patch>(r#"{"x": 1}"#).is_err(),
            "unknown fields still refused"
        );
        assert_eq!(
            read::<Op>(r#"{"get": {"key": "k"}}"#).expect("enum"),
            Op::Get { key: "k".into() }
        );
        assert!(read::<Op>(r#""get""#).is_err());
    }

    #[test]
    fn a_page_limit_is_the_default_or_within_one_to_max() {
        assert_eq!(page_limit(None, 100, 1000).expect("default"), 100);
        assert_eq!(page_limit(Some(1), 100, 1000).expect("one"), 1);
        assert_eq!(page_limit(Some(1000), 100, 1000).expect("max"), 1000);
        for bad in [0, 1001] {
            let e = page_limit(Some(bad), 100, 1000).expect_err("out of range");
            assert_eq!(e.code, ErrorCode::InvalidParameter);
        }
    }
}
