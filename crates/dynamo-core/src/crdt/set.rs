//! The add-wins observed-remove set (OR-set), standalone and embedded in a map.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::dot_store::{DotMap, DotStore, Dots, has_observed_dot, mint, within_context};
use super::{CrdtError, InvalidState, MAX_SET_ELEMENT_BYTES, MAX_SET_ELEMENTS};
use crate::dots::{Dot, DotSet};
use crate::ids::ActorId;

/// The dots of each present element. Shared by [`OrSet`] and a map's set fields.
///
/// Serialized as `{"element": [[actor, counter], …], …}`.
pub(crate) type SetStore = DotMap<Dots>;

/// An add-wins set of strings (an optimized OR-set over dots, as Riak's ORSWOT).
///
/// - **add** mints one fresh dot for the operation and gives it to every element added,
///   replacing the dots those elements had here (this replica has seen them).
/// - **remove** takes the causal context the client observed and drops, from each named
///   element, the dots that context contains. A dot it does not contain is an add the
///   client never saw; it survives, so a concurrent add wins over a remove.
/// - **merge** is the dot-store join (see the module doc); contexts unite.
///
/// Bounds: an element is at most [`MAX_SET_ELEMENT_BYTES`]; an add that would take the set
/// past [`MAX_SET_ELEMENTS`] is refused. Merges never refuse, so concurrent adds can leave
/// a set above the bound, after which only adds of present elements, and removes, pass.
///
/// Serialized as `{"entries": {"element": [[actor, counter], …]}, "context": <DotSet>}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "OrSetRepr", into = "OrSetRepr")]
pub struct OrSet {
    store: SetStore,
    context: DotSet,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OrSetRepr {
    entries: SetStore,
    context: DotSet,
}

impl TryFrom<OrSetRepr> for OrSet {
    type Error = InvalidState;
    fn try_from(r: OrSetRepr) -> Result<Self, InvalidState> {
        validate_set_store(&r.entries, &r.context)?;
        Ok(OrSet {
            store: r.entries,
            context: r.context,
        })
    }
}

impl From<OrSet> for OrSetRepr {
    fn from(s: OrSet) -> Self {
        OrSetRepr {
            entries: s.store,
            context: s.context,
        }
    }
}

impl OrSet {
    /// Returns an empty set with an empty context.
    pub fn new() -> Self {
        OrSet::default()
    }

    /// Adds `elements` on behalf of `actor`, the replica holding this state, under one
    /// freshly minted dot. Repeated elements count once; an empty list changes nothing.
    ///
    /// # Errors
    /// [`CrdtError::ElementTooLong`], or [`CrdtError::TooManyElements`] when the list, or
    /// the set after the add, would pass [`MAX_SET_ELEMENTS`]. On error nothing changes.
    pub fn add<S: AsRef<str>>(&mut self, elements: &[S], actor: ActorId) -> Result<(), CrdtError> {
        check_add(&self.store, elements)?;
        if elements.is_empty() {
            return Ok(());
        }
        let dot = mint(&mut self.context, actor);
        apply_add(&mut self.store, elements, dot);
        Ok(())
    }

    /// Removes from each of `elements` the adds that `observed` (the context the client
    /// read) contains. Adds the client did not observe survive (add-wins).
    ///
    /// # Errors
    /// - [`CrdtError::ContextNotSeen`] when this replica has not seen every dot of
    ///   `observed`: it could miss an add the client meant to remove, so it refuses rather
    ///   than lose the remove. Merging a fresher replica's state and retrying cures it.
    /// - [`CrdtError::ElementNotObserved`] when an element holds no dot that `observed`
    ///   contains here: absent, or present only through adds the client did not see
    ///   (Riak's precondition; the client should read again).
    /// - [`CrdtError::ElementTooLong`], [`CrdtError::TooManyElements`] for an oversized
    ///   list.
    ///
    /// On error nothing changes.
    pub fn remove<S: AsRef<str>>(&mut self, elements: &[S], observed: &DotSet) -> Result<(), CrdtError> {
        if !self.context.covers(observed) {
            return Err(CrdtError::ContextNotSeen);
        }
        check_remove(&self.store, elements, observed)?;
        apply_remove(&mut self.store, elements, observed);
        Ok(())
    }

    /// Returns true when `element` is in the set.
    pub fn contains(&self, element: &str) -> bool {
        self.store.0.contains_key(element)
    }

    /// Iterates over the elements in byte order.
    pub fn elements(&self) -> impl Iterator<Item = &str> {
        self.store.0.keys().map(String::as_str)
    }

    /// Returns the number of elements.
    pub fn len(&self) -> usize {
        self.store.0.len()
    }

    /// Returns true when the set has no element.
    pub fn is_empty(&self) -> bool {
        self.store.0.is_empty()
    }

    /// Returns the causal context: every add this state has seen. A client passes it back
    /// as `observed` to remove what it read.
    pub fn context(&self) -> &DotSet {
        &self.context
    }

    /// Merges `other` into `self` (dot-store join, contexts unite). Never fails.
    pub fn merge(&mut self, other: &OrSet) {
        self.store.join(&self.context, &other.store, &other.context);
        self.context.union(&other.context);
    }

    /// Returns the JSON view: the elements as a sorted array of strings.
    pub fn value(&self) -> Value {
        set_value(&self.store)
    }
}

/// Returns a set store's JSON view: a sorted array of strings.
pub(crate) fn set_value(store: &SetStore) -> Value {
    Value::Array(store.0.keys().map(|e| Value::String(e.clone())).collect())
}

fn check_element(element: &str) -> Result<(), CrdtError> {
    if element.len() > MAX_SET_ELEMENT_BYTES {
        return Err(CrdtError::ElementTooLong {
            len: element.len(),
            max: MAX_SET_ELEMENT_BYTES,
        });
    }
    Ok(())
}

fn check_list_len(count: usize) -> Result<(), CrdtError> {
    if count > MAX_SET_ELEMENTS {
        return Err(CrdtError::TooManyElements {
            count,
            max: MAX_SET_ELEMENTS,
        });
    }
    Ok(())
}

/// Checks an add against `store` without changing it.
pub(crate) fn check_add<S: AsRef<str>>(store: &SetStore, elements: &[S]) -> Result<(), CrdtError> {
    check_list_len(elements.len())?;
    let mut fresh = BTreeSet::new();
    for e in elements {
        let e = e.as_ref();
        check_element(e)?;
        if !store.0.contains_key(e) {
            fresh.insert(e);
        }
    }
    let count = store.0.len() + fresh.len();
    if !fresh.is_empty() && count > MAX_SET_ELEMENTS {
        return Err(CrdtError::TooManyElements {
            count,
            max: MAX_SET_ELEMENTS,
        });
    }
    Ok(())
}

/// Applies a checked add under `dot` (already minted into the context).
pub(crate) fn apply_add<S: AsRef<str>>(store: &mut SetStore, elements: &[S], dot: Dot) {
    for e in elements {
        // The element's earlier dots are all in this replica's context, so dropping them
        // is an overwrite every replica agrees on; one dot per element keeps state small.
        store.0.insert(e.as_ref().to_owned(), Dots::single(dot));
    }
}

/// Checks a remove against `store` without changing it (the caller has checked that the
/// context covers `observed`).
pub(crate) fn check_remove<S: AsRef<str>>(
    store: &SetStore,
    elements: &[S],
    observed: &DotSet,
) -> Result<(), CrdtError> {
    check_list_len(elements.len())?;
    for e in elements {
        let e = e.as_ref();
        check_element(e)?;
        if !store
            .0
            .get(e)
            .is_some_and(|dots| has_observed_dot(dots, observed))
        {
            return Err(CrdtError::ElementNotObserved {
                element: e.to_owned(),
            });
        }
    }
    Ok(())
}

/// Applies a checked remove.
pub(crate) fn apply_remove<S: AsRef<str>>(store: &mut SetStore, elements: &[S], observed: &DotSet) {
    for e in elements {
        let e = e.as_ref();
        if let Some(dots) = store.0.get_mut(e) {
            dots.remove_dots(observed);
            if dots.is_bottom() {
                store.0.remove(e);
            }
        }
    }
}

/// Checks a deserialized set store: element sizes, no element without dots, every dot in
/// the context. The element count is not checked: merges may pass it.
pub(crate) fn validate_set_store(store: &SetStore, ctx: &DotSet) -> Result<(), InvalidState> {
    for (element, dots) in &store.0 {
        if element.len() > MAX_SET_ELEMENT_BYTES {
            return Err(InvalidState("set element too long"));
        }
        if dots.is_bottom() {
            return Err(InvalidState("set element without dots"));
        }
    }
    if !within_context(store, ctx) {
        return Err(InvalidState("dot outside the context"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: ActorId = ActorId(1);
    const B: ActorId = ActorId(2);

    fn set_of(elements: &[&str], actor: ActorId) -> OrSet {
        let mut s = OrSet::new();
        s.add(elements, actor).expect("add");
        s
    }

    #[test]
    fn crdt_set_concurrent_add_and_remove_add_wins() {
        // Goal: add-wins. Method: replica 2 removes "x" with what it observed while
        // replica 1 re-adds "x" concurrently; merge both ways.
        let mut r1 = set_of(&["x", "y"], A);
        let mut r2 = r1.clone();
        let observed = r2.context().clone();
        r2.remove(&["x"], &observed).expect("remove");
        assert!(!r2.contains("x"));
        r1.add(&["x"], A).expect("re-add");
        let (mut m12, mut m21) = (r1.clone(), r2.clone());
        m12.merge(&r2);
        m21.merge(&r1);
        assert_eq!(m12, m21);
        assert!(m12.contains("x"), "the unobserved add survives");
        assert!(m12.contains("y"));
    }

    #[test]
    fn crdt_set_remove_drops_exactly_the_observed_adds() {
        // Goal: remove takes only what the client saw. Method: two concurrent adds of
        // "x"; remove with a context that saw one, then with one that saw both.
        let r1 = set_of(&["x"], A);
        let r2 = set_of(&["x"], B);
        let mut m = r1.clone();
        m.merge(&r2);
        m.remove(&["x"], r1.context()).expect("remove what r1 saw");
        assert!(m.contains("x"), "r2's add was not observed");
        let observed = m.context().clone();
        m.remove(&["x"], &observed).expect("remove the rest");
        assert!(!m.contains("x"));
        // Replicas that still hold either add converge on the removal.
        let mut all = r1.clone();
        all.merge(&r2);
        all.merge(&m);
        assert!(!all.contains("x"));
    }

    #[test]
    fn crdt_set_remove_preconditions_change_nothing() {
        let mut s = set_of(&["x"], A);
        let before = s.clone();
        let observed = s.context().clone();
        // An element never added.
        assert_eq!(
            s.remove(&["x", "nope"], &observed),
            Err(CrdtError::ElementNotObserved {
                element: "nope".into()
            })
        );
        // A context that saw nothing of "x".
        assert_eq!(
            s.remove(&["x"], &DotSet::new()),
            Err(CrdtError::ElementNotObserved { element: "x".into() })
        );
        // A context this replica has not caught up with.
        let ahead = set_of(&["z"], B);
        let mut wider = observed.clone();
        wider.union(ahead.context());
        assert_eq!(s.remove(&["x"], &wider), Err(CrdtError::ContextNotSeen));
        assert_eq!(s, before, "refused removes change nothing");
    }

    #[test]
    fn crdt_set_bounds_are_typed_errors() {
        let mut s = OrSet::new();
        let long = "é".repeat(MAX_SET_ELEMENT_BYTES / 2 + 1);
        assert_eq!(
            s.add(&["ok", long.as_str()], A),
            Err(CrdtError::ElementTooLong {
                len: long.len(),
                max: MAX_SET_ELEMENT_BYTES
            })
        );
        assert!(s.is_empty() && s.context().is_empty(), "nothing changed");
        let exact = "x".repeat(MAX_SET_ELEMENT_BYTES);
        s.add(&[exact.as_str()], A).expect("exactly at the bound");

        let many: Vec<String> = (0..MAX_SET_ELEMENTS).map(|i| i.to_string()).collect();
        let mut full = OrSet::new();
        full.add(&many, A).expect("fill to the bound");
        assert_eq!(full.len(), MAX_SET_ELEMENTS);
        let before = full.clone();
        assert_eq!(
            full.add(&["one more"], A),
            Err(CrdtError::TooManyElements {
                count: MAX_SET_ELEMENTS + 1,
                max: MAX_SET_ELEMENTS
            })
        );
        assert_eq!(full, before);
        full.add(&["0"], A)
            .expect("re-adding a present element adds nothing");
        let observed = full.context().clone();
        full.remove(&["0"], &observed).expect("remove at the bound");
        full.add(&["one more"], A).expect("room again");
    }

    #[test]
    fn crdt_set_golden_json() {
        let mut s = set_of(&["b", "a"], A);
        s.merge(&set_of(&["c"], B));
        let json = serde_json::to_string(&s).expect("serialize");
        assert_eq!(
            json,
            r#"{"entries":{"a":[[1,1]],"b":[[1,1]],"c":[[2,1]]},"context":{"vv":[[1,1],[2,1]]}}"#
        );
        assert_eq!(serde_json::from_str::<OrSet>(&json).expect("parse"), s);
        assert_eq!(s.value(), serde_json::json!(["a", "b", "c"]));
    }

    #[test]
    fn crdt_set_deserialization_checks_the_invariants() {
        let bad = [
            // A dot outside the context.
            r#"{"entries":{"a":[[1,2]]},"context":{"vv":[[1,1]]}}"#,
            // An element without dots.
            r#"{"entries":{"a":[]},"context":{"vv":[[1,1]]}}"#,
            // A zero counter.
            r#"{"entries":{"a":[[1,0]]},"context":{"vv":[[1,1]]}}"#,
            // An unknown field.
            r#"{"entries":{},"context":{"vv":[]},"extra":1}"#,
        ];
        for json in bad {
            assert!(serde_json::from_str::<OrSet>(json).is_err(), "{json}");
        }
        let long = format!(
            r#"{{"entries":{{"{}":[[1,1]]}},"context":{{"vv":[[1,1]]}}}}"#,
            "x".repeat(MAX_SET_ELEMENT_BYTES + 1)
        );
        assert!(serde_json::from_str::<OrSet>(&long).is_err());
    }
}
