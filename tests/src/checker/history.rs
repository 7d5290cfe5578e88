//! The recorded history: one [`Op`] per request a workload client made, with what it
//! sent, what it got back and when, shared by every client of a run.
//!
//! The checks read nothing else about the workload: an op's value, the context it sent
//! and the context it was answered are enough to say what it superseded. Times are
//! offsets from the start of the run, so a printed history lines up with the printed
//! fault schedule.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dynamo_core::{Dot, DotSet, context};

/// What a request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `GET` (JSON envelope).
    Read,
    /// `PUT`.
    Put,
    /// `DELETE` (writes a tombstone).
    Delete,
}

/// How a request ended, as far as the client can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx: a write was acknowledged, a read found siblings.
    Ok,
    /// A read answered 404: nothing live (maybe with a context over tombstones).
    NotFound,
    /// A 5xx or no answer at all: a write may or may not have been applied.
    Indeterminate {
        /// The status, `None` when no answer came (timeout, connection error).
        status: Option<u16>,
        /// The error code, or what went wrong on the client side.
        code: String,
    },
    /// A 4xx: refused, nothing applied ("bad input never changes stored data").
    Failed {
        /// The status.
        status: u16,
        /// The error code.
        code: String,
    },
}

impl Outcome {
    /// Returns true for an acknowledged write or a successful read.
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }

    /// Returns true for a `503` answer (the availability number of the report).
    pub fn is_503(&self) -> bool {
        matches!(
            self,
            Outcome::Indeterminate {
                status: Some(503),
                ..
            }
        )
    }
}

/// One request of a workload client.
#[derive(Debug, Clone)]
pub struct Op {
    /// Its position in the history (order of completion).
    pub id: usize,
    /// The client that made it, e.g. `set-2`.
    pub client: String,
    /// The bucket.
    pub bucket: String,
    /// The key.
    pub key: String,
    /// What it did.
    pub kind: Kind,
    /// The client's sequence number of this write (0 for reads).
    pub seq: u64,
    /// A short, unique name of what the write adds (`v17`, `set-1-e4`, `d9` for a
    /// delete), empty for reads.
    pub tag: String,
    /// The value written (puts only).
    pub value: Option<String>,
    /// The `X-Dynamo-Context` sent.
    pub ctx_sent: Option<String>,
    /// The `X-Dynamo-Context` answered.
    pub ctx_answered: Option<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// The live sibling values a read showed, in the order answered.
    pub read: Vec<String>,
    /// When it was sent (since the run started).
    pub start: Duration,
    /// When its answer (or failure) came.
    pub end: Duration,
}

impl Op {
    /// Returns true for an acknowledged `PUT` or `DELETE`.
    pub fn is_acked_write(&self) -> bool {
        self.kind != Kind::Read && self.outcome.is_ok()
    }

    /// Returns true for a `PUT` or `DELETE` whose effect is unknown (5xx, no answer).
    pub fn is_indeterminate_write(&self) -> bool {
        self.kind != Kind::Read && matches!(self.outcome, Outcome::Indeterminate { .. })
    }

    /// The dots an acknowledged write added to its context: for a well-behaved store
    /// exactly one, the write's own dot (API.md: the answer covers what the writer had
    /// seen plus its own write).
    pub fn minted_dots(&self) -> Vec<Dot> {
        let Some(answered) = self
            .ctx_answered
            .as_deref()
            .and_then(|t| context::read_unverified(t).ok())
        else {
            return Vec::new();
        };
        let sent = self
            .ctx_sent
            .as_deref()
            .and_then(|t| context::read_unverified(t).ok())
            .unwrap_or_default();
        new_dots(&answered, &sent)
    }
}

/// The dots of `answered` that `sent` lacks, looking back at most a few counters per
/// actor: a write adds one dot at the top of its actor's counters, so anything further
/// down would already be a contract violation that the first dots found show.
pub fn new_dots(answered: &DotSet, sent: &DotSet) -> Vec<Dot> {
    const LOOK_BACK: u64 = 8;
    let mut out = Vec::new();
    for (actor, n) in answered.vector() {
        let mut c = n;
        while c >= 1 && n - c < LOOK_BACK {
            let d = Dot::new(actor, c);
            if sent.contains(&d) {
                break;
            }
            out.push(d);
            c -= 1;
        }
    }
    out.extend(answered.cloud().filter(|d| !sent.contains(d)));
    out.sort();
    out
}

/// The history of a run, appended to by every client.
#[derive(Debug, Clone, Default)]
pub struct History {
    ops: Arc<Mutex<Vec<Op>>>,
}

impl History {
    /// Appends `op`, numbering it; returns it with its id.
    pub fn record(&self, mut op: Op) -> Op {
        let mut ops = self.ops.lock().unwrap_or_else(PoisonError::into_inner);
        op.id = ops.len();
        ops.push(op.clone());
        op
    }

    /// Returns a copy of every op so far, in order of completion.
    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Shows an actor as the last 4 hex digits of its id: enough to tell a key's few actors
/// apart in a trace.
fn actor(a: dynamo_core::ActorId) -> String {
    format!("{:04x}", a.0 & 0xffff)
}

/// Shows a dot as `actor:counter`.
pub fn show_dot(d: &Dot) -> String {
    format!("{}:{}", actor(d.actor), d.counter)
}

/// Shows a context token shortly: its version vector (`actor:1-n`) and extra dots, or
/// the token's first characters when it does not decode.
pub fn show_context(token: Option<&str>) -> String {
    let Some(token) = token else {
        return "-".into();
    };
    match context::read_unverified(token) {
        Ok(set) => show_set(&set),
        Err(_) => format!("{}…(undecodable)", &token[..token.len().min(12)]),
    }
}

/// Shows a dot set as `{actor:1-n, actor.c, actor.c1-c2}`: the version vector, then the
/// extra dots with runs of consecutive counters folded.
pub fn show_set(set: &DotSet) -> String {
    let mut parts: Vec<String> = set.vector().map(|(a, n)| format!("{}:1-{n}", actor(a))).collect();
    let mut run: Option<(Dot, u64)> = None;
    let flush = |run: Option<(Dot, u64)>, parts: &mut Vec<String>| {
        if let Some((first, last)) = run {
            if first.counter == last {
                parts.push(format!("{}.{last}", actor(first.actor)));
            } else {
                parts.push(format!("{}.{}-{last}", actor(first.actor), first.counter));
            }
        }
    };
    for d in set.cloud() {
        run = match run {
            Some((first, last)) if first.actor == d.actor && last + 1 == d.counter => {
                Some((first, d.counter))
            }
            other => {
                flush(other, &mut parts);
                Some((d, d.counter))
            }
        };
    }
    flush(run, &mut parts);
    format!("{{{}}}", parts.join(", "))
}

/// Shortens a value for a trace line (set values grow long).
fn short(v: &str) -> String {
    const MAX: usize = 60;
    if v.chars().count() <= MAX {
        v.to_owned()
    } else {
        let head: String = v.chars().take(MAX).collect();
        format!("{head}…({} bytes)", v.len())
    }
}

/// Formats one op as a trace line.
pub fn show_op(op: &Op) -> String {
    let mut line = format!(
        "#{:<6} {:>9.3}s–{:>9.3}s {:<10} ",
        op.id,
        op.start.as_secs_f64(),
        op.end.as_secs_f64(),
        op.client
    );
    let outcome = match &op.outcome {
        Outcome::Ok => match op.kind {
            Kind::Read => "200".to_owned(),
            _ => "204 ack".to_owned(),
        },
        Outcome::NotFound => "404".to_owned(),
        Outcome::Indeterminate { status, code } => match status {
            Some(s) => format!("{s} {code} (indeterminate)"),
            None => format!("no answer: {code} (indeterminate)"),
        },
        Outcome::Failed { status, code } => format!("{status} {code}"),
    };
    match op.kind {
        Kind::Read => {
            let shown: Vec<String> = op.read.iter().map(|v| short(v)).collect();
            let _ = write!(
                line,
                "GET    → {outcome} [{}] ctx {}",
                shown.join(" | "),
                show_context(op.ctx_answered.as_deref())
            );
        }
        Kind::Put | Kind::Delete => {
            let verb = if op.kind == Kind::Put { "PUT   " } else { "DELETE" };
            // Register and LWW values end with their tag: the tag alone says it all.
            let what = match &op.value {
                Some(v) if op.kind == Kind::Put && !v.ends_with(&op.tag) => {
                    format!("{} = {}", op.tag, short(v))
                }
                _ => op.tag.clone(),
            };
            let _ = write!(
                line,
                "{verb} {what} ctx {} → {outcome}",
                show_context(op.ctx_sent.as_deref())
            );
            if op.outcome.is_ok() {
                let dots: Vec<String> = op.minted_dots().iter().map(show_dot).collect();
                let _ = write!(
                    line,
                    " ctx {} (new dot {})",
                    show_context(op.ctx_answered.as_deref()),
                    dots.join(",")
                );
            }
        }
    }
    line
}
