//! The key hash: where every key lives on the ring.
//!
//! `key_hash(bucket, key) = XXH3-64(bucket ‖ "/" ‖ key)` with seed 0, over the raw UTF-8
//! bytes. XXH3 is specified (xxHash spec v0.8), has implementations in every language
//! (so SDKs and tools can place keys themselves), and is fast on short inputs. The
//! separator cannot be ambiguous because bucket names never contain `/`. This function is
//! part of the on-disk and wire format: changing it would move every key, so the test
//! vectors below (cross-checked against the reference C implementation) pin it.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3Default;

use crate::ids::PartitionId;

/// A key's position on the 64-bit ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyHash(pub u64);

/// Returns the ring position of `key` in `bucket`.
pub fn key_hash(bucket: &str, key: &str) -> KeyHash {
    let mut h = Xxh3Default::new();
    h.update(bucket.as_bytes());
    h.update(b"/");
    h.update(key.as_bytes());
    KeyHash(h.digest())
}

/// The partitioning of the hash space into Q = 2^bits equal, contiguous ranges.
///
/// Partition `p` holds the hashes `[p · 2^(64−bits), (p+1) · 2^(64−bits))`: the top
/// `bits` bits of a hash are its partition, so "clockwise" is increasing partition id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partitioning {
    bits: u8,
}

/// A partition count that is not a power of two in the supported range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("partition count must be a power of two between 2^{min} and 2^{max}, got {got}")]
pub struct InvalidPartitionCount {
    /// The refused count.
    pub got: u64,
    /// Smallest allowed exponent.
    pub min: u8,
    /// Largest allowed exponent.
    pub max: u8,
}

impl Partitioning {
    /// Builds the partitioning with Q = `count` partitions.
    ///
    /// # Errors
    /// [`InvalidPartitionCount`] when `count` is not a power of two within
    /// [`crate::limits::MIN_PARTITION_BITS`]..=[`crate::limits::MAX_PARTITION_BITS`].
    pub fn with_count(count: u64) -> Result<Self, InvalidPartitionCount> {
        use crate::limits::{MAX_PARTITION_BITS, MIN_PARTITION_BITS};
        let err = InvalidPartitionCount {
            got: count,
            min: MIN_PARTITION_BITS,
            max: MAX_PARTITION_BITS,
        };
        if !count.is_power_of_two() {
            return Err(err);
        }
        let bits = count.trailing_zeros();
        if bits < u32::from(MIN_PARTITION_BITS) || bits > u32::from(MAX_PARTITION_BITS) {
            return Err(err);
        }
        Ok(Partitioning { bits: bits as u8 })
    }

    /// Returns Q, the number of partitions.
    pub fn count(self) -> u32 {
        1u32 << self.bits
    }

    /// Returns k where Q = 2^k.
    pub fn bits(self) -> u8 {
        self.bits
    }

    /// Returns the partition that holds `hash`.
    pub fn partition_of(self, hash: KeyHash) -> PartitionId {
        PartitionId((hash.0 >> (64 - u32::from(self.bits))) as u32)
    }

    /// Returns the first hash of partition `p` (inclusive).
    pub fn start_of(self, p: PartitionId) -> u64 {
        u64::from(p.0) << (64 - u32::from(self.bits))
    }

    /// Returns the last hash of partition `p` (inclusive).
    pub fn end_of(self, p: PartitionId) -> u64 {
        self.start_of(p) | (u64::MAX >> u32::from(self.bits))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Cross-checked against the reference implementation (Python `xxhash.xxh3_64`, which
    // binds the C library): these numbers must never change.
    #[test]
    fn known_vectors() {
        assert_eq!(key_hash("users", "alice"), KeyHash(0x938f_f7a9_8659_6b0a));
        assert_eq!(key_hash("b", "k"), KeyHash(0xb517_07e4_4396_e6f1));
        assert_eq!(key_hash("bucket", "clé"), KeyHash(0xfa52_ca22_9408_17f3));
    }

    #[test]
    fn partitions_cut_the_space_into_equal_contiguous_ranges() {
        let p = Partitioning::with_count(256).expect("valid count");
        assert_eq!(p.count(), 256);
        assert_eq!(p.partition_of(KeyHash(0)), PartitionId(0));
        assert_eq!(p.partition_of(KeyHash(u64::MAX)), PartitionId(255));
        assert_eq!(p.partition_of(KeyHash(0x0100_0000_0000_0000)), PartitionId(1));
        assert_eq!(p.partition_of(KeyHash(0x00ff_ffff_ffff_ffff)), PartitionId(0));
        assert_eq!(p.start_of(PartitionId(1)), 0x0100_0000_0000_0000);
        assert_eq!(p.end_of(PartitionId(0)), 0x00ff_ffff_ffff_ffff);
        for part in [0u32, 7, 255] {
            let id = PartitionId(part);
            assert_eq!(p.partition_of(KeyHash(p.start_of(id))), id);
            assert_eq!(p.partition_of(KeyHash(p.end_of(id))), id);
        }
    }

    #[test]
    fn partition_counts_must_be_powers_of_two_in_range() {
        assert!(Partitioning::with_count(0).is_err());
        assert!(Partitioning::with_count(1).is_err());
        assert!(Partitioning::with_count(3).is_err());
        assert!(Partitioning::with_count(1 << 17).is_err());
        assert_eq!(Partitioning::with_count(2).map(|p| p.bits()), Ok(1));
        assert_eq!(Partitioning::with_count(1 << 16).map(|p| p.count()), Ok(65536));
    }
}
