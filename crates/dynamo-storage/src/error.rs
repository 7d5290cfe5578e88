//! The storage node's error type and its codes: domain errors until the HTTP edge,
//! where `From<StorageError> for ApiError` maps each to its one code.

use dynamo_core::ErrorCode;
use dynamo_server::ApiError;

use crate::codec::CodecError;

/// Everything that can go wrong in the storage node.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// fjall failed. `Poisoned` (a failed journal flush) is fatal: the node stops.
    #[error("storage engine failed")]
    Engine(#[from] fjall::Error),
    /// A stored value or key does not decode.
    #[error("stored data is corrupt")]
    Corrupt(#[from] CodecError),
    /// The data directory belongs to another node.
    #[error("data directory belongs to node {stored}, not {configured}")]
    IdentityMismatch {
        /// The id on the volume.
        stored: String,
        /// The id in the configuration.
        configured: String,
    },
    /// The data directory was created with another partition count.
    #[error("the data directory was created with {stored} partitions, not {configured}")]
    PartitionCountMismatch {
        /// The count on the volume.
        stored: u32,
        /// The count configured.
        configured: u32,
    },
    /// A name (a stored or configured node id) is not valid.
    #[error(transparent)]
    Name(#[from] dynamo_core::ids::NameError),
    /// A Merkle tree could not be built or asked (a bad shape or node index).
    #[error(transparent)]
    Merkle(#[from] dynamo_core::merkle::MerkleError),
    /// The write would leave too many siblings.
    #[error(transparent)]
    Version(#[from] dynamo_core::version::VersionError),
    /// A CRDT operation was refused (or the key holds no state of the bucket's type).
    #[error(transparent)]
    Crdt(#[from] dynamo_core::crdt::CrdtWriteError),
    /// A coordinate arrived after its deadline (the coordinator has answered its client
    /// already) and was not applied.
    #[error("the operation arrived {late_ms} ms after its deadline and was not applied")]
    DeadlineExceeded {
        /// How late it was, by this node's clock.
        late_ms: u64,
    },
    /// A change-log reader's position is below what retention purged.
    #[error("the feed position {position} is older than the retained log (purged up to {floor})")]
    CursorExpired {
        /// The reader's position.
        position: String,
        /// The greatest purged position.
        floor: String,
    },
    /// The write's `Idempotency-Key` was used within its window for another request.
    #[error("the Idempotency-Key was used for a different request within its window")]
    IdempotencyKeyReused,
    /// Waiting for an fsync failed because the syncer stopped.
    #[error("durability barrier failed: the syncer stopped")]
    SyncerGone,
    /// A blocking task panicked or was cancelled.
    #[error("storage task failed")]
    Join(#[from] tokio::task::JoinError),
    /// The configuration cannot work (found at start-up, e.g. unreadable keys).
    #[error(transparent)]
    Config(#[from] dynamo_server::config::ConfigError),
    /// An I/O error outside fjall (e.g. the data directory).
    #[error("storage I/O failed")]
    Io(#[from] std::io::Error),
}

impl StorageError {
    /// Returns the wire error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            StorageError::PartitionCountMismatch { .. } => ErrorCode::InvalidRequest,
            StorageError::Name(e) => e.code(),
            StorageError::Merkle(e) => e.code(),
            StorageError::Version(e) => e.code(),
            StorageError::Crdt(e) => e.code(),
            StorageError::DeadlineExceeded { .. } => ErrorCode::DeadlineExceeded,
            StorageError::IdempotencyKeyReused => ErrorCode::IdempotencyKeyReused,
            StorageError::CursorExpired { .. } => ErrorCode::CursorExpired,
            _ => ErrorCode::StorageError,
        }
    }

    /// Returns true when the node must stop (a poisoned engine).
    pub fn is_fatal(&self) -> bool {
        matches!(self, StorageError::Engine(fjall::Error::Poisoned))
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> ApiError {
        // The message names what failed, never internals; the chain is logged once.
        let code = e.code();
        if code == ErrorCode::StorageError {
            tracing::error!(error = ?e, "storage failure");
        }
        ApiError::new(code, e.to_string())
    }
}
