//! Why the ring service could not start or stopped with an error. Refusals of calls are
//! the state machine's [`crate::cluster::ClusterError`]s, answered through
//! [`dynamo_server::ApiError`] at the HTTP edge.

use std::path::PathBuf;

use crate::config::ConfigError;
use crate::store::LoadError;

/// A failure of [`crate::run`].
#[derive(Debug, thiserror::Error)]
pub enum RingServiceError {
    /// The configuration cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The stored state cannot be loaded (corrupt, another format, unreadable). The
    /// service refuses to start rather than serve an empty or guessed ring.
    #[error(transparent)]
    State(#[from] LoadError),
    /// The stored ring was created with another partition count.
    #[error(
        "the stored ring has {stored} partitions but --partitions is {configured}; Q is fixed at cluster creation"
    )]
    PartitionMismatch {
        /// Q of the stored ring.
        stored: u32,
        /// Q in the configuration.
        configured: u64,
    },
    /// The data directory cannot be created or written.
    #[error("cannot use data directory {path}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The metrics could not be registered, or the HTTP client built.
    #[error("cannot set up the service: {0}")]
    Setup(String),
    /// The ring group's consensus could not be set up (its store, its configuration).
    #[error("ring group: {0}")]
    Raft(String),
    /// The listener failed.
    #[error("serving failed")]
    Serve(#[from] std::io::Error),
    /// A blocking task panicked.
    #[error("a start-up task failed")]
    Join(#[from] tokio::task::JoinError),
}
