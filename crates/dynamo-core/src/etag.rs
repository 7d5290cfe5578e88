//! Entity tags and write preconditions: `ETag`, `If-Match` and `If-None-Match: *`
//! (RFC 9110 §8.8.3 and §13.1), as pure values.
//!
//! An [`ETag`] is a strong validator of a key's version set: a hash of its siblings' dots
//! (tombstones included, each with its flag), never of the values. A dot names one write
//! (it is minted once, ever), so the dots stand for the contents, and the tag is the same
//! on every coordinator that merges the same replies: no key, no clock, no node id goes
//! into it. The history (the causal context) is left out on purpose: two replicas can
//! hold the same siblings with histories that differ in superseded dots (a truncation, a
//! context naming dots a replica never held), and a validator that changed with those
//! would fail preconditions although every version the client saw is still exactly there.
//!
//! [`Preconditions`] parses the two request headers and decides whether a write may go
//! ahead given what a quorum read found. The coordinator drives it; nothing here reads
//! or writes anything.

use xxhash_rust::xxh3::Xxh3Default;

use crate::ErrorCode;
use crate::version::VersionedObject;

/// Most entity tags one `If-Match` may list.
pub const MAX_IF_MATCH_TAGS: usize = 32;

/// A strong validator of a key's version set (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ETag(u128);

impl ETag {
    /// Returns the tag of `obj`'s version set.
    ///
    /// Encoding: the domain `dynamo-etag-v1`, then for each sibling in dot order
    /// `actor ‖ counter ‖ tombstone` (integers little-endian u64, the flag one byte),
    /// hashed with XXH3-128 (seed 0). Changing it changes every tag once (a client's
    /// `If-Match` then fails with `412` and it reads again), so it is versioned.
    pub fn of(obj: &VersionedObject) -> ETag {
        let mut h = Xxh3Default::new();
        h.update(b"dynamo-etag-v1");
        for s in obj.siblings() {
            h.update(&s.dot.actor.0.to_le_bytes());
            h.update(&s.dot.counter.to_le_bytes());
            h.update(&[u8::from(s.tombstone)]);
        }
        ETag(h.digest128())
    }

    /// Returns the opaque part (32 lowercase hex digits, no quotes).
    pub fn opaque(&self) -> String {
        format!("{:032x}", self.0)
    }
}

/// The header form: the opaque part in double quotes, e.g. `"0f3a…"` (a strong tag).
impl std::fmt::Display for ETag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"{:032x}\"", self.0)
    }
}

/// What `If-Match` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfMatch {
    /// `*`: a live value exists.
    Any,
    /// One of these strong tags (opaque parts, without quotes) is the current one. Weak
    /// tags of the header are left out: strong comparison never matches them.
    Tags(Vec<String>),
}

/// The preconditions of one write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preconditions {
    /// `If-Match`, when given.
    pub if_match: Option<IfMatch>,
    /// `If-None-Match: *`: no live value exists (tombstones do not count).
    pub if_none_match_any: bool,
}

/// A malformed `If-Match` or `If-None-Match`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidPrecondition(String);

impl InvalidPrecondition {
    /// Returns the wire error code.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::InvalidRequest
    }
}

impl Preconditions {
    /// Parses the raw `If-Match` and `If-None-Match` header values of a write.
    ///
    /// `If-Match` is `*` or a comma-separated list of 1 to [`MAX_IF_MATCH_TAGS`] entity
    /// tags (`"opaque"` or `W/"opaque"`); `If-None-Match` on a write must be `*`, the only
    /// form the API gives a meaning to.
    ///
    /// # Errors
    /// [`InvalidPrecondition`] (`invalid_request`) for anything else, saying what.
    pub fn parse(
        if_match: Option<&str>,
        if_none_match: Option<&str>,
    ) -> Result<Preconditions, InvalidPrecondition> {
        let if_match = match if_match.map(str::trim) {
            None => None,
            Some("*") => Some(IfMatch::Any),
            Some(list) => Some(IfMatch::Tags(parse_tags(list)?)),
        };
        let if_none_match_any = match if_none_match.map(str::trim) {
            None => false,
            Some("*") => true,
            Some(_) => {
                return Err(InvalidPrecondition(
                    "If-None-Match on a write must be `*` (applied only if no live value exists)".into(),
                ));
            }
        };
        Ok(Preconditions {
            if_match,
            if_none_match_any,
        })
    }

    /// Returns true when the write has no precondition.
    pub fn is_empty(&self) -> bool {
        self.if_match.is_none() && !self.if_none_match_any
    }

    /// Returns whether the write may go ahead, given what a quorum read found (`None`: no
    /// replica knows the key).
    ///
    /// `If-Match` with tags holds when the found version set's [`ETag`] is listed; a
    /// tombstone has a version set too (its `404` carries the tag), so a write can be
    /// made conditional on "still deleted as I saw it". `If-Match: *` holds when a live
    /// value exists; `If-None-Match: *` when none does. Both must hold when both are given.
    pub fn holds(&self, found: Option<&VersionedObject>) -> bool {
        let live = found.is_some_and(|o| !o.is_deleted());
        let matched = match &self.if_match {
            None => true,
            Some(IfMatch::Any) => live,
            Some(IfMatch::Tags(tags)) => found.is_some_and(|o| tags.contains(&ETag::of(o).opaque())),
        };
        matched && !(self.if_none_match_any && live)
    }
}

/// Parses `#entity-tag` (RFC 9110 §8.8.3): `[W/] DQUOTE *etagc DQUOTE`, comma-separated
/// with optional whitespace. A comma may sit inside a tag, so this walks the quotes
/// instead of splitting on commas.
fn parse_tags(list: &str) -> Result<Vec<String>, InvalidPrecondition> {
    let bad = |why: &str| {
        InvalidPrecondition(format!(
            "If-Match must be `*` or a list of quoted entity tags: {why}"
        ))
    };
    let mut tags = Vec::new();
    let mut count = 0;
    let mut rest = list.trim_start_matches([' ', '\t', ',']);
    if rest.is_empty() {
        return Err(bad("it is empty"));
    }
    while !rest.is_empty() {
        let (weak, after) = match rest.strip_prefix("W/") {
            Some(r) => (true, r),
            None => (false, rest),
        };
        let Some(after) = after.strip_prefix('"') else {
            return Err(bad("a tag does not start with a double quote"));
        };
        let Some(end) = after.find('"') else {
            return Err(bad("a tag has no closing double quote"));
        };
        let opaque = &after[..end];
        if !opaque.bytes().all(|b| b == 0x21 || (0x23..=0x7e).contains(&b)) {
            return Err(bad("a tag holds a character other than visible ASCII"));
        }
        count += 1;
        if count > MAX_IF_MATCH_TAGS {
            return Err(bad(&format!("more than {MAX_IF_MATCH_TAGS} tags")));
        }
        if !weak {
            tags.push(opaque.to_owned());
        }
        let tail = after[end + 1..].trim_start_matches([' ', '\t']);
        rest = match tail.strip_prefix(',') {
            Some(t) => t.trim_start_matches([' ', '\t', ',']),
            None if tail.is_empty() => tail,
            None => return Err(bad("tags must be separated by commas")),
        };
    }
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DotSet;
    use crate::ids::ActorId;
    use crate::version::{ConflictRule, NewWrite};

    const RULE: ConflictRule = ConflictRule::Siblings { max_siblings: 32 };

    fn written(values: &[&[u8]]) -> VersionedObject {
        let mut o = VersionedObject::new();
        for (i, v) in values.iter().enumerate() {
            let w = NewWrite::value(v.to_vec(), "text/plain", 1_000 + i as u64);
            o.put(&DotSet::new(), ActorId(7), w, RULE).expect("put");
        }
        o
    }

    // Goal: the tag names the version set, not the bytes or the moment: the same siblings
    // give the same tag whatever their values, every write changes it, and a tombstone
    // has a tag of its own.
    #[test]
    fn a_tag_follows_the_dots() {
        let a = written(&[b"x"]);
        assert_eq!(ETag::of(&a), ETag::of(&a.clone()));
        let b = written(&[b"y"]);
        assert_eq!(
            ETag::of(&a),
            ETag::of(&b),
            "same dots, same tag: values are not hashed"
        );
        let two = written(&[b"x", b"x"]);
        assert_ne!(ETag::of(&a), ETag::of(&two));
        let mut deleted = a.clone();
        let ctx = deleted.context().clone();
        deleted
            .put(&ctx, ActorId(7), NewWrite::tombstone(5_000), RULE)
            .expect("delete");
        assert_ne!(ETag::of(&a), ETag::of(&deleted));
        let shown = ETag::of(&a).to_string();
        assert!(
            shown.starts_with('"') && shown.ends_with('"') && shown.len() == 34,
            "{shown}"
        );
    }

    // Goal: the header grammar: `*`, lists with spaces and commas inside tags, weak tags
    // kept out, and every malformed form refused with a message.
    #[test]
    fn headers_parse() {
        let p = Preconditions::parse(Some(" * "), None).expect("star");
        assert_eq!(p.if_match, Some(IfMatch::Any));
        let p = Preconditions::parse(Some(r#""a", W/"b" ,"c,d""#), Some("*")).expect("list");
        assert_eq!(p.if_match, Some(IfMatch::Tags(vec!["a".into(), "c,d".into()])));
        assert!(p.if_none_match_any);
        assert!(Preconditions::parse(None, None).expect("none").is_empty());
        for bad in ["", "abc", r#""a"#, r#""a" "b""#, "\"a\u{e9}\""] {
            assert!(Preconditions::parse(Some(bad), None).is_err(), "{bad:?}");
        }
        let many = vec!["\"t\""; MAX_IF_MATCH_TAGS + 1].join(",");
        assert!(Preconditions::parse(Some(&many), None).is_err());
        assert!(Preconditions::parse(None, Some(r#""a""#)).is_err());
    }

    // Goal: when each precondition holds: If-Match on the current tag (a tombstone's
    // too), If-Match: * on a live value only, If-None-Match: * unless a live value exists.
    #[test]
    fn preconditions_hold_as_documented() {
        let live = written(&[b"x"]);
        let mut tomb = live.clone();
        let ctx = tomb.context().clone();
        tomb.put(&ctx, ActorId(7), NewWrite::tombstone(9), RULE)
            .expect("delete");
        let tag =
            |o: &VersionedObject| Preconditions::parse(Some(&ETag::of(o).to_string()), None).expect("tag");
        assert!(tag(&live).holds(Some(&live)));
        assert!(!tag(&live).holds(Some(&tomb)));
        assert!(!tag(&live).holds(None));
        assert!(tag(&tomb).holds(Some(&tomb)));
        let weak = Preconditions::parse(Some(&format!("W/{}", ETag::of(&live))), None).expect("weak");
        assert!(!weak.holds(Some(&live)), "strong comparison");
        let any = Preconditions::parse(Some("*"), None).expect("any");
        assert!(any.holds(Some(&live)) && !any.holds(Some(&tomb)) && !any.holds(None));
        let absent = Preconditions::parse(None, Some("*")).expect("absent");
        assert!(!absent.holds(Some(&live)) && absent.holds(Some(&tomb)) && absent.holds(None));
    }
}
