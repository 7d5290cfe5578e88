//! The workload clients, each on keys of its own kind (a bucket per workload), each
//! driven by its own seeded random stream:
//!
//! - **set-add** ([`set_adder`]): read a key, union the sibling sets, add a new element,
//!   write the union with the read's context. Several clients share each key, so
//!   concurrent writes make siblings that the next read merges. The key changes every
//!   [`SET_KEY_WINDOW`] so values stay small however long a run is.
//! - **registers** ([`register_writer`]): one writer per key, each write carrying the
//!   context of the writer's latest acknowledged write, or of a fresh read after a write
//!   that failed or whose outcome is unknown; optionally some writes are deletes.
//! - **LWW blind writes** ([`lww_writer`]): no context at all, to a bucket that resolves
//!   by timestamp; loss is expected there and measured.
//! - **blind sibling writes** ([`blind_writer`]): no context, to a siblings bucket: no
//!   write ever replaces another, so every acknowledged value must be a final sibling.
//!   This is where a dot minted twice shows (replicas drop the second write as already
//!   seen, yet it was acknowledged). Each client writes [`BLIND_PER_KEY`] values per key
//!   and moves on, so a key stays under the sibling limit.
//!
//! - **counter increments** ([`counter_incrementer`]): CRDT counter increments, each
//!   retried a few times under its own `Idempotency-Key`; not recorded in the history
//!   but tallied ([`CounterTally`]), and checked as a sum after the heal.
//!
//! Values are unique per write (`<key>:v17`, `set-2-e41`), so a value seen anywhere names
//! exactly one client request.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::time::Instant;

use super::client::{Api, Write};
use super::history::Outcome;

/// The set-add workload's bucket.
pub const SETS: &str = "sets";
/// The single-writer registers' bucket (puts only).
pub const REGS: &str = "regs";
/// The single-writer registers' bucket with deletes.
pub const REGS_DEL: &str = "regs-del";
/// The last-writer-wins bucket.
pub const LWW: &str = "lww";
/// The blind writers' bucket (siblings).
pub const BLIND: &str = "blind";
/// The counter incrementers' bucket (a CRDT counter bucket).
pub const COUNTERS: &str = "counters";

/// Attempts of one increment (the first and its retries under the same key).
const INCREMENT_ATTEMPTS: u32 = 3;

/// Writes of one blind writer per key (with two writers, a key holds at most twice this
/// many siblings, well under the default limit of 32).
pub const BLIND_PER_KEY: u64 = 6;

/// How long the set-add clients stay on one generation of keys.
pub const SET_KEY_WINDOW: Duration = Duration::from_secs(15);

/// The share of a deleting register writer's writes that are deletes.
const DELETE_SHARE: f64 = 0.25;
/// The share of acknowledged deletes after which a deleting register writer goes quiet
/// for [`QUIET_AFTER_DELETE_MS`], so the tombstone outlives the checker's short tombstone
/// grace and tombstone GC collects it before the next write (Riak's KV679 path).
const QUIET_SHARE: f64 = 0.15;
/// How long a deleting register writer stays quiet (above the checker cluster's
/// tombstone grace plus one GC interval).
const QUIET_AFTER_DELETE_MS: (u64, u64) = (3_000, 4_500);

/// A client's own random stream: a function of the run's seed and the client's number
/// only, so a replay drives the same choices (the interleaving with faults still varies
/// with timing).
pub fn client_rng(seed: u64, client: u64) -> StdRng {
    // Distinct odd multiplier: the streams of the fault schedule and of every client
    // never start from the same state.
    StdRng::seed_from_u64(seed ^ (client + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// Pauses between a client's operations, so a few clients on two cores leave room for
/// the services (the load shape, not synchronisation).
async fn think(rng: &mut StdRng) {
    tokio::time::sleep(Duration::from_millis(rng.random_range(2..=20))).await;
}

/// Parses a set value (a JSON array of strings); `None` when it is not one.
pub fn parse_set(value: &str) -> Option<BTreeSet<String>> {
    serde_json::from_str(value).ok()
}

/// The set-add client: until `until`, read-merge-write one of `keys_per_window` keys of
/// the current key generation.
pub async fn set_adder(api: Api, keys_per_window: usize, t0: Instant, mut rng: StdRng, until: Instant) {
    let mut seq = 0;
    while Instant::now() < until {
        let generation = t0.elapsed().as_secs() / SET_KEY_WINDOW.as_secs();
        let key = format!("set-{generation}-{}", rng.random_range(0..keys_per_window));
        let read = api.read(SETS, &key).await;
        if !matches!(read.outcome, Outcome::Ok | Outcome::NotFound) {
            think(&mut rng).await;
            continue;
        }
        // An unparsable sibling is left out here; the final check reports it.
        let mut set: BTreeSet<String> = read.read.iter().filter_map(|v| parse_set(v)).flatten().collect();
        seq += 1;
        let tag = format!("{}-e{seq}", api.client);
        set.insert(tag.clone());
        let value = serde_json::to_string(&set).expect("a set of strings serializes");
        api.write(Write {
            bucket: SETS,
            key: &key,
            value: Some(&value),
            ctx: read.ctx_answered.as_deref(),
            seq,
            tag: &tag,
        })
        .await;
        think(&mut rng).await;
    }
}

/// The single writer of `key` in `bucket`: unique values, each write with the context of
/// the previous acknowledged one, a fresh read's context after a failure; with `deletes`,
/// a share of the writes are deletes (never two in a row).
pub async fn register_writer(
    api: Api,
    bucket: &'static str,
    key: String,
    deletes: bool,
    mut rng: StdRng,
    until: Instant,
) {
    let mut ctx: Option<String> = None;
    let mut seq = 0;
    let mut last_was_delete = false;
    while Instant::now() < until {
        seq += 1;
        let delete = deletes && !last_was_delete && rng.random_bool(DELETE_SHARE);
        let tag = if delete {
            format!("d{seq}")
        } else {
            format!("v{seq}")
        };
        let value = format!("{key}:{tag}");
        let op = api
            .write(Write {
                bucket,
                key: &key,
                value: (!delete).then_some(value.as_str()),
                ctx: ctx.as_deref(),
                seq,
                tag: &tag,
            })
            .await;
        if op.outcome.is_ok() {
            ctx = op.ctx_answered;
            last_was_delete = delete;
            if delete && rng.random_bool(QUIET_SHARE) {
                let quiet = Duration::from_millis(
                    rng.random_range(QUIET_AFTER_DELETE_MS.0..=QUIET_AFTER_DELETE_MS.1),
                );
                tokio::time::sleep_until((Instant::now() + quiet).min(until)).await;
            }
        } else {
            // The write may or may not be there: continue from what a read shows.
            match fresh_context(&api, bucket, &key, &mut rng, until).await {
                Some(c) => ctx = c,
                None => break,
            }
        }
        think(&mut rng).await;
    }
}

/// Reads until a read succeeds (its context, if it carried one) or `until` passes
/// (`None`).
async fn fresh_context(
    api: &Api,
    bucket: &str,
    key: &str,
    rng: &mut StdRng,
    until: Instant,
) -> Option<Option<String>> {
    while Instant::now() < until {
        let read = api.read(bucket, key).await;
        if matches!(read.outcome, Outcome::Ok | Outcome::NotFound) {
            return Some(read.ctx_answered);
        }
        think(rng).await;
    }
    None
}

/// A blind writer of the LWW bucket: unique values to one of `keys` at random.
pub async fn lww_writer(api: Api, keys: usize, rng: StdRng, until: Instant) {
    blind_writes(api, LWW, 'w', rng, until, |rng, _| {
        format!("lww-{}", rng.random_range(0..keys))
    })
    .await;
}

/// A blind writer of the siblings bucket: unique values, no context, [`BLIND_PER_KEY`]
/// to each key `blind-0`, `blind-1`, … in turn (writers advance at about the same pace,
/// so they meet on each key).
pub async fn blind_writer(api: Api, rng: StdRng, until: Instant) {
    blind_writes(api, BLIND, 'b', rng, until, |_, seq| {
        format!("blind-{}", (seq - 1) / BLIND_PER_KEY)
    })
    .await;
}

/// Writes unique values without a context to `bucket` until `until`, each to the key
/// `key_of(rng, seq)` picks; tags are `<client>-<letter><seq>`.
async fn blind_writes(
    api: Api,
    bucket: &str,
    letter: char,
    mut rng: StdRng,
    until: Instant,
    mut key_of: impl FnMut(&mut StdRng, u64) -> String,
) {
    let mut seq = 0;
    while Instant::now() < until {
        seq += 1;
        let key = key_of(&mut rng, seq);
        let tag = format!("{}-{letter}{seq}", api.client);
        let value = format!("{key}:{tag}");
        api.write(Write {
            bucket,
            key: &key,
            value: Some(&value),
            ctx: None,
            seq,
            tag: &tag,
        })
        .await;
        think(&mut rng).await;
    }
}

/// What one counter client did to each key: the sum of its acknowledged increments, and
/// the sum of those that may have been applied once more than acknowledged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CounterTally {
    /// Per key: (acknowledged, at most this much more).
    pub keys: BTreeMap<String, (i64, i64)>,
    /// Increments refused with a 4xx (none is expected: each is a well-formed op).
    pub refused: Vec<String>,
}

impl CounterTally {
    /// Adds another client's tally.
    pub fn absorb(&mut self, other: CounterTally) {
        for (k, (acked, unknown)) in other.keys {
            let e = self.keys.entry(k).or_default();
            e.0 += acked;
            e.1 += unknown;
        }
        self.refused.extend(other.refused);
    }
}

/// A counter client: until `until`, increments one of `keys` counters by 1–9, each
/// increment retried up to `INCREMENT_ATTEMPTS` (3) times under one `Idempotency-Key`.
///
/// The tally's bounds: an acknowledged increment counts once; any attempt that failed
/// without a refusal (a 503, no answer) may have been applied, and its retry may be
/// applied again when the replica that remembers the key is unreachable (docs/api.md,
/// "Idempotent retries"), so it adds its amount to the "more" side.
pub async fn counter_incrementer(api: Api, keys: usize, mut rng: StdRng, until: Instant) -> CounterTally {
    let mut tally = CounterTally::default();
    let mut seq = 0;
    while Instant::now() < until {
        seq += 1;
        let key = format!("counter-{}", rng.random_range(0..keys));
        let by = rng.random_range(1..=9i64);
        let idempotency_key = format!("{}-i{seq}", api.client);
        for _ in 0..INCREMENT_ATTEMPTS {
            let outcome = api.increment(COUNTERS, &key, by, &idempotency_key).await;
            let entry = tally.keys.entry(key.clone()).or_default();
            match outcome {
                Outcome::Ok => {
                    entry.0 += by;
                    break;
                }
                // A refusal applied nothing; the final check reports it.
                Outcome::Failed { status, code } => {
                    tally
                        .refused
                        .push(format!("{key} +{by} ({idempotency_key}): {status} {code}"));
                    break;
                }
                _ => entry.1 += by,
            }
            think(&mut rng).await;
        }
        think(&mut rng).await;
    }
    tally
}
