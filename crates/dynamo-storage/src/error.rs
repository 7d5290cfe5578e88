//! The storage node's error type and its codes.

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
    /// A client-side mistake in an internal request.
    #[error("{0}")]
    Invalid(ApiError),
    /// The write would leave too many siblings.
    #[error(transparent)]
    Version(#[from] dynamo_core::version::VersionError),
    /// A coordinate arrived after its deadline (the coordinator has answered its client
    /// already) and was not applied.
    #[error("the operation arrived {late_ms} ms after its deadline and was not applied")]
    DeadlineExceeded {
        /// How late it was, by this node's clock.
        late_ms: u64,
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
    /// An I/O error outside fjall (e.g. the data directory).
    #[error("storage I/O failed")]
    Io(#[from] std::io::Error),
}

impl StorageError {
    /// Returns the wire error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            StorageError::Invalid(e) => e.code,
            StorageError::Version(e) => e.code(),
            StorageError::DeadlineExceeded { .. } => ErrorCode::DeadlineExceeded,
            StorageError::IdempotencyKeyReused => ErrorCode::IdempotencyKeyReused,
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
        match e {
            StorageError::Invalid(api) => api,
            // The message names what failed, never internals; the chain is logged once.
            other => {
                let code = other.code();
                if code == ErrorCode::StorageError {
                    tracing::error!(error = ?other, "storage failure");
                }
                ApiError::new(code, other.to_string())
            }
        }
    }
}
