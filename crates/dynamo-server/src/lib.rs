//! `dynamo-server`: the plumbing every Dynamo service shares, written once.
//!
//! # Layout
//! - [`clock`]: the wall clock, read in one place.
//! - [`config`]: the flags every service shares, the one `ConfigError`, and the one `main`
//!   of the service binaries.
//! - [`error`]: [`ApiError`], the one place an [`dynamo_core::ErrorCode`] becomes an HTTP
//!   response with the JSON error body, and [`extract`]: axum extractors whose
//!   rejections go through it.
//! - [`follow`]: the one follower of the ring service's cluster state (long poll, rules,
//!   backoff) that coordinators and storage nodes share.
//! - [`ring_urls`]: the ring service's replicas as a client holds them, and the one rule
//!   for moving on to the next when one does not answer.
//! - [`internal`]: the door of internal routes: member and control keys from flags, the
//!   client that signs every internal request, the layer that admits only signed ones.
//! - [`metrics`]: a per-service Prometheus registry, HTTP request metrics, `/metrics`.
//! - [`serve`]: health routes (`/healthz`, `/readyz`), the common tower layers (request
//!   id, body limit, concurrency limit, panic catching) and graceful serving with a drain
//!   deadline.
//! - [`shutdown`]: the process's root cancellation token, cancelled by SIGTERM/SIGINT.
//! - [`telemetry`]: tracing set-up for binaries; [`trace`]: the request id and W3C trace
//!   context carried across services.
//! - [`worker`]: the one shape of every background task (its loop, pauses, backoff,
//!   tranquilizer, metrics and stop).
//!
//! # It is not
//! Domain logic (that is `dynamo-core`) or any one service's routes.

pub mod clock;
pub mod config;
pub mod error;
pub mod extract;
pub mod follow;
pub mod internal;
pub mod metrics;
pub mod ring_urls;
pub mod serve;
pub mod shutdown;
pub mod telemetry;
pub mod trace;
pub mod worker;

pub use error::ApiError;
