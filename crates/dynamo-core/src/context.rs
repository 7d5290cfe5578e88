//! The causal context token: a [`DotSet`] as the opaque `X-Dynamo-Context` string,
//! sealed by the cluster so that a client can hand back only what it was given.
//!
//! Format v2: base64url without padding of `0x02 ‖ key id ‖ payload ‖ tag`, where the
//! payload is `postcard(vv, cloud)` (`vv` the list of `(actor, n)` sorted by actor,
//! `cloud` the out-of-order dots sorted by `(actor, counter)`, integers varint-encoded)
//! and the tag the first 16 bytes of HMAC-SHA256 under the key named by the id, over a
//! domain string, the bucket and key the context was issued for, and everything before
//! the tag. [`ContextKeys`] holds the keys: the first seals, every one opens, so keys
//! rotate by adding a new first key and dropping the old one once its contexts are gone.
//!
//! Why sealed: a context decides which siblings a write replaces. An unsealed one could
//! name another actor with a huge counter and delete concurrent acknowledged writes the
//! client never saw, or be carried from one key to another whose dots it happens to
//! name. A sealed one can only say what a read or write of this very key answered.
//!
//! Opening is strict: the tag is checked first (in constant time), then the payload must
//! be the one canonical encoding of a compact dot set within the bounds of
//! [`crate::limits`]; anything else is a typed [`ContextError`], never a panic.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::dots::{Dot, DotSet};
use crate::ids::ActorId;
use crate::keys::{Key, KeyError, KeyRing};
use crate::limits::{MAX_CONTEXT_DOTS, MAX_CONTEXT_TOKEN_BYTES, MAX_VECTOR_ENTRIES};

const VERSION_2: u8 = 2;
/// Bytes of the tag kept from the HMAC.
const TAG_BYTES: usize = 16;
/// Separates this use of the keys from any other.
const DOMAIN: &[u8] = b"dynamo-context-v2\0";

/// Why a context token was refused. Every variant maps to `invalid_context`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    /// Longer than [`MAX_CONTEXT_TOKEN_BYTES`].
    #[error("context is {len} bytes; the limit is {max}")]
    TooLong {
        /// Length of the refused token.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not base64url without padding.
    #[error("context is not base64url")]
    NotBase64,
    /// Empty, or a format version this server does not know (format 1, unsealed, is no
    /// longer accepted).
    #[error("context has an unknown format version; read the key again for a current one")]
    UnknownVersion,
    /// Sealed with a key this coordinator does not hold (retired, or another cluster's).
    #[error("context was sealed with key {0}, which this cluster no longer accepts; read the key again")]
    UnknownKey(u8),
    /// The tag does not match: altered, truncated, or issued for another key.
    #[error("context was not issued by this cluster for this key")]
    Forged,
    /// The payload does not decode, or has bytes left over.
    #[error("context is malformed")]
    Malformed,
    /// Decodes, but is not the canonical encoding of a compact set.
    #[error("context is not in canonical form")]
    NotCanonical,
    /// More vector entries or out-of-order dots than the limits allow.
    #[error(
        "context has {entries} vector entries and {dots} extra dots; the limits are {max_entries} and {max_dots}"
    )]
    TooLarge {
        /// Vector entries in the token.
        entries: usize,
        /// Out-of-order dots in the token.
        dots: usize,
        /// [`MAX_VECTOR_ENTRIES`].
        max_entries: usize,
        /// [`MAX_CONTEXT_DOTS`].
        max_dots: usize,
    },
}

impl ContextError {
    /// Returns the wire error code (always `invalid_context`).
    pub fn code(&self) -> crate::ErrorCode {
        crate::ErrorCode::InvalidContext
    }
}

/// The keys of a coordinator: the first seals, all of them open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextKeys(KeyRing);

impl From<KeyRing> for ContextKeys {
    fn from(ring: KeyRing) -> Self {
        ContextKeys(ring)
    }
}

impl ContextKeys {
    /// Keys in order of preference: `keys[0]` seals new contexts.
    ///
    /// # Errors
    /// [`KeyError`] for no key, too many, or a repeated id.
    pub fn new(keys: Vec<Key>) -> Result<ContextKeys, KeyError> {
        KeyRing::new(keys).map(ContextKeys)
    }

    /// Reads a key file (see [`crate::keys`]), the sealing key first.
    ///
    /// # Errors
    /// [`KeyError`] naming the first bad line or rule.
    pub fn parse(text: &str) -> Result<ContextKeys, KeyError> {
        KeyRing::parse(text).map(ContextKeys)
    }

    /// Returns the key that seals.
    pub fn sealing(&self) -> &Key {
        self.0.signing()
    }

    /// Seals `set` as the context of `bucket`/`key`.
    pub fn seal(&self, set: &DotSet, bucket: &str, key: &str) -> String {
        let k = self.sealing();
        let mut bytes = vec![VERSION_2, k.id()];
        bytes.extend(payload(set));
        let tag = mac(k, bucket, key, &bytes).finalize().into_bytes();
        bytes.extend_from_slice(&tag[..TAG_BYTES]);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Opens a context token for `bucket`/`key`.
    ///
    /// # Errors
    /// A [`ContextError`] for a token that is too long, not base64url, of an unknown
    /// version or key, forged or issued for another key, malformed, non-canonical, or
    /// beyond the vector and dot bounds.
    pub fn open(&self, token: &str, bucket: &str, key: &str) -> Result<DotSet, ContextError> {
        let bytes = token_bytes(token)?;
        let (sealed, tag) = split(&bytes)?;
        let id = sealed[1];
        let k = self.0.find(id).ok_or(ContextError::UnknownKey(id))?;
        mac(k, bucket, key, sealed)
            .verify_truncated_left(tag)
            .map_err(|_| ContextError::Forged)?;
        parse_payload(&sealed[2..])
    }
}

/// The tag's HMAC: over a domain string, the bucket and key (each length-prefixed, so a
/// byte cannot move across the boundary) and the sealed bytes.
fn mac(k: &Key, bucket: &str, key: &str, sealed: &[u8]) -> Hmac<Sha256> {
    let mut mac = k.hmac();
    mac.update(DOMAIN);
    for part in [bucket.as_bytes(), key.as_bytes()] {
        mac.update(&(part.len() as u32).to_be_bytes());
        mac.update(part);
    }
    mac.update(sealed);
    mac
}

/// Reads the dots of a token without checking its seal: for tests and tools that
/// analyse tokens a server gave them. Never use it to decide a write.
///
/// # Errors
/// As [`ContextKeys::open`], except that no tag or key is checked.
pub fn read_unverified(token: &str) -> Result<DotSet, ContextError> {
    let bytes = token_bytes(token)?;
    let (sealed, _) = split(&bytes)?;
    parse_payload(&sealed[2..])
}

fn token_bytes(token: &str) -> Result<Vec<u8>, ContextError> {
    if token.len() > MAX_CONTEXT_TOKEN_BYTES {
        return Err(ContextError::TooLong {
            len: token.len(),
            max: MAX_CONTEXT_TOKEN_BYTES,
        });
    }
    URL_SAFE_NO_PAD.decode(token).map_err(|_| ContextError::NotBase64)
}

/// Splits a token into the sealed part (version, key id, payload) and the tag.
fn split(bytes: &[u8]) -> Result<(&[u8], &[u8]), ContextError> {
    if bytes.first() != Some(&VERSION_2) {
        return Err(ContextError::UnknownVersion);
    }
    if bytes.len() < 2 + TAG_BYTES {
        return Err(ContextError::Malformed);
    }
    Ok(bytes.split_at(bytes.len() - TAG_BYTES))
}

#[derive(Serialize, Deserialize)]
struct Payload {
    vv: Vec<(u64, u64)>,
    cloud: Vec<(u64, u64)>,
}

fn payload(set: &DotSet) -> Vec<u8> {
    let p = Payload {
        vv: set.vector().map(|(a, n)| (a.0, n)).collect(),
        cloud: set.cloud().map(|d| (d.actor.0, d.counter)).collect(),
    };
    // Serializing plain vectors of integers into a Vec cannot fail.
    postcard::to_allocvec(&p).unwrap_or_default()
}

fn parse_payload(body: &[u8]) -> Result<DotSet, ContextError> {
    let (t, rest): (Payload, &[u8]) = postcard::take_from_bytes(body).map_err(|_| ContextError::Malformed)?;
    if !rest.is_empty() {
        return Err(ContextError::Malformed);
    }
    if t.vv.len() > MAX_VECTOR_ENTRIES || t.cloud.len() > MAX_CONTEXT_DOTS {
        return Err(ContextError::TooLarge {
            entries: t.vv.len(),
            dots: t.cloud.len(),
            max_entries: MAX_VECTOR_ENTRIES,
            max_dots: MAX_CONTEXT_DOTS,
        });
    }
    if t.vv.iter().chain(&t.cloud).any(|&(_, n)| n == 0) {
        return Err(ContextError::NotCanonical);
    }
    let mut set: DotSet = t.cloud.iter().map(|&(a, c)| Dot::new(ActorId(a), c)).collect();
    for &(a, n) in &t.vv {
        // A prefix 1..=n is the union of its dots; build it without n insertions.
        set.union(&prefix(ActorId(a), n));
    }
    // Re-encoding must give back the very bytes: this rejects unsorted or duplicate
    // entries, non-compact clouds and non-minimal varints in one check.
    if payload(&set) != body {
        return Err(ContextError::NotCanonical);
    }
    Ok(set)
}

fn prefix(actor: ActorId, n: u64) -> DotSet {
    let repr = crate::dots::DotSetRepr {
        vv: vec![(actor, n)],
        cloud: Vec::new(),
    };
    DotSet::try_from(repr).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dots::tests::arb_dotset;
    use proptest::prelude::*;

    fn keys() -> ContextKeys {
        ContextKeys::new(vec![Key::new(7, &[0x42; 32]).expect("key")]).expect("keys")
    }

    fn sample() -> DotSet {
        [
            Dot::new(ActorId(1), 1),
            Dot::new(ActorId(1), 2),
            Dot::new(ActorId(2), 5),
        ]
        .into_iter()
        .collect()
    }

    /// Re-encodes `bytes` as a token sealed with `keys` for `b`/`k` (to build tokens
    /// whose payload is bad but whose seal is good).
    fn reseal(keys: &ContextKeys, payload: &[u8], b: &str, k: &str) -> String {
        let key = keys.sealing();
        let mut bytes = vec![VERSION_2, key.id()];
        bytes.extend_from_slice(payload);
        let tag = mac(key, b, k, &bytes).finalize().into_bytes();
        bytes.extend_from_slice(&tag[..TAG_BYTES]);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn golden_token() {
        let token = keys().seal(&sample(), "b", "k");
        assert_eq!(token, "AgcBAQIBAgWVnaCtEcwzdK9SVZAHUqiy");
        assert_eq!(keys().open(&token, "b", "k"), Ok(sample()));
        assert_eq!(read_unverified(&token), Ok(sample()));
    }

    #[test]
    fn a_context_opens_only_for_its_key_and_unaltered() {
        let k = keys();
        let token = k.seal(&sample(), "b", "k");
        assert_eq!(k.open(&token, "b", "other"), Err(ContextError::Forged));
        assert_eq!(k.open(&token, "other", "k"), Err(ContextError::Forged));
        // The bucket and key are length-prefixed: moving a byte across does not collide.
        assert_ne!(k.seal(&sample(), "ab", "c"), k.seal(&sample(), "a", "bc"));
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).expect("b64");
        for i in 0..bytes.len() {
            bytes[i] ^= 1;
            let altered = URL_SAFE_NO_PAD.encode(&bytes);
            assert!(k.open(&altered, "b", "k").is_err(), "byte {i} altered");
            bytes[i] ^= 1;
        }
        let truncated = URL_SAFE_NO_PAD.encode(&bytes[..bytes.len() - 1]);
        assert_eq!(k.open(&truncated, "b", "k"), Err(ContextError::Forged));
        // Another cluster's key with the same id, and a retired id.
        let other = ContextKeys::new(vec![Key::new(7, &[0x43; 32]).expect("key")]).expect("keys");
        assert_eq!(other.open(&token, "b", "k"), Err(ContextError::Forged));
        let rotated = ContextKeys::new(vec![Key::new(8, &[0x44; 32]).expect("key")]).expect("keys");
        assert_eq!(rotated.open(&token, "b", "k"), Err(ContextError::UnknownKey(7)));
    }

    #[test]
    fn keys_rotate_by_sealing_with_the_first_and_opening_with_all() {
        let old = keys();
        let token = old.seal(&sample(), "b", "k");
        let both = ContextKeys::parse(&format!(
            "# new key first\n{}\n\n{}\n",
            Key::new(8, &[0x44; 32]).expect("key").to_line(),
            old.sealing().to_line()
        ))
        .expect("parse");
        assert_eq!(both.sealing().id(), 8);
        assert_eq!(
            both.open(&token, "b", "k"),
            Ok(sample()),
            "old contexts still open"
        );
        let fresh = both.seal(&sample(), "b", "k");
        assert_eq!(old.open(&fresh, "b", "k"), Err(ContextError::UnknownKey(8)));
    }

    #[test]
    fn bad_tokens_are_typed_errors() {
        let k = keys();
        let open = |t: &str| k.open(t, "b", "k");
        assert_eq!(open(""), Err(ContextError::UnknownVersion));
        assert_eq!(open("!!!"), Err(ContextError::NotBase64));
        assert_eq!(
            open("AQAA"),
            Err(ContextError::UnknownVersion),
            "format 1 is unsealed"
        );
        assert_eq!(open("AgcA"), Err(ContextError::Malformed), "too short for a tag");
        assert!(matches!(
            open(&"A".repeat(5000)),
            Err(ContextError::TooLong { .. })
        ));
        let sealed = |payload: &[u8]| reseal(&k, payload, "b", "k");
        assert_eq!(open(&sealed(&[1])), Err(ContextError::Malformed));
        assert_eq!(
            open(&sealed(&[0, 0, 0])),
            Err(ContextError::Malformed),
            "trailing bytes"
        );
        // vv entry with counter 0
        assert_eq!(open(&sealed(&[1, 1, 0, 0])), Err(ContextError::NotCanonical));
        // unsorted vector
        assert_eq!(
            open(&sealed(&[2, 2, 1, 1, 1, 0])),
            Err(ContextError::NotCanonical)
        );
        // cloud dot that should have been folded into the vector
        assert_eq!(open(&sealed(&[0, 1, 1, 1])), Err(ContextError::NotCanonical));
        // a varint with a redundant continuation byte
        assert_eq!(
            open(&sealed(&[1, 1, 0x81, 0x00, 0])),
            Err(ContextError::NotCanonical)
        );
        for e in [ContextError::NotBase64, ContextError::Forged] {
            assert_eq!(e.code(), crate::ErrorCode::InvalidContext);
        }
    }

    #[test]
    fn oversized_sets_are_refused() {
        let big: DotSet = (0..(MAX_VECTOR_ENTRIES as u64 + 1))
            .map(|a| Dot::new(ActorId(a), 1))
            .collect();
        let k = keys();
        assert!(matches!(
            k.open(&k.seal(&big, "b", "k"), "b", "k"),
            Err(ContextError::TooLarge { entries: 65, .. })
        ));
    }

    #[test]
    fn the_largest_context_fits_the_token_limit() {
        let mut most: DotSet = (0..MAX_CONTEXT_DOTS as u64)
            .map(|i| Dot::new(ActorId(0), u64::MAX - 2 * i))
            .collect();
        for a in 0..MAX_VECTOR_ENTRIES as u64 {
            most.union(&prefix(ActorId(u64::MAX - a), u64::MAX - 1));
        }
        assert_eq!(
            (most.vector().count(), most.cloud().count()),
            (MAX_VECTOR_ENTRIES, MAX_CONTEXT_DOTS)
        );
        let token = keys().seal(&most, "b", "k");
        assert!(token.len() <= MAX_CONTEXT_TOKEN_BYTES, "{}", token.len());
    }

    proptest! {
        #[test]
        fn round_trip(s in arb_dotset(), b in "[a-z]{1,8}", key in "\\PC{0,20}") {
            let k = keys();
            prop_assert_eq!(k.open(&k.seal(&s, &b, &key), &b, &key), Ok(s));
        }

        #[test]
        fn opening_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let token = URL_SAFE_NO_PAD.encode(&bytes);
            let _ = keys().open(&token, "b", "k");
            if let Ok(set) = read_unverified(&token) {
                // Whatever parses is canonical: its payload re-encodes to the same bytes.
                prop_assert_eq!(payload(&set), bytes[2..bytes.len() - TAG_BYTES].to_vec());
            }
        }

        #[test]
        fn opening_never_panics_on_strings(s in "\\PC{0,80}") {
            let _ = keys().open(&s, "b", "k");
        }

        #[test]
        fn a_sealed_payload_that_parses_is_canonical(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let k = keys();
            if let Ok(set) = k.open(&reseal(&k, &bytes, "b", "k"), "b", "k") {
                prop_assert_eq!(payload(&set), bytes);
            }
        }
    }
}
