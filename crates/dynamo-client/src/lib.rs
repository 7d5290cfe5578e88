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
//!   timeout, the bounded retry budget ([`RetryPolicy`]), failover between several
//!   coordinators ([`ClientBuilder::endpoints`]) and the error decoding. Start here.
//! - [`object`]: reads, writes and deletes of keys; [`Object`], [`Sibling`], [`Value`],
//!   the opaque [`Context`] and [`ETag`], conditional writes ([`Precondition`],
//!   [`Client::put_if_match`], [`Client::put_if_absent`]), batches ([`Client::batch`]),
//!   and the sibling-resolution helpers ([`Object::resolve_with`], [`Client::update`]).
//! - [`json`]: typed values: [`Client::get_json`] decodes every sibling as a `T`
//!   ([`JsonObject`]), [`Client::put_json`] writes one.
//! - [`resolve`]: built-in resolvers for [`Client::update`] ([`resolve::lww`],
//!   [`resolve::union`]) and the [`Merge`] trait behind [`Client::update_merge`], with
//!   the caveat of merging removes.
//! - [`list`]: a bucket's keys as a stream fetched page by page ([`Client::list_keys`],
//!   [`KeyStream`]; a page is the wire's [`KeyList`]).
//! - [`feed`]: the change feed, long-polled as a stream of [`Change`]s
//!   ([`Client::feed`], [`ChangeStream`]) with a [`FeedCursor`] to save and resume from;
//!   at least once, so a change means "re-read this key".
//! - [`crdt`]: keys of CRDT buckets (counters, sets, registers, maps): [`Client::crdt`]
//!   gives a [`CrdtBucket`] that reads values ([`CrdtValue`]) and applies [`CrdtOp`]s,
//!   reading first for removes.
//! - [`bucket`]: bucket properties.
//! - [`cluster`]: the cluster view (with the membership change in progress,
//!   [`ChangeProgress`]), the ring ([`RingView`]), key placement, joins, decommissions,
//!   replacements, and the retry or abort of a failed change.
//! - [`token`]: the admin API for scoped tokens.
//! - [`error`]: [`ClientError`], with the server's [`ErrorCode`] when it answered one.
//!
//! # Contracts it keeps
//! - **The context is opaque.** The SDK carries `X-Dynamo-Context` from a read to the
//!   next write and never parses it: the token format belongs to the server. So is the
//!   change feed's [`FeedCursor`].
//! - **No sibling is dropped silently.** Reads always ask for the JSON envelope, so every
//!   sibling reaches the caller; [`Client::update`] hands all of them to its closure, and
//!   a sibling that does not decode as the caller's type is an error
//!   ([`ClientError::ValueDecode`]), never skipped.
//! - **Everything is bounded.** Every request has a timeout, a response body has a size
//!   cap, retries have a budget, and only transient codes ([`ErrorCode::is_transient`])
//!   and refused connections are retried.
//! - **`https://` is checked.** An `https://` endpoint is verified against the CA file
//!   given to [`ClientBuilder::ca_file`] (a cluster's own CA; read again when it changes),
//!   else against the system's roots; rustls, never OpenSSL.
//! - **A retried write is stored once.** Every write and CRDT operation sends an
//!   `Idempotency-Key` of its own, the same on each retry (on whichever endpoint the
//!   retry goes to), so the server answers a retry as the first attempt (an increment is
//!   never counted twice).
//!
//! # Examples
//! `examples/` holds small programs to run against a cluster (`DYNAMO_URL`,
//! `DYNAMO_TOKEN`): the Dynamo paper's shopping cart with siblings
//! (`cart_siblings.rs`) and as a CRDT set (`cart_crdt.rs`), a counter incremented
//! concurrently (`counter.rs`), and a create-only write (`create_only.rs`).
//!
//! # It is not
//! A coordinator: no routing, no quorum logic, no version vectors and no CRDT merging
//! live here (a CRDT's value comes back merged; its context stays opaque).

pub mod bucket;
pub mod client;
pub mod cluster;
pub mod crdt;
pub mod error;
pub mod feed;
pub mod json;
pub mod list;
pub mod object;
pub mod resolve;
pub mod token;

pub use client::{Client, ClientBuilder, RetryPolicy};
pub use cluster::RingView;
pub use crdt::{CrdtBucket, CrdtValue};
pub use error::ClientError;
pub use feed::{Change, ChangePage, ChangeStream, FeedCursor, FeedOptions};
pub use json::{JsonObject, JsonSibling};
pub use list::{KeyStream, ListOptions};
pub use object::{Context, ETag, Lookup, Object, Precondition, RequestOptions, Sibling, Value, Written};
pub use resolve::Merge;
pub use token::{NewToken, TokenInfo, TokenRequest};

// The types the SDK's signatures use, so callers need not depend on dynamo-core or bytes.
pub use bytes::Bytes;
pub use dynamo_core::ErrorCode;
pub use dynamo_core::crdt::{CrdtOp, CrdtType};
pub use dynamo_core::error::ErrorDetail;
pub use dynamo_core::ids::{BucketName, NodeId, PartitionId, RingEpoch, VolumeId};
pub use dynamo_core::wire::cluster::{
    AllBuckets, AntiEntropyStatus, BucketScope, ChangeKindName, ChangeProgress, ChangeSummary, ClusterView,
    Handoff, KeyPlacement, NodeRegistration, NodeState, NodeStatus, Permission, RingGroupStatus,
    RingReplicaStatus,
};
pub use dynamo_core::wire::public::{BatchOp, BatchOpKind, BatchResult, KeyList};
pub use dynamo_core::wire::{BucketProps, BucketPropsPatch, ConflictMode, SiblingView};
