//! Newtypes for everything a bare integer or string could confuse, with their validation.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::limits::{MAX_BUCKET_BYTES, MAX_KEY_BYTES, MAX_NODE_ID_BYTES};

/// Why a name or key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The bucket name breaks the `[a-z0-9._-]{1,63}` rule.
    #[error("bucket name must be 1-63 bytes of [a-z0-9._-], got {len} bytes")]
    InvalidBucket {
        /// Length of the refused name in bytes.
        len: usize,
    },
    /// The key is empty or too long.
    #[error("key must be 1-1024 bytes of UTF-8, got {len} bytes")]
    InvalidKey {
        /// Length of the refused key in bytes.
        len: usize,
    },
    /// The node id breaks the DNS-label rule.
    #[error("node id must be 1-63 bytes of [a-z0-9._-], got {len} bytes")]
    InvalidNodeId {
        /// Length of the refused id in bytes.
        len: usize,
    },
    /// The volume id is not 16 lowercase hex digits.
    #[error("volume id must be 16 lowercase hex digits")]
    InvalidVolumeId,
}

impl NameError {
    /// Returns the wire error code for this error.
    pub fn code(&self) -> crate::ErrorCode {
        match self {
            NameError::InvalidBucket { .. } => crate::ErrorCode::InvalidBucket,
            NameError::InvalidKey { .. } => crate::ErrorCode::InvalidKey,
            NameError::InvalidNodeId { .. } => crate::ErrorCode::InvalidNodeId,
            NameError::InvalidVolumeId => crate::ErrorCode::InvalidRequest,
        }
    }
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
}

/// A validated bucket name: 1–63 bytes of `[a-z0-9._-]`. Never contains `/`, which makes
/// `bucket/key` an unambiguous hash input.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BucketName(String);

impl BucketName {
    /// Validates and wraps a bucket name.
    ///
    /// # Errors
    /// [`NameError::InvalidBucket`] when the name is empty, too long or has a byte outside
    /// `[a-z0-9._-]`.
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        if name.is_empty() || name.len() > MAX_BUCKET_BYTES || !name.bytes().all(is_name_byte) {
            return Err(NameError::InvalidBucket { len: name.len() });
        }
        Ok(BucketName(name))
    }

    /// Returns the name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for BucketName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        BucketName::new(s)
    }
}

impl From<BucketName> for String {
    fn from(b: BucketName) -> String {
        b.0
    }
}

impl fmt::Display for BucketName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a key: 1–1024 bytes of UTF-8 (a `&str` is UTF-8 by construction).
///
/// # Errors
/// [`NameError::InvalidKey`] when the key is empty or too long.
pub fn validate_key(key: &str) -> Result<(), NameError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(NameError::InvalidKey { len: key.len() });
    }
    Ok(())
}

/// A storage node's stable identity (its StatefulSet pod name, or a name persisted on its
/// volume). It names the node in the ring; it is not the actor of its writes (see
/// [`ActorId`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

impl NodeId {
    /// Validates and wraps a node id.
    ///
    /// # Errors
    /// [`NameError::InvalidNodeId`] when the id is empty, too long or has a byte outside
    /// `[a-z0-9._-]`.
    pub fn new(id: impl Into<String>) -> Result<Self, NameError> {
        let id = id.into();
        if id.is_empty() || id.len() > MAX_NODE_ID_BYTES || !id.bytes().all(is_name_byte) {
            return Err(NameError::InvalidNodeId { len: id.len() });
        }
        Ok(NodeId(id))
    }

    /// Returns the id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NodeId {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        NodeId::new(s)
    }
}

impl From<NodeId> for String {
    fn from(n: NodeId) -> String {
        n.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The actor that mints dots on one stored copy of a key.
///
/// Actors are drawn at random (64 bits) by storage nodes and kept with the copy they mint
/// on (see [`crate::version::StoredCopy`]): a copy that was lost or forgotten (a wiped
/// disk, a crash before fsync, a delivered hint, a collected tombstone, a truncated
/// history) is never continued; the next write starts a fresh actor, so a dot is never
/// minted twice (Riak's per-key epochs, the fix for its KV679). Dots only need to be
/// unique per key, and a key meets few actors, so random ids do not collide in practice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ActorId(pub u64);

/// One life of a storage node's data directory: drawn at random when the directory is
/// created and again at every start after a stop that was not clean. A stored copy's
/// actor is continued only within the incarnation that chose it, because a crash may
/// have lost the copy's latest dots after someone saw them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Incarnation(pub u64);

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A storage node's data directory: drawn at random when the directory is created and
/// kept for its whole life (unlike [`Incarnation`], which a crash renews). The ring
/// service binds each member to the volume that first heartbeats under its id, so a pod
/// that comes back with an empty volume under a member's name is told apart from a
/// restart, and refilled by a replace instead of silently serving nothing.
///
/// Written as 16 lowercase hex digits (a JSON number would lose bits in some clients).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VolumeId(pub u64);

impl fmt::Display for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl From<VolumeId> for String {
    fn from(v: VolumeId) -> String {
        v.to_string()
    }
}

impl TryFrom<String> for VolumeId {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        if s.len() != 16
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(NameError::InvalidVolumeId);
        }
        u64::from_str_radix(&s, 16)
            .map(VolumeId)
            .map_err(|_| NameError::InvalidVolumeId)
    }
}

impl fmt::Display for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// One of the Q equal partitions of the 64-bit hash space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PartitionId(pub u32);

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The version of a ring. Every membership change makes a new ring with a larger epoch;
/// no service ever replaces a ring with one of a smaller epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RingEpoch(pub u64);

impl fmt::Display for RingEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names_follow_the_api_rule() {
        assert!(BucketName::new("users").is_ok());
        assert!(BucketName::new("a.b_c-9").is_ok());
        assert!(BucketName::new("a".repeat(63)).is_ok());
        assert!(BucketName::new("a".repeat(64)).is_err());
        assert!(BucketName::new("").is_err());
        assert!(BucketName::new("Users").is_err());
        assert!(BucketName::new("a/b").is_err());
        assert!(BucketName::new("é").is_err());
        assert!(serde_json::from_str::<BucketName>("\"UP\"").is_err());
    }

    #[test]
    fn keys_are_one_to_1024_bytes() {
        assert!(validate_key("k").is_ok());
        assert!(validate_key(&"é".repeat(512)).is_ok());
        assert!(validate_key(&"x".repeat(1025)).is_err());
        assert!(validate_key("").is_err());
    }

    #[test]
    fn node_ids_are_dns_labels() {
        assert!(NodeId::new("dynamo-storage-0").is_ok());
        assert!(NodeId::new("").is_err());
        assert!(NodeId::new("Node").is_err());
    }
}
