//! Serde types shared by every service: bucket properties, the public sibling envelope,
//! and the serde helpers they need. Internal node-to-node messages live here too as they
//! are added, so the services never define a wire type twice.

use serde::{Deserialize, Serialize};

use crate::ErrorCode;
use crate::crdt::CrdtType;
use crate::limits::{DEFAULT_MAX_SIBLINGS, MAX_N, MAX_SIBLINGS_LIMIT};
use crate::version::Resolution;

/// Serde helper: bytes as base64 (standard alphabet, padded, as every language's
/// standard library decodes it) in JSON.
pub mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes bytes as a padded base64 string.
    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    /// Deserializes a base64 string (padding optional).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let trimmed = s.trim_end_matches('=');
        STANDARD_NO_PAD.decode(trimmed).map_err(serde::de::Error::custom)
    }
}

/// How a bucket resolves concurrent writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictMode {
    /// Concurrent writes are kept as siblings for the application to resolve.
    #[default]
    Siblings,
    /// The latest write by timestamp wins; siblings are never returned.
    Lww,
    /// Values are CRDTs that merge on their own.
    Crdt,
}

/// A bucket's effective properties (defaults filled in).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketProps {
    /// Replicas per key.
    pub n: u8,
    /// Default read quorum.
    pub r: u8,
    /// Default write quorum.
    pub w: u8,
    /// Conflict resolution.
    pub conflict: ConflictMode,
    /// The CRDT type, required when `conflict` is `crdt` and absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crdt_type: Option<CrdtType>,
    /// Most siblings a write may leave.
    pub max_siblings: u32,
}

impl Default for BucketProps {
    fn default() -> Self {
        BucketProps {
            n: 3,
            r: 2,
            w: 2,
            conflict: ConflictMode::Siblings,
            crdt_type: None,
            max_siblings: DEFAULT_MAX_SIBLINGS,
        }
    }
}

/// A partial update of bucket properties (`PUT /v1/buckets/{bucket}`): absent fields keep
/// their value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketPropsPatch {
    /// See [`BucketProps::n`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u8>,
    /// See [`BucketProps::r`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r: Option<u8>,
    /// See [`BucketProps::w`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub w: Option<u8>,
    /// See [`BucketProps::conflict`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict: Option<ConflictMode>,
    /// See [`BucketProps::crdt_type`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crdt_type: Option<CrdtType>,
    /// See [`BucketProps::max_siblings`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_siblings: Option<u32>,
}

/// Bucket properties that are well-formed but not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid bucket properties: {0}")]
pub struct InvalidProps(pub String);

impl InvalidProps {
    /// Returns the wire error code.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::InvalidBucketProperties
    }
}

impl BucketProps {
    /// Returns these properties with `patch` applied, validated.
    ///
    /// # Errors
    /// [`InvalidProps`] when the result breaks a rule of [`BucketProps::validate`].
    pub fn apply(&self, patch: &BucketPropsPatch) -> Result<BucketProps, InvalidProps> {
        let mut p = self.clone();
        if let Some(n) = patch.n {
            p.n = n;
        }
        if let Some(r) = patch.r {
            p.r = r;
        }
        if let Some(w) = patch.w {
            p.w = w;
        }
        if let Some(c) = patch.conflict {
            p.conflict = c;
            if c != ConflictMode::Crdt && patch.crdt_type.is_none() {
                p.crdt_type = None;
            }
        }
        if patch.crdt_type.is_some() {
            p.crdt_type = patch.crdt_type;
        }
        if let Some(m) = patch.max_siblings {
            p.max_siblings = m;
        }
        p.validate()?;
        Ok(p)
    }

    /// Checks the rules: 1 ≤ r, w ≤ n ≤ [`MAX_N`]; 1 ≤ `max_siblings` ≤
    /// [`MAX_SIBLINGS_LIMIT`]; `crdt_type` present exactly when `conflict` is `crdt`.
    ///
    /// # Errors
    /// [`InvalidProps`] naming the broken rule.
    pub fn validate(&self) -> Result<(), InvalidProps> {
        if self.n == 0 || self.n > MAX_N {
            return Err(InvalidProps(format!("n must be 1..={MAX_N}, got {}", self.n)));
        }
        if self.r == 0 || self.r > self.n || self.w == 0 || self.w > self.n {
            return Err(InvalidProps(format!(
                "r and w must be 1..=n ({}), got r={} w={}",
                self.n, self.r, self.w
            )));
        }
        if self.max_siblings == 0 || self.max_siblings > MAX_SIBLINGS_LIMIT {
            return Err(InvalidProps(format!(
                "max_siblings must be 1..={MAX_SIBLINGS_LIMIT}, got {}",
                self.max_siblings
            )));
        }
        match (self.conflict, self.crdt_type) {
            (ConflictMode::Crdt, None) => Err(InvalidProps("conflict \"crdt\" needs a crdt_type".into())),
            (ConflictMode::Siblings | ConflictMode::Lww, Some(_)) => Err(InvalidProps(
                "crdt_type is only allowed with conflict \"crdt\"".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Returns how puts and merges resolve versions in this bucket (CRDT buckets merge
    /// their values elsewhere; their version sets keep one sibling per write, like LWW).
    pub fn resolution(&self) -> Resolution {
        match self.conflict {
            ConflictMode::Siblings => Resolution::Siblings {
                max_siblings: self.max_siblings,
            },
            ConflictMode::Lww | ConflictMode::Crdt => Resolution::LastWriterWins,
        }
    }
}

/// One sibling in the public JSON envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiblingView {
    /// The value, base64.
    #[serde(with = "base64_bytes")]
    pub value: Vec<u8>,
    /// The value's media type.
    pub content_type: String,
    /// When the write was accepted, RFC 3339.
    pub last_modified: String,
}

/// The public JSON envelope of a read: `{"context": "...", "siblings": [...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiblingsEnvelope {
    /// The context token covering every sibling.
    pub context: String,
    /// The live siblings.
    pub siblings: Vec<SiblingView>,
}

/// Formats milliseconds since the Unix epoch as RFC 3339 UTC with milliseconds
/// (`1970-01-01T00:00:00.000Z`), by Howard Hinnant's civil-from-days algorithm.
pub fn rfc3339_from_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_values() {
        assert_eq!(rfc3339_from_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_from_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339_from_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_from_ms(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn bucket_defaults_match_the_api() {
        let p = BucketProps::default();
        assert_eq!((p.n, p.r, p.w, p.max_siblings), (3, 2, 2, 32));
        assert_eq!(
            serde_json::to_string(&p).expect("serialize"),
            r#"{"n":3,"r":2,"w":2,"conflict":"siblings","max_siblings":32}"#
        );
    }

    #[test]
    fn patches_are_validated() {
        let p = BucketProps::default();
        let patch: BucketPropsPatch = serde_json::from_str(r#"{"r":3,"w":1}"#).expect("parse");
        assert_eq!(p.apply(&patch).map(|q| (q.r, q.w)), Ok((3, 1)));
        let bad: BucketPropsPatch = serde_json::from_str(r#"{"r":4}"#).expect("parse");
        assert!(p.apply(&bad).is_err());
        let crdt: BucketPropsPatch = serde_json::from_str(r#"{"conflict":"crdt"}"#).expect("parse");
        assert!(p.apply(&crdt).is_err(), "crdt needs a type");
        let crdt: BucketPropsPatch =
            serde_json::from_str(r#"{"conflict":"crdt","crdt_type":"counter"}"#).expect("parse");
        assert_eq!(p.apply(&crdt).map(|q| q.crdt_type), Ok(Some(CrdtType::Counter)));
        assert!(serde_json::from_str::<BucketPropsPatch>(r#"{"nn":3}"#).is_err());
        assert!(
            p.apply(&BucketPropsPatch {
                max_siblings: Some(0),
                ..Default::default()
            })
            .is_err()
        );
    }
}

/// Node-to-node messages between coordinators and storage nodes (not the public
/// contract). Every replica call is a batch, so a caller can coalesce the operations
/// bound for one node into one request; a batch of one is the simple case.
pub mod internal {
    use serde::{Deserialize, Serialize};

    use crate::ErrorCode;
    use crate::dots::{Dot, DotSet};
    use crate::ids::{BucketName, NodeId};
    use crate::version::{Resolution, VersionedObject};

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
                    let h = object.context();
                    let record = idempotency.as_ref().map_or(0, |r| {
                        OVERHEAD + PER_DOT * (r.context.vector_len() + r.context.cloud_len())
                    });
                    OVERHEAD
                        + record
                        + key.len()
                        + PER_DOT * (h.vector_len() + h.cloud_len())
                        + object
                            .siblings()
                            .iter()
                            .map(|s| OVERHEAD + s.content_type.len() + b64(s.value.len()))
                            .sum::<usize>()
                }
                ReplicaOp::Get { key, .. } | ReplicaOp::TombstoneStatus { key, .. } => OVERHEAD + key.len(),
            }
        }
    }

    /// A batch of replica operations for one storage node.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ReplicaBatch {
        /// The operations, answered in the same order.
        pub ops: Vec<ReplicaOp>,
    }

    /// Where a write held for another node (sloppy quorum) should be delivered.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct HintTarget {
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
            /// The bucket's conflict resolution.
            resolution: Resolution,
            /// Set when this node holds the write for another (sloppy quorum).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            hint: Option<HintTarget>,
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
        /// Merge a copy of a key's versions (idempotent).
        Replicate {
            /// The bucket.
            bucket: BucketName,
            /// The key.
            key: String,
            /// The versions to merge.
            object: VersionedObject,
            /// The bucket's conflict resolution.
            resolution: Resolution,
            /// Set when this node holds the write for another (sloppy quorum).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            hint: Option<HintTarget>,
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
            resolution: Resolution,
            #[serde(default)]
            hint: Option<HintTarget>,
            #[serde(default)]
            deadline_ms: Option<u64>,
            #[serde(default)]
            idempotency: Option<IdempotencyClaim>,
        },
        Replicate {
            bucket: BucketName,
            key: String,
            object: VersionedObject,
            resolution: Resolution,
            #[serde(default)]
            hint: Option<HintTarget>,
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
        use serde::de::{
            self, DeserializeSeed, EnumAccess, IntoDeserializer, MapAccess, VariantAccess, Visitor,
        };
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
                let name: de::value::StrDeserializer<'_, A::Error> =
                    self.variant.as_str().into_deserializer();
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
            let json = r#"{"op":"tombstone_status","bucket":"b","key":"k","digest":"0123456789abcdeffedcba9876543210"}"#;
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
                Resolution::Siblings { max_siblings: 8 },
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
                    resolution: Resolution::LastWriterWins,
                    hint: Some(HintTarget {
                        node: NodeId::new("node-1").expect("id"),
                        address: "http://127.0.0.1:1".into(),
                    }),
                    deadline_ms: Some(1_700_000_000_000),
                    idempotency: None,
                },
                ReplicaOp::Replicate {
                    bucket: b.clone(),
                    key: "k".into(),
                    object: sample_object(),
                    resolution: Resolution::Siblings { max_siblings: 3 },
                    hint: None,
                    idempotency: None,
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
            let batch = ReplicaBatch { ops: every_op() };
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
}

/// Cluster metadata kept by the ring service and cached by every other service: the
/// ring, node liveness, bucket properties and hashed tokens.
pub mod cluster {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};

    use super::BucketProps;
    use crate::ids::{BucketName, NodeId, PartitionId, RingEpoch};
    use crate::ring::Ring;

    /// Most tokens the cluster stores.
    pub const MAX_TOKENS: usize = 10_000;
    /// Most buckets with explicit properties.
    pub const MAX_BUCKETS: usize = 100_000;

    /// An admin-made join: a node and where its internal API answers.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct NodeRegistration {
        /// The node's id (its StatefulSet pod name, or the id on its volume).
        pub node_id: NodeId,
        /// Its internal API address, `http://host:port`.
        pub address: String,
        /// Its failure domain, if known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub zone: Option<String>,
    }

    /// A liveness beat from a storage node (steers routing only; never a membership
    /// change).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Heartbeat {
        /// The node.
        pub node_id: NodeId,
        /// Where it answers now.
        pub address: String,
    }

    /// An admin-made replacement of a member by a new node, which takes exactly its
    /// partitions.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ReplaceRequest {
        /// The new node.
        pub new_node: NodeRegistration,
    }

    /// A node's state as the cluster sees it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum NodeState {
        /// Registered; its partitions are being handed to it.
        Joining,
        /// A member answering heartbeats.
        Up,
        /// A member whose heartbeats stopped (an outage, not a departure).
        Down,
        /// Being decommissioned; its data is being handed off.
        Leaving,
    }

    /// One node in the cluster view.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct NodeStatus {
        /// The node.
        pub node_id: NodeId,
        /// Its internal API address.
        pub address: String,
        /// Its failure domain.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub zone: Option<String>,
        /// Its state.
        pub state: NodeState,
        /// Milliseconds since its last heartbeat, if it ever sent one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub last_heartbeat_ms_ago: Option<u64>,
    }

    /// A partition being copied to a node that will hold it.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Handoff {
        /// The partition.
        pub partition: PartitionId,
        /// The node it is copied from.
        pub from: NodeId,
        /// The node receiving it.
        pub to: NodeId,
        /// Objects copied so far.
        pub objects: u64,
        /// True once copied.
        pub done: bool,
    }

    /// `GET /v1/cluster`: nodes, their state, the ring epoch, handoffs in progress.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ClusterView {
        /// The current ring epoch (0 before the first node joined).
        pub epoch: RingEpoch,
        /// Every known node.
        pub nodes: Vec<NodeStatus>,
        /// Handoffs of the membership change in progress, if any.
        pub handoffs: Vec<Handoff>,
    }

    /// A bucket's stored record.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct BucketRecord {
        /// Its effective properties.
        pub props: BucketProps,
        /// True once a write reached it: `n` can no longer change.
        #[serde(default)]
        pub has_data: bool,
    }

    /// What a token may do.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum Permission {
        /// Read objects and bucket properties.
        Read,
        /// Write and delete objects.
        Write,
        /// Bucket properties, tokens, membership.
        Admin,
    }

    /// Which buckets a token covers.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(untagged)]
    pub enum BucketScope {
        /// Every bucket: `"*"`.
        All(AllBuckets),
        /// These buckets.
        Only(Vec<BucketName>),
    }

    /// The `"*"` of [`BucketScope::All`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    pub enum AllBuckets {
        /// Every bucket.
        #[serde(rename = "*")]
        Star,
    }

    impl BucketScope {
        /// Returns true when the scope covers `bucket`.
        pub fn covers(&self, bucket: &BucketName) -> bool {
            match self {
                BucketScope::All(_) => true,
                BucketScope::Only(list) => list.contains(bucket),
            }
        }
    }

    /// A stored token: never the secret, only its SHA-256.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct TokenRecord {
        /// The token's public id (safe to show and log).
        pub id: String,
        /// Hex SHA-256 of the secret.
        pub sha256: String,
        /// The buckets it covers.
        pub buckets: BucketScope,
        /// What it may do there.
        pub permissions: Vec<Permission>,
        /// When it was created (ms since the Unix epoch).
        pub created_ms: u64,
    }

    /// Everything a coordinator caches, versioned: any change makes a larger `version`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ClusterState {
        /// Grows with every change of this document.
        pub version: u64,
        /// The ring, once a node has joined.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub ring: Option<Ring>,
        /// Every node and its state (liveness transitions bump `version`; heartbeats alone
        /// do not).
        pub nodes: Vec<NodeStatus>,
        /// Buckets with explicit properties (others have the defaults).
        pub buckets: BTreeMap<BucketName, BucketRecord>,
        /// Hashed tokens.
        pub tokens: Vec<TokenRecord>,
        /// The membership change in progress, if any.
        pub handoffs: Vec<Handoff>,
    }

    /// `ring` view for `GET /v1/ring` with `?bucket=&key=`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct KeyPlacement {
        /// The ring epoch.
        pub epoch: RingEpoch,
        /// The key's partition.
        pub partition: PartitionId,
        /// The N node ids, in order.
        pub preference_list: Vec<NodeId>,
        /// The sloppy-quorum fallbacks, in order.
        pub fallbacks: Vec<NodeId>,
    }
}
