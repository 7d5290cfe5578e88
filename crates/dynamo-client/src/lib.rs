//! `dynamo-client`: the Rust SDK of the Dynamo store.
//!
//! A typed async client for the coordinator's public REST API (`API.md`, documented in
//! `docs/api.md`), used by the `dynamo` CLI, the benchmarks and the acceptance tests.
//!
//! ```no_run
//! # async fn demo() -> Result<(), dynamo_client::ClientError> {
//! use dynamo_client::{Client, Value};
//!
//! let client = Client::new("http://127.0.0.1:8080", "root-token")?;
//! client.put("users", "alice", "v1", "text/plain", None).await?;
//!
//! // Read, merge whatever siblings concurrent writers left, write back with the
//! // context: one call, retried if yet another concurrent write slips in.
//! let stored = client
//!     .update("users", "alice", |current| match current {
//!         None => Value::text("first"),
//!         // Keep the newest sibling (RFC 3339 times sort as text).
//!         Some(object) => object.resolve_with(|siblings| {
//!             let newest = siblings.iter().max_by(|a, b| a.last_modified.cmp(&b.last_modified));
//!             newest.map_or_else(|| Value::text("first"), |s| s.to_value())
//!         }),
//!     })
//!     .await?;
//! if let Some(only) = stored.single() {
//!     assert_eq!(only.content_type, "text/plain; charset=utf-8");
//! }
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`client`]: [`Client`] and [`ClientBuilder`]: the HTTP plumbing, every request's
//!   timeout, the bounded retry budget ([`RetryPolicy`]) and the error decoding. Start here.
//! - [`object`]: reads, writes and deletes of keys; [`Object`], [`Sibling`], [`Value`],
//!   the opaque [`Context`] and [`ETag`], conditional writes ([`Precondition`],
//!   [`Client::put_if_match`], [`Client::put_if_absent`]), batches ([`Client::batch`]),
//!   and the sibling-resolution helpers ([`Object::resolve_with`], [`Client::update`]).
//! - [`bucket`]: bucket properties.
//! - [`cluster`]: the cluster view (with the membership change in progress,
//!   [`ChangeProgress`]), the ring ([`RingView`]), key placement, joins, decommissions,
//!   replacements, and the retry or abort of a failed change.
//! - [`token`]: the admin API for scoped tokens.
//! - [`error`]: [`ClientError`], with the server's [`ErrorCode`] when it answered one.
//!
//! # Contracts it keeps
//! - **The context is opaque.** The SDK carries `X-Dynamo-Context` from a read to the
//!   next write and never parses it: the token format belongs to the server.
//! - **No sibling is dropped silently.** Reads always ask for the JSON envelope, so every
//!   sibling reaches the caller; [`Client::update`] hands all of them to its closure.
//! - **Everything is bounded.** Every request has a timeout, a response body has a size
//!   cap, retries have a budget, and only transient codes ([`ErrorCode::is_transient`])
//!   and refused connections are retried.
//! - **`https://` is checked.** An `https://` endpoint is verified against the CA file
//!   given to [`ClientBuilder::ca_file`] (a cluster's own CA; read again when it changes),
//!   else against the system's roots; rustls, never OpenSSL.
//! - **A retried write is stored once.** Every write sends an `Idempotency-Key` of its
//!   own, the same on each retry, so the server answers a retry as the first attempt.
//!
//! # It is not
//! A coordinator: no routing, no quorum logic and no version vectors live here. CRDT
//! operations (`POST /v1/crdt/...`) are not wrapped yet.

pub mod bucket;
pub mod client;
pub mod cluster;
pub mod error;
pub mod object;
pub mod token;

pub use client::{Client, ClientBuilder, RetryPolicy};
pub use cluster::RingView;
pub use error::ClientError;
pub use object::{Context, ETag, Lookup, Object, Precondition, RequestOptions, Sibling, Value, Written};
pub use token::{NewToken, TokenInfo, TokenRequest};

// The types the SDK's signatures use, so callers need not depend on dynamo-core or bytes.
pub use bytes::Bytes;
pub use dynamo_core::ErrorCode;
pub use dynamo_core::crdt::CrdtType;
pub use dynamo_core::error::ErrorDetail;
pub use dynamo_core::ids::{BucketName, NodeId, PartitionId, RingEpoch};
pub use dynamo_core::wire::cluster::{
    AllBuckets, AntiEntropyStatus, BucketScope, ChangeKindName, ChangeProgress, ChangeSummary, ClusterView,
    Handoff, KeyPlacement, NodeRegistration, NodeState, NodeStatus, Permission,
};
pub use dynamo_core::wire::public::{BatchOp, BatchOpKind, BatchResult};
pub use dynamo_core::wire::{BucketProps, BucketPropsPatch, ConflictMode, SiblingView};
