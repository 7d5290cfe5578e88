//! The add-wins map (OR-map) of counters, sets, registers and nested maps.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::counter::{CounterStore, counter_apply, counter_value};
use super::dot_store::{DotMap, DotStore, Dots, has_observed_dot, mint, within_context};
use super::register::{RegisterStore, register_assign, register_value};
use super::set::{SetStore, apply_add, apply_remove, check_add, check_remove, set_value, validate_set_store};
use super::{CrdtError, CrdtOp, CrdtType, InvalidState, MAX_FIELD_NAME_BYTES, MAX_MAP_DEPTH, MAX_MAP_FIELDS};
use crate::dots::{Dot, DotSet};
use crate::ids::ActorId;

/// One field of a map: its presence dots and its state, a dot store sharing the map's
/// context.
///
/// Every update of the field mints a dot that replaces the presence dots this replica
/// holds, so a field stays present after an update that leaves its state empty (a set
/// emptied by `remove`). The field is present while either part holds a dot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Field<S> {
    presence: Dots,
    state: S,
}

impl<S> Field<S> {
    fn touch(&mut self, dot: Dot) {
        self.presence = Dots::single(dot);
    }
}

impl<S: DotStore> DotStore for Field<S> {
    fn is_bottom(&self) -> bool {
        self.presence.is_bottom() && self.state.is_bottom()
    }

    fn join(&mut self, ctx: &DotSet, other: &Self, other_ctx: &DotSet) {
        self.presence.join(ctx, &other.presence, other_ctx);
        self.state.join(ctx, &other.state, other_ctx);
    }

    fn remove_dots(&mut self, observed: &DotSet) {
        self.presence.remove_dots(observed);
        self.state.remove_dots(observed);
    }

    fn any_dot(&self, pred: &mut dyn FnMut(Dot) -> bool) -> bool {
        self.presence.any_dot(pred) || self.state.any_dot(pred)
    }
}

/// The fields of a map, one name space per kind: the field key is (name, kind), as in
/// Riak, so one name used as a counter on one replica and as a set on another is two
/// fields that never collide.
///
/// Serialized as `{"counters": {name: field}, "sets": …, "registers": …, "maps": …}`,
/// empty kinds left out; a field is `{"presence": [[actor, counter], …], "state": …}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MapStore {
    #[serde(default, skip_serializing_if = "DotMap::is_empty")]
    counters: DotMap<Field<CounterStore>>,
    #[serde(default, skip_serializing_if = "DotMap::is_empty")]
    sets: DotMap<Field<SetStore>>,
    #[serde(default, skip_serializing_if = "DotMap::is_empty")]
    registers: DotMap<Field<RegisterStore>>,
    #[serde(default, skip_serializing_if = "DotMap::is_empty")]
    maps: DotMap<Field<MapStore>>,
}

impl DotStore for MapStore {
    fn is_bottom(&self) -> bool {
        self.field_count() == 0
    }

    fn join(&mut self, ctx: &DotSet, other: &Self, other_ctx: &DotSet) {
        self.counters.join(ctx, &other.counters, other_ctx);
        self.sets.join(ctx, &other.sets, other_ctx);
        self.registers.join(ctx, &other.registers, other_ctx);
        self.maps.join(ctx, &other.maps, other_ctx);
    }

    fn remove_dots(&mut self, observed: &DotSet) {
        self.counters.remove_dots(observed);
        self.sets.remove_dots(observed);
        self.registers.remove_dots(observed);
        self.maps.remove_dots(observed);
    }

    fn any_dot(&self, pred: &mut dyn FnMut(Dot) -> bool) -> bool {
        self.counters.any_dot(pred)
            || self.sets.any_dot(pred)
            || self.registers.any_dot(pred)
            || self.maps.any_dot(pred)
    }
}

impl MapStore {
    fn field_count(&self) -> usize {
        self.counters.0.len() + self.sets.0.len() + self.registers.0.len() + self.maps.0.len()
    }

    fn has_field(&self, name: &str, kind: CrdtType) -> bool {
        match kind {
            CrdtType::Counter => self.counters.0.contains_key(name),
            CrdtType::Set => self.sets.0.contains_key(name),
            CrdtType::Register => self.registers.0.contains_key(name),
            CrdtType::Map => self.maps.0.contains_key(name),
        }
    }

    /// Returns the nesting depth: 1 for a map without map fields.
    fn depth(&self) -> usize {
        1 + self.maps.0.values().map(|f| f.state.depth()).max().unwrap_or(0)
    }

    /// Returns the JSON view (see [`OrMap::value`]).
    fn value(&self) -> Value {
        let mut by_name: BTreeMap<&str, Vec<(CrdtType, Value)>> = BTreeMap::new();
        for (name, f) in &self.counters.0 {
            let v = Value::from(counter_value(&f.state));
            by_name.entry(name).or_default().push((CrdtType::Counter, v));
        }
        for (name, f) in &self.sets.0 {
            by_name
                .entry(name)
                .or_default()
                .push((CrdtType::Set, set_value(&f.state)));
        }
        for (name, f) in &self.registers.0 {
            let v = register_value(&f.state).map_or(Value::Null, |a| a.value.clone());
            by_name.entry(name).or_default().push((CrdtType::Register, v));
        }
        for (name, f) in &self.maps.0 {
            by_name
                .entry(name)
                .or_default()
                .push((CrdtType::Map, f.state.value()));
        }
        let mut out = serde_json::Map::new();
        let (single, shared): (Vec<_>, Vec<_>) = by_name.into_iter().partition(|(_, v)| v.len() == 1);
        // Names with one kind first, so they keep their plain key; a suffixed key never
        // displaces a real field's key, it grows another suffix instead.
        for (name, kinds) in single {
            for (_, v) in kinds {
                out.insert(name.to_owned(), v);
            }
        }
        for (name, kinds) in shared {
            for (kind, v) in kinds {
                let mut key = format!("{name}_{kind}");
                while out.contains_key(&key) {
                    key.push('_');
                    key.push_str(kind.as_str());
                }
                out.insert(key, v);
            }
        }
        Value::Object(out)
    }
}

/// An add-wins map from (field name, kind) to a counter, set, register or nested map, all
/// sharing one causal context (the OR-map of delta-state CRDTs, with Riak's typed keys).
///
/// - **update** mints one dot for the whole operation. Each updated field gets it as its
///   presence (replacing the presence dots this replica holds) and uses it for its own
///   change: a counter entry, set adds, a register assignment, nested updates.
/// - **remove_fields** is a reset-remove: for every field with one of the names (every
///   kind), it drops the presence and state dots the observed context contains. What the
///   remover did not observe survives: a concurrent update keeps the field present with
///   the concurrent change only (its new set elements, its register assignment, the
///   increments of actors other than those observed). The one leak: a counter entry is
///   per actor and cumulative, so an increment by an actor concurrent with the removal
///   keeps that actor's earlier, observed increments too.
/// - **merge** is the dot-store join applied field by field; contexts unite.
///
/// Bounds: names are 1 to [`MAX_FIELD_NAME_BYTES`] bytes; an update that would take a
/// map (any level) past [`MAX_MAP_FIELDS`] fields, or nest maps deeper than
/// [`MAX_MAP_DEPTH`] (this map is depth 1), is refused. Set fields have the set bounds.
/// Merges never refuse.
///
/// Serialized as `{"fields": <fields>, "context": <DotSet>}`, where `<fields>` is
/// `{"counters": {name: field}, "sets": …, "registers": …, "maps": …}` (empty kinds left
/// out) and a field is `{"presence": [[actor, counter], …], "state": <store>}`. The
/// stores: a counter `[[actor, counter, [inc, dec]], …]` (per actor, tagged with the dot
/// of its latest update), a set `{"element": [[actor, counter], …]}`, a register
/// `[[actor, counter, {"timestamp_ms": …, "actor": …, "value": …}], …]`, a map
/// `<fields>` again (nested maps share the top-level context).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "OrMapRepr", into = "OrMapRepr")]
pub struct OrMap {
    store: MapStore,
    context: DotSet,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OrMapRepr {
    fields: MapStore,
    context: DotSet,
}

impl TryFrom<OrMapRepr> for OrMap {
    type Error = InvalidState;
    fn try_from(r: OrMapRepr) -> Result<Self, InvalidState> {
        if r.fields.depth() > MAX_MAP_DEPTH {
            return Err(InvalidState("maps nested too deep"));
        }
        validate_map_store(&r.fields, &r.context)?;
        Ok(OrMap {
            store: r.fields,
            context: r.context,
        })
    }
}

impl From<OrMap> for OrMapRepr {
    fn from(m: OrMap) -> Self {
        OrMapRepr {
            fields: m.store,
            context: m.context,
        }
    }
}

impl OrMap {
    /// Returns an empty map with an empty context.
    pub fn new() -> Self {
        OrMap::default()
    }

    /// Applies `ops` to their fields on behalf of `actor`, the replica holding this state;
    /// `now_ms` stamps register assignments. An empty `ops` changes nothing.
    ///
    /// # Errors
    /// - [`CrdtError::MissingContext`] when an op removes and `observed` is `None`;
    ///   [`CrdtError::ContextNotSeen`] when this replica has not seen all of `observed`.
    /// - [`CrdtError::InvalidFieldName`], [`CrdtError::TooManyFields`],
    ///   [`CrdtError::NestingTooDeep`], and the set errors of [`super::OrSet::add`] and
    ///   [`super::OrSet::remove`] for set fields, at any depth.
    ///
    /// Every op is checked before any change: on error nothing changes.
    pub fn update(
        &mut self,
        ops: &BTreeMap<String, CrdtOp>,
        actor: ActorId,
        observed: Option<&DotSet>,
        now_ms: u64,
    ) -> Result<(), CrdtError> {
        // Ops that remove nothing never look at `observed`; they check against nothing.
        let empty = DotSet::new();
        let observed = if ops.values().any(CrdtOp::needs_context) {
            let observed = observed.ok_or(CrdtError::MissingContext)?;
            self.check_seen(observed)?;
            observed
        } else {
            &empty
        };
        check_update(&self.store, ops, observed, 1)?;
        if ops.is_empty() {
            return Ok(());
        }
        let dot = mint(&mut self.context, actor);
        apply_update(&mut self.store, ops, observed, dot, now_ms);
        Ok(())
    }

    /// Removes, from every field named in `names` (all kinds), what `observed` saw of it;
    /// see the type's doc. Mints no dot.
    ///
    /// # Errors
    /// - [`CrdtError::ContextNotSeen`] when this replica has not seen all of `observed`.
    /// - [`CrdtError::FieldNotObserved`] when no field of a name holds a dot `observed`
    ///   contains (absent, or only updated concurrently: Riak's precondition).
    /// - [`CrdtError::InvalidFieldName`], [`CrdtError::TooManyFields`] for a bad list.
    ///
    /// On error nothing changes.
    pub fn remove_fields<S: AsRef<str>>(&mut self, names: &[S], observed: &DotSet) -> Result<(), CrdtError> {
        self.check_seen(observed)?;
        check_remove_fields(&self.store, names, observed)?;
        apply_remove_fields(&mut self.store, names, observed);
        Ok(())
    }

    /// Returns true when the field (`name`, `kind`) is present.
    pub fn contains_field(&self, name: &str, kind: CrdtType) -> bool {
        self.store.has_field(name, kind)
    }

    /// Returns the number of fields (each (name, kind) counts once).
    pub fn len(&self) -> usize {
        self.store.field_count()
    }

    /// Returns true when the map has no field.
    pub fn is_empty(&self) -> bool {
        self.store.field_count() == 0
    }

    /// Returns the causal context: every update this state has seen. A client passes it
    /// back as `observed` to remove what it read.
    pub fn context(&self) -> &DotSet {
        &self.context
    }

    /// Merges `other` into `self` (dot-store join, field by field; contexts unite). Never
    /// fails.
    pub fn merge(&mut self, other: &OrMap) {
        self.store.join(&self.context, &other.store, &other.context);
        self.context.union(&other.context);
    }

    /// Returns the JSON view: an object of field name to value (counter: number; set:
    /// sorted array of strings; register: its value, or null; map: object).
    ///
    /// A name present with two or more kinds renders once per kind with the kind as a
    /// suffix, `"name_counter"`, `"name_set"`, `"name_register"`, `"name_map"`. Names with
    /// one kind keep their plain key; a suffixed key that collides with one grows another
    /// suffix (`"a_set_set"`), so no field is hidden.
    pub fn value(&self) -> Value {
        self.store.value()
    }

    /// Checks that this replica has seen every dot of `observed`, so a remove cannot
    /// miss a write the client meant to remove.
    fn check_seen(&self, observed: &DotSet) -> Result<(), CrdtError> {
        if !self.context.covers(observed) {
            return Err(CrdtError::ContextNotSeen);
        }
        Ok(())
    }
}

fn check_field_name(name: &str) -> Result<(), CrdtError> {
    if name.is_empty() || name.len() > MAX_FIELD_NAME_BYTES {
        return Err(CrdtError::InvalidFieldName {
            len: name.len(),
            max: MAX_FIELD_NAME_BYTES,
        });
    }
    Ok(())
}

fn too_many_fields(count: usize) -> CrdtError {
    CrdtError::TooManyFields {
        count,
        max: MAX_MAP_FIELDS,
    }
}

/// Checks a map-level op (`update` or `remove_fields`) at nesting `depth` without
/// changing anything.
fn check_map_op(store: &MapStore, op: &CrdtOp, observed: &DotSet, depth: usize) -> Result<(), CrdtError> {
    match op {
        CrdtOp::Update(ops) => check_update(store, ops, observed, depth),
        CrdtOp::RemoveFields(names) => check_remove_fields(store, names, observed),
        other => Err(CrdtError::OpMismatch {
            op: other.name(),
            crdt_type: CrdtType::Map,
        }),
    }
}

fn check_update(
    store: &MapStore,
    ops: &BTreeMap<String, CrdtOp>,
    observed: &DotSet,
    depth: usize,
) -> Result<(), CrdtError> {
    if ops.len() > MAX_MAP_FIELDS {
        return Err(too_many_fields(ops.len()));
    }
    let mut fresh = 0;
    for (name, op) in ops {
        check_field_name(name)?;
        if !store.has_field(name, op.kind()) {
            fresh += 1;
        }
        match op {
            CrdtOp::Increment(_) | CrdtOp::Assign(_) => {}
            CrdtOp::Add(elements) => {
                let empty = SetStore::default();
                let set = store.sets.0.get(name).map_or(&empty, |f| &f.state);
                check_add(set, elements)?;
            }
            CrdtOp::Remove(elements) => {
                let empty = SetStore::default();
                let set = store.sets.0.get(name).map_or(&empty, |f| &f.state);
                check_remove(set, elements, observed)?;
            }
            CrdtOp::Update(_) | CrdtOp::RemoveFields(_) => {
                if depth + 1 > MAX_MAP_DEPTH {
                    return Err(CrdtError::NestingTooDeep { max: MAX_MAP_DEPTH });
                }
                let empty = MapStore::default();
                let nested = store.maps.0.get(name).map_or(&empty, |f| &f.state);
                check_map_op(nested, op, observed, depth + 1)?;
            }
        }
    }
    let count = store.field_count() + fresh;
    if fresh > 0 && count > MAX_MAP_FIELDS {
        return Err(too_many_fields(count));
    }
    Ok(())
}

fn check_remove_fields<S: AsRef<str>>(
    store: &MapStore,
    names: &[S],
    observed: &DotSet,
) -> Result<(), CrdtError> {
    if names.len() > MAX_MAP_FIELDS {
        return Err(too_many_fields(names.len()));
    }
    for name in names {
        let name = name.as_ref();
        check_field_name(name)?;
        let seen = store
            .counters
            .0
            .get(name)
            .is_some_and(|f| has_observed_dot(f, observed))
            || store
                .sets
                .0
                .get(name)
                .is_some_and(|f| has_observed_dot(f, observed))
            || store
                .registers
                .0
                .get(name)
                .is_some_and(|f| has_observed_dot(f, observed))
            || store
                .maps
                .0
                .get(name)
                .is_some_and(|f| has_observed_dot(f, observed));
        if !seen {
            return Err(CrdtError::FieldNotObserved {
                field: name.to_owned(),
            });
        }
    }
    Ok(())
}

/// Applies a checked map-level op under `dot` (minted into the context).
fn apply_map_op(store: &mut MapStore, op: &CrdtOp, observed: &DotSet, dot: Dot, now_ms: u64) {
    match op {
        CrdtOp::Update(ops) => apply_update(store, ops, observed, dot, now_ms),
        CrdtOp::RemoveFields(names) => apply_remove_fields(store, names, observed),
        // Unreachable after `check_map_op`, which refuses any other op.
        _ => debug_assert!(false, "unchecked map op {}", op.name()),
    }
}

fn apply_update(
    store: &mut MapStore,
    ops: &BTreeMap<String, CrdtOp>,
    observed: &DotSet,
    dot: Dot,
    now_ms: u64,
) {
    for (name, op) in ops {
        match op {
            CrdtOp::Increment(n) => {
                let f = store.counters.0.entry(name.clone()).or_default();
                f.touch(dot);
                counter_apply(&mut f.state, *n, dot);
            }
            CrdtOp::Add(elements) => {
                let f = store.sets.0.entry(name.clone()).or_default();
                f.touch(dot);
                apply_add(&mut f.state, elements, dot);
            }
            CrdtOp::Remove(elements) => {
                let f = store.sets.0.entry(name.clone()).or_default();
                f.touch(dot);
                apply_remove(&mut f.state, elements, observed);
            }
            CrdtOp::Assign(value) => {
                let f = store.registers.0.entry(name.clone()).or_default();
                f.touch(dot);
                register_assign(&mut f.state, value.clone(), now_ms, dot);
            }
            CrdtOp::Update(_) | CrdtOp::RemoveFields(_) => {
                let f = store.maps.0.entry(name.clone()).or_default();
                f.touch(dot);
                apply_map_op(&mut f.state, op, observed, dot, now_ms);
            }
        }
    }
}

fn apply_remove_fields<S: AsRef<str>>(store: &mut MapStore, names: &[S], observed: &DotSet) {
    fn reset<F: DotStore>(fields: &mut DotMap<F>, name: &str, observed: &DotSet) {
        if let Some(f) = fields.0.get_mut(name) {
            f.remove_dots(observed);
            if f.is_bottom() {
                fields.0.remove(name);
            }
        }
    }
    for name in names {
        let name = name.as_ref();
        reset(&mut store.counters, name, observed);
        reset(&mut store.sets, name, observed);
        reset(&mut store.registers, name, observed);
        reset(&mut store.maps, name, observed);
    }
}

/// Checks a deserialized map store, at every level: field names, no field without dots,
/// set fields, every dot in the context. Field counts are not checked: merges may pass
/// them.
fn validate_map_store(store: &MapStore, ctx: &DotSet) -> Result<(), InvalidState> {
    fn fields<S: DotStore>(
        fields: &DotMap<Field<S>>,
        check_state: impl Fn(&S) -> Result<(), InvalidState>,
    ) -> Result<(), InvalidState> {
        for (name, f) in &fields.0 {
            if name.is_empty() || name.len() > MAX_FIELD_NAME_BYTES {
                return Err(InvalidState("invalid field name"));
            }
            if f.is_bottom() {
                return Err(InvalidState("field without dots"));
            }
            check_state(&f.state)?;
        }
        Ok(())
    }
    fields(&store.counters, |_| Ok(()))?;
    fields(&store.sets, |s| validate_set_store(s, ctx))?;
    fields(&store.registers, |_| Ok(()))?;
    fields(&store.maps, |m| validate_map_store(m, ctx))?;
    if !within_context(store, ctx) {
        return Err(InvalidState("dot outside the context"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const A: ActorId = ActorId(1);
    const B: ActorId = ActorId(2);

    fn op(json: Value) -> BTreeMap<String, CrdtOp> {
        match CrdtOp::from_value(json) {
            Ok(CrdtOp::Update(ops)) => ops,
            other => panic!("not an update: {other:?}"),
        }
    }

    fn updated(json: Value, actor: ActorId) -> OrMap {
        let mut m = OrMap::new();
        m.update(&op(json), actor, None, 1000).expect("update");
        m
    }

    fn merged(a: &OrMap, b: &OrMap) -> OrMap {
        let (mut ab, mut ba) = (a.clone(), b.clone());
        ab.merge(b);
        ba.merge(a);
        assert_eq!(ab, ba, "merge commutes");
        ab
    }

    #[test]
    fn crdt_map_concurrent_updates_to_different_fields_both_survive() {
        let base = updated(json!({"update": {"n": {"increment": 1}}}), A);
        let mut r1 = base.clone();
        let mut r2 = base.clone();
        r1.update(&op(json!({"update": {"a": {"assign": "x"}}})), A, None, 5)
            .expect("r1");
        r2.update(
            &op(json!({"update": {"b": {"add": ["y"]}, "n": {"increment": 2}}})),
            B,
            None,
            6,
        )
        .expect("r2");
        let m = merged(&r1, &r2);
        assert_eq!(m.value(), json!({"a": "x", "b": ["y"], "n": 3}));
    }

    #[test]
    fn crdt_map_same_name_two_kinds_both_survive() {
        // Goal: typed keys. Method: "f" is a counter on one replica, a set on another.
        let r1 = updated(json!({"update": {"f": {"increment": 4}}}), A);
        let r2 = updated(json!({"update": {"f": {"add": ["x"]}, "g": {"assign": 1}}}), B);
        let m = merged(&r1, &r2);
        assert!(m.contains_field("f", CrdtType::Counter) && m.contains_field("f", CrdtType::Set));
        assert_eq!(m.len(), 3);
        assert_eq!(m.value(), json!({"f_counter": 4, "f_set": ["x"], "g": 1}));
        // A real field named like a suffixed key keeps its key.
        let mut m2 = m.clone();
        m2.update(&op(json!({"update": {"f_set": {"assign": true}}})), A, None, 7)
            .expect("update");
        assert_eq!(
            m2.value(),
            json!({"f_counter": 4, "f_set": true, "f_set_set": ["x"], "g": 1})
        );
    }

    #[test]
    fn crdt_map_remove_fields_resets_what_was_observed() {
        // Goal: reset-remove. Method: the remover observed a counter, set and register;
        // another replica updates them concurrently; after merging, only the concurrent
        // part remains.
        let base = updated(
            json!({"update": {"c": {"increment": 5}, "s": {"add": ["old"]}, "r": {"assign": "old"},
                   "gone": {"increment": 1}}}),
            A,
        );
        let observed = base.context().clone();
        let mut remover = base.clone();
        remover
            .remove_fields(&["c", "s", "r", "gone"], &observed)
            .expect("remove");
        assert!(remover.is_empty());
        let mut other = base.clone();
        other
            .update(
                &op(
                    json!({"update": {"c": {"increment": 2}, "s": {"add": ["new"]}, "r": {"assign": "new"}}}),
                ),
                B,
                None,
                2000,
            )
            .expect("concurrent update");
        let m = merged(&remover, &other);
        assert_eq!(m.value(), json!({"c": 2, "s": ["new"], "r": "new"}));
    }

    #[test]
    fn crdt_map_nested_maps_update_remove_and_render() {
        let mut m = updated(
            json!({"update": {"addr": {"update": {"city": {"assign": "Oslo"}}}}}),
            A,
        );
        assert_eq!(m.value(), json!({"addr": {"city": "Oslo"}}));
        let observed = m.context().clone();
        m.update(
            &op(json!({"update": {"addr": {"remove_fields": ["city"]}, "tags": {"add": ["a"]}}})),
            A,
            Some(&observed),
            2,
        )
        .expect("nested remove");
        assert_eq!(m.value(), json!({"addr": {}, "tags": ["a"]}));
        let observed = m.context().clone();
        m.update(
            &op(json!({"update": {"tags": {"remove": ["a"]}}})),
            A,
            Some(&observed),
            3,
        )
        .expect("emptying a set field");
        assert_eq!(
            m.value(),
            json!({"addr": {}, "tags": []}),
            "an updated field stays present"
        );
    }

    #[test]
    fn crdt_map_bad_update_changes_nothing() {
        // Goal: validation happens before any change. Method: one bad op among good
        // ones, at several depths; the state must be byte-for-byte the same.
        let mut m = updated(json!({"update": {"s": {"add": ["x"]}, "n": {"increment": 1}}}), A);
        let observed = m.context().clone();
        let long_name = "f".repeat(MAX_FIELD_NAME_BYTES + 1);
        let long_element = "e".repeat(super::super::MAX_SET_ELEMENT_BYTES + 1);
        // This map is depth 1, so "a", "b", "c" reach depth 4 and "x" would be depth 5.
        let depth4 = json!({"update": {"a": {"update": {"b": {"update": {"c": {"update": {"d": {"increment": 1}}}}}}}}});
        let depth5 =
            json!({"update": {"a": {"update": {"b": {"update": {"c": {"update": {"x": {"update": {}}}}}}}}}});
        let cases: Vec<(Value, Option<&DotSet>, CrdtError)> = vec![
            (
                json!({"update": {"n": {"increment": 1}, "s": {"remove": ["nope"]}}}),
                Some(&observed),
                CrdtError::ElementNotObserved {
                    element: "nope".into(),
                },
            ),
            (
                json!({"update": {"n": {"increment": 1}, "s": {"remove": ["x"]}}}),
                None,
                CrdtError::MissingContext,
            ),
            (
                json!({"update": {"n": {"increment": 1}, long_name.clone(): {"assign": 1}}}),
                None,
                CrdtError::InvalidFieldName {
                    len: long_name.len(),
                    max: MAX_FIELD_NAME_BYTES,
                },
            ),
            (
                json!({"update": {"": {"assign": 1}}}),
                None,
                CrdtError::InvalidFieldName {
                    len: 0,
                    max: MAX_FIELD_NAME_BYTES,
                },
            ),
            (
                json!({"update": {"n": {"increment": 1}, "m": {"update": {"t": {"add": ["ok", long_element]}}}}}),
                None,
                CrdtError::ElementTooLong {
                    len: super::super::MAX_SET_ELEMENT_BYTES + 1,
                    max: super::super::MAX_SET_ELEMENT_BYTES,
                },
            ),
            (depth5, None, CrdtError::NestingTooDeep { max: MAX_MAP_DEPTH }),
            (
                json!({"update": {"m": {"remove_fields": ["zzz"]}}}),
                Some(&observed),
                CrdtError::FieldNotObserved { field: "zzz".into() },
            ),
        ];
        for (json, obs, want) in cases {
            let before = m.clone();
            let text = json.to_string();
            assert_eq!(m.update(&op(json), B, obs, 9), Err(want), "{text}");
            assert_eq!(m, before, "{text} changed the state");
        }
        m.update(&op(depth4), A, None, 1).expect("depth 4 is allowed");
        assert_eq!(m.value()["a"]["b"]["c"]["d"], json!(1));
    }

    #[test]
    fn crdt_map_remove_fields_preconditions() {
        let mut m = updated(json!({"update": {"a": {"increment": 1}}}), A);
        let observed = m.context().clone();
        let before = m.clone();
        assert_eq!(
            m.remove_fields(&["a", "b"], &observed),
            Err(CrdtError::FieldNotObserved { field: "b".into() })
        );
        assert_eq!(
            m.remove_fields(&["a"], &DotSet::new()),
            Err(CrdtError::FieldNotObserved { field: "a".into() })
        );
        let ahead = updated(json!({"update": {"z": {"increment": 1}}}), B);
        assert_eq!(
            m.remove_fields(&["a"], ahead.context()),
            Err(CrdtError::ContextNotSeen)
        );
        assert_eq!(m, before);
        m.remove_fields(&["a"], &observed).expect("remove");
        assert!(m.is_empty());
    }

    #[test]
    fn crdt_map_field_count_is_bounded() {
        let mut m = OrMap::new();
        let mut ops = BTreeMap::new();
        for i in 0..MAX_MAP_FIELDS {
            ops.insert(format!("f{i}"), CrdtOp::Increment(1));
        }
        m.update(&ops, A, None, 0).expect("fill to the bound");
        let before = m.clone();
        let one_more = BTreeMap::from([("f0".to_string(), CrdtOp::Add(vec!["x".into()]))]);
        assert_eq!(
            m.update(&one_more, A, None, 0),
            Err(CrdtError::TooManyFields {
                count: MAX_MAP_FIELDS + 1,
                max: MAX_MAP_FIELDS
            }),
            "a new kind under an old name is a new field"
        );
        assert_eq!(m, before);
        let existing = BTreeMap::from([("f0".to_string(), CrdtOp::Increment(1))]);
        m.update(&existing, A, None, 0).expect("updating a present field");
    }

    #[test]
    fn crdt_map_golden_json() {
        let m = updated(
            json!({"update": {"hits": {"increment": 3}, "tags": {"add": ["x"]}, "name": {"assign": "ann"},
                   "addr": {"update": {"zip": {"increment": -1}}}}}),
            A,
        );
        let json = serde_json::to_string(&m).expect("serialize");
        assert_eq!(
            json,
            concat!(
                r#"{"fields":{"counters":{"hits":{"presence":[[1,1]],"state":[[1,1,[3,0]]]}},"#,
                r#""sets":{"tags":{"presence":[[1,1]],"state":{"x":[[1,1]]}}},"#,
                r#""registers":{"name":{"presence":[[1,1]],"state":[[1,1,{"timestamp_ms":1000,"actor":1,"value":"ann"}]]}},"#,
                r#""maps":{"addr":{"presence":[[1,1]],"state":{"counters":{"zip":{"presence":[[1,1]],"state":[[1,1,[0,1]]]}}}}}},"#,
                r#""context":{"vv":[[1,1]]}}"#
            )
        );
        assert_eq!(serde_json::from_str::<OrMap>(&json).expect("parse"), m);
        assert_eq!(
            serde_json::to_string(&OrMap::new()).expect("serialize"),
            r#"{"fields":{},"context":{"vv":[]}}"#
        );
    }

    #[test]
    fn crdt_map_deserialization_checks_the_invariants() {
        let field = r#"{"presence":[[1,1]],"state":[]}"#;
        let nest = |depth: usize| {
            let mut s = format!(r#"{{"counters":{{"c":{field}}}}}"#);
            for _ in 1..depth {
                s = format!(r#"{{"maps":{{"m":{{"presence":[[1,1]],"state":{s}}}}}}}"#);
            }
            format!(r#"{{"fields":{s},"context":{{"vv":[[1,1]]}}}}"#)
        };
        assert!(serde_json::from_str::<OrMap>(&nest(MAX_MAP_DEPTH)).is_ok());
        assert!(serde_json::from_str::<OrMap>(&nest(MAX_MAP_DEPTH + 1)).is_err());
        let long = "n".repeat(MAX_FIELD_NAME_BYTES + 1);
        let bad = [
            format!(r#"{{"fields":{{"counters":{{"{long}":{field}}}}},"context":{{"vv":[[1,1]]}}}}"#),
            format!(r#"{{"fields":{{"counters":{{"":{field}}}}},"context":{{"vv":[[1,1]]}}}}"#),
            format!(r#"{{"fields":{{"counters":{{"c":{field}}}}},"context":{{"vv":[]}}}}"#),
            r#"{"fields":{"counters":{"c":{"presence":[],"state":[]}}},"context":{"vv":[]}}"#.to_string(),
            r#"{"fields":{"lists":{}},"context":{"vv":[]}}"#.to_string(),
            r#"{"fields":{"sets":{"s":{"presence":[[1,1]],"state":{"x":[[1,2]]}}}},"context":{"vv":[[1,1]]}}"#
                .to_string(),
        ];
        for json in &bad {
            assert!(serde_json::from_str::<OrMap>(json).is_err(), "{json}");
        }
    }
}
