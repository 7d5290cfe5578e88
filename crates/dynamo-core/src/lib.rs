//! `dynamo-core`: the functional core of the Dynamo store.
//!
//! Pure logic and nothing else: no I/O, no tokio, no clock, no randomness. Time, node
//! identity and randomness come in as arguments, so the same inputs always give the same
//! outputs and every rule here is tested with plain unit and property tests.
//!
//! # Layout
//! - [`hash`]: the stable key hash and the cut of the hash space into Q partitions.
//! - [`ring`]: partition → owner assignment with an epoch, balanced joins and removals,
//!   preference lists and sloppy-quorum fallbacks.
//! - [`dots`], [`version`], [`context`]: dotted version vectors. A key's sibling set
//!   with its causal history, the put/sync rules, and the opaque context token clients
//!   carry between a read and a write; [`etag`]: the `ETag` of a version set and the
//!   `If-Match` / `If-None-Match: *` preconditions of a write.
//! - [`merkle`]: per-partition Merkle trees for anti-entropy.
//! - [`quorum`]: sloppy-quorum slot assignment and reply counting; [`round`]: the write
//!   and read rounds built on them, sans I/O; [`liveness`]: the per-node failure detector.
//! - [`crdt`]: counters, sets, registers and maps that merge without siblings.
//! - [`wire`]: serde types shared by every service; [`error`]: the one error-code space.
//! - [`limits`]: every bound, in one place; [`backoff`]: the one retry backoff.
//! - [`keys`]: secret keys and rotating key rings; [`signature`]: signed internal
//!   requests and the member and control roles.
//!
//! # It is not
//! - a storage engine, an HTTP layer or a clock: services own those and drive this crate;
//! - a place for retries, timeouts or tasks.
//!
//! **Architecture invariant:** nothing in this crate depends on tokio, sockets, files or
//! `std::time::SystemTime::now`. A bug in merging, placement, quorum counting or Merkle
//! diffing reproduces without a socket or a temp dir.

pub mod backoff;
pub mod context;
pub mod crdt;
pub mod dots;
pub mod error;
pub mod etag;
pub mod hash;
pub mod ids;
pub mod keys;
pub mod limits;
pub mod liveness;
pub mod merkle;
pub mod quorum;
pub mod ring;
pub mod round;
pub mod signature;
pub mod version;
pub mod wire;

pub use dots::{Dot, DotSet};
pub use error::{ErrorBody, ErrorCode};
pub use hash::{KeyHash, Partitioning, key_hash};
pub use ids::{ActorId, BucketName, Incarnation, NodeId, PartitionId, RingEpoch, VolumeId};
