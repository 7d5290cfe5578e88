//! The simulator's record of client writes and the invariant checks over it.

use std::collections::{BTreeMap, BTreeSet};

use dynamo_core::Dot;
use dynamo_core::dots::DotSet;
use dynamo_core::version::VersionedObject;

/// One client write.
#[derive(Debug, Clone)]
pub struct WriteRec {
    /// The key's index.
    pub key: usize,
    /// What the client had seen (the versions the write supersedes).
    pub context: DotSet,
    /// The dot it was minted with, once minted.
    pub minted: Option<Dot>,
    /// True once the client was told W replicas stored it.
    pub acked: bool,
}

/// Every client write of a run, and every dot minted.
#[derive(Debug, Default)]
pub struct History {
    writes: BTreeMap<u64, WriteRec>,
    minted: BTreeMap<Dot, u64>,
}

/// What a write's version carries so a read can tell whose it is: its id in the content
/// type, and a value derived from the id.
pub fn content_type(write_id: u64) -> String {
    format!("w{write_id}")
}

/// The value of write `write_id` (empty for a delete).
pub fn value(write_id: u64, tombstone: bool) -> Vec<u8> {
    if tombstone {
        Vec::new()
    } else {
        format!("value of write {write_id}").into_bytes()
    }
}

impl History {
    /// Records a new client write; returns its id.
    pub fn new_write(&mut self, key: usize, context: DotSet) -> u64 {
        let id = self.writes.len() as u64 + 1;
        self.writes.insert(
            id,
            WriteRec {
                key,
                context,
                minted: None,
                acked: false,
            },
        );
        id
    }

    /// Records that a node minted `dot` for `write_id`.
    ///
    /// # Errors
    /// Invariant 6: the dot was minted before (for any write), or the write was.
    pub fn on_mint(&mut self, write_id: u64, dot: Dot) -> Result<(), String> {
        if let Some(first) = self.minted.insert(dot, write_id) {
            return Err(format!(
                "invariant 6: dot {dot:?} minted twice (writes {first} and {write_id})"
            ));
        }
        let rec = self
            .writes
            .get_mut(&write_id)
            .ok_or_else(|| format!("a mint for unknown write {write_id}"))?;
        if let Some(first) = rec.minted.replace(dot) {
            return Err(format!(
                "invariant 6: write {write_id} applied twice (dots {first:?} and {dot:?})"
            ));
        }
        Ok(())
    }

    /// Records that the client was told write `write_id` is stored.
    ///
    /// # Errors
    /// The acknowledged dot is not the one minted for the write.
    pub fn on_ack(&mut self, write_id: u64, dot: Dot) -> Result<(), String> {
        let rec = self
            .writes
            .get_mut(&write_id)
            .ok_or_else(|| format!("an ack for unknown write {write_id}"))?;
        if rec.minted != Some(dot) {
            return Err(format!(
                "write {write_id} acknowledged with dot {dot:?}, minted as {:?}",
                rec.minted
            ));
        }
        rec.acked = true;
        Ok(())
    }

    /// Returns the acknowledged writes of `key` with their dots.
    pub fn acked_of(&self, key: usize) -> impl Iterator<Item = (u64, Dot, &WriteRec)> + '_ {
        self.writes
            .iter()
            .filter(move |(_, w)| w.key == key && w.acked)
            .filter_map(|(id, w)| w.minted.map(|d| (*id, d, w)))
    }

    /// Checks a version set a read returned: every live sibling is a minted write's,
    /// with that write's value.
    ///
    /// # Errors
    /// A version nobody wrote, or one whose value is not its writer's.
    pub fn check_read(&self, key: usize, object: &VersionedObject) -> Result<(), String> {
        for s in object.siblings() {
            let Some(&id) = self.minted.get(&s.dot) else {
                return Err(format!(
                    "key {key}: a read returned {:?}, which nobody minted",
                    s.dot
                ));
            };
            let rec = &self.writes[&id];
            if s.content_type != content_type(id) || s.value != value(id, s.tombstone) || rec.key != key {
                return Err(format!(
                    "key {key}: dot {:?} carries {:?}, not write {id}'s content",
                    s.dot, s.content_type
                ));
            }
        }
        Ok(())
    }
}

/// One replica's record of the versions it has durably seen live, so one it saw
/// superseded can be caught coming back (invariant 2).
#[derive(Debug, Default, Clone)]
pub struct Superseded {
    seen_live: BTreeSet<Dot>,
    dead: BTreeSet<Dot>,
}

impl Superseded {
    /// Checks the replica's new durable copy against what it saw before, then records it.
    ///
    /// # Errors
    /// A version this replica durably saw superseded is live again.
    pub fn observe(&mut self, object: &VersionedObject) -> Result<(), String> {
        let live: BTreeSet<Dot> = object.siblings().iter().map(|s| s.dot).collect();
        if let Some(back) = live.intersection(&self.dead).next() {
            return Err(format!("invariant 2: superseded version {back:?} is live again"));
        }
        for d in self.seen_live.difference(&live) {
            if object.context().contains(d) {
                self.dead.insert(*d);
            }
        }
        self.seen_live.extend(live);
        Ok(())
    }
}
