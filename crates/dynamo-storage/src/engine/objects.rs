//! A key's own copy and its hints as writes see them: reads, coordinated writes (the
//! dot is minted here), replicates, idempotency records, all under the key's stripe lock.

use super::*;

/// A key's storage place, locked for a read-modify-write: its stripe lock (held while
/// this lives), where its copy is stored and the bytes read there.
pub(super) struct Locked<'a> {
    _guard: MutexGuard<'a, ()>,
    p: PartitionId,
    hash: KeyHash,
    /// The object key (also the `idem` and `gc` keys' prefix).
    ok: Vec<u8>,
    space: &'a Keyspace,
    stored_key: Vec<u8>,
    old_raw: Option<fjall::Slice>,
}

/// An idempotency claim as the engine checks it: the claim, how long records count
/// (`--idempotency-window-ms`) and the node's clock now.
#[derive(Debug, Clone, Copy)]
pub struct Claim {
    /// The coordinator's claim.
    pub claim: IdempotencyClaim,
    /// How long after its first write a record answers repeats.
    pub window_ms: u64,
    /// Now, in ms since the Unix epoch.
    pub now_ms: u64,
}

/// What [`Engine::coordinate_idempotent`] did.
#[derive(Debug, Clone)]
pub struct Coordinated {
    /// The copy after the write (or as it is, for a replay).
    pub object: VersionedObject,
    /// The write's dot and the writer's context (the first write's, for a replay).
    pub outcome: PutOutcome,
    /// The write's idempotency record, when it carried a claim.
    pub record: Option<IdempotencyRecord>,
    /// True when nothing was applied: a repeat of a remembered write.
    pub replayed: bool,
}

impl Engine {
    pub(super) fn locate(&self, k: &KeyRef<'_>) -> (PartitionId, KeyHash, Vec<u8>) {
        let hash = key_hash(k.bucket, k.key);
        let p = self.partitioning.partition_of(hash);
        (p, hash, codec::object_key(p, hash, k.bucket, k.key))
    }

    pub(super) fn stripe(&self, hash: KeyHash) -> MutexGuard<'_, ()> {
        lock(&self.stripes[(hash.0 as usize) % LOCK_STRIPES])
    }

    /// Reads a key's versions: the node's own copy merged with any hint it holds for the
    /// key (a fallback answers reads for what it holds).
    ///
    /// # Errors
    /// [`StorageError`] for engine failures or corrupt data.
    pub fn get(&self, k: &KeyRef<'_>) -> Result<Option<VersionedObject>, StorageError> {
        let (_, _, ok) = self.locate(k);
        let mut found = match self.objects.get(&ok)? {
            Some(v) => Some(codec::decode_object(&v)?),
            None => None,
        };
        let targets: Vec<NodeId> = lock(&self.hint_targets).keys().cloned().collect();
        for t in targets {
            if let Some(v) = self.hints.get(codec::hint_key(&t, &ok))? {
                let hinted = codec::decode_object(&v)?;
                match &mut found {
                    Some(obj) => obj.sync(
                        &hinted,
                        ConflictRule::Siblings {
                            max_siblings: u32::MAX,
                        },
                    ),
                    None => found = Some(hinted),
                }
            }
        }
        Ok(found)
    }

    /// Coordinates a client write: mints a dot on the stored copy (the node's own, or the
    /// hint for `hint`'s owner) with that copy's actor or a fresh one (see
    /// [`StoredCopy::coordinate`]), stores the result, and returns it with the outcome.
    ///
    /// # Errors
    /// [`StorageError::Version`] when the write would leave too many siblings (nothing is
    /// stored), or engine failures.
    pub fn coordinate_put(
        &self,
        k: &KeyRef<'_>,
        context: &DotSet,
        write: NewWrite,
        conflict: ConflictRule,
        hint: Option<&HintFor>,
    ) -> Result<(VersionedObject, PutOutcome), StorageError> {
        let c = self.coordinate_idempotent(k, context, write, conflict, hint, None)?;
        Ok((c.object, c.outcome))
    }

    /// [`Engine::coordinate_put`] for a write that carries an `Idempotency`claim: when
    /// this node remembers a write with the same claim id from within `claim`'s window,
    /// nothing is applied and the first write's outcome is returned (`replayed`), or
    /// [`StorageError::IdempotencyKeyReused`] when that write had another fingerprint.
    /// Otherwise the write is applied and its record stored in the same batch.
    ///
    /// # Errors
    /// As [`Engine::coordinate_put`], and the reuse above.
    pub fn coordinate_idempotent(
        &self,
        k: &KeyRef<'_>,
        context: &DotSet,
        write: NewWrite,
        conflict: ConflictRule,
        hint: Option<&HintFor>,
        claim: Option<Claim>,
    ) -> Result<Coordinated, StorageError> {
        let now_ms = write.now_ms;
        self.coordinate_with(k, hint, claim, now_ms, |copy, incarnation, fresh| {
            Ok(copy.coordinate(context, incarnation, fresh, write, conflict)?)
        })
    }

    /// Coordinates a CRDT operation on the stored copy (the node's own, or the hint for
    /// `hint`'s owner): merges `merge` into it first when given, then merges its states,
    /// applies `op` and stores the one resulting version ([`StoredCopy::apply_crdt`]),
    /// with the same idempotency records as [`Engine::coordinate_idempotent`].
    ///
    /// # Errors
    /// [`StorageError::Crdt`] for a refused operation (nothing is stored, not even
    /// `merge`), [`StorageError::IdempotencyKeyReused`], engine failures.
    #[allow(clippy::too_many_arguments)]
    pub fn coordinate_crdt(
        &self,
        k: &KeyRef<'_>,
        crdt_type: CrdtType,
        op: &CrdtOp,
        observed: Option<&DotSet>,
        merge: Option<&VersionedObject>,
        now_ms: u64,
        hint: Option<&HintFor>,
        claim: Option<Claim>,
    ) -> Result<Coordinated, StorageError> {
        self.coordinate_with(k, hint, claim, now_ms, |copy, incarnation, fresh| {
            let rule = ConflictRule::Crdt { crdt_type };
            let mut work = copy.clone();
            if let Some(m) = merge {
                work.object.sync(m, rule);
            }
            let out = work.apply_crdt(
                incarnation,
                fresh,
                crdt_type,
                op,
                observed,
                now_ms,
                MAX_VALUE_BYTES,
            )?;
            *copy = work;
            Ok(out.put)
        })
    }

    /// The frame of every coordinated write: lock the copy, answer a remembered repeat
    /// of `claim` as the first was, else run `apply` on the copy (with this incarnation
    /// and a supply of fresh actor ids) and store the copy with the write's record.
    fn coordinate_with(
        &self,
        k: &KeyRef<'_>,
        hint: Option<&HintFor>,
        claim: Option<Claim>,
        now_ms: u64,
        apply: impl FnOnce(
            &mut StoredCopy,
            Incarnation,
            &mut dyn Iterator<Item = ActorId>,
        ) -> Result<PutOutcome, StorageError>,
    ) -> Result<Coordinated, StorageError> {
        let (at, mut copy) = self.lock_copy(k, hint)?;
        if let Some(c) = &claim
            && let Some(first) = self.idempotency_record(&at.ok, c)?
        {
            if first.claim.fingerprint != c.claim.fingerprint {
                return Err(StorageError::IdempotencyKeyReused);
            }
            self.metrics.idempotent_replays.inc();
            return Ok(Coordinated {
                object: copy.object,
                outcome: PutOutcome {
                    dot: first.dot,
                    context: first.context.clone(),
                },
                record: Some(first),
                replayed: true,
            });
        }
        let mut fresh = std::iter::repeat_with(|| ActorId(rand::random::<u64>()));
        let outcome = apply(&mut copy, self.identity.incarnation, &mut fresh)?;
        let record = claim.map(|c| IdempotencyRecord {
            claim: c.claim,
            dot: outcome.dot,
            context: outcome.context.clone(),
            created_ms: now_ms,
        });
        self.store(&at, k, &copy, hint, record.as_ref())?;
        Ok(Coordinated {
            object: copy.object,
            outcome,
            record,
            replayed: false,
        })
    }

    /// Answers a repeat of the write recorded under `claim`, applying nothing: the first
    /// write's dot and context with the copy as it is now, or `None` when this node
    /// remembers no write with that claim id inside its window.
    ///
    /// # Errors
    /// [`StorageError::IdempotencyKeyReused`] when the record has another fingerprint;
    /// engine failures.
    pub fn replay(
        &self,
        k: &KeyRef<'_>,
        hint: Option<&HintFor>,
        claim: Claim,
    ) -> Result<Option<Coordinated>, StorageError> {
        let (at, copy) = self.lock_copy(k, hint)?;
        let Some(first) = self.idempotency_record(&at.ok, &claim)? else {
            return Ok(None);
        };
        if first.claim.fingerprint != claim.claim.fingerprint {
            return Err(StorageError::IdempotencyKeyReused);
        }
        self.metrics.idempotent_replays.inc();
        Ok(Some(Coordinated {
            object: copy.object,
            outcome: PutOutcome {
                dot: first.dot,
                context: first.context.clone(),
            },
            record: Some(first),
            replayed: true,
        }))
    }

    /// Returns the record this node holds for `claim`'s id on the key stored at `ok`, if
    /// it is still inside the claim's window (an older one is as good as gone: the purge
    /// only reclaims its space).
    pub(super) fn idempotency_record(
        &self,
        ok: &[u8],
        claim: &Claim,
    ) -> Result<Option<IdempotencyRecord>, StorageError> {
        let Some(v) = self.idem.get(codec::idem_key(ok, claim.claim.id))? else {
            return Ok(None);
        };
        let r = codec::decode_idem_record(&v)?;
        Ok((r.created_ms.saturating_add(claim.window_ms) > claim.now_ms).then_some(r))
    }

    /// Merges a replica's copy of a key (idempotent).
    ///
    /// # Errors
    /// Engine failures or corrupt data.
    pub fn replicate(
        &self,
        k: &KeyRef<'_>,
        incoming: &VersionedObject,
        conflict: ConflictRule,
        hint: Option<&HintFor>,
    ) -> Result<(), StorageError> {
        self.replicate_with_record(k, incoming, conflict, hint, None)
    }

    /// [`Engine::replicate`] of an idempotent write's copy: the write's record is
    /// remembered too (unless one with its id is already here), in the same batch, so a
    /// repeat coordinated by this replica is answered as the first was.
    ///
    /// # Errors
    /// Engine failures or corrupt data.
    pub fn replicate_with_record(
        &self,
        k: &KeyRef<'_>,
        incoming: &VersionedObject,
        conflict: ConflictRule,
        hint: Option<&HintFor>,
        record: Option<&IdempotencyRecord>,
    ) -> Result<(), StorageError> {
        // The copy keeps its minter: a merge adds others' dots, never takes ours away.
        let (at, mut copy) = self.lock_copy(k, hint)?;
        let record = match record {
            Some(r) if self.idem.get(codec::idem_key(&at.ok, r.claim.id))?.is_none() => Some(r),
            _ => None,
        };
        let before = copy.object.digest();
        copy.object.sync(incoming, conflict);
        if at.old_raw.is_some() && copy.object.digest() == before {
            // Nothing new: skip the write (replication and anti-entropy resend a lot).
            if let Some(r) = record {
                self.idem
                    .insert(codec::idem_key(&at.ok, r.claim.id), codec::encode_idem_record(r))?;
            }
            return Ok(());
        }
        if at.old_raw.is_none() && copy.object.siblings().is_empty() {
            // Everything it carried was superseded by a collected tombstone: storing the
            // bare history would only be a tombstone GC cannot collect again.
            if !incoming.siblings().is_empty() {
                self.metrics.superseded_after_gc.inc();
            }
            return Ok(());
        }
        self.store(&at, k, &copy, hint, record)
    }

    /// Takes `k`'s stripe lock and reads the stored copy a read-modify-write starts from
    /// (the node's own, or the hint for `hint`'s owner; see [`Engine::absent_copy`] for a
    /// key not held). The lock is held until the returned [`Locked`] is dropped.
    pub(super) fn lock_copy(
        &self,
        k: &KeyRef<'_>,
        hint: Option<&HintFor>,
    ) -> Result<(Locked<'_>, StoredCopy), StorageError> {
        let (p, hash, ok) = self.locate(k);
        let guard = self.stripe(hash);
        let (space, stored_key) = self.space_for(&ok, hint);
        let old_raw = space.get(&stored_key)?;
        let copy = match &old_raw {
            Some(v) => codec::decode_copy(v)?,
            None => self.absent_copy(&ok, hint)?,
        };
        let at = Locked {
            _guard: guard,
            p,
            hash,
            ok,
            space,
            stored_key,
            old_raw,
        };
        Ok((at, copy))
    }

    /// The copy a write starts from where the node holds none: empty, or, for the node's
    /// own copy of a key whose tombstones it collected, the collected history. Without
    /// that floor a copy older than the delete that arrives after the collection (a
    /// fallback's hint delivered once the owner is reachable again, a replicate or read
    /// repair in flight) would be stored as new and bring the deleted value back; with it,
    /// such a copy merges as superseded, and a new write descends from the delete. The
    /// floor lasts as long as the `gc` record (see `gc::GcSettings::retention`).
    pub(super) fn absent_copy(&self, ok: &[u8], hint: Option<&HintFor>) -> Result<StoredCopy, StorageError> {
        if hint.is_some() {
            return Ok(StoredCopy::default());
        }
        let Some(v) = self.gc.get(ok)? else {
            return Ok(StoredCopy::default());
        };
        let floor = codec::decode_gc_record(&v)?.history;
        let object = VersionedObject::from_parts(floor, Vec::new())
            .map_err(|e| StorageError::Corrupt(codec::CodecError::Invalid(e)))?;
        Ok(StoredCopy::replica(object))
    }

    pub(super) fn space_for(&self, ok: &[u8], hint: Option<&HintFor>) -> (&Keyspace, Vec<u8>) {
        match hint {
            Some(h) => (&self.hints, codec::hint_key(&h.node, ok)),
            None => (&self.objects, ok.to_vec()),
        }
    }

    /// Commits `copy` where `at` read it (with `record` in the same batch), then keeps the
    /// bookkeeping in step: hint targets and counts, or the key count and Merkle tree.
    pub(super) fn store(
        &self,
        at: &Locked<'_>,
        k: &KeyRef<'_>,
        copy: &StoredCopy,
        hint: Option<&HintFor>,
        record: Option<&IdempotencyRecord>,
    ) -> Result<(), StorageError> {
        let obj = &copy.object;
        let encoded = codec::encode_copy(copy);
        let mut batch = self.db.batch().durability(Some(self.persist_mode()));
        if let Some(r) = record {
            batch.insert(
                &self.idem,
                codec::idem_key(&at.ok, r.claim.id),
                codec::encode_idem_record(r),
            );
        }
        batch.insert(at.space, at.stored_key.clone(), encoded);
        if at.old_raw.is_none() {
            // The key's first copy here (own or hint): the listing learns it in the same
            // batch. A second copy's entry is the same one.
            batch.insert(&self.listing, codec::listing_key(k.bucket, k.key), []);
        }
        // The change feed learns of it in the same batch; its position stays "in flight"
        // until the commit ended, so no reader passes it before it is there.
        let _logged = self.log_change(&mut batch, k, obj, dynamo_server::clock::now_ms())?;
        // A hinted write holds the targets lock from the check through the commit, so
        // `forget_target_if_done` cannot delete the owner's address record in between
        // (the hint would then be invisible after a restart, which loads targets from
        // those records).
        let mut targets = hint.map(|_| lock(&self.hint_targets));
        if let (Some(h), Some(t)) = (hint, targets.as_ref())
            && t.get(&h.node) != Some(&h.address)
        {
            let mut mk = META_HINT_ADDR.to_vec();
            mk.extend_from_slice(h.node.as_str().as_bytes());
            batch.insert(&self.meta, mk, h.address.as_bytes());
        }
        batch.commit()?;
        match hint {
            Some(h) => {
                if at.old_raw.is_none() {
                    self.metrics.hints_pending.inc();
                }
                if let Some(t) = targets.as_mut() {
                    t.insert(h.node.clone(), h.address.clone());
                }
                drop(targets);
            }
            None => {
                let old_digest = at.old_raw.as_deref().map(codec::stored_digest).transpose()?;
                if at.old_raw.is_none() {
                    self.metrics.keys.inc();
                }
                lock(&self.merkle[at.p.0 as usize]).update(
                    at.hash,
                    &merkle_key(k.bucket, k.key),
                    old_digest,
                    Some(obj.digest()),
                )?;
            }
        }
        Ok(())
    }
}
