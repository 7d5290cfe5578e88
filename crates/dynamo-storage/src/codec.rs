//! On-disk layout: how keys and version sets are laid out in fjall.
//!
//! # Object keys (keyspace `objects`)
//! `partition (u32 BE) ‖ key hash (u64 BE) ‖ bucket length (u8) ‖ bucket ‖ key`
//!
//! Partition first, then the hash, so one partition is one contiguous range and, inside
//! it, one Merkle leaf (a hash range) is a contiguous sub-range: handoff streaming,
//! Merkle rebuilds, leaf range reads and GC are all range scans.
//!
//! # Hint keys (keyspace `hints`)
//! `target node id length (u8) ‖ target node id ‖ object key`: one contiguous range per
//! intended owner, which is what delivery scans.
//!
//! # Values
//! `format (u8 = 2) ‖ digest (u128 LE) ‖ postcard(StoredV2)`: a stored copy, i.e. the
//! version set and the actor minting on it with the incarnation that chose it
//! ([`StoredCopy`]). The digest of the version set sits in a fixed header so a Merkle
//! rebuild need not decode the body. A new layout is a new format byte with an explicit
//! migration; an unknown byte is corruption, never guessed at.
//!
//! Migration from format 1 (no minter): a format-1 value decodes as a copy with no
//! minter, so the next write on it starts a fresh actor. That is always safe (it is what
//! a copy that forgot its actor does) and costs one vector entry; values are rewritten in
//! format 2 by their next write.
//!
//! # GC records (keyspace `gc`)
//! Key: the object key. Value: `format (u8 = 1) ‖ digest (u128 LE) ‖ collected at (u64 LE,
//! ms since the Unix epoch)`: the exact tombstone set this node collected, remembered so
//! that peers still holding it may collect theirs (see `gc`).

use dynamo_core::version::{InvalidObject, Minter, Sibling, StoredCopy, VersionedObject};
use dynamo_core::wire::internal::IdempotencyRecord;
use dynamo_core::{ActorId, Dot, DotSet, Incarnation, KeyHash, NodeId, PartitionId};
use serde::{Deserialize, Serialize};

/// Format of GC records, and of stored values before minters were kept.
const FORMAT_V1: u8 = 1;
/// Format of stored values: a copy with its minter.
const FORMAT_V2: u8 = 2;
const HEADER_BYTES: usize = 1 + 16;

/// A stored value or key that does not decode.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The value's format byte is unknown.
    #[error("unknown value format {0}")]
    UnknownFormat(u8),
    /// The value is shorter than its header.
    #[error("value truncated")]
    Truncated,
    /// The body does not decode.
    #[error("value body does not decode")]
    Body(#[source] postcard::Error),
    /// The body decodes to an object that breaks the version invariants.
    #[error("stored object is invalid")]
    Invalid(#[source] InvalidObject),
    /// The key does not follow the layout.
    #[error("stored key is malformed")]
    Key,
    /// A stored JSON document (the cached cluster state, an idempotency record) does not
    /// decode.
    #[error("stored document does not decode")]
    Document(#[source] serde_json::Error),
}

/// The parts of an object key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectKey {
    /// The partition.
    pub partition: PartitionId,
    /// The key hash.
    pub hash: KeyHash,
    /// The bucket name.
    pub bucket: String,
    /// The key.
    pub key: String,
}

/// Returns the storage key of `(bucket, key)`.
pub fn object_key(partition: PartitionId, hash: KeyHash, bucket: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(13 + bucket.len() + key.len());
    k.extend_from_slice(&partition.0.to_be_bytes());
    k.extend_from_slice(&hash.0.to_be_bytes());
    // Bucket names are at most 63 bytes (validated before any key is built).
    k.push(bucket.len() as u8);
    k.extend_from_slice(bucket.as_bytes());
    k.extend_from_slice(key.as_bytes());
    k
}

/// Returns the first storage key of partition `p` whose hash is at least `hash`.
pub fn range_start(p: PartitionId, hash: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(12);
    k.extend_from_slice(&p.0.to_be_bytes());
    k.extend_from_slice(&hash.to_be_bytes());
    k
}

/// Returns a bound past every storage key of partition `p` whose hash is at most `hash`.
pub fn range_end(p: PartitionId, hash: u64) -> Vec<u8> {
    let mut k = range_start(p, hash);
    k.push(0xff);
    k
}

/// Splits a storage key into its parts.
///
/// # Errors
/// [`CodecError::Key`] when the key does not follow the layout.
pub fn parse_object_key(k: &[u8]) -> Result<ObjectKey, CodecError> {
    let partition = u32::from_be_bytes(
        k.get(0..4)
            .ok_or(CodecError::Key)?
            .try_into()
            .map_err(|_| CodecError::Key)?,
    );
    let hash = u64::from_be_bytes(
        k.get(4..12)
            .ok_or(CodecError::Key)?
            .try_into()
            .map_err(|_| CodecError::Key)?,
    );
    let blen = *k.get(12).ok_or(CodecError::Key)? as usize;
    let bucket = k.get(13..13 + blen).ok_or(CodecError::Key)?;
    let key = k.get(13 + blen..).ok_or(CodecError::Key)?;
    Ok(ObjectKey {
        partition: PartitionId(partition),
        hash: KeyHash(hash),
        bucket: String::from_utf8(bucket.to_vec()).map_err(|_| CodecError::Key)?,
        key: String::from_utf8(key.to_vec()).map_err(|_| CodecError::Key)?,
    })
}

/// Length of an object key's partition and hash prefix: what follows is the listing key.
const OBJECT_KEY_PREFIX: usize = 12;

/// Returns the listing-index key of `(bucket, key)`: `len(bucket) ‖ bucket ‖ key`, so the
/// index is in bucket order, then key byte order (the object key without its partition
/// and hash).
pub fn listing_key(bucket: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + bucket.len() + key.len());
    // Bucket names are at most 63 bytes (validated before any key is built).
    k.push(bucket.len() as u8);
    k.extend_from_slice(bucket.as_bytes());
    k.extend_from_slice(key.as_bytes());
    k
}

/// Returns the listing-index key inside an object key.
///
/// # Errors
/// [`CodecError::Key`] when the key is too short to be an object key.
pub fn listing_key_of(object_key: &[u8]) -> Result<&[u8], CodecError> {
    object_key.get(OBJECT_KEY_PREFIX..).ok_or(CodecError::Key)
}

/// Splits a listing-index key into its bucket and key.
///
/// # Errors
/// [`CodecError::Key`] when the key does not follow the layout.
pub fn parse_listing_key(k: &[u8]) -> Result<(String, String), CodecError> {
    let blen = *k.first().ok_or(CodecError::Key)? as usize;
    let bucket = k.get(1..1 + blen).ok_or(CodecError::Key)?;
    let key = k.get(1 + blen..).ok_or(CodecError::Key)?;
    Ok((
        String::from_utf8(bucket.to_vec()).map_err(|_| CodecError::Key)?,
        String::from_utf8(key.to_vec()).map_err(|_| CodecError::Key)?,
    ))
}

/// Returns the prefix of every hint for `target`.
pub fn hint_prefix(target: &NodeId) -> Vec<u8> {
    let id = target.as_str().as_bytes();
    let mut k = Vec::with_capacity(1 + id.len());
    // Node ids are at most 63 bytes (validated by `NodeId`).
    k.push(id.len() as u8);
    k.extend_from_slice(id);
    k
}

/// Returns the hint key of an object key for `target`.
pub fn hint_key(target: &NodeId, object_key: &[u8]) -> Vec<u8> {
    let mut k = hint_prefix(target);
    k.extend_from_slice(object_key);
    k
}

/// Splits a hint key into the target and the object key.
///
/// # Errors
/// [`CodecError::Key`] when the key does not follow the layout.
pub fn parse_hint_key(k: &[u8]) -> Result<(NodeId, &[u8]), CodecError> {
    let len = *k.first().ok_or(CodecError::Key)? as usize;
    let id = k.get(1..1 + len).ok_or(CodecError::Key)?;
    let id = std::str::from_utf8(id).map_err(|_| CodecError::Key)?;
    let node = NodeId::new(id).map_err(|_| CodecError::Key)?;
    Ok((node, k.get(1 + len..).ok_or(CodecError::Key)?))
}

#[derive(Deserialize)]
struct StoredV1 {
    vv: Vec<(u64, u64)>,
    cloud: Vec<(u64, u64)>,
    siblings: Vec<StoredSibling>,
}

#[derive(Serialize, Deserialize)]
struct StoredV2 {
    vv: Vec<(u64, u64)>,
    cloud: Vec<(u64, u64)>,
    siblings: Vec<StoredSibling>,
    /// `(incarnation, actor)` of the copy's minter.
    minter: Option<(u64, u64)>,
}

#[derive(Serialize, Deserialize)]
struct StoredSibling {
    actor: u64,
    counter: u64,
    #[serde(with = "serde_bytes")]
    value: Vec<u8>,
    content_type: String,
    last_modified_ms: u64,
    tombstone: bool,
}

/// Encodes an object that never coordinated a write here as a stored value.
pub fn encode_object(obj: &VersionedObject) -> Vec<u8> {
    encode_parts(obj, None)
}

/// Encodes a stored copy.
pub fn encode_copy(copy: &StoredCopy) -> Vec<u8> {
    encode_parts(&copy.object, copy.minter)
}

fn encode_parts(obj: &VersionedObject, minter: Option<Minter>) -> Vec<u8> {
    let history = obj.context();
    let stored = StoredV2 {
        minter: minter.map(|m| (m.incarnation.0, m.actor.0)),
        vv: history.vector().map(|(a, n)| (a.0, n)).collect(),
        cloud: history.cloud().map(|d| (d.actor.0, d.counter)).collect(),
        siblings: obj
            .siblings()
            .iter()
            .map(|s| StoredSibling {
                actor: s.dot.actor.0,
                counter: s.dot.counter,
                value: s.value.clone(),
                content_type: s.content_type.clone(),
                last_modified_ms: s.last_modified_ms,
                tombstone: s.tombstone,
            })
            .collect(),
    };
    let mut out =
        Vec::with_capacity(HEADER_BYTES + 64 + obj.siblings().iter().map(|s| s.value.len()).sum::<usize>());
    out.push(FORMAT_V2);
    out.extend_from_slice(&obj.digest().to_le_bytes());
    // Encoding plain integers, strings and byte vectors into a Vec cannot fail.
    match postcard::to_extend(&stored, out) {
        Ok(v) => v,
        Err(_) => unreachable!("postcard cannot fail writing to a Vec"),
    }
}

/// Reads only the digest from a stored value's header.
///
/// # Errors
/// A [`CodecError`] for an unknown format or a truncated header.
pub fn stored_digest(v: &[u8]) -> Result<u128, CodecError> {
    match v.first() {
        Some(&FORMAT_V1 | &FORMAT_V2) => {}
        Some(&f) => return Err(CodecError::UnknownFormat(f)),
        None => return Err(CodecError::Truncated),
    }
    let d: [u8; 16] = v
        .get(1..HEADER_BYTES)
        .ok_or(CodecError::Truncated)?
        .try_into()
        .map_err(|_| CodecError::Truncated)?;
    Ok(u128::from_le_bytes(d))
}

/// Decodes a stored value.
///
/// # Errors
/// A [`CodecError`] when the value is not a valid stored object.
pub fn decode_object(v: &[u8]) -> Result<VersionedObject, CodecError> {
    decode_copy(v).map(|c| c.object)
}

/// Decodes a stored value with its minter (format 1: none).
///
/// # Errors
/// A [`CodecError`] when the value is not a valid stored object.
pub fn decode_copy(v: &[u8]) -> Result<StoredCopy, CodecError> {
    stored_digest(v)?;
    let body = &v[HEADER_BYTES..];
    let stored: StoredV2 = if v[0] == FORMAT_V1 {
        let old: StoredV1 = postcard::from_bytes(body).map_err(CodecError::Body)?;
        StoredV2 {
            vv: old.vv,
            cloud: old.cloud,
            siblings: old.siblings,
            minter: None,
        }
    } else {
        postcard::from_bytes(body).map_err(CodecError::Body)?
    };
    let minter = stored.minter.map(|(i, a)| Minter {
        incarnation: Incarnation(i),
        actor: ActorId(a),
    });
    let history = DotSet::from_parts(
        stored.vv.into_iter().map(|(a, n)| (ActorId(a), n)),
        stored.cloud.into_iter().map(|(a, c)| (ActorId(a), c)),
    )
    .map_err(|_| CodecError::Truncated)?;
    let siblings = stored
        .siblings
        .into_iter()
        .map(|s| Sibling {
            dot: Dot::new(ActorId(s.actor), s.counter),
            value: s.value,
            content_type: s.content_type,
            last_modified_ms: s.last_modified_ms,
            tombstone: s.tombstone,
        })
        .collect();
    let object = VersionedObject::from_parts(history, siblings).map_err(CodecError::Invalid)?;
    Ok(StoredCopy { object, minter })
}

/// A tombstone set this node collected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcRecord {
    /// The digest of the collected version set.
    pub digest: u128,
    /// When it was collected (ms since the Unix epoch).
    pub collected_ms: u64,
    /// The collected set's causal history: the floor below which a copy of the key that
    /// arrives later (a late hint, a replicate in flight) is already superseded. Empty in
    /// format-1 records, which did not keep it.
    pub history: DotSet,
}

const GC_RECORD_V1_BYTES: usize = 1 + 16 + 8;

/// Encodes a GC record (format 2: the format-1 fields, then the history encoded as a
/// stored object without siblings).
pub fn encode_gc_record(r: &GcRecord) -> Vec<u8> {
    let floor = match VersionedObject::from_parts(r.history.clone(), Vec::new()) {
        Ok(o) => o,
        Err(_) => unreachable!("an object without siblings has no invariant to break"),
    };
    let mut v = Vec::with_capacity(GC_RECORD_V1_BYTES + HEADER_BYTES + 16 * r.history.vector_len());
    v.push(FORMAT_V2);
    v.extend_from_slice(&r.digest.to_le_bytes());
    v.extend_from_slice(&r.collected_ms.to_le_bytes());
    v.extend_from_slice(&encode_object(&floor));
    v
}

/// Decodes a GC record (format 1 or 2).
///
/// # Errors
/// A [`CodecError`] for an unknown format or a wrong length.
pub fn decode_gc_record(v: &[u8]) -> Result<GcRecord, CodecError> {
    let format = match v.first() {
        Some(&f @ (FORMAT_V1 | FORMAT_V2)) => f,
        Some(&f) => return Err(CodecError::UnknownFormat(f)),
        None => return Err(CodecError::Truncated),
    };
    if v.len() < GC_RECORD_V1_BYTES || (format == FORMAT_V1 && v.len() != GC_RECORD_V1_BYTES) {
        return Err(CodecError::Truncated);
    }
    let digest: [u8; 16] = v[1..17].try_into().map_err(|_| CodecError::Truncated)?;
    let at: [u8; 8] = v[17..25].try_into().map_err(|_| CodecError::Truncated)?;
    let history = if format == FORMAT_V1 {
        DotSet::new()
    } else {
        decode_object(&v[GC_RECORD_V1_BYTES..])?.into_parts().0
    };
    Ok(GcRecord {
        digest: u128::from_le_bytes(digest),
        collected_ms: u64::from_le_bytes(at),
        history,
    })
}

/// The `idem` keyspace key of an idempotency record: the object key, then the claim id
/// (16 bytes, big-endian), so a key's records sit together after its object key.
pub fn idem_key(object_key: &[u8], id: u128) -> Vec<u8> {
    let mut k = Vec::with_capacity(object_key.len() + 16);
    k.extend_from_slice(object_key);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// Encodes an idempotency record: format byte 1, then the record as JSON (small, rare,
/// and its dot sets already have a checked serde form).
pub fn encode_idem_record(r: &IdempotencyRecord) -> Vec<u8> {
    let mut v = vec![FORMAT_V1];
    // Plain structs of integers and dot sets serialize into a Vec without failing.
    if serde_json::to_writer(&mut v, r).is_err() {
        unreachable!("an idempotency record always serializes");
    }
    v
}

/// Decodes an idempotency record.
///
/// # Errors
/// A [`CodecError`] for an unknown format or a body that does not parse.
pub fn decode_idem_record(v: &[u8]) -> Result<IdempotencyRecord, CodecError> {
    match v.first() {
        Some(&FORMAT_V1) => {}
        Some(&f) => return Err(CodecError::UnknownFormat(f)),
        None => return Err(CodecError::Truncated),
    }
    serde_json::from_slice(&v[1..]).map_err(CodecError::Document)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamo_core::version::{ConflictRule, NewWrite};

    #[test]
    fn object_keys_round_trip_and_sort_by_partition_then_hash() {
        let k = object_key(PartitionId(7), KeyHash(0x0700_0000_0000_0001), "users", "alice/ä");
        let parsed = parse_object_key(&k).expect("parse");
        assert_eq!(parsed.partition, PartitionId(7));
        assert_eq!(parsed.hash, KeyHash(0x0700_0000_0000_0001));
        assert_eq!(
            (parsed.bucket.as_str(), parsed.key.as_str()),
            ("users", "alice/ä")
        );
        let a = object_key(PartitionId(1), KeyHash(u64::MAX), "z", "z");
        let b = object_key(PartitionId(2), KeyHash(0), "a", "a");
        assert!(a < b, "partition orders first");
        assert!(range_start(PartitionId(7), 0x0700_0000_0000_0001) <= k);
        assert!(k < range_end(PartitionId(7), 0x0700_0000_0000_0001));
        assert!(parse_object_key(&[0, 0, 0]).is_err());
    }

    #[test]
    fn values_round_trip_with_their_digest() {
        let mut o = VersionedObject::new();
        let r = ConflictRule::Siblings { max_siblings: 8 };
        o.put(
            &DotSet::new(),
            ActorId(3),
            NewWrite::value(b"hello".to_vec(), "text/plain", 5),
            r,
        )
        .expect("put");
        o.put(&DotSet::new(), ActorId(4), NewWrite::tombstone(6), r)
            .expect("put");
        let bytes = encode_object(&o);
        assert_eq!(stored_digest(&bytes).expect("digest"), o.digest());
        assert_eq!(decode_object(&bytes).expect("decode"), o);
        assert!(matches!(decode_object(&[9]), Err(CodecError::UnknownFormat(9))));
        assert!(matches!(decode_object(&bytes[..10]), Err(CodecError::Truncated)));
        let mut broken = bytes.clone();
        broken.truncate(bytes.len() - 3);
        assert!(decode_object(&broken).is_err());
    }

    #[test]
    fn copies_keep_their_minter_and_format_1_decodes_without_one() {
        let mut copy = StoredCopy::default();
        copy.coordinate(
            &DotSet::new(),
            Incarnation(9),
            [ActorId(5)],
            NewWrite::value(b"v".to_vec(), "text/plain", 1),
            ConflictRule::Siblings { max_siblings: 8 },
        )
        .expect("put");
        let bytes = encode_copy(&copy);
        assert_eq!(bytes[0], FORMAT_V2);
        assert_eq!(decode_copy(&bytes).expect("decode"), copy);
        // A value written before minters were kept (format 1, pinned bytes): same
        // versions, no minter.
        let mut v1 = vec![FORMAT_V1];
        v1.extend_from_slice(&copy.object.digest().to_le_bytes());
        v1.extend_from_slice(&[1, 5, 1, 0, 1, 5, 1, 1, b'v', 10]);
        v1.extend_from_slice(b"text/plain");
        v1.extend_from_slice(&[1, 0]);
        let old = decode_copy(&v1).expect("format 1 decodes");
        assert_eq!(old.object, copy.object);
        assert_eq!(old.minter, None);
    }

    #[test]
    fn gc_records_round_trip() {
        let history =
            DotSet::from_parts([(ActorId(3), 9), (ActorId(5), 2)], [(ActorId(7), 4)]).expect("dot set");
        let r = GcRecord {
            digest: u128::MAX - 7,
            collected_ms: 1_700_000_000_000,
            history,
        };
        let bytes = encode_gc_record(&r);
        assert_eq!(bytes[0], FORMAT_V2);
        assert_eq!(decode_gc_record(&bytes).expect("decode"), r);
        assert!(matches!(
            decode_gc_record(&[3]),
            Err(CodecError::UnknownFormat(3))
        ));
        assert!(decode_gc_record(&bytes[..24]).is_err());
        assert!(decode_gc_record(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode_gc_record(&[]).is_err());
    }

    // Records written before the history was kept (format 1) still decode, with an empty
    // floor; the bytes are pinned so the old layout cannot drift.
    #[test]
    fn format_1_gc_records_decode_with_an_empty_history() {
        let mut v1 = vec![FORMAT_V1];
        v1.extend_from_slice(&42u128.to_le_bytes());
        v1.extend_from_slice(&7u64.to_le_bytes());
        let r = decode_gc_record(&v1).expect("format 1");
        assert_eq!((r.digest, r.collected_ms), (42, 7));
        assert!(r.history.is_empty());
        v1.push(0);
        assert!(decode_gc_record(&v1).is_err(), "format 1 has a fixed length");
    }

    #[test]
    fn hint_keys_round_trip() {
        let node = NodeId::new("node-2").expect("id");
        let ok = object_key(PartitionId(1), KeyHash(2), "b", "k");
        let hk = hint_key(&node, &ok);
        assert!(hk.starts_with(&hint_prefix(&node)));
        let (n, rest) = parse_hint_key(&hk).expect("parse");
        assert_eq!((n, rest), (node, ok.as_slice()));
    }
}
