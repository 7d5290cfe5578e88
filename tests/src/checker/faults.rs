//! The fault schedule and the faults themselves.
//!
//! A [`Schedule`] is a function of the seed and the node count only: a sequence of steps
//! "wait `gap`, fault one node for `hold`, heal it". One node is faulted at a time: a
//! step starts only once the previous one healed (a killed node restarted and answers
//! `/readyz` again). A run of D seconds plays the prefix that fits in D, so a longer
//! replay of a seed begins with the same faults. Real times drift from the nominal ones
//! (a restart takes as long as it takes); the order, nodes, kinds and holds do not.
//!
//! Faults: `kill -9` then restart with the same flags and data dir; SIGSTOP then SIGCONT
//! (a hung process whose sockets stay open); a partition, iptables rules that drop TCP
//! to and from the node's loopback port. The partition is asymmetric by construction:
//! connections to the node (coordinator requests, other nodes' replication and hint
//! delivery) hang, while connections the node opens (heartbeats to the ring service,
//! its own hint deliveries) still flow, since they leave from ephemeral ports.
//!
//! [`Firewall`] owns the rules: each is tagged `dynamo-checker-<pid>`, removed when the
//! fault heals and again on drop (so on panic too); at start, rules left by checker
//! processes that no longer exist are swept. Without root or without a working
//! `iptables`, partitions are skipped with the reason printed and the steps stay in the
//! schedule as pauses, so the rest of the schedule is unchanged.
//!
//! **Membership steps** (with `membership` on, [`Schedule::generate`]): one join, one
//! decommission and one replace, in an order drawn from the seed (never leaving fewer
//! than [`MIN_MEMBERS`] members), each at a nominal start spread over the load phase
//! (the first third, the second, the last). Each is played with a fault of its own, a
//! kill -9 or a SIGSTOP of the node the change is about (the joiner, the leaver, the
//! member replaced) or of another member, starting just before the change, some time
//! into it, or as it enters its catch-up phase; healed after its hold. A replace either
//! takes the place of a live member or follows a lost disk (the member killed and its
//! data dir deleted; it never comes back). After the heal the step waits, bounded, for
//! the change to finish, retrying it (`POST /v1/cluster/change/retry`) when it failed
//! because of the fault. Ordinary faults give way to membership steps: one that would
//! still run at the next step's nominal start is skipped. Membership steps draw from a
//! stream of their own, so the ordinary faults of a seed are the same with or without
//! them.

use std::fmt;
use std::process::Command;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dynamo_core::ring::Ring;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::time::Instant;

use tokio::sync::watch;

use super::check::node_urls;
use super::handoff::{self, Watch, Watched};
use super::history::History;
use crate::membership::{ChangeWait, node_name};
use crate::{Cluster, wait_ready};

/// Shortest and longest quiet time before a fault.
const GAP_MS: (u64, u64) = (1_000, 3_000);
/// Shortest and longest time a fault is held.
const HOLD_MS: (u64, u64) = (2_000, 6_000);
/// Quiet time kept at the end of the load phase, so its last seconds see a healed cluster.
const TAIL_MS: u64 = 1_000;
/// The nominal length of a membership step (the change, its fault and the wait for it
/// to finish): what ordinary faults leave room for.
const CHANGE_NOMINAL_MS: u64 = 8_000;
/// Quiet time before the first membership step.
const CHANGE_LEAD_MS: u64 = 1_000;
/// Longest delay from a change's start to its fault ([`FaultAt::AfterStart`]).
const AFTER_START_MS: u64 = 1_500;
/// Fewest members a membership step may leave (the ring's N).
pub const MIN_MEMBERS: usize = 3;
/// Mixed into the seed for the membership steps' own random stream.
const MEMBERSHIP_STREAM: u64 = 0x6d65_6d62_6572_7368;
/// Longest wait for a change to finish after its fault healed (retries included).
const CHANGE_LIMIT: Duration = Duration::from_secs(90);
/// Longest a change is asked for again while it is refused with `409` (an earlier
/// change's release not yet carried out, say).
const START_LIMIT: Duration = Duration::from_secs(20);
/// Most retries of a change that failed.
const MAX_RETRIES: u32 = 10;
/// Longest the hand-off watcher goes on after the step saw its change finish.
const WATCH_LIMIT: Duration = Duration::from_secs(3);
/// Longest wait for a change to enter its catch-up phase ([`FaultAt::CatchUp`]).
const CATCH_UP_LIMIT: Duration = Duration::from_secs(30);

/// What is done to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// `kill -9`, then restart.
    Kill,
    /// SIGSTOP, then SIGCONT.
    Pause,
    /// iptables DROP of TCP to and from the node's port, then removal of the rules.
    Partition,
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultKind::Kill => "kill-9",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
        })
    }
}

/// One step of a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// Quiet time after the previous step healed.
    pub gap: Duration,
    /// The storage node (`node-<i>`).
    pub node: usize,
    /// What is done to it.
    pub kind: FaultKind,
    /// How long it is held.
    pub hold: Duration,
}

/// What a membership step changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// A new node joins.
    Join,
    /// A member leaves after its data is handed off.
    Decommission,
    /// A new node takes a member's place. With `wipe`, the member's disk was lost first:
    /// it is killed and its data dir deleted before the change, and never comes back.
    Replace {
        /// The member's disk is lost before the replace.
        wipe: bool,
    },
}

impl fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChangeKind::Join => "join",
            ChangeKind::Decommission => "decommission",
            ChangeKind::Replace { wipe: false } => "replace",
            ChangeKind::Replace { wipe: true } => "replace (lost disk)",
        })
    }
}

/// Which node the fault of a membership step hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Victim {
    /// The node the change is about: the joiner, the leaver, the member replaced (or,
    /// when that member's disk was lost, its replacement).
    Subject,
    /// Another member: the `i % n`-th of the `n` members the change is not about.
    Other(usize),
}

/// When the fault of a membership step begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAt {
    /// Just before the change is asked for: it starts with the node away.
    BeforeStart,
    /// This long after the change was accepted (in its copy phase, usually).
    AfterStart(Duration),
    /// As soon as the change enters its catch-up phase (its new ring published).
    CatchUp,
}

impl fmt::Display for FaultAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultAt::BeforeStart => f.write_str("before it starts"),
            FaultAt::AfterStart(d) => write!(f, "{:.1}s into it", d.as_secs_f64()),
            FaultAt::CatchUp => f.write_str("at its catch-up"),
        }
    }
}

/// A membership change of a schedule, and the fault played during it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeStep {
    /// Its nominal start, from the beginning of the load phase.
    pub at: Duration,
    /// What changes.
    pub kind: ChangeKind,
    /// The member decommissioned or replaced: the `member % n`-th of the `n` members
    /// when the step begins.
    pub member: usize,
    /// What is done to the victim: [`FaultKind::Kill`] or [`FaultKind::Pause`].
    pub fault: FaultKind,
    /// Who is faulted.
    pub victim: Victim,
    /// When.
    pub fault_at: FaultAt,
    /// How long the fault is held.
    pub hold: Duration,
}

/// One step of a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// An ordinary fault.
    Fault(Fault),
    /// A membership change with its fault.
    Change(ChangeStep),
}

/// The faults of a run, from its seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// The seed.
    pub seed: u64,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

impl Schedule {
    /// The schedule of `seed` over `nodes` storage nodes, for a load phase of `duration`:
    /// the ordinary faults whose nominal end fits before the phase's last `TAIL_MS`, and
    /// with `membership` the three membership steps (module docs), each placed before
    /// the first fault that would overlap its nominal start.
    pub fn generate(seed: u64, nodes: usize, duration: Duration, membership: bool) -> Schedule {
        // The schedule's own stream: workload clients use other streams of the same seed.
        let mut rng = StdRng::seed_from_u64(seed);
        let budget = duration.as_millis() as u64;
        let mut changes = if membership {
            changes(seed, nodes, duration)
        } else {
            Vec::new()
        }
        .into_iter()
        .peekable();
        let mut t = 0;
        let mut steps = Vec::new();
        loop {
            let gap = rng.random_range(GAP_MS.0..=GAP_MS.1);
            let hold = rng.random_range(HOLD_MS.0..=HOLD_MS.1);
            let node = rng.random_range(0..nodes);
            let kind = match rng.random_range(0..3) {
                0 => FaultKind::Kill,
                1 => FaultKind::Pause,
                _ => FaultKind::Partition,
            };
            while let Some(c) = changes.next_if(|c| t + gap + hold > c.at.as_millis() as u64) {
                t = t.max(c.at.as_millis() as u64) + CHANGE_NOMINAL_MS;
                steps.push(Step::Change(c));
            }
            if t + gap + hold + TAIL_MS > budget {
                break;
            }
            t += gap + hold;
            steps.push(Step::Fault(Fault {
                gap: Duration::from_millis(gap),
                node,
                kind,
                hold: Duration::from_millis(hold),
            }));
        }
        // Steps past the load phase are skipped when played (too short a run).
        steps.extend(changes.map(Step::Change));
        Schedule { seed, steps }
    }

    /// The ordinary faults.
    pub fn faults(&self) -> impl Iterator<Item = &Fault> {
        self.steps.iter().filter_map(|s| match s {
            Step::Fault(f) => Some(f),
            Step::Change(_) => None,
        })
    }

    /// The membership steps.
    pub fn changes(&self) -> impl Iterator<Item = &ChangeStep> {
        self.steps.iter().filter_map(|s| match s {
            Step::Change(c) => Some(c),
            Step::Fault(_) => None,
        })
    }
}

/// The membership steps of `seed`: a join, a decommission and a replace in an order that
/// never leaves fewer than [`MIN_MEMBERS`] of `nodes`, at the starts of the load phase's
/// thirds. Every step draws the same number of values, so a seed's steps depend only on
/// the seed, the node count and the duration.
fn changes(seed: u64, nodes: usize, duration: Duration) -> Vec<ChangeStep> {
    let mut rng = StdRng::seed_from_u64(seed ^ MEMBERSHIP_STREAM);
    let kinds = [
        ChangeKind::Join,
        ChangeKind::Decommission,
        ChangeKind::Replace { wipe: false },
    ];
    const PERMUTATIONS: [[usize; 3]; 6] = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
    let orders: Vec<[ChangeKind; 3]> = PERMUTATIONS
        .iter()
        .map(|p| p.map(|i| kinds[i]))
        .filter(|order| {
            let mut members = nodes as i64;
            order.iter().all(|k| {
                members += match k {
                    ChangeKind::Join => 1,
                    ChangeKind::Decommission => -1,
                    ChangeKind::Replace { .. } => 0,
                };
                members >= MIN_MEMBERS as i64
            })
        })
        .collect();
    // Never empty: a join first then a decommission fits any node count of at least
    // MIN_MEMBERS.
    let mut order = orders[rng.random_range(0..orders.len())];
    let third = duration / 3;
    let mut out = Vec::new();
    for (i, kind) in order.iter_mut().enumerate() {
        let wipe = rng.random_bool(0.5);
        if let ChangeKind::Replace { wipe: w } = kind {
            *w = wipe;
        }
        let kind = *kind;
        let member = rng.random_range(0..64);
        let fault = if rng.random_bool(0.5) {
            FaultKind::Kill
        } else {
            FaultKind::Pause
        };
        let other = rng.random_range(0..64);
        let victim = if rng.random_range(0..3) == 0 {
            Victim::Subject
        } else {
            Victim::Other(other)
        };
        let after = Duration::from_millis(rng.random_range(0..=AFTER_START_MS));
        let fault_at = match rng.random_range(0..3) {
            0 => FaultAt::BeforeStart,
            1 => FaultAt::AfterStart(after),
            _ => FaultAt::CatchUp,
        };
        let hold = Duration::from_millis(rng.random_range(HOLD_MS.0..=HOLD_MS.1));
        out.push(ChangeStep {
            at: third * i as u32 + Duration::from_millis(CHANGE_LEAD_MS),
            kind,
            member,
            fault,
            victim,
            fault_at,
            hold,
        });
    }
    out
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "fault schedule of seed {} ({} faults, {} membership changes):",
            self.seed,
            self.faults().count(),
            self.changes().count()
        )?;
        let mut t = Duration::ZERO;
        for (i, step) in self.steps.iter().enumerate() {
            match step {
                Step::Fault(s) => {
                    t += s.gap;
                    writeln!(
                        f,
                        "  {i:>2}. ~{:>6.1}s  {:<9} node-{} for {:.1}s",
                        t.as_secs_f64(),
                        s.kind.to_string(),
                        s.node,
                        s.hold.as_secs_f64()
                    )?;
                    t += s.hold;
                }
                Step::Change(c) => {
                    t = t.max(c.at);
                    writeln!(f, "  {i:>2}. ~{:>6.1}s  {c}", t.as_secs_f64())?;
                    t += Duration::from_millis(CHANGE_NOMINAL_MS);
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for ChangeStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let victim = match self.victim {
            Victim::Subject => "its subject".to_owned(),
            Victim::Other(i) => format!("other member #{i}"),
        };
        let member = match self.kind {
            ChangeKind::Join => String::new(),
            _ => format!(" of member #{}", self.member),
        };
        write!(
            f,
            "{}{member}, {} of {victim} {} for {:.1}s",
            self.kind,
            self.fault,
            self.fault_at,
            self.hold.as_secs_f64()
        )
    }
}

/// A fault as it was played.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The step.
    pub fault: Fault,
    /// When it began (since the run started).
    pub start: Duration,
    /// When it was healed (the node answering again, for a kill).
    pub healed: Duration,
    /// Why it was not applied, if it was not.
    pub skipped: Option<String>,
}

impl fmt::Display for Applied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>8.3}s–{:>8.3}s {:<9} node-{}",
            self.start.as_secs_f64(),
            self.healed.as_secs_f64(),
            self.fault.kind.to_string(),
            self.fault.node
        )?;
        if let Some(why) = &self.skipped {
            write!(f, " (skipped: {why})")?;
        }
        Ok(())
    }
}

/// A membership step as it was played.
#[derive(Debug, Clone)]
pub struct ChangePlayed {
    /// The step.
    pub step: ChangeStep,
    /// What changed, by node: `join of node-4`, `replace of node-1 by node-5`.
    pub what: String,
    /// The node faulted during it.
    pub victim: String,
    /// When the change was asked for (since the run started).
    pub start: Duration,
    /// When its fault began and was healed.
    pub fault: Option<(Duration, Duration)>,
    /// True when the fault began while the change was in progress (a change may finish
    /// before a fault planned for its catch-up).
    pub overlapped: bool,
    /// Times the change failed and was retried.
    pub retries: u32,
    /// How long the change took, from the request to the ring service's word that it
    /// finished (as the hand-off watcher saw it, within its poll).
    pub took: Option<Duration>,
    /// Why it did not start or did not finish, or why it was skipped (`skipped` says
    /// which).
    pub error: Option<String>,
    /// True when it was not played: the load phase ended first.
    pub skipped: bool,
    /// What check 7's watcher saw during it.
    pub handoff: Watched,
}

impl fmt::Display for ChangePlayed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.skipped {
            return write!(
                f,
                "{} (skipped: {})",
                self.step.kind,
                self.error.as_deref().unwrap_or("")
            );
        }
        write!(f, "{:>8.3}s {}", self.start.as_secs_f64(), self.what)?;
        match self.fault {
            Some((a, b)) => write!(
                f,
                "; {} {} {:.3}s–{:.3}s{}",
                self.step.fault,
                self.victim,
                a.as_secs_f64(),
                b.as_secs_f64(),
                if self.overlapped {
                    ""
                } else {
                    " (after the change finished)"
                }
            )?,
            None => write!(f, "; no fault")?,
        }
        match (&self.took, &self.error) {
            (_, Some(e)) => write!(f, "; FAILED: {e}"),
            (Some(t), None) => write!(
                f,
                "; finished in {:.1}s ({} retries); hand-off: {} releases seen, {} receiver copies read",
                t.as_secs_f64(),
                self.retries,
                self.handoff.releases,
                self.handoff.observations.len()
            ),
            (None, None) => Ok(()),
        }
    }
}

/// What [`play`] did.
#[derive(Debug, Clone, Default)]
pub struct Played {
    /// The ordinary faults.
    pub faults: Vec<Applied>,
    /// The membership steps.
    pub changes: Vec<ChangePlayed>,
    /// Every ring the cluster had during the run, oldest first (the first one and the
    /// one after each change): which nodes held which partitions.
    pub rings: Vec<Ring>,
}

/// Plays `schedule` on `cluster` until `until`, healing the fault in progress then; the
/// clock of the recorded times starts at `t0`. Nodes started for a membership step are
/// added to `sampled` (the epoch sampler's list). A membership step started before
/// `until` is played to the end (its change finished, or its bounded wait over).
pub async fn play(
    cluster: &mut Cluster,
    schedule: &Schedule,
    firewall: &mut Result<Firewall, String>,
    sampled: &Arc<Mutex<Vec<(String, String)>>>,
    history: &History,
    t0: Instant,
    until: Instant,
) -> Played {
    let mut played = Played::default();
    let mut members: Vec<usize> = (0..cluster.nodes.len()).collect();
    if let Some(r) = cluster.ring_state().await.and_then(|s| s.ring) {
        played.rings.push(r);
    }
    for (i, step) in schedule.steps.iter().enumerate() {
        let next_change = schedule.steps[i + 1..].iter().find_map(|s| match s {
            Step::Change(c) => Some(t0 + c.at),
            Step::Fault(_) => None,
        });
        match *step {
            Step::Fault(fault) => {
                let start = Instant::now() + fault.gap;
                if start >= until {
                    break;
                }
                // Ordinary faults give way to membership steps.
                if next_change.is_some_and(|c| start + fault.hold > c) {
                    continue;
                }
                let fault = Fault {
                    node: members[fault.node % members.len()],
                    ..fault
                };
                // A timed phase of the schedule, not a wait for a condition.
                tokio::time::sleep_until(start).await;
                played
                    .faults
                    .push(play_fault(cluster, fault, firewall, t0, until).await);
            }
            Step::Change(c) => {
                let start = (t0 + c.at).max(Instant::now());
                if start >= until {
                    played.changes.push(ChangePlayed {
                        step: c,
                        what: c.kind.to_string(),
                        victim: String::new(),
                        start: Duration::ZERO,
                        fault: None,
                        overlapped: false,
                        retries: 0,
                        took: None,
                        error: Some("the load phase ended before it".into()),
                        skipped: true,
                        handoff: Watched::default(),
                    });
                    continue;
                }
                tokio::time::sleep_until(start).await;
                let p = play_change(cluster, c, &mut members, sampled, history, t0).await;
                println!("checker: {p}");
                played.changes.push(p);
                if let Some(r) = cluster.ring_state().await.and_then(|s| s.ring) {
                    played.rings.push(r);
                }
            }
        }
    }
    played
}

/// Plays one ordinary fault: applies it, holds it (until `until` at most), heals it.
async fn play_fault(
    cluster: &mut Cluster,
    fault: Fault,
    firewall: &mut Result<Firewall, String>,
    t0: Instant,
    until: Instant,
) -> Applied {
    let node = &mut cluster.nodes[fault.node];
    let mut skipped = None;
    match fault.kind {
        FaultKind::Kill => node.kill9(),
        FaultKind::Pause => node.pause(),
        FaultKind::Partition => match firewall {
            Ok(fw) => {
                if let Err(e) = fw.cut(node.port) {
                    skipped = Some(e);
                }
            }
            Err(why) => skipped = Some(why.clone()),
        },
    }
    let begun = t0.elapsed();
    tokio::time::sleep_until((Instant::now() + fault.hold).min(until)).await;
    heal(cluster, fault, firewall).await;
    Applied {
        fault,
        start: begun,
        healed: t0.elapsed(),
        skipped,
    }
}

/// Plays one membership step (module docs): prepares the nodes, faults the victim at
/// the step's moment, asks for the change (again while it is refused with `409`, at
/// most [`START_LIMIT`]), heals the victim after the hold, and waits for the change to
/// finish, retrying it when it failed, at most [`CHANGE_LIMIT`]. Updates `members`.
async fn play_change(
    cluster: &mut Cluster,
    step: ChangeStep,
    members: &mut Vec<usize>,
    sampled: &Arc<Mutex<Vec<(String, String)>>>,
    history: &History,
    t0: Instant,
) -> ChangePlayed {
    let pick = |members: &[usize]| members[step.member % members.len()];
    // (the node the change is about, the node it brings in, the node it removes)
    let (subject, newcomer, leaver) = match step.kind {
        ChangeKind::Join => {
            let new = add_node(cluster, sampled).await;
            (new, Some(new), None)
        }
        ChangeKind::Decommission => {
            let old = pick(members);
            (old, None, Some(old))
        }
        ChangeKind::Replace { wipe } => {
            let old = pick(members);
            let new = add_node(cluster, sampled).await;
            if wipe {
                cluster.wipe(old);
                (new, Some(new), Some(old))
            } else {
                (old, Some(new), Some(old))
            }
        }
    };
    let what = match (step.kind, newcomer, leaver) {
        (ChangeKind::Join, Some(n), _) => format!("join of {}", node_name(n)),
        (ChangeKind::Decommission, _, Some(o)) => format!("decommission of {}", node_name(o)),
        (ChangeKind::Replace { wipe }, Some(n), Some(o)) => format!(
            "replace of {}{} by {}",
            node_name(o),
            if wipe { " (disk lost)" } else { "" },
            node_name(n)
        ),
        _ => step.kind.to_string(),
    };
    let victim = match step.victim {
        Victim::Subject => subject,
        Victim::Other(i) => {
            let others: Vec<usize> = members
                .iter()
                .copied()
                .filter(|&m| m != subject && Some(m) != leaver)
                .collect();
            others[i % others.len()]
        }
    };
    let mut played = ChangePlayed {
        step,
        what,
        victim: node_name(victim),
        start: t0.elapsed(),
        fault: None,
        overlapped: false,
        retries: 0,
        took: None,
        error: None,
        skipped: false,
        handoff: Watched::default(),
    };
    // Check 7 watches from before the change is asked for.
    let (stop_watch, stopped) = watch::channel(false);
    let watcher = tokio::spawn(handoff::watch_change(
        Watch {
            http: cluster.http.clone(),
            ring_url: cluster.ring.url(),
            nodes: node_urls(cluster),
            history: history.clone(),
            t0,
        },
        stopped,
    ));
    let fault = Fault {
        gap: Duration::ZERO,
        node: victim,
        kind: step.fault,
        hold: step.hold,
    };
    let mut faulted_at = None;
    if step.fault_at == FaultAt::BeforeStart {
        apply(cluster, fault);
        faulted_at = Some((Instant::now(), t0.elapsed()));
        played.overlapped = true;
    }
    let asked = Instant::now();
    played.start = t0.elapsed();
    let started = start_change(cluster, step.kind, newcomer, leaver).await;
    if let Err(e) = &started {
        played.error = Some(format!("the change was not accepted: {e}"));
    } else if faulted_at.is_none() {
        match step.fault_at {
            FaultAt::AfterStart(d) => tokio::time::sleep(d).await,
            FaultAt::CatchUp => wait_catch_up(cluster).await,
            FaultAt::BeforeStart => {}
        }
        played.overlapped = cluster.ring_state().await.is_some_and(|s| s.change.is_some());
        apply(cluster, fault);
        faulted_at = Some((Instant::now(), t0.elapsed()));
    }
    if let Some((at, since_t0)) = faulted_at {
        // A timed phase of the schedule: the fault's hold.
        tokio::time::sleep_until(at + step.hold).await;
        heal(cluster, fault, &mut Err(String::new())).await;
        played.fault = Some((since_t0, t0.elapsed()));
    }
    if started.is_ok() {
        match finish_change(cluster, &mut played.retries).await {
            Ok(()) => played.took = Some(asked.elapsed()),
            Err(e) => played.error = Some(e),
        }
        if let Some(n) = newcomer {
            members.push(n);
        }
        members.retain(|&m| Some(m) != leaver);
        members.sort_unstable();
    }
    // The watcher ends by itself shortly after it saw the change finish.
    let mut watcher = watcher;
    let watched = match tokio::time::timeout(WATCH_LIMIT, &mut watcher).await {
        Ok(w) => w,
        Err(_) => {
            let _ = stop_watch.send(true);
            watcher.await
        }
    };
    played.handoff = watched.expect("the hand-off watcher panicked");
    // The step learns that the change finished only after its fault healed; the watcher
    // saw it within a poll.
    if let (Some(took), Some(seen)) = (played.took, played.handoff.finished) {
        played.took = Some(took.min(seen.saturating_sub(played.start)));
    }
    played
}

/// Starts another storage node and has the epoch sampler watch it too.
async fn add_node(cluster: &mut Cluster, sampled: &Arc<Mutex<Vec<(String, String)>>>) -> usize {
    let i = cluster.add_node().await;
    sampled
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((node_name(i), cluster.nodes[i].url()));
    i
}

/// Asks for the change; again while it is refused with `409` (at most [`START_LIMIT`]).
async fn start_change(
    cluster: &Cluster,
    kind: ChangeKind,
    newcomer: Option<usize>,
    leaver: Option<usize>,
) -> Result<(), String> {
    let deadline = Instant::now() + START_LIMIT;
    loop {
        let r = match (kind, newcomer, leaver) {
            (ChangeKind::Join, Some(n), _) => cluster.join(n).await,
            (ChangeKind::Decommission, _, Some(o)) => cluster.decommission(o).await,
            (ChangeKind::Replace { .. }, Some(n), Some(o)) => cluster.replace(o, n).await,
            _ => return Err("nothing to change".into()),
        };
        match r {
            Err(e) if e.starts_with("409") && Instant::now() < deadline => {
                // Polling: an earlier change's release is carried out in the nodes' own time.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => return other,
        }
    }
}

/// Waits until the change in progress enters its catch-up phase, finishes or fails, at
/// most [`CATCH_UP_LIMIT`].
async fn wait_catch_up(cluster: &Cluster) {
    let deadline = Instant::now() + CATCH_UP_LIMIT;
    while Instant::now() < deadline {
        match cluster.ring_state().await.map(|s| s.change) {
            Some(Some(c)) if c.phase != "catch_up" && c.failed.is_none() => {}
            Some(_) => return,
            None => {}
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for the change to finish, retrying it each time it failed (at most
/// [`MAX_RETRIES`] times, all within [`CHANGE_LIMIT`]).
async fn finish_change(cluster: &Cluster, retries: &mut u32) -> Result<(), String> {
    let deadline = Instant::now() + CHANGE_LIMIT;
    loop {
        match cluster.wait_change(deadline - Instant::now()).await {
            ChangeWait::Finished => return Ok(()),
            ChangeWait::Running(why) => {
                return Err(format!(
                    "not finished {} s after the heal: {why}",
                    CHANGE_LIMIT.as_secs()
                ));
            }
            ChangeWait::Failed(why) if *retries >= MAX_RETRIES || Instant::now() >= deadline => {
                return Err(format!("failed {} times; the last: {why}", *retries + 1));
            }
            ChangeWait::Failed(why) => {
                *retries += 1;
                println!("checker: retrying the membership change: {why}");
                if let Err(e) = cluster.retry_change().await {
                    println!("checker: the retry was refused: {e}");
                }
            }
        }
    }
}

/// Applies a kill -9 or a pause (membership steps use no partitions).
fn apply(cluster: &mut Cluster, fault: Fault) {
    let node = &mut cluster.nodes[fault.node];
    match fault.kind {
        FaultKind::Kill => node.kill9(),
        FaultKind::Pause => node.pause(),
        FaultKind::Partition => unreachable!("membership steps use no partitions"),
    }
}

/// Undoes `fault` and waits (bounded) until the node answers again.
async fn heal(cluster: &mut Cluster, fault: Fault, firewall: &mut Result<Firewall, String>) {
    let node = &mut cluster.nodes[fault.node];
    match fault.kind {
        FaultKind::Kill => node.start(),
        FaultKind::Pause => node.resume(),
        FaultKind::Partition => {
            if let Ok(fw) = firewall {
                fw.heal(node.port);
            }
        }
    }
    wait_ready(&node.url()).await;
}

/// The iptables rules of one checker process.
#[derive(Debug)]
pub struct Firewall {
    tag: String,
    active: Vec<Vec<String>>,
}

/// The comment prefix of every rule a checker inserts.
const TAG_PREFIX: &str = "dynamo-checker-";

impl Firewall {
    /// Checks that partitions can be made here (root, a working `iptables`) and sweeps
    /// rules left by checker processes that are gone.
    ///
    /// # Errors
    /// Why partitions cannot be made, to print.
    pub fn open() -> Result<Firewall, String> {
        if !is_root() {
            return Err("not root: iptables needs root".into());
        }
        let listing = iptables(&["-S"]).map_err(|e| format!("iptables does not work: {e}"))?;
        for line in listing.lines() {
            let Some(pid) = line
                .split_once(TAG_PREFIX)
                .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
            else {
                continue;
            };
            let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
            if !alive && let Some(spec) = line.strip_prefix("-A ") {
                let args: Vec<&str> = std::iter::once("-D").chain(spec.split_whitespace()).collect();
                match iptables(&args) {
                    Ok(_) => println!("checker: removed a stale rule: {line}"),
                    Err(e) => println!("checker: could not remove a stale rule {line}: {e}"),
                }
            }
        }
        Ok(Firewall {
            tag: format!("{TAG_PREFIX}{}", std::process::id()),
            active: Vec::new(),
        })
    }

    fn rules(&self, port: u16) -> [Vec<String>; 2] {
        let rule = |chain: &str, dir: &str| -> Vec<String> {
            [
                chain,
                "-p",
                "tcp",
                dir,
                &port.to_string(),
                "-m",
                "comment",
                "--comment",
                &self.tag,
                "-j",
                "DROP",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
        };
        // On loopback a packet passes OUTPUT then INPUT: these two drop everything sent to
        // the port and everything sent from it.
        [rule("INPUT", "--dport"), rule("OUTPUT", "--sport")]
    }

    /// Drops TCP to and from `port`.
    ///
    /// # Errors
    /// iptables' complaint; rules inserted before it are kept and removed on heal.
    pub fn cut(&mut self, port: u16) -> Result<(), String> {
        for rule in self.rules(port) {
            let args: Vec<&str> = std::iter::once("-I")
                .chain(rule.iter().map(String::as_str))
                .collect();
            iptables(&args)?;
            self.active.push(rule);
        }
        Ok(())
    }

    /// Removes the rules of `port`.
    pub fn heal(&mut self, port: u16) {
        for rule in self.rules(port) {
            if let Some(i) = self.active.iter().position(|r| *r == rule) {
                let r = self.active.remove(i);
                remove(&r);
            }
        }
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        for rule in std::mem::take(&mut self.active) {
            remove(&rule);
        }
    }
}

fn remove(rule: &[String]) {
    let args: Vec<&str> = std::iter::once("-D")
        .chain(rule.iter().map(String::as_str))
        .collect();
    if let Err(e) = iptables(&args) {
        // Printed, not panicked: this runs in Drop, maybe while unwinding.
        println!("checker: could not remove iptables rule {rule:?}: {e}");
    }
}

/// Runs iptables (waiting for the xtables lock, which Docker may hold), answering its
/// stdout.
fn iptables(args: &[&str]) -> Result<String, String> {
    let out = Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run iptables: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "iptables {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// True when the effective uid is 0 (read from /proc: no libc binding needed).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_one_schedule_and_longer_runs_extend_it() {
        let a = Schedule::generate(7, 3, Duration::from_secs(40), false);
        assert_eq!(a, Schedule::generate(7, 3, Duration::from_secs(40), false));
        let long = Schedule::generate(7, 3, Duration::from_secs(400), false);
        assert_eq!(long.steps[..a.steps.len()], a.steps[..]);
        assert_ne!(a, Schedule::generate(8, 3, Duration::from_secs(40), false));
        assert!(a.faults().all(|f| f.node < 3));
        assert_eq!(a.changes().count(), 0);
    }

    #[test]
    fn membership_steps_keep_the_ordinary_faults_and_enough_members() {
        for seed in 0..200 {
            for nodes in [3, 4, 5] {
                let d = Duration::from_secs(60);
                let plain = Schedule::generate(seed, nodes, d, false);
                let with = Schedule::generate(seed, nodes, d, true);
                let kinds: Vec<ChangeKind> = with.changes().map(|c| c.kind).collect();
                assert_eq!(kinds.len(), 3, "seed {seed}: {with}");
                let mut members = nodes as i64;
                for k in &kinds {
                    members += match k {
                        ChangeKind::Join => 1,
                        ChangeKind::Decommission => -1,
                        ChangeKind::Replace { .. } => 0,
                    };
                    assert!(members >= MIN_MEMBERS as i64, "seed {seed}: {with}");
                }
                assert!(kinds.contains(&ChangeKind::Join) && kinds.contains(&ChangeKind::Decommission));
                // The ordinary faults are a prefix of the same stream.
                let faults: Vec<&Fault> = with.faults().collect();
                let all: Vec<&Fault> = plain.faults().collect();
                assert_eq!(faults[..], all[..faults.len()], "seed {seed}");
                assert!(
                    with.changes()
                        .zip(with.changes().skip(1))
                        .all(|(a, b)| a.at < b.at)
                );
            }
        }
    }
}
