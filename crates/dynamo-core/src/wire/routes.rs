//! The internal HTTP routes, named once: the servers mount the patterns (`{param}` as
//! axum writes them) and the callers build paths with the functions beside them, so a
//! route cannot be renamed on one side only.

use crate::ids::{BucketName, NodeId, PartitionId};

/// Routes a storage node serves.
pub mod storage {
    use super::PartitionId;

    /// Replica batches (`POST`): coordinate-put, replicate, get, tombstone status.
    pub const REPLICAS: &str = "/internal/v1/replicas";
    /// The node's identity (`GET`); also the coordinators' liveness probe.
    pub const NODE: &str = "/internal/v1/node";
    /// What the node knows of the cluster (`GET`).
    pub const CLUSTER_STATE: &str = "/internal/v1/cluster-state";
    /// A partition's Merkle summary (`GET`).
    pub const MERKLE: &str = "/internal/v1/merkle/{partition}";
    /// Children of Merkle nodes (`POST`).
    pub const MERKLE_CHILDREN: &str = "/internal/v1/merkle/{partition}/children";
    /// A page of a partition's objects (`GET`).
    pub const PARTITION_OBJECTS: &str = "/internal/v1/partitions/{partition}/objects";
    /// A page of a partition's key digests in a hash range (`GET`): what anti-entropy
    /// compares before it moves values.
    pub const PARTITION_DIGESTS: &str = "/internal/v1/partitions/{partition}/digests";
    /// Copy a partition from another node (`POST`, [`crate::wire::internal::PullRequest`]).
    pub const PARTITION_PULL: &str = "/internal/v1/partitions/{partition}/pull";
    /// A page of a bucket's keys from the node's listing index (`GET`,
    /// [`crate::wire::internal::NodeListing`]).
    pub const BUCKET_KEYS: &str = "/internal/v1/buckets/{bucket}/keys";

    /// A page of a bucket's change log (`GET`, [`crate::wire::internal::NodeFeed`]).
    pub const BUCKET_CHANGES: &str = "/internal/v1/buckets/{bucket}/changes";

    /// The path of [`BUCKET_CHANGES`] for `bucket`.
    pub fn bucket_changes(bucket: &crate::BucketName) -> String {
        format!("/internal/v1/buckets/{bucket}/changes")
    }

    /// The path of [`BUCKET_KEYS`] for `bucket`.
    pub fn bucket_keys(bucket: &crate::BucketName) -> String {
        format!("/internal/v1/buckets/{bucket}/keys")
    }

    /// The path of [`MERKLE`] for `p`.
    pub fn merkle(p: PartitionId) -> String {
        format!("/internal/v1/merkle/{}", p.0)
    }

    /// The path of [`MERKLE_CHILDREN`] for `p`.
    pub fn merkle_children(p: PartitionId) -> String {
        format!("/internal/v1/merkle/{}/children", p.0)
    }

    /// The path of [`PARTITION_DIGESTS`] for `p`.
    pub fn partition_digests(p: PartitionId) -> String {
        format!("/internal/v1/partitions/{}/digests", p.0)
    }

    /// The path of [`PARTITION_OBJECTS`] for `p`.
    pub fn partition_objects(p: PartitionId) -> String {
        format!("/internal/v1/partitions/{}/objects", p.0)
    }

    /// The path of [`PARTITION_PULL`] for `p`.
    pub fn partition_pull(p: PartitionId) -> String {
        format!("/internal/v1/partitions/{}/pull", p.0)
    }
}

/// Routes the ring service serves.
pub mod ring {
    use super::{BucketName, NodeId};

    /// The cluster state (`GET`, long-poll with `after` and `wait_ms`).
    pub const STATE: &str = "/internal/v1/state";
    /// The current ring (`GET`).
    pub const RING: &str = "/internal/v1/ring";
    /// The cluster view (`GET`).
    pub const CLUSTER: &str = "/internal/v1/cluster";
    /// The ring service's own replicas and their leader (`GET`, answered by the leader).
    pub const RING_GROUP: &str = "/internal/v1/ring-group";
    /// Join a node (`POST`).
    pub const NODES: &str = "/internal/v1/nodes";
    /// Decommission a node (`DELETE`).
    pub const NODE: &str = "/internal/v1/nodes/{node}";
    /// Replace a node (`POST`).
    pub const NODE_REPLACE: &str = "/internal/v1/nodes/{node}/replace";
    /// A storage node's heartbeat (`POST`).
    pub const HEARTBEAT: &str = "/internal/v1/heartbeat";
    /// A bucket's properties (`GET`, `PUT`).
    pub const BUCKET: &str = "/internal/v1/buckets/{bucket}";
    /// A bucket was written to: it can no longer change its conflict mode (`POST`).
    pub const BUCKET_WRITTEN: &str = "/internal/v1/buckets/{bucket}/written";
    /// Create a token (`POST`).
    pub const TOKENS: &str = "/internal/v1/tokens";
    /// Revoke a token (`DELETE`).
    pub const TOKEN: &str = "/internal/v1/tokens/{id}";
    /// The membership change in progress (`GET`).
    pub const CHANGE: &str = "/internal/v1/change";
    /// Retry the change's failed copies (`POST`).
    pub const CHANGE_RETRY: &str = "/internal/v1/change/retry";
    /// Abort the change (`POST`).
    pub const CHANGE_ABORT: &str = "/internal/v1/change/abort";
    /// `POST`: a node deleted the partitions a finished change released (member).
    pub const RELEASES: &str = "/internal/v1/releases";

    /// The path of [`NODE`] for `node`.
    pub fn node(node: &NodeId) -> String {
        format!("/internal/v1/nodes/{node}")
    }

    /// The path of [`NODE_REPLACE`] for `node`.
    pub fn node_replace(node: &NodeId) -> String {
        format!("/internal/v1/nodes/{node}/replace")
    }

    /// The path of [`BUCKET`] for `bucket`.
    pub fn bucket(bucket: &BucketName) -> String {
        format!("/internal/v1/buckets/{bucket}")
    }

    /// The path of [`BUCKET_WRITTEN`] for `bucket`.
    pub fn bucket_written(bucket: &BucketName) -> String {
        format!("/internal/v1/buckets/{bucket}/written")
    }

    /// The path of [`TOKEN`] for the token id `id` (validated by the caller: token ids
    /// are lowercase hex).
    pub fn token(id: &str) -> String {
        format!("/internal/v1/tokens/{id}")
    }
}

/// Joins a service's base URL (`http://host:port`, with or without a trailing slash) and
/// a route path.
pub fn url(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: every builder fills its own pattern (a renamed route breaks here).
    #[test]
    fn builders_fill_their_patterns() {
        let p = PartitionId(7);
        let fill = |pattern: &str, param: &str, value: &str| pattern.replace(&format!("{{{param}}}"), value);
        assert_eq!(storage::merkle(p), fill(storage::MERKLE, "partition", "7"));
        assert_eq!(
            storage::merkle_children(p),
            fill(storage::MERKLE_CHILDREN, "partition", "7")
        );
        assert_eq!(
            storage::partition_digests(p),
            fill(storage::PARTITION_DIGESTS, "partition", "7")
        );
        assert_eq!(
            storage::partition_objects(p),
            fill(storage::PARTITION_OBJECTS, "partition", "7")
        );
        assert_eq!(
            storage::partition_pull(p),
            fill(storage::PARTITION_PULL, "partition", "7")
        );
        let n = NodeId::new("node-1").expect("id");
        assert_eq!(ring::node(&n), fill(ring::NODE, "node", "node-1"));
        assert_eq!(ring::node_replace(&n), fill(ring::NODE_REPLACE, "node", "node-1"));
        let b = BucketName::new("cart").expect("bucket");
        assert_eq!(ring::bucket(&b), fill(ring::BUCKET, "bucket", "cart"));
        assert_eq!(
            ring::bucket_written(&b),
            fill(ring::BUCKET_WRITTEN, "bucket", "cart")
        );
        assert_eq!(ring::token("ab12"), fill(ring::TOKEN, "id", "ab12"));
        assert_eq!(url("http://h:1/", storage::NODE), "http://h:1/internal/v1/node");
        assert_eq!(url("http://h:1", storage::NODE), "http://h:1/internal/v1/node");
    }
}
