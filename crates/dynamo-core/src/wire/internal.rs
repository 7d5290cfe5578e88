//! Node-to-node messages between coordinators and storage nodes (not the public
//! contract). Every replica call is a batch, so a caller can coalesce the operations
//! bound for one node into one request; a batch of one is the simple case.

use serde::{Deserialize, Serialize};

use crate::ErrorCode;
use crate::crdt::{CrdtOp, CrdtType};
use crate::dots::{Dot, DotSet};
use crate::ids::{BucketName, NodeId, RingEpoch};
use crate::version::{ConflictRule, VersionedObject};

/// Most operations in one replica batch.
pub const MAX_BATCH_OPS: usize = 256;

/// Most bytes (as [`ReplicaOp::estimated_len`] counts them) of a replica batch that
/// holds more than one operation; a single larger operation travels alone. Storage
/// nodes accept at least this much in a body, so a batch of large values never fails
/// whole against the node's limit.
pub const MAX_BATCH_BYTES: usize = 4 << 20;

/// A client's `Idempotency-Key` as the coordinator forwards it with a write: who
/// asked under which key (`id`, a hash of the caller's token and the key), and what
/// exactly it asked (`fingerprint`, a hash of the method, path, body, content type
/// and context). Hashes, so that neither the key nor the request travels again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IdempotencyClaim {
    /// Caller and key.
    #[serde(with = "digest_hex")]
    pub id: u128,
    /// The request.
    #[serde(with = "digest_hex")]
    pub fingerprint: u128,
}

/// What a replica remembers of an idempotent write, to answer a repeat as the first
/// was answered: the claim, the dot the write was minted with and the context the
/// writer got. It travels with the write's replicas, so a repeat that another replica
/// coordinates finds it too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// The write's claim.
    pub claim: IdempotencyClaim,
    /// The dot minted for it.
    pub dot: Dot,
    /// The context answered to the writer.
    pub context: DotSet,
    /// When the first write was coordinated (ms since the Unix epoch): the window
    /// counts from here.
    pub created_ms: u64,
}

impl ReplicaOp {
    /// Returns an upper estimate of the operation's JSON size in bytes (values travel
    /// as base64: 4/3 of their length), for bounding batches by bytes.
    pub fn estimated_len(&self) -> usize {
        const OVERHEAD: usize = 256;
        const PER_DOT: usize = 48;
        let b64 = |n: usize| n.div_ceil(3) * 4;
        match self {
            ReplicaOp::CoordinatePut {
                key,
                context,
                value,
                content_type,
                idempotency,
                ..
            } => {
                OVERHEAD
                    + idempotency.map_or(0, |_| 128)
                    + key.len()
                    + content_type.len()
                    + b64(value.len())
                    + PER_DOT * (context.vector_len() + context.cloud_len())
            }
            ReplicaOp::Replicate {
                key,
                object,
                idempotency,
                ..
            } => {
                let record = idempotency.as_ref().map_or(0, |r| {
                    OVERHEAD + PER_DOT * (r.context.vector_len() + r.context.cloud_len())
                });
                OVERHEAD + record + key.len() + object_len(object)
            }
            ReplicaOp::CoordinateCrdt {
                key,
                operation,
                observed,
                merge,
                idempotency,
                ..
            } => {
                // Ops are small JSON; measuring one is cheaper than the call it rides.
                OVERHEAD
                    + idempotency.map_or(0, |_| 128)
                    + key.len()
                    + serde_json::to_vec(operation).map_or(0, |v| v.len())
                    + observed
                        .as_ref()
                        .map_or(0, |c| PER_DOT * (c.vector_len() + c.cloud_len()))
                    + merge.as_ref().map_or(0, object_len)
            }
            ReplicaOp::Replay { key, .. } => OVERHEAD + 128 + key.len(),
            ReplicaOp::Get { key, .. } | ReplicaOp::TombstoneStatus { key, .. } => OVERHEAD + key.len(),
        }
    }
}

/// An upper estimate of `object`'s JSON size (see [`ReplicaOp::estimated_len`]).
fn object_len(object: &VersionedObject) -> usize {
    const OVERHEAD: usize = 256;
    const PER_DOT: usize = 48;
    let h = object.context();
    PER_DOT * (h.vector_len() + h.cloud_len())
        + object
            .siblings()
            .iter()
            .map(|s| OVERHEAD + s.content_type.len() + s.value.len().div_ceil(3) * 4)
            .sum::<usize>()
}

/// Most keys in one page of a node's listing ([`NodeListing`]), and in one page of the
/// public listing.
pub const MAX_LIST_PAGE: usize = 1000;

/// One key of a node's listing, with its versions as the node holds them (own copy and
/// hints merged), values left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedKey {
    /// The key.
    pub key: String,
    /// Its versions, every value empty (tombstones included).
    pub object: VersionedObject,
}

/// A page of a bucket's keys from one storage node's listing index, in key byte order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeListing {
    /// The keys.
    pub keys: Vec<ListedKey>,
    /// Set when the node stopped before the end of the range (a full page, or its scan
    /// bound): the last key it looked at. Keys after it are unknown from this page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<String>,
}

/// A position in one storage node's change log: the node's start count (`run`, new at
/// every start, so a crash that lost unsynced entries never reuses their numbers) and
/// the sequence number within that run. Ordered by `(run, seq)`; written `"run.seq"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct FeedPos {
    /// The node's start count.
    pub run: u32,
    /// The sequence number within the run (the first entry is 1).
    pub seq: u64,
}

impl std::fmt::Display for FeedPos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.run, self.seq)
    }
}

impl std::str::FromStr for FeedPos {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<FeedPos, &'static str> {
        let (run, seq) = s.split_once('.').ok_or("a feed position is run.seq")?;
        Ok(FeedPos {
            run: run.parse().map_err(|_| "a feed position's run is a u32")?,
            seq: seq.parse().map_err(|_| "a feed position's seq is a u64")?,
        })
    }
}

impl Serialize for FeedPos {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FeedPos {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<FeedPos, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Most entries in one page of a node's change log.
pub const MAX_FEED_PAGE: usize = 1000;

/// One entry of a node's change log: a key's copy here changed (a write, a replica
/// merge, a repair or a handoff brought something new), and what it holds now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedEntry {
    /// Where it sits in the node's log.
    pub pos: FeedPos,
    /// The key.
    pub key: String,
    /// The copy's causal history after the change.
    pub context: DotSet,
    /// True when the copy holds no live value after the change.
    pub deleted: bool,
    /// When the node logged it (ms since the Unix epoch).
    pub at_ms: u64,
}

/// A page of a node's change log for one bucket.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeFeed {
    /// Entries after the asked position, in log order.
    pub entries: Vec<FeedEntry>,
    /// The node's newest position for the bucket when it answered (where a reader that
    /// starts "from now" starts). Entries up to it are all committed.
    pub head: FeedPos,
}

/// A batch of replica operations for one storage node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaBatch {
    /// The operations, answered in the same order.
    pub ops: Vec<ReplicaOp>,
    /// The oldest ring epoch any operation was planned with. A node whose ring is newer
    /// answers `stale_ring` to each operation (without a hint) on a partition it no
    /// longer holds, so no write lands on a node that has let the partition go or is
    /// about to. Absent: not fenced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_epoch: Option<RingEpoch>,
}

/// Where a write held for another node (sloppy quorum) should be delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HintFor {
    /// The intended owner.
    pub node: NodeId,
    /// The owner's internal API address (`http://host:port`).
    pub address: String,
}

/// One replica operation. Travels as a JSON object tagged by its `op` field (first);
/// see [`tag_first`] for how it is read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ReplicaOp {
    /// Coordinate a client write: merge it into the stored set with a dot minted by
    /// this node and answer the resulting object.
    CoordinatePut {
        /// The bucket.
        bucket: BucketName,
        /// The key.
        key: String,
        /// The client's context (empty for a blind write).
        #[serde(default)]
        context: DotSet,
        /// The value (empty for a delete).
        #[serde(with = "super::base64_bytes", default)]
        value: Vec<u8>,
        /// The value's media type.
        #[serde(default)]
        content_type: String,
        /// True for a delete.
        #[serde(default)]
        tombstone: bool,
        /// The bucket's conflict rule.
        conflict: ConflictRule,
        /// Set when this node holds the write for another (sloppy quorum).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hint: Option<HintFor>,
        /// Not applied once the node's clock (ms since the Unix epoch) passed this:
        /// the coordinator has answered the client by then, and a write applied later
        /// would surprise a client that moved on (at most once, docs/architecture.md).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deadline_ms: Option<u64>,
        /// The client's `Idempotency-Key`: a repeat of a write this node remembers is
        /// answered as the first was and applies nothing.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency: Option<IdempotencyClaim>,
    },
    /// Coordinate a CRDT operation: merge `merge` into this node's copy when given (a
    /// fresher copy the coordinator read, so a remove finds what its client observed),
    /// merge the copy's states, apply `op` as the copy's minting actor and store the
    /// result as one version (`StoredCopy::apply_crdt`). Answered as
    /// [`ReplicaOp::CoordinatePut`] is.
    CoordinateCrdt {
        /// The bucket.
        bucket: BucketName,
        /// The key.
        key: String,
        /// The bucket's CRDT type.
        crdt_type: CrdtType,
        /// The operation (`op` is the variant's tag).
        operation: CrdtOp,
        /// The CRDT context the client observed (removes need it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        observed: Option<DotSet>,
        /// A copy to merge before applying.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        merge: Option<VersionedObject>,
        /// Set when this node holds the write for another (sloppy quorum).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hint: Option<HintFor>,
        /// As [`ReplicaOp::CoordinatePut`]'s: not applied past it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deadline_ms: Option<u64>,
        /// As [`ReplicaOp::CoordinatePut`]'s.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency: Option<IdempotencyClaim>,
    },
    /// Answer the write this node remembers under `idempotency`'s claim as a repeat of
    /// [`ReplicaOp::CoordinatePut`] would (the first write's dot and context, the copy as
    /// it is now), applying nothing; `precondition_failed` when it remembers none (or
    /// `idempotency_key_reused` for another fingerprint). A conditional write whose
    /// precondition no longer holds sends this: it may be the repeat of one that
    /// succeeded, and changed what the precondition saw.
    Replay {
        /// The bucket.
        bucket: BucketName,
        /// The key.
        key: String,
        /// Set when this node held the write for another (sloppy quorum).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hint: Option<HintFor>,
        /// The client's `Idempotency-Key`, hashed.
        idempotency: IdempotencyClaim,
    },
    /// Merge a copy of a key's versions (idempotent).
    Replicate {
        /// The bucket.
        bucket: BucketName,
        /// The key.
        key: String,
        /// The versions to merge.
        object: VersionedObject,
        /// The bucket's conflict rule.
        conflict: ConflictRule,
        /// Set when this node holds the write for another (sloppy quorum).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hint: Option<HintFor>,
        /// The idempotency record of the write being replicated, to remember beside it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency: Option<IdempotencyRecord>,
    },
    /// Read a key's versions.
    Get {
        /// The bucket.
        bucket: BucketName,
        /// The key.
        key: String,
    },
    /// Tombstone GC: does this node hold exactly the version set with `digest` (all
    /// tombstones), or has it already collected exactly that set? Reads only.
    TombstoneStatus {
        /// The bucket.
        bucket: BucketName,
        /// The key.
        key: String,
        /// The [`VersionedObject::digest`] of the asker's tombstone set, as 32
        /// lowercase hex digits (a JSON number cannot carry 128 bits faithfully).
        #[serde(with = "digest_hex")]
        digest: u128,
    },
}

/// The answers to a [`ReplicaBatch`], one per operation, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaBatchResult {
    /// One result per operation.
    pub results: Vec<ReplicaResult>,
}

/// The answer to one replica operation. Travels as a JSON object tagged by its
/// `status` field (first); see [`tag_first`] for how it is read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ReplicaResult {
    /// A coordinated write was stored.
    Put {
        /// The stored object after the write (to replicate to the others).
        object: VersionedObject,
        /// The dot minted for the write.
        dot: Dot,
        /// The context for the writer: what it had seen plus its write.
        context: DotSet,
        /// The write's idempotency record, when it carried a claim (to replicate).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency: Option<IdempotencyRecord>,
        /// True when the write was a repeat this node remembered: nothing was applied,
        /// and `dot` and `context` are the first write's.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        replayed: bool,
    },
    /// A copy was merged.
    Replicated,
    /// A read; `object` is absent when the key is unknown here.
    Got {
        /// The stored versions.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        object: Option<VersionedObject>,
    },
    /// The answer to a [`ReplicaOp::TombstoneStatus`].
    TombstoneStatus {
        /// This node holds a version set with exactly the asked digest (and no hint
        /// for the key that could bring an older value back).
        holds: bool,
        /// This node collected exactly that version set and still remembers it.
        collected: bool,
    },
    /// The operation failed; the others in the batch are unaffected.
    Error {
        /// The error code.
        code: ErrorCode,
        /// The human message.
        message: String,
    },
}

/// The reading side of [`ReplicaOp`]: the same variants and fields, externally tagged,
/// driven by [`tag_first`].
#[derive(Deserialize)]
#[serde(remote = "ReplicaOp", rename_all = "snake_case", deny_unknown_fields)]
enum ReplicaOpDef {
    CoordinatePut {
        bucket: BucketName,
        key: String,
        #[serde(default)]
        context: DotSet,
        #[serde(with = "super::base64_bytes", default)]
        value: Vec<u8>,
        #[serde(default)]
        content_type: String,
        #[serde(default)]
        tombstone: bool,
        // Named `resolution` before 0.1's first release; still read.
        #[serde(alias = "resolution")]
        conflict: ConflictRule,
        #[serde(default)]
        hint: Option<HintFor>,
        #[serde(default)]
        deadline_ms: Option<u64>,
        #[serde(default)]
        idempotency: Option<IdempotencyClaim>,
    },
    CoordinateCrdt {
        bucket: BucketName,
        key: String,
        crdt_type: CrdtType,
        operation: CrdtOp,
        #[serde(default)]
        observed: Option<DotSet>,
        #[serde(default)]
        merge: Option<VersionedObject>,
        #[serde(default)]
        hint: Option<HintFor>,
        #[serde(default)]
        deadline_ms: Option<u64>,
        #[serde(default)]
        idempotency: Option<IdempotencyClaim>,
    },
    Replay {
        bucket: BucketName,
        key: String,
        #[serde(default)]
        hint: Option<HintFor>,
        idempotency: IdempotencyClaim,
    },
    Replicate {
        bucket: BucketName,
        key: String,
        object: VersionedObject,
        #[serde(alias = "resolution")]
        conflict: ConflictRule,
        #[serde(default)]
        hint: Option<HintFor>,
        #[serde(default)]
        idempotency: Option<IdempotencyRecord>,
    },
    Get {
        bucket: BucketName,
        key: String,
    },
    TombstoneStatus {
        bucket: BucketName,
        key: String,
        #[serde(with = "digest_hex")]
        digest: u128,
    },
}

/// The reading side of [`ReplicaResult`], as [`ReplicaOpDef`] is of [`ReplicaOp`].
#[derive(Deserialize)]
#[serde(remote = "ReplicaResult", rename_all = "snake_case")]
enum ReplicaResultDef {
    Put {
        object: VersionedObject,
        dot: Dot,
        context: DotSet,
        #[serde(default)]
        idempotency: Option<IdempotencyRecord>,
        #[serde(default)]
        replayed: bool,
    },
    Replicated,
    Got {
        #[serde(default)]
        object: Option<VersionedObject>,
    },
    TombstoneStatus {
        holds: bool,
        collected: bool,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

impl tag_first::TagFirst for ReplicaOp {
    const TAG: &'static str = "op";
    fn from_variant<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ReplicaOpDef::deserialize(d)
    }
}

impl tag_first::TagFirst for ReplicaResult {
    const TAG: &'static str = "status";
    fn from_variant<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ReplicaResultDef::deserialize(d)
    }
}

impl<'de> Deserialize<'de> for ReplicaOp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        tag_first::deserialize(d)
    }
}

impl<'de> Deserialize<'de> for ReplicaResult {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        tag_first::deserialize(d)
    }
}

/// Reading internally tagged enums without serde's buffering.
///
/// serde's derive for `#[serde(tag = "...")]` first buffers every field of the object
/// in a generic tree, then reads the variant from it; for the replica batches, which
/// carry every value of every operation, that buffering was a tenth of the
/// coordinator's CPU (docs/benchmarks.md, profile). Every writer of these objects (the
/// derived `Serialize`) puts the tag first, so the reader takes the tag, then hands the
/// rest of the object straight to the variant's fields. An object whose tag is not
/// first (a hand-written request) is still accepted, through a buffered slow path.
pub mod tag_first {
    use serde::de::{self, DeserializeSeed, EnumAccess, IntoDeserializer, MapAccess, VariantAccess, Visitor};
    use serde::forward_to_deserialize_any;

    /// An enum read as `{"<TAG>": "<variant>", ...fields}`.
    pub trait TagFirst: Sized {
        /// The name of the tag field.
        const TAG: &'static str;
        /// Reads the value from a deserializer that answers `deserialize_enum` (the
        /// externally tagged form of the same enum).
        ///
        /// # Errors
        /// The deserializer's error for a bad variant or field.
        fn from_variant<'de, D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error>;
    }

    /// Deserializes `T` from a map whose tag field names the variant.
    ///
    /// # Errors
    /// A missing or unknown tag, or a bad field, as the deserializer's error.
    pub fn deserialize<'de, D: de::Deserializer<'de>, T: TagFirst>(d: D) -> Result<T, D::Error> {
        d.deserialize_map(TagVisitor(std::marker::PhantomData))
    }

    struct TagVisitor<T>(std::marker::PhantomData<T>);

    impl<'de, T: TagFirst> Visitor<'de> for TagVisitor<T> {
        type Value = T;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "an object with a `{}` field", T::TAG)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
            let Some(first) = map.next_key::<String>()? else {
                return Err(de::Error::missing_field(T::TAG));
            };
            if first == T::TAG {
                let variant: String = map.next_value()?;
                return T::from_variant(Variant { variant, map });
            }
            // Slow path: buffer the object, then take the tag out of it.
            let mut rest = serde_json::Map::new();
            rest.insert(first, map.next_value()?);
            while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
                rest.insert(k, v);
            }
            let variant = match rest.remove(T::TAG) {
                Some(serde_json::Value::String(v)) => v,
                Some(_) => return Err(de::Error::custom(format_args!("`{}` must be a string", T::TAG))),
                None => return Err(de::Error::missing_field(T::TAG)),
            };
            let map = de::value::MapDeserializer::new(rest.into_iter());
            T::from_variant(Variant { variant, map }).map_err(|e: serde_json::Error| de::Error::custom(e))
        }
    }

    /// The rest of a tagged object, presented as the externally tagged enum
    /// `{"<variant>": {...fields}}`.
    struct Variant<A> {
        variant: String,
        map: A,
    }

    impl<'de, A: MapAccess<'de>> de::Deserializer<'de> for Variant<A> {
        type Error = A::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, A::Error> {
            Err(de::Error::custom("a tagged object is read as an enum"))
        }

        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _name: &'static str,
            _variants: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, A::Error> {
            visitor.visit_enum(self)
        }

        forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
            struct identifier ignored_any
        }
    }

    impl<'de, A: MapAccess<'de>> EnumAccess<'de> for Variant<A> {
        type Error = A::Error;
        type Variant = Self;

        fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, Self), A::Error> {
            let name: de::value::StrDeserializer<'_, A::Error> = self.variant.as_str().into_deserializer();
            let v = seed.deserialize(name)?;
            Ok((v, self))
        }
    }

    impl<'de, A: MapAccess<'de>> VariantAccess<'de> for Variant<A> {
        type Error = A::Error;

        fn unit_variant(mut self) -> Result<(), A::Error> {
            // A variant without fields: whatever else the object holds is ignored,
            // as serde's internally tagged form does.
            while self.map.next_entry::<de::IgnoredAny, de::IgnoredAny>()?.is_some() {}
            Ok(())
        }

        fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, _seed: S) -> Result<S::Value, A::Error> {
            Err(de::Error::custom("newtype variants are not tagged objects"))
        }

        fn tuple_variant<V: Visitor<'de>>(self, _len: usize, _visitor: V) -> Result<V::Value, A::Error> {
            Err(de::Error::custom("tuple variants are not tagged objects"))
        }

        fn struct_variant<V: Visitor<'de>>(
            self,
            _fields: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, A::Error> {
            visitor.visit_map(self.map)
        }
    }
}

/// Serde helper: a `u128` digest as 32 lowercase hex digits. Internally tagged enums
/// buffer their fields in a form that has no 128-bit integers, and JSON readers in
/// other languages lose precision above 2^53, so a digest travels as a string.
pub mod digest_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes a digest as 32 hex digits.
    pub fn serialize<S: Serializer>(d: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{d:032x}"))
    }

    /// Deserializes exactly 32 hex digits.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(serde::de::Error::custom("a digest is 32 hex digits"));
        }
        u128::from_str_radix(&s, 16).map_err(serde::de::Error::custom)
    }
}

/// The body of a partition pull: the ring service asks a storage node to copy a
/// partition from another holder (`POST` [`super::routes::storage::PARTITION_PULL`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    /// The internal address of a node holding the partition.
    pub source: String,
    /// Resume after this cursor (from an interrupted pull).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// How long this call may copy before answering `done: false` with a cursor (the
    /// node's default when absent; it caps what it is asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_ms: Option<u64>,
    /// Copy only once the source knows at least this ring epoch and has finished every
    /// operation it admitted under an older one (the catch-up after a new ring is
    /// published: from then on the source refuses operations planned for the old ring
    /// on partitions it no longer holds, so nothing can reach it behind the copy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_epoch: Option<RingEpoch>,
}

/// A storage node's answer to a pull: the progress of this call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullProgress {
    /// Objects merged by this call.
    pub objects: u64,
    /// Pages received by this call.
    #[serde(default)]
    pub pages: u64,
    /// Where to resume if not done.
    #[serde(default)]
    pub cursor: Option<String>,
    /// True when the source had nothing more.
    pub done: bool,
    /// Stored bytes merged by this call.
    #[serde(default)]
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    // Golden vectors: the JSON of the tombstone-status exchange is pinned, and a digest
    // above 2^64 survives the internally tagged enum.
    #[test]
    fn tombstone_status_json_is_pinned() {
        let op = ReplicaOp::TombstoneStatus {
            bucket: BucketName::new("b").expect("bucket"),
            key: "k".into(),
            digest: 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
        };
        let json =
            r#"{"op":"tombstone_status","bucket":"b","key":"k","digest":"0123456789abcdeffedcba9876543210"}"#;
        assert_eq!(serde_json::to_string(&op).expect("serialize"), json);
        assert_eq!(serde_json::from_str::<ReplicaOp>(json).expect("parse"), op);
        let batch = format!(r#"{{"ops":[{json}]}}"#);
        assert_eq!(
            serde_json::from_str::<ReplicaBatch>(&batch).expect("parse").ops,
            vec![op]
        );
        for bad in ["\"12\"", "\"0123456789abcdeffedcba987654321g\"", "12"] {
            let j = format!(r#"{{"op":"tombstone_status","bucket":"b","key":"k","digest":{bad}}}"#);
            assert!(serde_json::from_str::<ReplicaOp>(&j).is_err(), "{j}");
        }
        let r = ReplicaResult::TombstoneStatus {
            holds: true,
            collected: false,
        };
        let json = r#"{"status":"tombstone_status","holds":true,"collected":false}"#;
        assert_eq!(serde_json::to_string(&r).expect("serialize"), json);
        assert_eq!(serde_json::from_str::<ReplicaResult>(json).expect("parse"), r);
    }

    fn sample_object() -> VersionedObject {
        let mut o = VersionedObject::new();
        o.put(
            &DotSet::new(),
            crate::ids::ActorId(7),
            crate::version::NewWrite::value(b"v\"al\\ue".to_vec(), "text/plain", 5),
            ConflictRule::Siblings { max_siblings: 8 },
        )
        .expect("put");
        o
    }

    fn every_op() -> Vec<ReplicaOp> {
        let b = BucketName::new("b").expect("bucket");
        vec![
            ReplicaOp::CoordinatePut {
                bucket: b.clone(),
                key: "k".into(),
                context: sample_object().context().clone(),
                value: vec![0, 1, 2, 255],
                content_type: "application/octet-stream".into(),
                tombstone: false,
                conflict: ConflictRule::LastWriterWins,
                hint: Some(HintFor {
                    node: NodeId::new("node-1").expect("id"),
                    address: "http://127.0.0.1:1".into(),
                }),
                deadline_ms: Some(1_700_000_000_000),
                idempotency: None,
            },
            ReplicaOp::Replay {
                bucket: b.clone(),
                key: "k".into(),
                hint: None,
                idempotency: IdempotencyClaim {
                    id: 1,
                    fingerprint: u128::MAX,
                },
            },
            ReplicaOp::Replicate {
                bucket: b.clone(),
                key: "k".into(),
                object: sample_object(),
                conflict: ConflictRule::Siblings { max_siblings: 3 },
                hint: None,
                idempotency: None,
            },
            ReplicaOp::Replicate {
                bucket: b.clone(),
                key: "k".into(),
                object: sample_object(),
                conflict: ConflictRule::Crdt {
                    crdt_type: CrdtType::Map,
                },
                hint: None,
                idempotency: None,
            },
            ReplicaOp::CoordinateCrdt {
                bucket: b.clone(),
                key: "k".into(),
                crdt_type: CrdtType::Set,
                operation: CrdtOp::Remove(vec!["x".into()]),
                observed: Some(sample_object().context().clone()),
                merge: Some(sample_object()),
                hint: None,
                deadline_ms: Some(1),
                idempotency: Some(IdempotencyClaim {
                    id: 2,
                    fingerprint: 3,
                }),
            },
            ReplicaOp::Get {
                bucket: b.clone(),
                key: "ключ/with space".into(),
            },
            ReplicaOp::TombstoneStatus {
                bucket: b,
                key: "k".into(),
                digest: u128::MAX,
            },
        ]
    }

    fn every_result() -> Vec<ReplicaResult> {
        let o = sample_object();
        vec![
            ReplicaResult::Put {
                dot: o.siblings()[0].dot,
                context: o.context().clone(),
                object: o.clone(),
                idempotency: None,
                replayed: false,
            },
            ReplicaResult::Replicated,
            ReplicaResult::Got { object: Some(o) },
            ReplicaResult::Got { object: None },
            ReplicaResult::TombstoneStatus {
                holds: false,
                collected: true,
            },
            ReplicaResult::Error {
                code: ErrorCode::TooManySiblings,
                message: "m".into(),
            },
        ]
    }

    /// Rewrites an object with its keys in reverse order (the tag last).
    fn tag_last(v: &serde_json::Value) -> String {
        let obj = v.as_object().expect("object");
        let fields: Vec<String> = obj
            .iter()
            .rev()
            .map(|(k, v)| format!("{}:{}", serde_json::to_string(k).expect("k"), v))
            .collect();
        format!("{{{}}}", fields.join(","))
    }

    // Goal: every operation and result reads back as written, through the fast path
    // (tag first, as written) and the buffered one (tag last, as a hand-written
    // request may have it).
    #[test]
    fn tagged_objects_read_back_with_the_tag_first_or_not() {
        for op in every_op() {
            let json = serde_json::to_string(&op).expect("serialize");
            assert!(json.starts_with(r#"{"op":"#), "{json}");
            assert_eq!(serde_json::from_str::<ReplicaOp>(&json).expect("fast"), op);
            let v: serde_json::Value = serde_json::from_str(&json).expect("value");
            let last = tag_last(&v);
            assert_eq!(
                serde_json::from_str::<ReplicaOp>(&last).expect("slow"),
                op,
                "{last}"
            );
        }
        for r in every_result() {
            let json = serde_json::to_string(&r).expect("serialize");
            assert!(json.starts_with(r#"{"status":"#), "{json}");
            assert_eq!(serde_json::from_str::<ReplicaResult>(&json).expect("fast"), r);
            let v: serde_json::Value = serde_json::from_str(&json).expect("value");
            assert_eq!(
                serde_json::from_str::<ReplicaResult>(&tag_last(&v)).expect("slow"),
                r
            );
        }
        let batch = ReplicaBatch {
            ops: every_op(),
            ring_epoch: Some(RingEpoch(3)),
        };
        let json = serde_json::to_vec(&batch).expect("batch");
        assert_eq!(
            serde_json::from_slice::<ReplicaBatch>(&json).expect("batch"),
            batch
        );
    }

    // Goal: the reader is as strict as serde's derive was: unknown fields of an
    // operation, unknown variants, a missing or non-string tag are all refused, on
    // both paths.
    #[test]
    fn the_conflict_rule_is_still_read_under_its_old_name() {
        for op in every_op() {
            let v = serde_json::to_value(&op).expect("serialize");
            let Some(rule) = v.get("conflict").cloned() else {
                continue;
            };
            let mut old = v.clone();
            let map = old.as_object_mut().expect("object");
            map.remove("conflict");
            map.insert("resolution".into(), rule);
            let json = serde_json::to_string(&old).expect("json");
            assert_eq!(serde_json::from_str::<ReplicaOp>(&json).expect("old name"), op);
            assert_eq!(
                serde_json::from_str::<ReplicaOp>(&tag_last(&old)).expect("old name, tag last"),
                op
            );
        }
    }

    #[test]
    fn bad_tagged_objects_are_refused() {
        let bad = [
            r#"{"op":"get","bucket":"b","key":"k","extra":1}"#,
            r#"{"bucket":"b","key":"k","extra":1,"op":"get"}"#,
            r#"{"op":"explode","bucket":"b","key":"k"}"#,
            r#"{"bucket":"b","op":"explode"}"#,
            r#"{"bucket":"b","key":"k"}"#,
            r#"{}"#,
            r#"{"op":1,"bucket":"b","key":"k"}"#,
            r#"{"bucket":"b","key":"k","op":null}"#,
            r#"{"op":"get","bucket":"b"}"#,
            r#"{"op":"get","bucket":"BAD!","key":"k"}"#,
            r#"["get","b","k"]"#,
            r#""get""#,
        ];
        for j in bad {
            assert!(serde_json::from_str::<ReplicaOp>(j).is_err(), "accepted {j}");
        }
        for j in [
            r#"{"status":"nope"}"#,
            r#"{"object":null}"#,
            r#"{"status":"got","object":5}"#,
        ] {
            assert!(serde_json::from_str::<ReplicaResult>(j).is_err(), "accepted {j}");
        }
    }
}
