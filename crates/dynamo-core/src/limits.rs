//! Every bound the core enforces, in one place, so docs and services quote the same
//! numbers. What happens at each bound is documented on the constant and in
//! `docs/architecture.md`.

/// Largest value stored under one key (API: 1 MiB). Larger puts are refused with
/// `value_too_large`.
pub const MAX_VALUE_BYTES: usize = 1 << 20;

/// Most operations in one `POST /v1/batch` (API.md). A longer batch is refused whole
/// with `invalid_request`.
pub const MAX_BATCH_REQUEST_OPS: usize = 100;

/// Longest key in bytes (UTF-8). Longer keys are refused with `invalid_key`.
pub const MAX_KEY_BYTES: usize = 1024;

/// Longest bucket name in bytes. Longer names are refused with `invalid_bucket`.
pub const MAX_BUCKET_BYTES: usize = 63;

/// Longest node id in bytes (a DNS label, as a StatefulSet pod name is).
pub const MAX_NODE_ID_BYTES: usize = 63;

/// Default for a bucket's `max_siblings`.
pub const DEFAULT_MAX_SIBLINGS: u32 = 32;

/// Largest `max_siblings` a bucket may ask for. A write that would leave more siblings
/// than the bucket allows is refused with `too_many_siblings` (the client resolves by
/// reading and writing back with the context); replica merges never refuse, so a key can
/// briefly hold more after concurrent writes through different coordinators.
pub const MAX_SIBLINGS_LIMIT: u32 = 256;

/// Most actor entries in a version vector (Dynamo truncated at 10; a key's actors are the
/// stored copies that coordinated writes on it, so real vectors hold a handful). A context above this is refused
/// with `invalid_context`; a stored history above it is pruned at write time (see
/// [`crate::version::VersionedObject::put`]).
pub const MAX_VECTOR_ENTRIES: usize = 64;

/// Most out-of-order dots a causal context carries beside its vector. A context above
/// this is refused with `invalid_context`; a write's returned context drops the oldest
/// extra dots first, which can only keep a sibling alive, never lose one.
pub const MAX_CONTEXT_DOTS: usize = 64;

/// Most random actor ids a node draws for one write before giving up (a draw is retried
/// only when the id is already in the key's history or the context: with 64 random bits,
/// practically never).
pub const MAX_FRESH_ACTOR_DRAWS: usize = 8;

/// Longest `X-Dynamo-Context` token in bytes (base64url). Enough for the two bounds
/// above with room to spare; longer tokens are refused before decoding.
pub const MAX_CONTEXT_TOKEN_BYTES: usize = 4096;

/// Smallest and largest number of partitions, as powers of two (Q = 2^k).
pub const MIN_PARTITION_BITS: u8 = 1;
/// See [`MIN_PARTITION_BITS`].
pub const MAX_PARTITION_BITS: u8 = 16;

/// Default partition count Q (fixed at cluster creation): 256 keeps per-partition Merkle
/// trees and handoff units small while allowing clusters of up to 256 nodes.
pub const DEFAULT_PARTITION_BITS: u8 = 8;

/// Largest replication factor N a bucket may have.
pub const MAX_N: u8 = 7;

/// Longest a client of the workspace (the SDK, and every service calling another) keeps
/// an idle pooled connection, in milliseconds. Servers close a connection idle for their
/// `--header-read-timeout-ms`, which must be longer: a server that closed first would race
/// the client's next request on that connection, and a write caught in the race has an
/// unknown outcome.
pub const CLIENT_POOL_IDLE_MS: u64 = 5_000;
