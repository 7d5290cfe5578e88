//! Built-in sibling resolvers, for [`Client::update`] (the one call that resolves
//! siblings: read, resolve, write back with the read's context, again if a concurrent
//! write slipped in) and [`Object::resolve_with`].
//!
//! - [`lww`] keeps the newest sibling (last writer wins, ties broken by the bytes).
//! - [`union`] merges siblings that are each a JSON array of strings into their sorted
//!   union.
//! - [`Merge`] is for application types that know how to merge two versions of
//!   themselves; [`Client::update_merge`] decodes every sibling as such a type, folds
//!   them, lets the caller change the result, and writes it back.
//!
//! ```no_run
//! # async fn demo(client: dynamo_client::Client) -> Result<(), dynamo_client::ClientError> {
//! use std::collections::BTreeSet;
//! use dynamo_client::{Sibling, Value, resolve};
//!
//! // Collapse the siblings of a key to the newest one.
//! client
//!     .update("sessions", "alice", |current| {
//!         match current.and_then(|object| resolve::lww(&object.siblings)) {
//!             Some(newest) => newest.to_value(),
//!             None => Value::text("new session"),
//!         }
//!     })
//!     .await?;
//!
//! // Add a tag to a set kept as a JSON array, merging whatever concurrent writers left.
//! client
//!     .update_merge("tags", "post-1", |current: Option<BTreeSet<String>>| {
//!         let mut tags = current.unwrap_or_default();
//!         tags.insert("rust".to_owned());
//!         tags
//!     })
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # Merging sets by union resurrects removes
//! The classic caveat of the Dynamo paper's shopping cart (§4.4: "deleted items can
//! resurface"). A merge that is a plain union cannot tell "removed by one writer" from
//! "never seen by the other": when a remove (a write with the context, without the item)
//! is concurrent with any write that still holds the item, say a re-add or just another
//! add made from an older read, the next union brings the item back. Adds are never lost;
//! removes can be.
//!
//! The recommendation: keep a set with removes in a **CRDT set bucket**
//! (`{"conflict": "crdt", "crdt_type": "set"}`, through [`Client::crdt`]), whose remove
//! takes away exactly the adds its read observed, so only a concurrent add survives it
//! (add wins) and a removed item never comes back by itself. On a siblings bucket, the
//! type must track removals itself to merge them right: keep removed items in a second
//! set and subtract it after the union (a 2P-set: an item once removed can never be
//! added again), or tag each add with a unique id and remove ids (an OR-set, which is
//! what the CRDT set does for you). Use plain union where removes are rare and a
//! resurrected item is harmless.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::client::Client;
use crate::error::ClientError;
use crate::json::{JsonObject, decode_sibling, json_value};
use crate::object::{Object, RequestOptions, Sibling};

/// Returns the newest sibling: the greatest `last_modified`, ties broken by the greatest
/// value bytes, then content type, so every client picks the same one whatever order the
/// siblings came in. `None` only for an empty slice.
///
/// `last_modified` is compared as text: the server writes it in one fixed form (UTC,
/// milliseconds, `2025-01-31T12:00:00.000Z`), whose text order is time order. It is the
/// clock of the storage node that took the write, so between nodes whose clocks differ
/// the "newest" may not be the last written: a resolver that must not lose a write
/// merges instead ([`union`], [`Merge`]).
pub fn lww(siblings: &[Sibling]) -> Option<&Sibling> {
    siblings.iter().max_by(|a, b| newer(a, b))
}

/// The order [`lww`] picks by.
fn newer(a: &Sibling, b: &Sibling) -> Ordering {
    a.last_modified
        .cmp(&b.last_modified)
        .then_with(|| a.value.cmp(&b.value))
        .then_with(|| a.content_type.cmp(&b.content_type))
}

/// Returns the sorted union, without duplicates, of siblings that are each a JSON array
/// of strings (a set). Write it back with [`crate::Value::json`].
///
/// Removes are not merged: read the [module docs](self) before using it for a set that
/// loses items.
///
/// # Errors
/// [`ClientError::ValueDecode`] for the first sibling that is not a JSON array of
/// strings: a sibling skipped here would be deleted by the write that follows.
pub fn union(siblings: &[Sibling]) -> Result<Vec<String>, ClientError> {
    let mut all = BTreeSet::new();
    for (i, sibling) in siblings.iter().enumerate() {
        all.extend(decode_sibling::<Vec<String>>(i, sibling)?);
    }
    Ok(all.into_iter().collect())
}

/// A type whose versions merge into one: the resolver [`Client::update_merge`] applies to
/// a key's siblings.
///
/// `merge` must be commutative, associative and idempotent (a join: the result holds
/// everything either side holds), because siblings come in no particular order and the
/// same version can be merged more than once (it is in the siblings of the next read
/// when an update is retried). A union of sets is one; "keep the larger counter" is one;
/// "add the two counters" is not (merging a sibling twice would count it twice).
///
/// Removes need care: see the [module docs](self).
///
/// ```
/// use std::collections::BTreeSet;
/// use dynamo_client::resolve::Merge;
///
/// #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
/// struct Cart {
///     items: BTreeSet<String>,
/// }
///
/// impl Merge for Cart {
///     fn merge(self, other: Cart) -> Cart {
///         Cart { items: self.items.merge(other.items) }
///     }
/// }
///
/// let a = Cart { items: ["milk".to_owned()].into() };
/// let b = Cart { items: ["eggs".to_owned()].into() };
/// assert_eq!(a.merge(b).items.len(), 2);
/// ```
pub trait Merge: Sized {
    /// Returns the merge of two versions.
    fn merge(self, other: Self) -> Self;
}

/// A set merges by union (it serializes as a sorted JSON array, as [`union`] reads).
impl<T: Ord> Merge for BTreeSet<T> {
    fn merge(mut self, other: Self) -> Self {
        self.extend(other);
        self
    }
}

impl Client {
    /// Updates a key holding JSON of type `T`: decodes every sibling as `T`, folds them
    /// with [`Merge::merge`], hands the merged value to `change` (`None` for a key
    /// without a live value), and writes what it returns back with the read's context,
    /// replacing every sibling it merged. Returns what is stored afterwards.
    ///
    /// It is [`Client::update`] with the decoding and merging done for you, so it retries
    /// the same way: if a concurrent write slipped in between the read and the write, the
    /// stored siblings (its write and the concurrent one) are merged again and `change`
    /// runs again on that, at most the client's `update_attempts` times. `change` must
    /// therefore give the same result when applied to a value that already holds its
    /// change ("add the item", "set the field"), never "append one more".
    ///
    /// A remove made here (a `change` that takes an item out) is undone by the next
    /// merge with any concurrent sibling that still holds the item: see the
    /// [module docs](self) for why, and for the CRDT set that avoids it.
    ///
    /// # Errors
    /// As [`Client::update`]; [`ClientError::ValueDecode`] when a sibling is not JSON of
    /// type `T` (nothing is written: merging without it would delete it);
    /// [`ClientError::InvalidInput`] with `invalid_json` when `change`'s result cannot be
    /// JSON.
    pub async fn update_merge<T, F>(
        &self,
        bucket: &str,
        key: &str,
        mut change: F,
    ) -> Result<JsonObject<T>, ClientError>
    where
        T: Merge + Serialize + DeserializeOwned,
        F: FnMut(Option<T>) -> T,
    {
        let stored = self
            .try_update_with(bucket, key, &RequestOptions::default(), |current| {
                let merged = match current {
                    Some(object) => merged::<T>(object)?,
                    None => None,
                };
                json_value(&change(merged))
            })
            .await?;
        JsonObject::decode(&stored)
    }
}

/// Decodes every sibling of `object` as `T` and folds them.
fn merged<T: Merge + DeserializeOwned>(object: &Object) -> Result<Option<T>, ClientError> {
    let mut acc: Option<T> = None;
    for (i, sibling) in object.siblings.iter().enumerate() {
        let value = decode_sibling::<T>(i, sibling)?;
        acc = Some(match acc {
            Some(acc) => acc.merge(value),
            None => value,
        });
    }
    Ok(acc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::Context;

    fn sib(value: &str, at: &str) -> Sibling {
        Sibling {
            value: value.as_bytes().to_vec(),
            content_type: "application/json".into(),
            last_modified: at.into(),
        }
    }

    const T1: &str = "2025-01-01T00:00:01.000Z";
    const T2: &str = "2025-01-01T00:00:02.000Z";

    // Goal: lww picks the newest, and among equal times the same sibling whatever the
    // order they arrive in.
    #[test]
    fn lww_picks_the_newest_and_breaks_ties_by_bytes() {
        let old = sib("b-old", T1);
        let new = sib("a-new", T2);
        assert_eq!(lww(&[old.clone(), new.clone()]), Some(&new));
        assert_eq!(lww(&[new.clone(), old.clone()]), Some(&new));

        let x = sib("x", T2);
        let y = sib("y", T2);
        assert_eq!(
            lww(&[x.clone(), y.clone()]).map(|s| &s.value),
            Some(&b"y".to_vec())
        );
        assert_eq!(
            lww(&[y.clone(), x.clone()]).map(|s| &s.value),
            Some(&b"y".to_vec())
        );
        assert_eq!(lww(&[]), None);
    }

    #[test]
    fn union_sorts_and_deduplicates_and_refuses_non_sets() {
        let got = union(&[sib(r#"["pear","apple"]"#, T1), sib(r#"["apple","fig"]"#, T2)]).expect("sets");
        assert_eq!(got, ["apple", "fig", "pear"]);
        assert_eq!(union(&[]).expect("empty"), Vec::<String>::new());

        let e = union(&[sib(r#"["a"]"#, T1), sib(r#"{"a":1}"#, T2)]).expect_err("not a set");
        assert!(matches!(e, ClientError::ValueDecode { sibling: 1, .. }), "{e:?}");
    }

    // Goal: the fold sees every sibling, and the set's merge is a join: the same result
    // in any order and when a version is merged twice.
    #[test]
    fn merged_folds_every_sibling_in_any_order() {
        let object = |values: &[&str]| Object {
            context: Context::new("c"),
            siblings: values.iter().map(|v| sib(v, T1)).collect(),
            etag: None,
        };
        let want: BTreeSet<String> = ["a", "b", "c"].map(String::from).into();
        let a = r#"["a"]"#;
        let bc = r#"["b","c"]"#;
        for order in [vec![a, bc], vec![bc, a], vec![a, bc, a]] {
            let got: Option<BTreeSet<String>> = merged(&object(&order)).expect("decodes");
            assert_eq!(got.as_ref(), Some(&want), "{order:?}");
        }
        assert_eq!(merged::<BTreeSet<String>>(&object(&[])).expect("empty"), None);
        assert!(merged::<BTreeSet<String>>(&object(&[a, "1"])).is_err());
    }
}
