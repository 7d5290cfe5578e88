//! The causal context token: a [`DotSet`] as the opaque `X-Dynamo-Context` string.
//!
//! Format v1: base64url without padding of `0x01 ‖ postcard(vv, cloud)`, where `vv` is the
//! list of `(actor, n)` sorted by actor and `cloud` the list of out-of-order dots sorted
//! by `(actor, counter)`, all integers varint-encoded by postcard.
//!
//! Decoding is strict: a token is accepted only if it is the one canonical encoding of a
//! compact dot set within the bounds of [`crate::limits`], so every set has exactly one
//! token and a malformed or oversized token is a typed [`ContextError`], never a panic.
//!
//! The token is not signed: it can only make a write replace siblings the writer is
//! already allowed to replace (it has write permission on the key), so forging one gains
//! nothing a well-formed request could not do.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::dots::{Dot, DotSet};
use crate::ids::ActorId;
use crate::limits::{MAX_CONTEXT_DOTS, MAX_CONTEXT_TOKEN_BYTES, MAX_VECTOR_ENTRIES};

const VERSION_1: u8 = 1;

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
    /// Empty, or a format version this server does not know.
    #[error("context has an unknown format version")]
    UnknownVersion,
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

#[derive(Serialize, Deserialize)]
struct TokenV1 {
    vv: Vec<(u64, u64)>,
    cloud: Vec<(u64, u64)>,
}

fn payload(set: &DotSet) -> Vec<u8> {
    let token = TokenV1 {
        vv: set.vector().map(|(a, n)| (a.0, n)).collect(),
        cloud: set.cloud().map(|d| (d.actor.0, d.counter)).collect(),
    };
    let mut out = vec![VERSION_1];
    // Serializing plain vectors of integers into a Vec cannot fail.
    out.extend(postcard::to_allocvec(&token).unwrap_or_default());
    out
}

/// Encodes a dot set as a context token.
pub fn encode(set: &DotSet) -> String {
    URL_SAFE_NO_PAD.encode(payload(set))
}

/// Decodes a context token.
///
/// # Errors
/// A [`ContextError`] for a token that is too long, not base64url, of an unknown version,
/// malformed, non-canonical, or beyond the vector and dot bounds.
pub fn decode(token: &str) -> Result<DotSet, ContextError> {
    if token.len() > MAX_CONTEXT_TOKEN_BYTES {
        return Err(ContextError::TooLong {
            len: token.len(),
            max: MAX_CONTEXT_TOKEN_BYTES,
        });
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| ContextError::NotBase64)?;
    let Some((&VERSION_1, body)) = bytes.split_first() else {
        return Err(ContextError::UnknownVersion);
    };
    let (t, rest): (TokenV1, &[u8]) = postcard::take_from_bytes(body).map_err(|_| ContextError::Malformed)?;
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
    if payload(&set) != bytes {
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

    #[test]
    fn golden_tokens() {
        assert_eq!(encode(&DotSet::new()), "AQAA");
        let s: DotSet = [
            Dot::new(ActorId(1), 1),
            Dot::new(ActorId(1), 2),
            Dot::new(ActorId(2), 5),
        ]
        .into_iter()
        .collect();
        let token = encode(&s);
        assert_eq!(token, "AQEBAgECBQ");
        assert_eq!(decode(&token), Ok(s));
    }

    #[test]
    fn bad_tokens_are_typed_errors() {
        assert_eq!(decode(""), Err(ContextError::UnknownVersion));
        assert_eq!(decode("!!!"), Err(ContextError::NotBase64));
        assert_eq!(
            decode("AQAA="),
            Err(ContextError::NotBase64),
            "padding is not canonical"
        );
        assert_eq!(decode("AgAA"), Err(ContextError::UnknownVersion));
        assert_eq!(decode("AQ"), Err(ContextError::Malformed));
        assert_eq!(decode("AQAAAA"), Err(ContextError::Malformed), "trailing bytes");
        assert!(matches!(
            decode(&"A".repeat(5000)),
            Err(ContextError::TooLong { .. })
        ));
        // vv entry with counter 0
        assert_eq!(
            decode(&URL_SAFE_NO_PAD.encode([1, 1, 1, 0, 0])),
            Err(ContextError::NotCanonical)
        );
        // unsorted vector
        assert_eq!(
            decode(&URL_SAFE_NO_PAD.encode([1, 2, 2, 1, 1, 1, 0])),
            Err(ContextError::NotCanonical)
        );
        // cloud dot that should have been folded into the vector
        assert_eq!(
            decode(&URL_SAFE_NO_PAD.encode([1, 0, 1, 1, 1])),
            Err(ContextError::NotCanonical)
        );
        // a varint with a redundant continuation byte
        assert_eq!(
            decode(&URL_SAFE_NO_PAD.encode([1, 1, 1, 0x81, 0x00, 0])),
            Err(ContextError::NotCanonical)
        );
        for e in [ContextError::NotBase64, ContextError::Malformed] {
            assert_eq!(e.code(), crate::ErrorCode::InvalidContext);
        }
    }

    #[test]
    fn oversized_sets_are_refused() {
        let big: DotSet = (0..(MAX_VECTOR_ENTRIES as u64 + 1))
            .map(|a| Dot::new(ActorId(a), 1))
            .collect();
        assert!(matches!(
            decode(&encode(&big)),
            Err(ContextError::TooLarge { entries: 65, .. })
        ));
    }

    proptest! {
        #[test]
        fn round_trip(s in arb_dotset()) {
            prop_assert_eq!(decode(&encode(&s)), Ok(s));
        }

        #[test]
        fn decoder_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let token = URL_SAFE_NO_PAD.encode(&bytes);
            if let Ok(set) = decode(&token) {
                // Whatever is accepted is canonical: it re-encodes to the same token.
                prop_assert_eq!(encode(&set), token);
            }
        }

        #[test]
        fn decoder_never_panics_on_strings(s in "\\PC{0,80}") {
            let _ = decode(&s);
        }
    }
}
