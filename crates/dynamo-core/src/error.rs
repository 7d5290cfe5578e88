//! The one code space for errors that cross a process boundary.
//!
//! Every error a service can answer with maps to exactly one [`ErrorCode`]: a stable
//! snake_case string (API: never renamed, never reused) and its HTTP status. Services
//! build their JSON error bodies from these and nothing else, so the mapping to a status
//! lives here, once.

use serde::{Deserialize, Serialize};

/// Defines [`ErrorCode`] with its wire string and HTTP status in one table, so the three
/// can never drift apart.
macro_rules! error_codes {
    ($( $(#[$doc:meta])* $variant:ident = ($code:literal, $status:literal), )+) => {
        /// A stable, machine-readable error code with its HTTP status.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(rename_all = "snake_case")]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )+
        }

        impl ErrorCode {
            /// Every code, in declaration order (for docs and uniqueness tests).
            pub const ALL: &'static [ErrorCode] = &[ $( ErrorCode::$variant, )+ ];

            /// Returns the stable wire string, e.g. `"value_too_large"`.
            pub const fn as_str(self) -> &'static str {
                match self { $( ErrorCode::$variant => $code, )+ }
            }

            /// Returns the HTTP status code this error is answered with.
            pub const fn http_status(self) -> u16 {
                match self { $( ErrorCode::$variant => $status, )+ }
            }

            /// Parses a wire string back into a code (used by clients).
            pub fn from_wire(s: &str) -> Option<ErrorCode> {
                match s { $( $code => Some(ErrorCode::$variant), )+ _ => None }
            }
        }
    };
}

error_codes! {
    /// The request is malformed in a way no more specific code describes.
    InvalidRequest = ("invalid_request", 400),
    /// The body is not the JSON the endpoint expects.
    InvalidJson = ("invalid_json", 400),
    /// The bucket name is not 1–63 bytes of `[a-z0-9._-]`.
    InvalidBucket = ("invalid_bucket", 400),
    /// The key is empty, not UTF-8, or longer than 1024 bytes.
    InvalidKey = ("invalid_key", 400),
    /// The `X-Dynamo-Context` token is malformed, oversized or of an unknown version.
    InvalidContext = ("invalid_context", 400),
    /// `r`, `w` or `n` is out of range (1 ≤ r, w ≤ n).
    InvalidQuorum = ("invalid_quorum", 400),
    /// A query parameter other than the quorum ones is malformed.
    InvalidParameter = ("invalid_parameter", 400),
    /// A node id is not 1–63 bytes of `[a-z0-9._-]`.
    InvalidNodeId = ("invalid_node_id", 400),
    /// No bearer token, or one the cluster does not know; on internal routes, no valid
    /// signature.
    Unauthorized = ("unauthorized", 401),
    /// The token is valid but lacks the permission the call needs; on internal routes, a
    /// member's signature on a control route.
    Forbidden = ("forbidden", 403),
    /// No live value under the key (it may carry a context if a tombstone was found).
    NotFound = ("not_found", 404),
    /// The path matches no route.
    RouteNotFound = ("route_not_found", 404),
    /// The node named in the path is not a member of the cluster.
    NodeNotFound = ("node_not_found", 404),
    /// The token named in the path does not exist.
    TokenNotFound = ("token_not_found", 404),
    /// The route exists but not with this method.
    MethodNotAllowed = ("method_not_allowed", 405),
    /// The request body did not arrive within the server's body read timeout (400, not
    /// 408: the API's status set, and a client that trickles its body sent a bad request).
    RequestTimeout = ("request_timeout", 400),
    /// The write would leave more siblings than the bucket's `max_siblings`: read, resolve, write with the context.
    TooManySiblings = ("too_many_siblings", 409),
    /// The bucket's `n` cannot change once it holds data.
    BucketNImmutable = ("bucket_n_immutable", 409),
    /// A bucket that holds data cannot become a CRDT bucket, stop being one, or change its
    /// `crdt_type`: its stored values would not be states of the new type.
    BucketTypeImmutable = ("bucket_type_immutable", 409),
    /// The node is already a member (join) or already leaving (decommission).
    MembershipConflict = ("membership_conflict", 409),
    /// Internal: a heartbeat came from another volume than the one the member is bound
    /// to (its disk was lost or swapped). The node is kept `down` until a replace in
    /// place refills the new volume.
    VolumeMismatch = ("volume_mismatch", 409),
    /// The operation does not fit the bucket's conflict mode (e.g. a CRDT call on a plain bucket).
    WrongBucketType = ("wrong_bucket_type", 409),
    /// A CRDT remove's context names writes that none of the replicas the coordinator
    /// reached has seen (the client read from replicas it cannot reach now): read again
    /// and retry with the new context.
    ContextNotSeen = ("context_not_seen", 409),
    /// The change feed's cursor is older than the feed's retention: changes after it
    /// were dropped. Start again without a cursor (and list the bucket to catch up).
    CursorExpired = ("cursor_expired", 410),
    /// The write's `If-Match` or `If-None-Match: *` does not hold for the version set read
    /// from R replicas; nothing was changed.
    PreconditionFailed = ("precondition_failed", 412),
    /// The value is larger than 1 MiB.
    ValueTooLarge = ("value_too_large", 413),
    /// The request body is larger than the endpoint accepts.
    BodyTooLarge = ("body_too_large", 413),
    /// The request URI is longer than the server accepts.
    UriTooLong = ("uri_too_long", 414),
    /// The request's `Content-Type` is not one the endpoint accepts.
    UnsupportedMediaType = ("unsupported_media_type", 415),
    /// The bucket properties are well-formed JSON but not valid properties.
    InvalidBucketProperties = ("invalid_bucket_properties", 422),
    /// The CRDT operation does not apply to the bucket's CRDT type, or is malformed.
    InvalidCrdtOperation = ("invalid_crdt_operation", 422),
    /// The `Idempotency-Key` was used within its window for a different request (another
    /// method, path, body, content type or context).
    IdempotencyKeyReused = ("idempotency_key_reused", 422),
    /// The caller sent too many requests; retry after a pause.
    RateLimited = ("rate_limited", 429),
    /// Fewer than R (or W) replicas answered in time.
    QuorumUnavailable = ("quorum_unavailable", 503),
    /// No ring has ever been seen, so no request can be routed.
    RingUnavailable = ("ring_unavailable", 503),
    /// The service is at its concurrency limit; retry.
    Overloaded = ("overloaded", 503),
    /// The service is shutting down and takes no new work.
    ShuttingDown = ("shutting_down", 503),
    /// An internal operation reached its node after its deadline and was not applied.
    DeadlineExceeded = ("deadline_exceeded", 503),
    /// Internal: the node a partition copy was to come from did not answer.
    SourceUnavailable = ("source_unavailable", 503),
    /// Internal: the operation was planned with an older ring, and under the node's newer
    /// ring it no longer holds the partition; the caller refreshes its ring and re-plans.
    StaleRing = ("stale_ring", 503),
    /// Internal: the node has not yet seen the ring epoch the request needs (a catch-up
    /// copy waits until its source knows the new ring); retry shortly.
    RingBehind = ("ring_behind", 503),
    /// Internal: the node's volume is not (yet) the one the ring binds to its member id,
    /// or is being refilled, so it holds none or only part of the member's data and takes
    /// no part in reads, writes, listings or the feed.
    VolumeUnconfirmed = ("volume_unconfirmed", 503),
    /// Storage failed; the message says what, never internals.
    StorageError = ("storage_error", 500),
    /// An unexpected internal failure.
    Internal = ("internal", 500),
}

impl ErrorCode {
    /// Returns true where a client may retry the same request unchanged (kube-rs's
    /// transient/permanent split): overload, quorum and ring trouble, rate limits.
    pub const fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorCode::RateLimited
                | ErrorCode::QuorumUnavailable
                | ErrorCode::RingUnavailable
                | ErrorCode::Overloaded
                | ErrorCode::ShuttingDown
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The JSON error body every service answers with:
/// `{"error": {"code": "...", "message": "...", "request_id": "..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// The error itself.
    pub error: ErrorDetail,
}

/// The inside of an [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// The stable machine-readable code.
    pub code: ErrorCode,
    /// A human message: what went wrong and, where useful, the limit that was hit.
    pub message: String,
    /// The request id of the failed request, for correlating with server logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl ErrorBody {
    /// Builds a body from a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code,
                message: message.into(),
                request_id: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_snake_case_and_round_trip() {
        let mut seen = HashSet::new();
        for &code in ErrorCode::ALL {
            let s = code.as_str();
            assert!(seen.insert(s), "duplicate code {s}");
            assert!(
                s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{s} is not snake_case"
            );
            assert_eq!(ErrorCode::from_wire(s), Some(code));
            let json = serde_json::to_string(&code).expect("serialize");
            assert_eq!(json, format!("\"{s}\""));
        }
    }

    #[test]
    fn statuses_are_the_api_set() {
        let allowed = [
            400, 401, 403, 404, 405, 409, 410, 412, 413, 414, 415, 422, 429, 500, 503,
        ];
        for &code in ErrorCode::ALL {
            assert!(allowed.contains(&code.http_status()), "{code}");
        }
        assert_eq!(ErrorCode::ValueTooLarge.http_status(), 413);
        assert_eq!(ErrorCode::QuorumUnavailable.http_status(), 503);
        assert_eq!(ErrorCode::Unauthorized.http_status(), 401);
    }

    // docs/api.md is what app developers read: every code must be listed with its status.
    #[test]
    fn every_code_is_documented_in_docs_api_md() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/api.md");
        let doc = std::fs::read_to_string(path).expect("docs/api.md exists");
        for &code in ErrorCode::ALL {
            let row = format!("| `{}` | {} |", code.as_str(), code.http_status());
            assert!(doc.contains(&row), "docs/api.md lacks the row {row}");
        }
    }

    #[test]
    fn error_body_golden_json() {
        let body = ErrorBody::new(
            ErrorCode::ValueTooLarge,
            "value is 1048577 bytes; the limit is 1048576",
        );
        assert_eq!(
            serde_json::to_string(&body).expect("serialize"),
            r#"{"error":{"code":"value_too_large","message":"value is 1048577 bytes; the limit is 1048576"}}"#
        );
    }
}
