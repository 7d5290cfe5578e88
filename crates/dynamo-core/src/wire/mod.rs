//! Every contract between processes, defined once and used by both sides: bucket
//! properties and the public sibling envelope here; the replica and handoff messages in
//! [`internal`]; the cluster metadata the ring service keeps in [`cluster`]; the public admin
//! bodies in [`public`]; the internal route paths in [`routes`].

use serde::{Deserialize, Serialize};

use crate::ErrorCode;
use crate::crdt::CrdtType;
use crate::limits::{DEFAULT_MAX_SIBLINGS, MAX_N, MAX_SIBLINGS_LIMIT};
use crate::version::ConflictRule;

/// A bucket name as the API describes it (the OpenAPI `pattern` of every bucket in a
/// path, a query or a body): the rule [`crate::BucketName::new`] enforces, 1 to
/// [`crate::limits::MAX_BUCKET_BYTES`] bytes of `[a-z0-9._-]`. Schema attributes need a
/// literal, so they repeat it; the coordinator's OpenAPI tests hold every copy to this.
pub const BUCKET_NAME_PATTERN: &str = "^[a-z0-9._-]{1,63}$";

/// A node id as the API describes it: the rule [`crate::NodeId::new`] enforces, 1 to
/// [`crate::limits::MAX_NODE_ID_BYTES`] bytes of `[a-z0-9._-]`.
pub const NODE_ID_PATTERN: &str = "^[a-z0-9._-]{1,63}$";

/// The header carrying the opaque causal context between a read and the next write (an
/// object's version set, or a CRDT's own context), lowercase as HTTP/2 sends it.
pub const CONTEXT_HEADER: &str = "x-dynamo-context";

/// The header naming a CRDT value's type (`counter`, `set`, `register`, `map`) on CRDT
/// reads and operation answers.
pub const CRDT_TYPE_HEADER: &str = "x-dynamo-crdt-type";

pub mod cluster;
pub mod internal;
pub mod public;
pub mod routes;

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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BucketProps {
    /// Replicas per key (1 to 7).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 7))]
    pub n: u8,
    /// Default read quorum (1 to `n`).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 7))]
    pub r: u8,
    /// Default write quorum (1 to `n`).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 7))]
    pub w: u8,
    /// Conflict resolution.
    pub conflict: ConflictMode,
    /// The CRDT type, required when `conflict` is `crdt` and absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crdt_type: Option<CrdtType>,
    /// Most siblings a write may leave (1 to 256).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 256))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BucketPropsPatch {
    /// See [`BucketProps::n`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 7))]
    pub n: Option<u8>,
    /// See [`BucketProps::r`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 7))]
    pub r: Option<u8>,
    /// See [`BucketProps::w`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 7))]
    pub w: Option<u8>,
    /// See [`BucketProps::conflict`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict: Option<ConflictMode>,
    /// See [`BucketProps::crdt_type`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crdt_type: Option<CrdtType>,
    /// See [`BucketProps::max_siblings`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 256))]
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

    /// Returns how puts and merges resolve versions in this bucket.
    pub fn conflict_rule(&self) -> ConflictRule {
        match (self.conflict, self.crdt_type) {
            (ConflictMode::Crdt, Some(crdt_type)) => ConflictRule::Crdt { crdt_type },
            (ConflictMode::Lww, _) => ConflictRule::LastWriterWins,
            // A CRDT bucket without a type is refused when its properties are set, so the
            // second arm is never taken; keeping every version is the safe reading.
            (ConflictMode::Siblings, _) | (ConflictMode::Crdt, None) => ConflictRule::Siblings {
                max_siblings: self.max_siblings,
            },
        }
    }
}

/// One sibling in the public JSON envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SiblingView {
    /// The value, base64.
    #[serde(with = "base64_bytes")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Byte))]
    pub value: Vec<u8>,
    /// The value's media type.
    pub content_type: String,
    /// When the write was accepted, RFC 3339.
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub last_modified: String,
}

/// The public JSON envelope of a read: `{"context": "...", "siblings": [...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SiblingsEnvelope {
    /// The context token covering every sibling.
    pub context: String,
    /// The version set's `ETag` (quoted, as the header carries it); absent from servers
    /// older than conditional writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
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

    // Goal: the patterns the API description gives for bucket names and node ids are
    // the rules the newtypes enforce: the same byte class and the same length limit.
    #[test]
    fn name_patterns_are_the_newtypes_rules() {
        use crate::limits::{MAX_BUCKET_BYTES, MAX_NODE_ID_BYTES};
        use crate::{BucketName, NodeId};
        assert_eq!(
            BUCKET_NAME_PATTERN,
            format!("^[a-z0-9._-]{{1,{MAX_BUCKET_BYTES}}}$")
        );
        assert_eq!(NODE_ID_PATTERN, format!("^[a-z0-9._-]{{1,{MAX_NODE_ID_BYTES}}}$"));
        let class: String = ('a'..='z').chain('0'..='9').chain(['.', '_', '-']).collect();
        assert!(BucketName::new(class.clone()).is_ok());
        assert!(NodeId::new(class).is_ok());
        for bad in ["", "A", "a/b", "a b", "é"] {
            assert!(BucketName::new(bad).is_err(), "{bad:?}");
            assert!(NodeId::new(bad).is_err(), "{bad:?}");
        }
        assert!(BucketName::new("a".repeat(MAX_BUCKET_BYTES)).is_ok());
        assert!(BucketName::new("a".repeat(MAX_BUCKET_BYTES + 1)).is_err());
        assert!(NodeId::new("a".repeat(MAX_NODE_ID_BYTES + 1)).is_err());
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
