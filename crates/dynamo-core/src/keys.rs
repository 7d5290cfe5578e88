//! Secret keys and key rings: the one shape of every cluster secret that signs or seals
//! (context keys, the member and control keys of internal requests).
//!
//! A [`KeyRing`] is an ordered list of [`Key`]s, each with a one-byte id that travels
//! with whatever it signed: the first key signs, every key verifies. Keys therefore rotate
//! without a flag day: add the new key second everywhere, move it first, drop the old one
//! once nothing it signed is still in use. On disk and in environment variables a ring is
//! a key file: one `<id>:<base64url secret>` line per key, the signing key first.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Most keys a ring holds at once (the one signing and those still accepted).
pub const MAX_KEYS: usize = 8;
/// Fewest and most bytes of a key's secret.
pub const KEY_BYTES: std::ops::RangeInclusive<usize> = 32..=64;

/// Why a key or key ring was refused (a configuration error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// No key at all.
    #[error("no key given")]
    Empty,
    /// More than [`MAX_KEYS`].
    #[error("{0} keys; at most {MAX_KEYS} are held at once")]
    TooMany(usize),
    /// Two keys share an id.
    #[error("key id {0} appears twice")]
    DuplicateId(u8),
    /// A secret outside [`KEY_BYTES`].
    #[error("key {id} has {len} bytes; a key has 32 to 64")]
    BadLength {
        /// The key's id.
        id: u8,
        /// Its length.
        len: usize,
    },
    /// A line of a key file is not `<id>:<base64url secret>`.
    #[error("line {0} of the key file is not `<id 0-255>:<base64url secret>`")]
    BadLine(usize),
}

/// One secret key: an id (carried in what it signs) and 32 to 64 secret bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    id: u8,
    secret: Vec<u8>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({}, <redacted>)", self.id)
    }
}

impl Key {
    /// A key with `id` and `secret` (32 to 64 bytes, from a CSPRNG).
    ///
    /// # Errors
    /// [`KeyError::BadLength`].
    pub fn new(id: u8, secret: &[u8]) -> Result<Key, KeyError> {
        if !KEY_BYTES.contains(&secret.len()) {
            return Err(KeyError::BadLength {
                id,
                len: secret.len(),
            });
        }
        Ok(Key {
            id,
            secret: secret.to_vec(),
        })
    }

    /// Returns the key's id.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// Returns the key as a line of a key file (`<id>:<base64url secret>`).
    pub fn to_line(&self) -> String {
        format!("{}:{}", self.id, URL_SAFE_NO_PAD.encode(&self.secret))
    }

    /// Returns an HMAC-SHA256 keyed with the secret, ready for input.
    pub fn hmac(&self) -> Hmac<Sha256> {
        // HMAC takes a key of any length; the length was checked at `new`.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.secret).unwrap_or_else(|_| unreachable!())
    }
}

/// Keys in order of preference: the first signs, all of them verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRing(Vec<Key>);

impl KeyRing {
    /// A ring of `keys`, `keys[0]` signing.
    ///
    /// # Errors
    /// [`KeyError`] for no key, too many, or a repeated id.
    pub fn new(keys: Vec<Key>) -> Result<KeyRing, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        if keys.len() > MAX_KEYS {
            return Err(KeyError::TooMany(keys.len()));
        }
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].iter().any(|o| o.id == k.id) {
                return Err(KeyError::DuplicateId(k.id));
            }
        }
        Ok(KeyRing(keys))
    }

    /// Reads a key file: one `<id>:<base64url secret>` per line, the signing key first;
    /// blank lines and lines starting with `#` are skipped.
    ///
    /// # Errors
    /// [`KeyError`] naming the first bad line or rule.
    pub fn parse(text: &str) -> Result<KeyRing, KeyError> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || KeyError::BadLine(i + 1);
            let (id, secret) = line.split_once(':').ok_or_else(bad)?;
            let id: u8 = id.trim().parse().map_err(|_| bad())?;
            let secret = URL_SAFE_NO_PAD.decode(secret.trim()).map_err(|_| bad())?;
            keys.push(Key::new(id, &secret)?);
        }
        KeyRing::new(keys)
    }

    /// Returns the key that signs.
    pub fn signing(&self) -> &Key {
        &self.0[0]
    }

    /// Returns the key with `id`, if the ring holds it.
    pub fn find(&self, id: u8) -> Option<&Key> {
        self.0.iter().find(|k| k.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_rings_are_refused() {
        assert_eq!(KeyRing::new(Vec::new()), Err(KeyError::Empty));
        assert_eq!(Key::new(1, &[0; 31]), Err(KeyError::BadLength { id: 1, len: 31 }));
        assert_eq!(Key::new(1, &[0; 65]), Err(KeyError::BadLength { id: 1, len: 65 }));
        let k = Key::new(1, &[0; 32]).expect("key");
        assert_eq!(
            KeyRing::new(vec![k.clone(), k.clone()]),
            Err(KeyError::DuplicateId(1))
        );
        let nine = (0..9).map(|i| Key::new(i, &[0; 32]).expect("key")).collect();
        assert_eq!(KeyRing::new(nine), Err(KeyError::TooMany(9)));
        assert_eq!(KeyRing::parse("1-abc"), Err(KeyError::BadLine(1)));
        assert_eq!(KeyRing::parse("\n300:AAAA"), Err(KeyError::BadLine(2)));
        assert_eq!(KeyRing::parse("# only a comment"), Err(KeyError::Empty));
        assert!(!format!("{k:?}").contains("AAAA"), "the secret is not in Debug");
    }

    #[test]
    fn a_key_file_round_trips_with_the_signing_key_first() {
        let a = Key::new(8, &[0x44; 32]).expect("key");
        let b = Key::new(7, &[0x42; 48]).expect("key");
        let ring =
            KeyRing::parse(&format!("# new first\n{}\n\n {} \n", a.to_line(), b.to_line())).expect("parse");
        assert_eq!(ring.signing(), &a);
        assert_eq!(ring.find(7), Some(&b));
        assert_eq!(ring.find(9), None);
    }
}
