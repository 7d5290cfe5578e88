//! The simulated cluster: storage nodes, coordinators, clients and the network between
//! them, as one event loop over simulated time. Every choice (delays, drops, faults,
//! workload, fresh actor ids) comes from the one seeded generator, and every collection
//! iterates in a fixed order, so a seed replays exactly.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

use dynamo_core::liveness::PeerHealth;
use dynamo_core::quorum::Slot;
use dynamo_core::ring::{Member, PreferenceList, Ring};
use dynamo_core::round::{
    CoordinateReply, ReadAction, ReadAnswer, ReadReply, ReadRound, ReplicateReply, WriteAction, WriteAnswer,
    WriteRound,
};
use dynamo_core::version::{ConflictRule, NewWrite, StoredCopy, VersionedObject};
use dynamo_core::{ActorId, Dot, DotSet, ErrorCode, Incarnation, NodeId, Partitioning, key_hash};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

use super::check::{self, History, Superseded};
use super::{Config, Mutant, Report};

const BUCKET: &str = "sim";
const PARTITIONS: u64 = 16;
const RESOLUTION: ConflictRule = ConflictRule::Siblings { max_siblings: 32 };
/// One call's timeout at a coordinator.
const HOP_TIMEOUT_MS: u64 = 100;
/// A client request's deadline.
const CLIENT_TIMEOUT_MS: u64 = 400;
const PROBE_WINDOW_MS: u64 = 150;
const PROBE_TICK_MS: u64 = 25;
/// How long after a write a node's group commit syncs it.
const FSYNC_MS: u64 = 3;
const HINT_TICK_MS: u64 = 40;
/// After the load: how long the healed cluster has to deliver every hint.
const HEAL_BOUND_MS: u64 = 20_000;
/// Steps kept for the report.
const TRACE_LEN: usize = 60;

/// What happened in a run (summed over seeds by `run_many`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Seeds run.
    pub seeds: u64,
    /// Events processed.
    pub events: u64,
    /// Writes acknowledged to clients.
    pub writes_acked: u64,
    /// Writes answered unavailable or refused.
    pub writes_failed: u64,
    /// Writes answered indeterminate.
    pub writes_indeterminate: u64,
    /// Reads answered with a value or not-found.
    pub reads_ok: u64,
    /// Reads answered unavailable.
    pub reads_failed: u64,
    /// Node crashes.
    pub crashes: u64,
    /// Partitions made.
    pub partitions: u64,
    /// Messages the network lost.
    pub dropped: u64,
    /// Hints delivered to their owners.
    pub hints_delivered: u64,
    /// Simulated milliseconds.
    pub sim_ms: u64,
}

impl Stats {
    /// Adds `other` into this.
    pub fn add(&mut self, o: &Stats) {
        self.seeds += o.seeds;
        self.events += o.events;
        self.writes_acked += o.writes_acked;
        self.writes_failed += o.writes_failed;
        self.writes_indeterminate += o.writes_indeterminate;
        self.reads_ok += o.reads_ok;
        self.reads_failed += o.reads_failed;
        self.crashes += o.crashes;
        self.partitions += o.partitions;
        self.dropped += o.dropped;
        self.hints_delivered += o.hints_delivered;
        self.sim_ms += o.sim_ms;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Proc {
    Node(usize),
    Coord(usize),
}

/// A stored copy's place on a node: the key, and the owner it is a hint for.
type CopyKey = (usize, Option<usize>);

#[derive(Debug, Clone)]
enum Op {
    Coordinate {
        key: usize,
        context: DotSet,
        write_id: u64,
        tombstone: bool,
        hint: Option<usize>,
        deadline_ms: u64,
    },
    Replicate {
        key: usize,
        object: VersionedObject,
        hint: Option<usize>,
    },
    Get {
        key: usize,
    },
    Probe,
}

#[derive(Debug, Clone)]
enum Answer {
    Put {
        object: VersionedObject,
        dot: Dot,
        context: DotSet,
    },
    Replicated,
    Got(Option<VersionedObject>),
    /// Refused (`client_error`: a 4xx, else not applied).
    Error {
        client_error: bool,
    },
    ProbeOk,
}

#[derive(Debug, Clone)]
enum Msg {
    Call { call: u64, op: Op },
    Reply { call: u64, answer: Answer },
}

#[derive(Debug)]
enum Event {
    Deliver {
        from: Proc,
        to: Proc,
        msg: Msg,
    },
    /// A call that could not be sent (the node is marked down, or its port refuses).
    NotSent {
        coord: usize,
        call: u64,
    },
    HopTimeout {
        coord: usize,
        call: u64,
    },
    RoundTick {
        coord: usize,
        req: u64,
    },
    Fsync {
        node: usize,
        life: u64,
    },
    HintTick {
        node: usize,
    },
    ProbeTick {
        coord: usize,
    },
    FaultTick,
    Restart {
        node: usize,
    },
    Mend {
        a: Proc,
        b: Proc,
    },
    ClientNext {
        client: usize,
    },
}

#[derive(Debug, Default)]
struct Node {
    up: bool,
    incarnation: u64,
    /// Bumped by each crash, so a group commit scheduled before it does nothing.
    life: u64,
    durable: BTreeMap<CopyKey, StoredCopy>,
    /// Applied, not yet synced (`None`: deleted).
    unsynced: BTreeMap<CopyKey, Option<StoredCopy>>,
    /// Replies held until the group commit.
    waiting: Vec<(Proc, Msg)>,
    fsync_scheduled: bool,
    next_call: u64,
    /// Hint deliveries out: the call and the digest of what was sent.
    handoffs: BTreeMap<CopyKey, (u64, u128)>,
    /// Per own copy, what it durably saw superseded.
    superseded: BTreeMap<usize, Superseded>,
}

impl Node {
    fn read(&self, ck: &CopyKey) -> Option<&StoredCopy> {
        match self.unsynced.get(ck) {
            Some(c) => c.as_ref(),
            None => self.durable.get(ck),
        }
    }

    /// What a get answers, as the engine does: the node's own copy merged with every hint
    /// it holds for the key (a fallback answers reads with what it holds).
    fn read_key(&self, key: usize) -> Option<VersionedObject> {
        let own = self.read(&(key, None)).map(|c| c.object.clone());
        let hinted = self
            .hints()
            .into_iter()
            .filter(|ck| ck.0 == key)
            .map(|ck| self.read(&ck).map(|c| c.object.clone()));
        let copies: Vec<Option<VersionedObject>> = std::iter::once(own).chain(hinted).collect();
        dynamo_core::round::merge(copies.iter(), RESOLUTION)
    }

    fn hints(&self) -> Vec<CopyKey> {
        let mut out: BTreeSet<CopyKey> = self.durable.keys().filter(|k| k.1.is_some()).copied().collect();
        for (k, v) in &self.unsynced {
            if k.1.is_some() {
                if v.is_some() {
                    out.insert(*k);
                } else {
                    out.remove(k);
                }
            }
        }
        out.into_iter().collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallKind {
    Coordinate,
    Replicate,
    Get,
    Repair,
    Probe,
}

#[derive(Debug)]
struct Call {
    req: Option<u64>,
    kind: CallKind,
    node: usize,
    slot: Option<Slot>,
}

// Boxed rounds would only add indirection: requests live in one map, few at a time.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Req {
    Write {
        client: usize,
        write_id: u64,
        key: usize,
        context: DotSet,
        tombstone: bool,
        round: WriteRound,
        coordinated: Option<(VersionedObject, Dot, DotSet)>,
    },
    Read {
        client: usize,
        key: usize,
        round: ReadRound,
    },
}

#[derive(Debug)]
struct Coord {
    health: Vec<PeerHealth>,
    calls: BTreeMap<u64, Call>,
    reqs: BTreeMap<u64, Req>,
    next_id: u64,
}

#[derive(Debug, Default)]
struct Client {
    ops_left: usize,
    contexts: BTreeMap<usize, DotSet>,
}

/// One simulated run.
pub struct World {
    seed: u64,
    cfg: Config,
    rng: StdRng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: BTreeMap<u64, Event>,
    nodes: Vec<Node>,
    coords: Vec<Coord>,
    clients: Vec<Client>,
    cut: BTreeSet<(Proc, Proc)>,
    ids: Vec<NodeId>,
    pls: Vec<PreferenceList>,
    history: History,
    stats: Stats,
    trace: VecDeque<String>,
    violations: Vec<String>,
    healing_since: Option<u64>,
    /// Requests answered, by coordinator and request id: each must be, exactly once.
    answered: BTreeSet<(usize, u64)>,
    /// Requests with a deadline tick scheduled.
    ticking: BTreeSet<(usize, u64)>,
}

impl World {
    /// Builds the cluster of `cfg` for `seed`.
    pub fn new(seed: u64, cfg: Config) -> World {
        let ids: Vec<NodeId> = (0..cfg.nodes)
            .map(|i| NodeId::new(format!("n{i}")).unwrap_or_else(|_| unreachable!("a valid id")))
            .collect();
        let members = ids.iter().map(|id| (id.clone(), Member::default())).collect();
        let partitioning =
            Partitioning::with_count(PARTITIONS).unwrap_or_else(|_| unreachable!("16 is valid"));
        let ring = Ring::new(partitioning, cfg.n as u8, members).unwrap_or_else(|_| unreachable!("members"));
        let pls = (0..cfg.keys)
            .map(|k| ring.preference_list_for(key_hash(BUCKET, &format!("k{k}")), cfg.n))
            .collect();
        let mut rng = StdRng::seed_from_u64(seed);
        let nodes = (0..cfg.nodes)
            .map(|_| Node {
                up: true,
                incarnation: rng.random(),
                ..Node::default()
            })
            .collect();
        let coords = (0..cfg.coordinators)
            .map(|_| Coord {
                health: (0..cfg.nodes).map(|_| PeerHealth::new(PROBE_WINDOW_MS)).collect(),
                calls: BTreeMap::new(),
                reqs: BTreeMap::new(),
                next_id: 1,
            })
            .collect();
        let clients = (0..cfg.clients)
            .map(|_| Client {
                ops_left: cfg.ops_per_client,
                contexts: BTreeMap::new(),
            })
            .collect();
        World {
            seed,
            cfg,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            nodes,
            coords,
            clients,
            cut: BTreeSet::new(),
            ids,
            pls,
            history: History::default(),
            stats: Stats {
                seeds: 1,
                ..Stats::default()
            },
            trace: VecDeque::new(),
            violations: Vec::new(),
            healing_since: None,
            answered: BTreeSet::new(),
            ticking: BTreeSet::new(),
        }
    }

    /// Runs the load, heals, waits for the hints, and checks.
    pub fn run(mut self) -> Report {
        for c in 0..self.clients.len() {
            let at = self.rng.random_range(0..10);
            self.at(at, Event::ClientNext { client: c });
        }
        for n in 0..self.nodes.len() {
            self.at(HINT_TICK_MS, Event::HintTick { node: n });
        }
        for c in 0..self.coords.len() {
            self.at(PROBE_TICK_MS, Event::ProbeTick { coord: c });
        }
        if self.cfg.faults {
            self.at(50, Event::FaultTick);
        }
        while self.violations.is_empty() {
            let Some(Reverse((t, seq))) = self.queue.pop() else {
                break;
            };
            let Some(event) = self.events.remove(&seq) else {
                continue;
            };
            self.now = t;
            self.stats.events += 1;
            self.step(event);
            if self.healing_since.is_none() && self.load_done() {
                self.heal();
            }
            if let Some(since) = self.healing_since {
                if self.quiet() {
                    break;
                }
                if self.now > since + HEAL_BOUND_MS {
                    let left: Vec<_> = (0..self.nodes.len())
                        .map(|i| self.nodes[i].hints().len())
                        .collect();
                    self.violations.push(format!(
                        "hints not delivered {HEAL_BOUND_MS} ms after the heal (per node: {left:?})"
                    ));
                }
            }
        }
        if self.violations.is_empty() {
            self.final_checks();
        }
        self.stats.sim_ms = self.now;
        Report {
            seed: self.seed,
            violations: self.violations,
            stats: self.stats,
            trace_tail: self.trace.into_iter().collect(),
        }
    }

    fn at(&mut self, delay: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse((self.now + delay, self.seq)));
        self.events.insert(self.seq, event);
    }

    fn note(&mut self, line: impl FnOnce() -> String) {
        if self.trace.len() == TRACE_LEN {
            self.trace.pop_front();
        }
        let line = format!("{:>6} ms  {}", self.now, line());
        self.trace.push_back(line);
    }

    fn fail(&mut self, what: String) {
        self.note(|| format!("VIOLATION {what}"));
        self.violations.push(what);
    }

    fn load_done(&self) -> bool {
        self.clients.iter().all(|c| c.ops_left == 0) && self.coords.iter().all(|c| c.reqs.is_empty())
    }

    fn quiet(&self) -> bool {
        self.coords.iter().all(|c| c.reqs.is_empty())
            && self
                .nodes
                .iter()
                .all(|n| n.up && n.unsynced.is_empty() && n.hints().is_empty())
    }

    fn step(&mut self, event: Event) {
        match event {
            Event::Deliver { from, to, msg } => self.deliver(from, to, msg),
            Event::NotSent { coord, call } => self.call_failed(coord, call, false),
            Event::HopTimeout { coord, call } => self.call_failed(coord, call, true),
            Event::RoundTick { coord, req } => {
                self.ticking.remove(&(coord, req));
                let now = self.now;
                match self.coords[coord].reqs.get_mut(&req) {
                    Some(Req::Write { round, .. }) => round.on_tick(now),
                    Some(Req::Read { round, .. }) => round.on_tick(now),
                    None => return,
                }
                self.pump(coord, req);
            }
            Event::Fsync { node, life } => self.fsync(node, life),
            Event::HintTick { node } => {
                self.deliver_hints(node);
                self.at(HINT_TICK_MS, Event::HintTick { node });
            }
            Event::ProbeTick { coord } => {
                for n in 0..self.nodes.len() {
                    if self.coords[coord].health[n].take_probe(self.now) {
                        self.send_call(coord, n, Op::Probe, None, CallKind::Probe, None);
                    }
                }
                self.at(PROBE_TICK_MS, Event::ProbeTick { coord });
            }
            Event::FaultTick => {
                if self.healing_since.is_none() {
                    self.fault();
                    let next = self.rng.random_range(100..400);
                    self.at(next, Event::FaultTick);
                }
            }
            Event::Restart { node } => {
                if !self.nodes[node].up {
                    // An unclean stop: the restart is a new incarnation (see the engine).
                    let inc = self.rng.random();
                    let n = &mut self.nodes[node];
                    n.up = true;
                    n.incarnation = inc;
                    self.note(|| format!("n{node} restarts"));
                }
            }
            Event::Mend { a, b } => {
                self.cut.remove(&(a, b));
                self.cut.remove(&(b, a));
                self.note(|| format!("{a:?} and {b:?} reconnect"));
            }
            Event::ClientNext { client } => self.client_next(client),
        }
    }

    // ---- faults and the network ----

    fn fault(&mut self) {
        let any_down = self.nodes.iter().any(|n| !n.up);
        let node = self.rng.random_range(0..self.nodes.len());
        let len = self.rng.random_range(50..600);
        match self.rng.random_range(0..4) {
            0 if !any_down => {
                let n = &mut self.nodes[node];
                n.up = false;
                n.life += 1;
                n.unsynced.clear();
                n.waiting.clear();
                n.fsync_scheduled = false;
                n.handoffs.clear();
                self.stats.crashes += 1;
                self.note(|| format!("n{node} crashes for {len} ms"));
                self.at(len, Event::Restart { node });
            }
            1 if self.cut.is_empty() => {
                // The node is cut off from everyone.
                let me = Proc::Node(node);
                let others: Vec<Proc> = (0..self.nodes.len())
                    .filter(|&i| i != node)
                    .map(Proc::Node)
                    .chain((0..self.coords.len()).map(Proc::Coord))
                    .collect();
                for o in others {
                    self.cut.insert((me, o));
                    self.cut.insert((o, me));
                    self.at(len, Event::Mend { a: me, b: o });
                }
                self.stats.partitions += 1;
                self.note(|| format!("n{node} is partitioned away for {len} ms"));
            }
            2 => {
                let c = Proc::Coord(self.rng.random_range(0..self.coords.len()));
                let me = Proc::Node(node);
                self.cut.insert((me, c));
                self.cut.insert((c, me));
                self.at(len, Event::Mend { a: me, b: c });
                self.stats.partitions += 1;
                self.note(|| format!("n{node} and {c:?} lose their link for {len} ms"));
            }
            _ => {}
        }
    }

    fn send(&mut self, from: Proc, to: Proc, msg: Msg) {
        if self.rng.random_range(0..1000) < self.cfg.drop_per_mille {
            self.stats.dropped += 1;
            return;
        }
        let delay = if self.rng.random_range(0..1000) < self.cfg.slow_per_mille {
            self.rng.random_range(20..90)
        } else {
            self.rng.random_range(1..8)
        };
        self.at(delay, Event::Deliver { from, to, msg });
    }

    fn deliver(&mut self, from: Proc, to: Proc, msg: Msg) {
        if self.cut.contains(&(from, to)) {
            self.stats.dropped += 1;
            return;
        }
        match (to, msg) {
            (Proc::Node(n), _) if !self.nodes[n].up => self.stats.dropped += 1,
            (Proc::Node(n), Msg::Call { call, op }) => self.node_call(n, from, call, op),
            (Proc::Node(n), Msg::Reply { call, answer }) => self.handoff_answered(n, call, &answer),
            (Proc::Coord(c), Msg::Reply { call, answer }) => self.call_answered(c, call, answer),
            (Proc::Coord(_), Msg::Call { .. }) => {}
        }
    }

    // ---- storage nodes ----

    fn node_call(&mut self, n: usize, from: Proc, call: u64, op: Op) {
        let answer = match op {
            Op::Probe => Some(Answer::ProbeOk),
            Op::Get { key } => Some(Answer::Got(self.nodes[n].read_key(key))),
            Op::Coordinate {
                key,
                context,
                write_id,
                tombstone,
                hint,
                deadline_ms,
            } => {
                if self.now > deadline_ms {
                    Some(Answer::Error { client_error: false })
                } else {
                    self.coordinate(n, (from, call), key, &context, write_id, tombstone, hint)
                }
            }
            Op::Replicate { key, object, hint } => {
                let ck = (key, hint);
                let mut copy = self.nodes[n].read(&ck).cloned().unwrap_or_default();
                copy.object.sync(&object, RESOLUTION);
                self.nodes[n].unsynced.insert(ck, Some(copy));
                self.hold(n, from, call, Answer::Replicated);
                None
            }
        };
        if let Some(answer) = answer {
            self.send(Proc::Node(n), from, Msg::Reply { call, answer });
        }
    }

    /// Mints and applies a client write on node `n`; the answer waits for the group
    /// commit, except a refusal, which is returned to send at once.
    #[allow(clippy::too_many_arguments)]
    fn coordinate(
        &mut self,
        n: usize,
        (from, call): (Proc, u64),
        key: usize,
        context: &DotSet,
        write_id: u64,
        tombstone: bool,
        hint: Option<usize>,
    ) -> Option<Answer> {
        let ck = (key, hint);
        let mut copy = self.nodes[n].read(&ck).cloned().unwrap_or_default();
        let fresh: Vec<ActorId> = (0..4).map(|_| ActorId(self.rng.random())).collect();
        let write = NewWrite {
            value: check::value(write_id, tombstone),
            content_type: check::content_type(write_id),
            now_ms: self.now,
            tombstone,
        };
        let incarnation = Incarnation(self.nodes[n].incarnation);
        match copy.coordinate(context, incarnation, fresh, write, RESOLUTION) {
            Ok(outcome) => {
                self.note(|| {
                    format!(
                        "n{n} mints {:?} for write {write_id} (hint for {hint:?})",
                        outcome.dot
                    )
                });
                if let Err(v) = self.history.on_mint(write_id, outcome.dot) {
                    self.fail(v);
                }
                let answer = Answer::Put {
                    object: copy.object.clone(),
                    dot: outcome.dot,
                    context: outcome.context,
                };
                self.nodes[n].unsynced.insert(ck, Some(copy));
                self.hold(n, from, call, answer);
                None
            }
            Err(e) => Some(Answer::Error {
                client_error: e.code().http_status() < 500,
            }),
        }
    }

    /// Holds a write's answer until the node's next group commit.
    fn hold(&mut self, n: usize, to: Proc, call: u64, answer: Answer) {
        let node = &mut self.nodes[n];
        node.waiting.push((to, Msg::Reply { call, answer }));
        if !std::mem::replace(&mut node.fsync_scheduled, true) {
            let life = node.life;
            self.at(FSYNC_MS, Event::Fsync { node: n, life });
        }
    }

    fn fsync(&mut self, n: usize, life: u64) {
        let node = &mut self.nodes[n];
        if node.life != life || !node.up {
            return;
        }
        node.fsync_scheduled = false;
        let synced = std::mem::take(&mut node.unsynced);
        let waiting = std::mem::take(&mut node.waiting);
        let mut keys = BTreeSet::new();
        for (ck, copy) in synced {
            keys.insert(ck.0);
            match copy {
                Some(c) => {
                    if ck.1.is_none() {
                        let seen = node.superseded.entry(ck.0).or_default();
                        if let Err(v) = seen.observe(&c.object) {
                            let v = format!("n{n} key {}: {v}", ck.0);
                            self.nodes[n].durable.insert(ck, c);
                            self.fail(v);
                            return;
                        }
                    }
                    node.durable.insert(ck, c);
                }
                None => {
                    node.durable.remove(&ck);
                }
            }
        }
        for (to, msg) in waiting {
            self.send(Proc::Node(n), to, msg);
        }
        for key in keys {
            self.check_durable_copies(key);
        }
    }

    /// Invariant 1 at every step: each acknowledged write of `key` is on W nodes' durable
    /// copies (own or hinted), from its acknowledgement on.
    fn check_durable_copies(&mut self, key: usize) {
        let w = self.cfg.w;
        let mut lost = None;
        for (id, dot, _) in self.history.acked_of(key) {
            let holders = self
                .nodes
                .iter()
                .filter(|n| {
                    n.durable
                        .iter()
                        .any(|((k, _), c)| *k == key && c.object.context().contains(&dot))
                })
                .count();
            if holders < w {
                lost = Some(format!(
                    "invariant 1: acknowledged write {id} ({dot:?}) of key {key} is durable on {holders} nodes, W = {w}"
                ));
                break;
            }
        }
        if let Some(v) = lost {
            self.fail(v);
        }
    }

    fn deliver_hints(&mut self, n: usize) {
        if !self.nodes[n].up {
            return;
        }
        for ck in self.nodes[n].hints() {
            let (key, Some(owner)) = ck else { continue };
            let Some(copy) = self.nodes[n].read(&ck) else {
                continue;
            };
            let object = copy.object.clone();
            let node = &mut self.nodes[n];
            node.next_call += 1;
            let call = node.next_call;
            node.handoffs.insert(ck, (call, object.digest()));
            self.send(
                Proc::Node(n),
                Proc::Node(owner),
                Msg::Call {
                    call,
                    op: Op::Replicate {
                        key,
                        object,
                        hint: None,
                    },
                },
            );
        }
    }

    fn handoff_answered(&mut self, n: usize, call: u64, answer: &Answer) {
        let node = &mut self.nodes[n];
        let Some((&ck, &(_, digest))) = node.handoffs.iter().find(|(_, (c, _))| *c == call) else {
            return;
        };
        node.handoffs.remove(&ck);
        if !matches!(answer, Answer::Replicated) {
            return;
        }
        // Deleted only if nothing new arrived for the owner since it was sent.
        if node.read(&ck).is_some_and(|c| c.object.digest() == digest) {
            node.unsynced.insert(ck, None);
            if !std::mem::replace(&mut node.fsync_scheduled, true) {
                let life = node.life;
                self.at(FSYNC_MS, Event::Fsync { node: n, life });
            }
            self.stats.hints_delivered += 1;
            self.note(|| {
                format!(
                    "n{n} delivered its hint of key {} to n{}",
                    ck.0,
                    ck.1.unwrap_or(usize::MAX)
                )
            });
        }
    }

    // ---- coordinators ----

    fn node_index(&self, id: &NodeId) -> usize {
        self.ids.iter().position(|x| x == id).unwrap_or(usize::MAX)
    }

    fn liveness(&self, c: usize) -> impl Fn(&NodeId) -> bool + use<> {
        let live: Vec<bool> = self.coords[c].health.iter().map(PeerHealth::is_up).collect();
        let ids = self.ids.clone();
        move |id| ids.iter().position(|x| x == id).is_some_and(|i| live[i])
    }

    fn send_call(
        &mut self,
        c: usize,
        node: usize,
        op: Op,
        req: Option<u64>,
        kind: CallKind,
        slot: Option<Slot>,
    ) {
        let coord = &mut self.coords[c];
        let call = coord.next_id;
        coord.next_id += 1;
        coord.calls.insert(
            call,
            Call {
                req,
                kind,
                node,
                slot,
            },
        );
        if kind != CallKind::Probe && !coord.health[node].is_up() {
            // The peer layer fails what is queued for a node marked down at once.
            self.at(0, Event::NotSent { coord: c, call });
            return;
        }
        if !self.nodes[node].up {
            // A dead process's port refuses the connection.
            self.at(1, Event::NotSent { coord: c, call });
            return;
        }
        self.send(Proc::Coord(c), Proc::Node(node), Msg::Call { call, op });
        self.at(HOP_TIMEOUT_MS, Event::HopTimeout { coord: c, call });
    }

    fn call_answered(&mut self, c: usize, call: u64, answer: Answer) {
        let Some(info) = self.coords[c].calls.remove(&call) else {
            return; // timed out already
        };
        let _ = self.coords[c].health[info.node].on_success();
        self.dispatch(c, info, Ok(answer));
    }

    /// A call that was not sent (`timed_out` false) or went unanswered.
    fn call_failed(&mut self, c: usize, call: u64, timed_out: bool) {
        let Some(info) = self.coords[c].calls.remove(&call) else {
            return;
        };
        let now = self.now;
        let _ = self.coords[c].health[info.node].on_failure(now);
        self.dispatch(c, info, Err(timed_out));
    }

    fn dispatch(&mut self, c: usize, call: Call, result: Result<Answer, bool>) {
        let Some(req_id) = call.req else { return };
        let is_up = self.liveness(c);
        let now = self.now;
        let mutant = self.cfg.mutant;
        let Some(req) = self.coords[c].reqs.get_mut(&req_id) else {
            return;
        };
        match (req, call.kind) {
            (
                Req::Write {
                    round, coordinated, ..
                },
                CallKind::Coordinate,
            ) => {
                let reply = match result {
                    Ok(Answer::Put { object, dot, context }) => {
                        *coordinated = Some((object, dot, context));
                        CoordinateReply::Stored
                    }
                    Ok(Answer::Error { client_error: true }) => CoordinateReply::Refused {
                        code: ErrorCode::TooManySiblings,
                        message: String::new(),
                    },
                    Err(true) if mutant != Some(Mutant::RetriesAnUnknownCoordinate) => {
                        CoordinateReply::Unknown
                    }
                    _ => CoordinateReply::NotApplied,
                };
                round.on_coordinate(reply, now, is_up);
            }
            (Req::Write { round, .. }, CallKind::Replicate) => {
                let stored = matches!(result, Ok(Answer::Replicated))
                    || mutant == Some(Mutant::FailedReplicaCountsAsAck);
                let reply = if stored {
                    ReplicateReply::Stored
                } else {
                    ReplicateReply::Failed
                };
                if let Some(slot) = call.slot {
                    round.on_replicate(slot, reply, is_up);
                }
            }
            (Req::Read { round, .. }, CallKind::Get) => {
                let reply = match result {
                    Ok(Answer::Got(o)) => ReadReply::Found(o),
                    _ => ReadReply::Failed,
                };
                if let Some(slot) = call.slot {
                    round.on_reply(slot, reply, is_up);
                }
            }
            _ => return,
        }
        self.pump(c, req_id);
    }

    /// Carries a request's round actions out, until it has none.
    fn pump(&mut self, c: usize, req_id: u64) {
        loop {
            let Some(req) = self.coords[c].reqs.get_mut(&req_id) else {
                return;
            };
            match req {
                Req::Write {
                    round,
                    client,
                    write_id,
                    key,
                    context,
                    tombstone,
                    coordinated,
                } => {
                    let Some(action) = round.poll_action() else {
                        let (finished, next) = (round.is_finished(), round.next_timeout_ms());
                        self.idle(c, req_id, finished, next);
                        return;
                    };
                    let (client, write_id, key) = (*client, *write_id, *key);
                    match action {
                        WriteAction::Coordinate { slot, deadline_ms } => {
                            let op = Op::Coordinate {
                                key,
                                context: context.clone(),
                                write_id,
                                tombstone: *tombstone,
                                hint: slot.is_hinted().then(|| self.node_index(&slot.owner)),
                                deadline_ms,
                            };
                            let target = self.node_index(&slot.target);
                            self.send_call(c, target, op, Some(req_id), CallKind::Coordinate, Some(slot));
                        }
                        WriteAction::Replicate(slot) => {
                            let Some((object, _, _)) = coordinated else {
                                self.fail("a replicate before the coordinate stored".into());
                                return;
                            };
                            let op = Op::Replicate {
                                key,
                                object: object.clone(),
                                hint: slot.is_hinted().then(|| self.node_index(&slot.owner)),
                            };
                            let target = self.node_index(&slot.target);
                            self.send_call(c, target, op, Some(req_id), CallKind::Replicate, Some(slot));
                        }
                        WriteAction::Answer(a) => {
                            let stored = coordinated.as_ref().map(|(_, d, ctx)| (*d, ctx.clone()));
                            self.answer_once(c, req_id);
                            self.write_answered(client, write_id, key, a, stored);
                        }
                    }
                }
                Req::Read { round, client, key } => {
                    let Some(action) = round.poll_action() else {
                        let (finished, next) = (round.is_finished(), round.next_timeout_ms());
                        self.idle(c, req_id, finished, next);
                        return;
                    };
                    let (client, key) = (*client, *key);
                    match action {
                        ReadAction::Get(slot) => {
                            let target = self.node_index(&slot.target);
                            self.send_call(
                                c,
                                target,
                                Op::Get { key },
                                Some(req_id),
                                CallKind::Get,
                                Some(slot),
                            );
                        }
                        ReadAction::Answer(a) => {
                            self.answer_once(c, req_id);
                            self.read_answered(client, key, a);
                        }
                        ReadAction::Repair { target, object } => {
                            let target = self.node_index(&target);
                            let op = Op::Replicate {
                                key,
                                object,
                                hint: None,
                            };
                            self.send_call(c, target, op, None, CallKind::Repair, None);
                        }
                    }
                }
            }
        }
    }

    /// A request with no action left: removed once finished, else woken at its
    /// deadline (one tick scheduled at a time).
    fn idle(&mut self, c: usize, req_id: u64, finished: bool, next_timeout: Option<u64>) {
        if finished {
            self.coords[c].reqs.remove(&req_id);
            self.finished(c, req_id);
        } else if let Some(at) = next_timeout
            && self.ticking.insert((c, req_id))
        {
            let delay = at.saturating_sub(self.now);
            self.at(
                delay,
                Event::RoundTick {
                    coord: c,
                    req: req_id,
                },
            );
        }
    }

    fn answer_once(&mut self, c: usize, req_id: u64) {
        if !self.answered.insert((c, req_id)) {
            self.fail(format!("request {req_id} of coordinator {c} answered twice"));
        }
    }

    fn finished(&mut self, c: usize, req_id: u64) {
        if !self.answered.remove(&(c, req_id)) {
            self.fail(format!("request {req_id} of coordinator {c} finished unanswered"));
        }
    }

    // ---- clients ----

    fn client_next(&mut self, client: usize) {
        if self.clients[client].ops_left == 0 {
            return;
        }
        self.clients[client].ops_left -= 1;
        let c = self.rng.random_range(0..self.coords.len());
        let key = self.rng.random_range(0..self.cfg.keys);
        let pl = self.pls[key].clone();
        let is_up = self.liveness(c);
        let req_id = self.coords[c].next_id;
        self.coords[c].next_id += 1;
        let dice = self.rng.random_range(0..100);
        let req = if dice < 40 {
            let round = ReadRound::new(&pl, self.cfg.r, RESOLUTION, self.now + CLIENT_TIMEOUT_MS, is_up);
            Req::Read { client, key, round }
        } else {
            let seen = self.clients[client]
                .contexts
                .get(&key)
                .cloned()
                .unwrap_or_default();
            // Mostly read-modify-write; some blind writes (siblings); some deletes.
            let (context, tombstone) = match dice {
                40..=84 => (seen, false),
                85..=94 => (DotSet::new(), false),
                _ => (seen, true),
            };
            let write_id = self.history.new_write(key, context.clone());
            let round = WriteRound::new(
                &pl,
                self.cfg.w,
                self.now,
                self.now + CLIENT_TIMEOUT_MS,
                HOP_TIMEOUT_MS,
                is_up,
            );
            Req::Write {
                client,
                write_id,
                key,
                context,
                tombstone,
                round,
                coordinated: None,
            }
        };
        self.coords[c].reqs.insert(req_id, req);
        self.pump(c, req_id);
    }

    fn write_answered(
        &mut self,
        client: usize,
        write_id: u64,
        key: usize,
        a: WriteAnswer,
        stored: Option<(Dot, DotSet)>,
    ) {
        self.note(|| format!("client {client}: write {write_id} of key {key} answered {a:?}"));
        match a {
            WriteAnswer::Stored { .. } => match stored {
                Some((dot, context)) => {
                    self.stats.writes_acked += 1;
                    if let Err(v) = self.history.on_ack(write_id, dot) {
                        self.fail(v);
                    }
                    self.clients[client].contexts.insert(key, context);
                    self.check_durable_copies(key);
                }
                None => self.fail(format!(
                    "write {write_id} answered stored with nothing coordinated"
                )),
            },
            WriteAnswer::Indeterminate => self.stats.writes_indeterminate += 1,
            WriteAnswer::Refused { .. } | WriteAnswer::Unavailable { .. } => self.stats.writes_failed += 1,
        }
        self.client_done(client);
    }

    fn read_answered(&mut self, client: usize, key: usize, a: ReadAnswer) {
        match a {
            ReadAnswer::Found(object) => {
                self.stats.reads_ok += 1;
                if let Some(o) = &object {
                    if let Err(v) = self.history.check_read(key, o) {
                        self.fail(v);
                    }
                    self.clients[client].contexts.insert(key, o.context().clone());
                }
            }
            ReadAnswer::Unavailable { .. } => self.stats.reads_failed += 1,
        }
        self.client_done(client);
    }

    fn client_done(&mut self, client: usize) {
        let think = self.rng.random_range(0..20);
        self.at(think, Event::ClientNext { client });
    }

    // ---- the heal and the end ----

    fn heal(&mut self) {
        self.healing_since = Some(self.now);
        self.note(|| "load done: every fault heals".into());
        self.cut.clear();
        for node in 0..self.nodes.len() {
            if !self.nodes[node].up {
                self.at(0, Event::Restart { node });
            }
        }
    }

    /// After the heal and the hints: every R owners of a key, read and merged, return
    /// every acknowledged write (invariant 1) and no version an acknowledged write
    /// superseded (invariant 2).
    fn final_checks(&mut self) {
        let r = self.cfg.r;
        for key in 0..self.cfg.keys {
            let owners: Vec<usize> = self.pls[key]
                .preference_list
                .iter()
                .map(|id| self.node_index(id))
                .collect();
            for subset in subsets(&owners, r) {
                let copies: Vec<Option<VersionedObject>> = subset
                    .iter()
                    .map(|&o| self.nodes[o].durable.get(&(key, None)).map(|c| c.object.clone()))
                    .collect();
                let merged = dynamo_core::round::merge(copies.iter(), RESOLUTION).unwrap_or_default();
                let mut found = Vec::new();
                for (id, dot, rec) in self.history.acked_of(key) {
                    if !merged.context().contains(&dot) {
                        found.push(format!(
                            "invariant 1: a read of key {key} from {subset:?} misses acknowledged write {id} ({dot:?})"
                        ));
                    }
                    if let Some(s) = merged.siblings().iter().find(|s| rec.context.contains(&s.dot)) {
                        found.push(format!(
                            "invariant 2: a read of key {key} from {subset:?} returns {:?}, which write {id} superseded",
                            s.dot
                        ));
                    }
                }
                if let Err(v) = self.history.check_read(key, &merged) {
                    found.push(v);
                }
                for v in found {
                    self.fail(v);
                }
            }
        }
    }
}

/// Every `k`-element subset of `items`, in order.
fn subsets(items: &[usize], k: usize) -> Vec<Vec<usize>> {
    if k == 0 {
        return vec![Vec::new()];
    }
    let mut out = Vec::new();
    for (i, &x) in items.iter().enumerate() {
        for mut rest in subsets(&items[i + 1..], k - 1) {
            rest.insert(0, x);
            out.push(rest);
        }
    }
    out
}
