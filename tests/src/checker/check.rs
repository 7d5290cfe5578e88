//! After the heal: bring every key to rest, then judge the history against what the
//! replicas hold.
//!
//! [`settle`] reads every key through the coordinator (read repair) and straight from
//! every node of its preference list, until all copies agree and no hint is pending,
//! twice in a row, or a bounded wait ends. The checks then compare the history with the
//! converged copies (the storage nodes' own objects, with their dots and tombstones):
//!
//! 1. **Acknowledged writes survive.** Set-add: every element whose add was acknowledged
//!    is in the union of the final siblings. Registers: the final siblings come from the
//!    writer's last acknowledged write or a later one (acknowledged or indeterminate);
//!    nothing older, nothing never written, and not nothing.
//! 2. **Nothing superseded comes back.** No final sibling has a dot that the context of an
//!    acknowledged write contained (that write replaced it), and no final value is one
//!    that such a context had seen: shown by the read whose context the write sent, or
//!    written by a write whose answered context it sent, transitively. The second form
//!    catches one client write applied twice under two dots. Also the context contract:
//!    an acknowledged write's answered context is the one it sent plus exactly one dot.
//! 3. **Replicas converge**: every node of a key's preference list holds the same
//!    history and the same siblings (dots, values, tombstones).
//! 4. **Ring epochs never go backwards** (sampled during the run, [`super::epochs`]).
//!
//! The LWW bucket is checked only for 3 and for values nobody wrote; its loss is measured
//! ([`LwwReport`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use dynamo_core::limits::MAX_CONTEXT_DOTS;
use dynamo_core::{Dot, DotSet, context};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::history::{Kind, Op, show_dot, show_set};
use super::workload::{BLIND, LWW, REGS, REGS_DEL, SETS, parse_set};
use crate::Cluster;
use crate::membership::node_index;

/// Pause between two settle rounds.
const SETTLE_POLL: Duration = Duration::from_millis(300);
/// Timeout of one call while settling.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Most operations in one replica batch of the settle reads (the nodes accept 256).
pub const BATCH: usize = 200;

/// One sibling as a storage node holds it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NodeSibling {
    /// The write that made it.
    pub dot: Dot,
    /// Its value, base64 (empty for a tombstone).
    #[serde(default)]
    pub value: String,
    /// True for a delete.
    #[serde(default)]
    pub tombstone: bool,
    /// When the coordinating node accepted the write (ms since the Unix epoch, the same
    /// clock as the checker's: everything runs on one machine).
    #[serde(default)]
    pub last_modified_ms: u64,
}

impl NodeSibling {
    /// The value as text.
    pub fn text(&self) -> String {
        let raw = STANDARD_NO_PAD
            .decode(self.value.trim_end_matches('='))
            .unwrap_or_default();
        String::from_utf8_lossy(&raw).into_owned()
    }
}

/// A key's versions as a storage node holds them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NodeObject {
    /// The causal history.
    pub history: DotSet,
    /// The siblings, tombstones included.
    pub siblings: Vec<NodeSibling>,
}

/// A key after the settle: its preference list and what each of those nodes holds.
#[derive(Debug, Clone)]
pub struct FinalKey {
    /// The bucket.
    pub bucket: String,
    /// The key.
    pub key: String,
    /// The node ids of its preference list.
    pub preference_list: Vec<String>,
    /// Per preference-list node: its copy (`None` when it holds nothing) or why it could
    /// not be read.
    pub copies: Vec<Result<Option<NodeObject>, String>>,
}

impl FinalKey {
    /// True when every preference-list node answered and all hold the same; a node with
    /// no copy counts as equal to nodes whose (equal) copies hold only tombstones, since
    /// tombstone GC removes those at each node's own pace. Copies that differ in any
    /// other way, tombstones included, are not converged (read repair must still run).
    pub fn converged(&self) -> bool {
        let mut held = Vec::new();
        for c in &self.copies {
            match c {
                Err(_) => return false,
                Ok(c) => held.extend(c.as_ref()),
            }
        }
        held.windows(2).all(|w| w[0] == w[1])
            && (held.len() == self.copies.len()
                || held
                    .first()
                    .is_none_or(|o| o.siblings.iter().all(|s| s.tombstone)))
    }

    /// The copy the checks judge: the first one that holds anything (once converged,
    /// all of them hold the same, but for tombstones not yet collected everywhere).
    pub fn object(&self) -> Option<&NodeObject> {
        self.copies
            .iter()
            .find_map(|c| c.as_ref().ok().and_then(Option::as_ref))
    }

    /// Formats the copies for a failure report.
    pub fn show(&self) -> String {
        let mut out = String::new();
        for (node, copy) in self.preference_list.iter().zip(&self.copies) {
            let line = match copy {
                Err(e) => format!("  {node}: unreadable: {e}\n"),
                Ok(None) => format!("  {node}: nothing\n"),
                Ok(Some(o)) => {
                    let sibs: Vec<String> = o
                        .siblings
                        .iter()
                        .map(|s| {
                            if s.tombstone {
                                format!("{} ⊥", show_dot(&s.dot))
                            } else {
                                format!("{} {}", show_dot(&s.dot), shorten(&s.text()))
                            }
                        })
                        .collect();
                    format!(
                        "  {node}: history {} siblings [{}]\n",
                        show_set(&o.history),
                        sibs.join(" | ")
                    )
                }
            };
            out.push_str(&line);
        }
        out
    }
}

fn shorten(v: &str) -> String {
    const MAX: usize = 60;
    if v.chars().count() <= MAX {
        v.to_owned()
    } else {
        format!("{}…({} bytes)", v.chars().take(MAX).collect::<String>(), v.len())
    }
}

/// How the settle went.
#[derive(Debug, Clone)]
pub struct Settled {
    /// Every key, as last read.
    pub keys: Vec<FinalKey>,
    /// True when all converged with no hint pending, twice in a row.
    pub stable: bool,
    /// How long it took.
    pub took: Duration,
    /// Hints still pending at the end.
    pub hints_pending: f64,
}

/// Where a key lives under the ring the coordinator routes with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Its partition.
    pub partition: u32,
    /// The node ids of its preference list.
    pub preference_list: Vec<String>,
}

/// Asks the coordinator where each of `keys` lives (retrying until `deadline`).
///
/// # Panics
/// When the coordinator does not answer by `deadline`.
pub async fn placements(cluster: &Cluster, keys: &[(String, String)], deadline: Instant) -> Vec<Placement> {
    let mut out = Vec::with_capacity(keys.len());
    for (bucket, key) in keys {
        out.push(placement(cluster, bucket, key, deadline).await);
    }
    out
}

/// Reads `keys` through the coordinator and from their preference lists (`placements`,
/// one per key) until the copies agree and stay so, at most `limit`.
pub async fn settle(
    cluster: &Cluster,
    keys: &[(String, String)],
    placements: &[Placement],
    limit: Duration,
) -> Settled {
    let started = Instant::now();
    let deadline = started + limit;
    let placements: Vec<Vec<String>> = placements.iter().map(|p| p.preference_list.clone()).collect();
    let mut previous: Option<Vec<FinalKey>> = None;
    // Every key is read through the coordinator once; later rounds read only the keys
    // whose copies still differ (reading converged keys would only slow the nodes, and
    // re-plant tombstones that GC is collecting).
    let mut unsettled: Vec<bool> = vec![true; keys.len()];
    loop {
        // Reads through the coordinator repair the replicas that differ.
        let todo: Vec<&(String, String)> = keys
            .iter()
            .zip(&unsettled)
            .filter(|(_, u)| **u)
            .map(|(k, _)| k)
            .collect();
        for chunk in todo.chunks(16) {
            let reads = chunk.iter().map(|(b, k)| {
                cluster
                    .req(reqwest::Method::GET, &format!("/v1/kv/{b}/{k}"))
                    .header("accept", "application/json")
                    .timeout(CALL_TIMEOUT)
                    .send()
            });
            let _ = futures::future::join_all(reads).await;
        }
        let held = read_nodes(cluster, keys, &placements).await;
        let snapshot: Vec<FinalKey> = keys
            .iter()
            .zip(&placements)
            .zip(held)
            .map(|(((bucket, key), pl), copies)| FinalKey {
                bucket: bucket.clone(),
                key: key.clone(),
                preference_list: pl.clone(),
                copies,
            })
            .collect();
        let mut hints = 0.0;
        // Nodes that are gone for good (a lost disk) hold no hints anyone waits for.
        for node in cluster.nodes.iter().filter(|n| n.id().is_some()) {
            hints += metric(&cluster.http, &node.url(), "dynamo_storage_hints_pending")
                .await
                .unwrap_or(1.0);
        }
        unsettled = snapshot.iter().map(|k| !k.converged()).collect();
        let at_rest = hints == 0.0 && snapshot.iter().all(FinalKey::converged);
        let same_as_before = previous
            .as_ref()
            .is_some_and(|p| p.iter().zip(&snapshot).all(|(a, b)| a.object() == b.object()));
        if at_rest && same_as_before {
            return Settled {
                keys: snapshot,
                stable: true,
                took: started.elapsed(),
                hints_pending: hints,
            };
        }
        if Instant::now() >= deadline {
            return Settled {
                keys: snapshot,
                stable: false,
                took: started.elapsed(),
                hints_pending: hints,
            };
        }
        previous = at_rest.then_some(snapshot);
        // Polling a condition that has no notification: read repair and hint delivery
        // run in the services' own workers.
        tokio::time::sleep(SETTLE_POLL).await;
    }
}

async fn placement(cluster: &Cluster, bucket: &str, key: &str, deadline: Instant) -> Placement {
    loop {
        let answer = cluster
            .req(
                reqwest::Method::GET,
                &format!("/v1/ring?bucket={bucket}&key={key}"),
            )
            .timeout(CALL_TIMEOUT)
            .send()
            .await;
        if let Ok(r) = answer
            && let Ok(v) = r.json::<Value>().await
            && let Some(pl) = v["preference_list"].as_array()
            && let Some(partition) = v["partition"].as_u64()
        {
            return Placement {
                partition: partition as u32,
                preference_list: pl.iter().filter_map(|n| n.as_str().map(str::to_owned)).collect(),
            };
        }
        assert!(
            Instant::now() < deadline,
            "the coordinator never answered the placement of {bucket}/{key}"
        );
        tokio::time::sleep(SETTLE_POLL).await;
    }
}

/// Reads every key from every node of its preference list, one batch per node and chunk.
async fn read_nodes(
    cluster: &Cluster,
    keys: &[(String, String)],
    placements: &[Vec<String>],
) -> Vec<Vec<Result<Option<NodeObject>, String>>> {
    let nodes = cluster.nodes.len();
    let wanted: Vec<Vec<Option<usize>>> = placements
        .iter()
        .map(|pl| pl.iter().map(|name| node_index(name, nodes)).collect())
        .collect();
    let known: Vec<Vec<usize>> = wanted
        .iter()
        .map(|w| w.iter().flatten().copied().collect())
        .collect();
    let mut held = read_copies(&cluster.http, &node_urls(cluster), keys, &known).await;
    wanted
        .iter()
        .zip(placements)
        .zip(held.iter_mut())
        .map(|((w, pl), got)| {
            let mut got = std::mem::take(got).into_iter();
            w.iter()
                .zip(pl)
                .map(|(i, name)| match i {
                    Some(_) => got.next().unwrap_or_else(|| Err("not read".into())),
                    None => Err(format!("{name} is not a node of this cluster")),
                })
                .collect()
        })
        .collect()
}

/// The base URLs of a cluster's storage nodes, by index.
pub fn node_urls(cluster: &Cluster) -> Vec<String> {
    cluster.nodes.iter().map(crate::Proc::url).collect()
}

/// Reads, for each key, its copies on the nodes `wanted` names for it (indexes into
/// `urls`, the nodes' base URLs), with one replica batch per node and chunk of [`BATCH`]
/// keys; answers in the order of `wanted`. A copy is `None` when the node holds nothing,
/// an error when the node did not answer or answered something else.
pub async fn read_copies(
    http: &dynamo_testkit::Http,
    urls: &[String],
    keys: &[(String, String)],
    wanted: &[Vec<usize>],
) -> Vec<Vec<Result<Option<NodeObject>, String>>> {
    let mut held: HashMap<(usize, usize), Result<Option<NodeObject>, String>> = HashMap::new();
    for (n, url) in urls.iter().enumerate() {
        let mine: Vec<usize> = (0..keys.len()).filter(|&i| wanted[i].contains(&n)).collect();
        for chunk in mine.chunks(BATCH) {
            let ops: Vec<Value> = chunk
                .iter()
                .map(|&i| json!({"op": "get", "bucket": keys[i].0, "key": keys[i].1}))
                .collect();
            let answer = http
                .post(format!("{url}/internal/v1/replicas"))
                .timeout(CALL_TIMEOUT)
                .json(&json!({ "ops": ops }))
                .send()
                .await;
            let results = match answer {
                Ok(r) => r.json::<Value>().await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            for (j, &i) in chunk.iter().enumerate() {
                let copy = match &results {
                    Err(e) => Err(e.clone()),
                    Ok(v) => {
                        let r = &v["results"][j];
                        if r["status"] == "got" {
                            match &r["object"] {
                                Value::Null => Ok(None),
                                o => serde_json::from_value::<NodeObject>(o.clone())
                                    .map(Some)
                                    .map_err(|e| format!("undecodable object: {e}")),
                            }
                        } else {
                            Err(format!("answered {r}"))
                        }
                    }
                };
                held.insert((i, n), copy);
            }
        }
    }
    wanted
        .iter()
        .enumerate()
        .map(|(i, nodes)| {
            nodes
                .iter()
                .map(|&n| held.remove(&(i, n)).unwrap_or_else(|| Err("not read".into())))
                .collect()
        })
        .collect()
}

/// Reads one metric (no labels) from a service's `/metrics`; `None` when unreadable.
async fn metric(http: &dynamo_testkit::Http, url: &str, name: &str) -> Option<f64> {
    let text = scrape(http, url).await?;
    Some(metric_lines(&text, name).map(|(_, v)| v).sum())
}

/// A service's `/metrics` text; `None` when unreadable.
pub async fn scrape(http: &dynamo_testkit::Http, url: &str) -> Option<String> {
    tokio::time::timeout(CALL_TIMEOUT, dynamo_testkit::scrape(http, url))
        .await
        .ok()
        .flatten()
}

/// The samples of metric `name` in an exposition text: `(labels, value)`, labels as
/// written (`{op="put"}`, or empty).
pub fn metric_lines<'a>(text: &'a str, name: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
    text.lines().filter_map(move |l| {
        let rest = l.strip_prefix(name)?;
        let (labels, value) = if rest.starts_with('{') {
            rest.split_once("} ").map(|(l, v)| (&rest[..l.len() + 1], v))?
        } else {
            ("", rest.strip_prefix(' ')?)
        };
        Some((labels, value.trim().parse().ok()?))
    })
}

/// A broken rule.
#[derive(Debug, Clone)]
pub struct Violation {
    /// Which check: `1 survival`, `2 superseded`, `2 context`, `3 convergence`, `4 epoch`.
    pub check: &'static str,
    /// The bucket (empty for check 4).
    pub bucket: String,
    /// The key (empty for check 4).
    pub key: String,
    /// What was wrong.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "[{}] {}", self.check, self.detail)
        } else {
            write!(
                f,
                "[{}] {}/{}: {}",
                self.check, self.bucket, self.key, self.detail
            )
        }
    }
}

/// What LWW lost.
#[derive(Debug, Clone, Default)]
pub struct LwwReport {
    /// Keys written.
    pub keys: usize,
    /// Acknowledged writes.
    pub acked: usize,
    /// Keys with an acknowledged write.
    pub latest_checked: usize,
    /// Of those, keys whose latest acknowledged write (by the time it was sent) is not the
    /// final value although the final value's write had been answered before it was
    /// sent: an acknowledged write lost although it was the latest by time.
    pub latest_lost: usize,
    /// Acknowledged writes that lost to a write which had been answered before they were
    /// even sent (a later-by-time write overwritten by an earlier one).
    pub overwritten_by_older: usize,
    /// Lines describing each `latest_lost` key.
    pub details: Vec<String>,
}

impl fmt::Display for LwwReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "LWW: {} keys, {} acknowledged writes; latest-by-time write lost on {} of {} keys; {} acknowledged writes lost to an older write",
            self.keys, self.acked, self.latest_lost, self.latest_checked, self.overwritten_by_older
        )
    }
}

/// What the checks found that is allowed but worth reporting.
#[derive(Debug, Clone, Default)]
pub struct Notes {
    /// Indeterminate writes from before their writer's last acknowledged write that are
    /// final siblings: applied (on fewer than W replicas) before the client was answered,
    /// unseen by the read the writer made next, so concurrent with what followed.
    pub surfaced_indeterminate: usize,
    /// One line per such write.
    pub details: Vec<String>,
}

/// Runs checks 1–3 over every settled key; returns the violations, the LWW numbers and
/// the notes. `t0_wall_ms` is the wall-clock time (ms since the Unix epoch) of the
/// history's time 0, to compare the nodes' acceptance times with the clients' answers.
pub fn check(ops: &[Op], settled: &Settled, t0_wall_ms: u64) -> (Vec<Violation>, LwwReport, Notes) {
    let mut by_key: BTreeMap<(&str, &str), Vec<&Op>> = BTreeMap::new();
    for op in ops {
        by_key.entry((&op.bucket, &op.key)).or_default().push(op);
    }
    let mut out = Vec::new();
    let mut lww = LwwReport::default();
    let mut notes = Notes::default();
    for fk in &settled.keys {
        let ops = by_key
            .get(&(fk.bucket.as_str(), fk.key.as_str()))
            .cloned()
            .unwrap_or_default();
        let mut v = Checker {
            bucket: &fk.bucket,
            key: &fk.key,
            t0_wall_ms,
            out: &mut out,
            notes: &mut notes,
        };
        if !fk.converged() {
            v.push(
                "3 convergence",
                format!(
                    "the preference list's copies differ or could not be read:\n{}",
                    fk.show()
                ),
            );
        }
        let empty = NodeObject {
            history: DotSet::new(),
            siblings: Vec::new(),
        };
        let obj = fk.object().unwrap_or(&empty);
        match fk.bucket.as_str() {
            SETS | REGS | REGS_DEL => {
                v.superseded(&ops, obj);
                v.context_contract(&ops);
                if fk.bucket == SETS {
                    v.set_survival(&ops, obj);
                } else {
                    v.register(&ops, obj);
                }
            }
            BLIND => {
                v.superseded(&ops, obj);
                v.context_contract(&ops);
                v.blind_survival(&ops, obj);
            }
            LWW => v.lww(&ops, obj, &mut lww),
            _ => {}
        }
    }
    (out, lww, notes)
}

struct Checker<'a> {
    bucket: &'a str,
    key: &'a str,
    t0_wall_ms: u64,
    out: &'a mut Vec<Violation>,
    notes: &'a mut Notes,
}

/// Clock slack when comparing a node's acceptance time with a client's answer time (both
/// read from the same system clock; this covers only the order of the two readings).
const CLOCK_SLACK_MS: u64 = 50;

fn decode(token: Option<&str>) -> Option<DotSet> {
    token.and_then(|t| context::read_unverified(t).ok())
}

impl Checker<'_> {
    fn push(&mut self, check: &'static str, detail: String) {
        self.out.push(Violation {
            check,
            bucket: self.bucket.to_owned(),
            key: self.key.to_owned(),
            detail,
        });
    }

    /// Check 2: no final sibling was replaced by an acknowledged write, by dot or by value.
    fn superseded(&mut self, ops: &[&Op], obj: &NodeObject) {
        // By dot: an acknowledged write replaced every sibling whose dot its context holds.
        let acked: Vec<(&Op, DotSet)> = ops
            .iter()
            .filter(|o| o.is_acked_write())
            .filter_map(|o| decode(o.ctx_sent.as_deref()).map(|c| (*o, c)))
            .collect();
        for s in &obj.siblings {
            let by: Vec<&Op> = acked
                .iter()
                .filter(|(_, c)| c.contains(&s.dot))
                .map(|(o, _)| *o)
                .collect();
            if let Some(first) = by.first() {
                let what = if s.tombstone {
                    "a tombstone".to_owned()
                } else {
                    s.text()
                };
                self.push(
                    "2 superseded",
                    format!(
                        "final sibling {} ({}) has a dot that the sent context of {} acknowledged writes contained, the first op #{} ({} {})",
                        show_dot(&s.dot),
                        shorten(&what),
                        by.len(),
                        first.id,
                        first.client,
                        first.tag
                    ),
                );
            }
        }
        // By value: what each context had seen, in completion order (an op sends only
        // contexts answered before it was sent).
        let mut known: HashMap<&str, BTreeSet<&str>> = HashMap::new();
        let mut superseded: HashMap<&str, usize> = HashMap::new();
        for op in ops {
            match op.kind {
                Kind::Read if op.outcome.is_ok() => {
                    if let Some(ctx) = op.ctx_answered.as_deref() {
                        known
                            .entry(ctx)
                            .or_default()
                            .extend(op.read.iter().map(String::as_str));
                    }
                }
                Kind::Put | Kind::Delete if op.outcome.is_ok() => {
                    let seen = op
                        .ctx_sent
                        .as_deref()
                        .and_then(|c| known.get(c))
                        .cloned()
                        .unwrap_or_default();
                    for v in &seen {
                        superseded.entry(v).or_insert(op.id);
                    }
                    if let Some(ctx) = op.ctx_answered.as_deref() {
                        let entry = known.entry(ctx).or_default();
                        entry.extend(seen);
                        if let Some(v) = op.value.as_deref() {
                            entry.insert(v);
                        }
                    }
                }
                _ => {}
            }
        }
        for s in obj.siblings.iter().filter(|s| !s.tombstone) {
            let text = s.text();
            if let Some(by) = superseded.get(text.as_str()) {
                self.push(
                    "2 superseded",
                    format!(
                        "final sibling {} ({}) is a value that acknowledged op #{by} had seen in the context it sent, so it replaced it; it came back",
                        show_dot(&s.dot),
                        shorten(&text)
                    ),
                );
            }
        }
    }

    /// Check 2, the contract of the answered context: what was sent plus one new dot.
    /// The one allowed loss is the documented bound: extra (out-of-order) dots beyond
    /// `MAX_CONTEXT_DOTS` are dropped, smallest first, which only ever claims less.
    fn context_contract(&mut self, ops: &[&Op]) {
        let mut broken: Vec<String> = Vec::new();
        for op in ops.iter().filter(|o| o.is_acked_write()) {
            let Some(answered) = decode(op.ctx_answered.as_deref()) else {
                broken.push(format!("op #{} ({}) answered no valid context", op.id, op.tag));
                continue;
            };
            let sent = decode(op.ctx_sent.as_deref()).unwrap_or_default();
            let vector_kept = sent
                .vector()
                .all(|(a, n)| answered.contains(&Dot::new(a, n)) && answered.max_counter(a) >= n);
            let cloud_kept =
                sent.cloud_len() + 1 > MAX_CONTEXT_DOTS || sent.cloud().all(|d| answered.contains(&d));
            let new = op.minted_dots();
            if !vector_kept || !cloud_kept || new.len() != 1 {
                broken.push(format!(
                    "op #{} ({}) sent {} and was answered {}",
                    op.id,
                    op.tag,
                    show_set(&sent),
                    show_set(&answered)
                ));
            }
        }
        if let Some(first) = broken.first() {
            self.push(
                "2 context",
                format!(
                    "{} acknowledged writes were not answered the context they sent plus one dot; the first: {first}",
                    broken.len()
                ),
            );
        }
    }

    /// Check 1 for blind writes: nothing replaces a blind write, so every acknowledged
    /// value is a final sibling, and every final sibling is a value written.
    fn blind_survival(&mut self, ops: &[&Op], obj: &NodeObject) {
        let live: BTreeSet<String> = obj
            .siblings
            .iter()
            .filter(|s| !s.tombstone)
            .map(NodeSibling::text)
            .collect();
        let missing: Vec<String> = ops
            .iter()
            .filter(|o| o.is_acked_write() && o.value.as_ref().is_some_and(|v| !live.contains(v)))
            .map(|o| {
                format!(
                    "{} (op #{}, new dot {})",
                    o.tag,
                    o.id,
                    o.minted_dots().iter().map(show_dot).collect::<Vec<_>>().join(",")
                )
            })
            .collect();
        if !missing.is_empty() {
            self.push(
                "1 survival",
                format!(
                    "{} acknowledged blind writes are not final siblings: {}",
                    missing.len(),
                    missing.join(", ")
                ),
            );
        }
        for v in &live {
            if !ops.iter().any(|o| o.value.as_ref() == Some(v)) {
                self.push(
                    "1 survival",
                    format!("final sibling {} was never written", shorten(v)),
                );
            }
        }
    }

    /// Check 1 for set-add: every acknowledged element is in the final union.
    fn set_survival(&mut self, ops: &[&Op], obj: &NodeObject) {
        let mut union = BTreeSet::new();
        for s in obj.siblings.iter().filter(|s| !s.tombstone) {
            match parse_set(&s.text()) {
                Some(set) => union.extend(set),
                None => self.push(
                    "1 survival",
                    format!(
                        "final sibling {} is not a set: {}",
                        show_dot(&s.dot),
                        shorten(&s.text())
                    ),
                ),
            }
        }
        let missing: Vec<String> = ops
            .iter()
            .filter(|o| o.is_acked_write() && !union.contains(&o.tag))
            .map(|o| format!("{} (op #{})", o.tag, o.id))
            .collect();
        if !missing.is_empty() {
            const SHOWN: usize = 20;
            self.push(
                "1 survival",
                format!(
                    "{} acknowledged adds are missing from the final union: {}{}",
                    missing.len(),
                    missing[..missing.len().min(SHOWN)].join(", "),
                    if missing.len() > SHOWN { ", …" } else { "" }
                ),
            );
        }
    }

    /// The wall-clock time at which `op` was answered (ms since the Unix epoch).
    fn answered_ms(&self, op: &Op) -> u64 {
        self.t0_wall_ms + op.end.as_millis() as u64
    }

    /// An older write of the register's writer is a final sibling: allowed only for an
    /// indeterminate write that a node accepted before the client was answered (it was
    /// concurrent with what the writer did next); a write accepted after its answer took
    /// effect after the client moved on (at most once), and an acknowledged or refused one
    /// must be gone.
    fn older_write(&mut self, s: &NodeSibling, o: &Op, last: &str) {
        let sibling = show_dot(&s.dot);
        if o.outcome.is_ok() {
            self.push(
                "1 survival",
                format!(
                    "final sibling {sibling} is the acknowledged {} (op #{}), older than the last acknowledged write {last}: it should have been replaced",
                    o.tag, o.id
                ),
            );
        } else if !o.is_indeterminate_write() {
            self.push(
                "1 survival",
                format!(
                    "final sibling {sibling} is {} (op #{}), a write that was refused ({:?})",
                    o.tag, o.id, o.outcome
                ),
            );
        } else if s.last_modified_ms > self.answered_ms(o) + CLOCK_SLACK_MS {
            self.push(
                "1 at most once",
                format!(
                    "final sibling {sibling} is the indeterminate {} (op #{}, answered at {:.3}s) older than the last acknowledged write {last}, and a node accepted it {} ms after the client was answered: it took effect after the writer moved on",
                    o.tag,
                    o.id,
                    o.end.as_secs_f64(),
                    s.last_modified_ms - self.answered_ms(o)
                ),
            );
        } else {
            self.notes.surfaced_indeterminate += 1;
            self.notes.details.push(format!(
                "{}/{}: {} (op #{}, indeterminate, answered at {:.3}s) is a final sibling {sibling} beside later writes: accepted by a node before the answer, unseen by the next read",
                self.bucket,
                self.key,
                o.tag,
                o.id,
                o.end.as_secs_f64()
            ));
        }
    }

    /// Check 1 for a single-writer register: the final siblings are the last
    /// acknowledged write or later writes of the writer (older ones only as
    /// [`Checker::older_write`] allows), and not nothing.
    fn register(&mut self, ops: &[&Op], obj: &NodeObject) {
        let writes: Vec<&Op> = ops.iter().copied().filter(|o| o.kind != Kind::Read).collect();
        let last_acked = writes.iter().filter(|o| o.outcome.is_ok()).map(|o| o.seq).max();
        let by_value: HashMap<&str, &Op> = writes
            .iter()
            .filter_map(|o| o.value.as_deref().map(|v| (v, *o)))
            .collect();
        let by_dot: HashMap<Dot, &Op> = writes
            .iter()
            .filter(|o| o.kind == Kind::Delete && o.outcome.is_ok())
            .filter_map(|o| o.minted_dots().first().map(|d| (*d, *o)))
            .collect();
        let floor = last_acked.unwrap_or(0);
        let last = last_tag(&writes, floor);
        // Nothing left at all (or only tombstones) is right after a delete: its tombstone
        // may have been collected.
        let deleted_since = writes.iter().any(|o| {
            o.kind == Kind::Delete && o.seq >= floor && (o.outcome.is_ok() || o.is_indeterminate_write())
        });
        let mut survives =
            last_acked.is_none() || (deleted_since && obj.siblings.iter().all(|s| s.tombstone));
        for s in &obj.siblings {
            let origin = if s.tombstone {
                by_dot.get(&s.dot).copied().or_else(|| {
                    // A tombstone whose dot no acknowledged delete was answered: one of
                    // the indeterminate deletes made it, the one whose request it fits
                    // in time (or else the latest before it was accepted).
                    let undecided = || {
                        writes
                            .iter()
                            .filter(|o| o.kind == Kind::Delete && o.is_indeterminate_write())
                    };
                    undecided()
                        .rev()
                        .find(|o| o.seq > floor)
                        .or_else(|| {
                            undecided().find(|o| {
                                let sent = self.t0_wall_ms + o.start.as_millis() as u64;
                                s.last_modified_ms + CLOCK_SLACK_MS >= sent
                                    && s.last_modified_ms <= self.answered_ms(o) + CLOCK_SLACK_MS
                            })
                        })
                        .or_else(|| {
                            undecided()
                                .rev()
                                .find(|o| self.t0_wall_ms + o.start.as_millis() as u64 <= s.last_modified_ms)
                        })
                        .copied()
                })
            } else {
                by_value.get(s.text().as_str()).copied()
            };
            match origin {
                Some(o) if o.seq >= floor => survives = true,
                Some(o) => self.older_write(s, o, &last),
                None if s.tombstone => self.push(
                    "1 survival",
                    format!(
                        "final tombstone {} comes from no delete of its writer (last acknowledged write {last})",
                        show_dot(&s.dot)
                    ),
                ),
                None => self.push(
                    "1 survival",
                    format!(
                        "final sibling {} holds a value its writer never wrote: {}",
                        show_dot(&s.dot),
                        shorten(&s.text())
                    ),
                ),
            }
        }
        if !survives {
            self.push(
                "1 survival",
                format!(
                    "the last acknowledged write {last} is lost: the final siblings hold neither it nor a later write of its writer"
                ),
            );
        }
    }

    /// LWW: values nobody wrote fail; loss is measured.
    fn lww(&mut self, ops: &[&Op], obj: &NodeObject, report: &mut LwwReport) {
        let writes: Vec<&Op> = ops.iter().copied().filter(|o| o.kind == Kind::Put).collect();
        let acked: Vec<&Op> = writes.iter().copied().filter(|o| o.outcome.is_ok()).collect();
        report.keys += 1;
        report.acked += acked.len();
        let live: Vec<String> = obj
            .siblings
            .iter()
            .filter(|s| !s.tombstone)
            .map(NodeSibling::text)
            .collect();
        let winner = live
            .first()
            .and_then(|v| writes.iter().find(|o| o.value.as_deref() == Some(v.as_str())));
        for v in &live {
            if !writes.iter().any(|o| o.value.as_deref() == Some(v.as_str())) {
                self.push(
                    "1 survival",
                    format!("final value {} was never written", shorten(v)),
                );
            }
        }
        if let Some(w) = winner {
            report.overwritten_by_older += acked.iter().filter(|a| a.id != w.id && w.end < a.start).count();
        }
        let Some(latest) = acked.iter().max_by_key(|o| o.start) else {
            return;
        };
        report.latest_checked += 1;
        // The latest acknowledged write lost when the winner had been answered before it
        // was even sent (a winner that overlapped it in time may fairly be later).
        let lost = winner.is_none_or(|w| w.id != latest.id && w.end < latest.start);
        if lost {
            report.latest_lost += 1;
            report.details.push(format!(
                "{}/{}: latest acknowledged write {} (op #{}, {:.3}s–{:.3}s) lost to {}",
                self.bucket,
                self.key,
                latest.tag,
                latest.id,
                latest.start.as_secs_f64(),
                latest.end.as_secs_f64(),
                winner.map_or_else(
                    || "nothing".to_owned(),
                    |w| format!(
                        "{} (op #{}, {:.3}s–{:.3}s)",
                        w.tag,
                        w.id,
                        w.start.as_secs_f64(),
                        w.end.as_secs_f64()
                    )
                )
            ));
        }
    }
}

fn last_tag(writes: &[&Op], seq: u64) -> String {
    writes
        .iter()
        .find(|o| o.seq == seq && o.outcome.is_ok())
        .map_or_else(|| "(none)".to_owned(), |o| format!("{} (op #{})", o.tag, o.id))
}

/// Check 8: every CRDT counter sums its increments exactly, within what their outcomes
/// allow: at least the acknowledged ones (none lost), at most those plus every
/// increment that may have been applied again (none counted twice otherwise). Read
/// through the coordinator after the heal, once the cluster settled.
pub async fn check_counters(
    api: &super::client::Api,
    tally: &super::workload::CounterTally,
) -> Vec<Violation> {
    let mut out: Vec<Violation> = tally
        .refused
        .iter()
        .map(|r| Violation {
            check: "8 counters",
            bucket: super::workload::COUNTERS.to_owned(),
            key: String::new(),
            detail: format!("an increment was refused: {r}"),
        })
        .collect();
    for (key, &(acked, more)) in &tally.keys {
        let violation = |detail: String| Violation {
            check: "8 counters",
            bucket: super::workload::COUNTERS.to_owned(),
            key: key.clone(),
            detail,
        };
        match api.counter(super::workload::COUNTERS, key).await {
            Ok(value) => {
                let value = value.unwrap_or(0);
                if value < acked || value > acked + more {
                    out.push(violation(format!(
                        "the counter reads {value}; acknowledged increments sum to {acked}, and at most {more} more may have been applied"
                    )));
                }
            }
            Err(e) => out.push(violation(format!("the counter could not be read: {e}"))),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    //! The checks against hand-made histories: each rule flags the history that breaks
    //! it (the trace among them) and passes the one that keeps it.

    use super::*;
    use crate::checker::history::Outcome;
    use dynamo_core::ActorId;

    const A: u64 = 0xaaaa;
    const B: u64 = 0xbbbb;

    fn set(dots: &[(u64, u64)]) -> DotSet {
        dots.iter().map(|&(a, c)| Dot::new(ActorId(a), c)).collect()
    }

    fn ctx(dots: &[(u64, u64)]) -> Option<String> {
        let keys = context::ContextKeys::new(vec![dynamo_core::keys::Key::new(1, &[3; 32]).expect("key")])
            .expect("keys");
        Some(keys.seal(&set(dots), "b", "k"))
    }

    struct H {
        ops: Vec<Op>,
    }

    impl H {
        fn new() -> H {
            H { ops: Vec::new() }
        }

        #[allow(clippy::too_many_arguments)]
        fn push(
            &mut self,
            kind: Kind,
            seq: u64,
            tag: &str,
            value: Option<&str>,
            sent: Option<String>,
            answered: Option<String>,
            outcome: Outcome,
            read: &[&str],
        ) {
            let t = self.ops.len() as u64 * 100;
            self.ops.push(Op {
                id: self.ops.len(),
                client: "reg-0".into(),
                bucket: REGS.into(),
                key: "reg-0".into(),
                kind,
                seq,
                tag: tag.into(),
                value: value.map(str::to_owned),
                ctx_sent: sent,
                ctx_answered: answered,
                outcome,
                read: read.iter().map(|s| (*s).to_owned()).collect(),
                start: Duration::from_millis(t),
                end: Duration::from_millis(t + 50),
            });
        }

        fn put(&mut self, seq: u64, sent: Option<String>, answered: Option<String>, outcome: Outcome) {
            let tag = format!("v{seq}");
            let value = format!("reg-0:{tag}");
            self.push(Kind::Put, seq, &tag, Some(&value), sent, answered, outcome, &[]);
        }

        fn read(&mut self, shown: &[&str], answered: Option<String>) {
            self.push(Kind::Read, 0, "", None, None, answered, Outcome::Ok, shown);
        }
    }

    fn unavailable() -> Outcome {
        Outcome::Indeterminate {
            status: Some(503),
            code: "quorum_unavailable".into(),
        }
    }

    fn sibling(dot: (u64, u64), value: &str, last_modified_ms: u64) -> NodeSibling {
        NodeSibling {
            dot: Dot::new(ActorId(dot.0), dot.1),
            value: base64::engine::general_purpose::STANDARD.encode(value),
            tombstone: false,
            last_modified_ms,
        }
    }

    fn settled(bucket: &str, key: &str, copies: Vec<Option<NodeObject>>) -> Settled {
        Settled {
            keys: vec![FinalKey {
                bucket: bucket.into(),
                key: key.into(),
                preference_list: (0..copies.len()).map(|i| format!("node-{i}")).collect(),
                copies: copies.into_iter().map(Ok).collect(),
            }],
            stable: true,
            took: Duration::ZERO,
            hints_pending: 0.0,
        }
    }

    fn object(history: &[(u64, u64)], siblings: Vec<NodeSibling>) -> Option<NodeObject> {
        Some(NodeObject {
            history: set(history),
            siblings,
        })
    }

    fn checks(v: &[Violation]) -> Vec<&'static str> {
        let mut c: Vec<&'static str> = v.iter().map(|v| v.check).collect();
        c.sort();
        c.dedup();
        c
    }

    /// The wall clock of the history's time 0 in these tests.
    const T0: u64 = 1_000_000;

    #[test]
    fn a_clean_register_history_passes() {
        let mut h = H::new();
        h.put(1, None, ctx(&[(A, 1)]), Outcome::Ok);
        h.put(2, ctx(&[(A, 1)]), ctx(&[(A, 1), (A, 2)]), Outcome::Ok);
        let obj = object(&[(A, 1), (A, 2)], vec![sibling((A, 2), "reg-0:v2", T0 + 120)]);
        let (v, _, notes) = check(&h.ops, &settled(REGS, "reg-0", vec![obj.clone(), obj]), T0);
        assert!(v.is_empty(), "{v:?}");
        assert_eq!(notes.surfaced_indeterminate, 0);
    }

    // The trace: v2 answered 503, a read showed it, v3 with that read's context
    // was acknowledged, and v2 came back beside v3 under a second dot.
    #[test]
    fn a_value_seen_by_an_acknowledged_context_must_not_come_back() {
        let mut h = H::new();
        h.put(1, None, ctx(&[(A, 1)]), Outcome::Ok);
        h.put(2, ctx(&[(A, 1)]), None, unavailable());
        h.read(&["reg-0:v2"], ctx(&[(A, 1), (A, 2)]));
        h.put(
            3,
            ctx(&[(A, 1), (A, 2)]),
            ctx(&[(A, 1), (A, 2), (A, 3)]),
            Outcome::Ok,
        );
        let obj = object(
            &[(A, 1), (A, 2), (A, 3), (B, 1)],
            vec![
                sibling((A, 3), "reg-0:v3", T0 + 320),
                sibling((B, 1), "reg-0:v2", T0 + 90),
            ],
        );
        let (v, _, _) = check(&h.ops, &settled(REGS, "reg-0", vec![obj]), T0);
        assert!(checks(&v).contains(&"2 superseded"), "{v:?}");
    }

    #[test]
    fn a_dot_an_acknowledged_context_held_must_not_stay_and_the_write_must_survive() {
        let mut h = H::new();
        h.put(1, None, ctx(&[(A, 1)]), Outcome::Ok);
        h.put(2, ctx(&[(A, 1)]), ctx(&[(A, 1), (A, 2)]), Outcome::Ok);
        h.put(
            3,
            ctx(&[(A, 1), (A, 2)]),
            ctx(&[(A, 1), (A, 2), (A, 3)]),
            Outcome::Ok,
        );
        // v3 was acknowledged and is gone; v2 (replaced by v3's context) is what is left.
        let obj = object(&[(A, 1), (A, 2)], vec![sibling((A, 2), "reg-0:v2", T0 + 120)]);
        let (v, _, _) = check(&h.ops, &settled(REGS, "reg-0", vec![obj]), T0);
        assert_eq!(checks(&v), ["1 survival", "2 superseded"], "{v:?}");
    }

    #[test]
    fn an_indeterminate_write_applied_after_its_answer_breaks_at_most_once() {
        let mut h = H::new();
        h.put(1, None, ctx(&[(A, 1)]), Outcome::Ok);
        h.put(2, ctx(&[(A, 1)]), None, unavailable()); // answered at T0 + 150
        h.read(&["reg-0:v1"], ctx(&[(A, 1)]));
        h.put(3, ctx(&[(A, 1)]), ctx(&[(A, 1), (B, 1)]), Outcome::Ok);
        let late = object(
            &[(A, 1), (A, 2), (B, 1)],
            vec![
                sibling((A, 2), "reg-0:v2", T0 + 5_000),
                sibling((B, 1), "reg-0:v3", T0 + 320),
            ],
        );
        let (v, _, _) = check(&h.ops, &settled(REGS, "reg-0", vec![late]), T0);
        assert_eq!(checks(&v), ["1 at most once"], "{v:?}");

        // Accepted before the 503 and unseen by the next read: concurrent, allowed, noted.
        let early = object(
            &[(A, 1), (A, 2), (B, 1)],
            vec![
                sibling((A, 2), "reg-0:v2", T0 + 120),
                sibling((B, 1), "reg-0:v3", T0 + 320),
            ],
        );
        let (v, _, notes) = check(&h.ops, &settled(REGS, "reg-0", vec![early]), T0);
        assert!(v.is_empty(), "{v:?}");
        assert_eq!(notes.surfaced_indeterminate, 1);
    }

    #[test]
    fn every_acknowledged_add_is_in_the_final_union() {
        let mut ops = Vec::new();
        for (i, (tag, answered)) in [("set-0-e1", ctx(&[(A, 1)])), ("set-1-e1", ctx(&[(A, 2)]))]
            .into_iter()
            .enumerate()
        {
            ops.push(Op {
                id: i,
                client: tag[..5].into(),
                bucket: SETS.into(),
                key: "set-0-0".into(),
                kind: Kind::Put,
                seq: 1,
                tag: tag.into(),
                value: Some(format!("[\"{tag}\"]")),
                ctx_sent: None,
                ctx_answered: answered,
                outcome: Outcome::Ok,
                read: Vec::new(),
                start: Duration::from_millis(i as u64 * 10),
                end: Duration::from_millis(i as u64 * 10 + 5),
            });
        }
        let both = object(
            &[(A, 1), (A, 2)],
            vec![
                sibling((A, 1), "[\"set-0-e1\"]", 0),
                sibling((A, 2), "[\"set-1-e1\"]", 0),
            ],
        );
        let (v, _, _) = check(&ops, &settled(SETS, "set-0-0", vec![both]), T0);
        assert!(v.is_empty(), "{v:?}");
        let one = object(&[(A, 1), (A, 2)], vec![sibling((A, 1), "[\"set-0-e1\"]", 0)]);
        let (v, _, _) = check(&ops, &settled(SETS, "set-0-0", vec![one]), T0);
        assert_eq!(checks(&v), ["1 survival"], "{v:?}");
        assert!(v[0].detail.contains("set-1-e1"), "{v:?}");
    }

    #[test]
    fn replicas_that_differ_do_not_converge() {
        let mut h = H::new();
        h.put(1, None, ctx(&[(A, 1)]), Outcome::Ok);
        let a = object(&[(A, 1)], vec![sibling((A, 1), "reg-0:v1", T0 + 20)]);
        let (v, _, _) = check(&h.ops, &settled(REGS, "reg-0", vec![a.clone(), None, a]), T0);
        assert_eq!(checks(&v), ["3 convergence"], "{v:?}");
    }

    #[test]
    fn an_answer_must_be_the_sent_context_plus_one_dot() {
        let mut h = H::new();
        h.put(1, None, ctx(&[(A, 1)]), Outcome::Ok);
        // Claims B:1, a concurrent write it never saw.
        h.put(2, ctx(&[(A, 1)]), ctx(&[(A, 1), (A, 2), (B, 1)]), Outcome::Ok);
        let obj = object(&[(A, 1), (A, 2)], vec![sibling((A, 2), "reg-0:v2", T0 + 120)]);
        let (v, _, _) = check(&h.ops, &settled(REGS, "reg-0", vec![obj]), T0);
        assert_eq!(checks(&v), ["2 context"], "{v:?}");
    }

    #[test]
    fn a_register_deleted_last_may_be_gone_but_not_one_written_last() {
        let mut h = H::new();
        h.put(1, None, ctx(&[(A, 1)]), Outcome::Ok);
        h.push(
            Kind::Delete,
            2,
            "d2",
            None,
            ctx(&[(A, 1)]),
            ctx(&[(A, 1), (A, 2)]),
            Outcome::Ok,
            &[],
        );
        for op in &mut h.ops {
            op.bucket = REGS_DEL.into();
        }
        // The tombstone was collected on every replica.
        let (v, _, _) = check(&h.ops, &settled(REGS_DEL, "reg-0", vec![None, None]), T0);
        assert!(v.is_empty(), "{v:?}");
        h.put(
            3,
            ctx(&[(A, 1), (A, 2)]),
            ctx(&[(A, 1), (A, 2), (B, 1)]),
            Outcome::Ok,
        );
        h.ops[2].bucket = REGS_DEL.into();
        let (v, _, _) = check(&h.ops, &settled(REGS_DEL, "reg-0", vec![None, None]), T0);
        assert_eq!(checks(&v), ["1 survival"], "{v:?}");
    }

    #[test]
    fn every_acknowledged_blind_write_is_a_final_sibling() {
        let mut h = H::new();
        h.put(1, None, ctx(&[(A, 1)]), Outcome::Ok);
        h.put(2, None, ctx(&[(A, 2)]), Outcome::Ok);
        for op in &mut h.ops {
            op.bucket = BLIND.into();
        }
        let both = object(
            &[(A, 1), (A, 2)],
            vec![sibling((A, 1), "reg-0:v1", 0), sibling((A, 2), "reg-0:v2", 0)],
        );
        let (v, _, _) = check(&h.ops, &settled(BLIND, "reg-0", vec![both]), T0);
        assert!(v.is_empty(), "{v:?}");
        // A second write minted the first one's dot: replicas kept one of the two.
        let one = object(&[(A, 1)], vec![sibling((A, 1), "reg-0:v1", 0)]);
        let (v, _, _) = check(&h.ops, &settled(BLIND, "reg-0", vec![one]), T0);
        assert_eq!(checks(&v), ["1 survival"], "{v:?}");
    }

    #[test]
    fn metric_lines_read_plain_and_labelled_samples() {
        let text = "# HELP x y\nfoo_total 3\nfoo_total_other 9\nbar{op=\"put\"} 2\nbar{op=\"get\"} 5\n";
        assert_eq!(metric_lines(text, "foo_total").collect::<Vec<_>>(), [("", 3.0)]);
        assert_eq!(
            metric_lines(text, "bar").collect::<Vec<_>>(),
            [("{op=\"put\"}", 2.0), ("{op=\"get\"}", 5.0)]
        );
    }

    #[test]
    fn tombstones_converge_with_collected_copies_but_not_with_older_ones() {
        let tomb = |dot: (u64, u64), history: &[(u64, u64)]| {
            let mut s = sibling(dot, "", 0);
            s.tombstone = true;
            object(history, vec![s])
        };
        let key = |copies: Vec<Option<NodeObject>>| settled(REGS_DEL, "k", copies).keys.remove(0);
        let new = tomb((B, 1), &[(A, 1), (B, 1)]);
        assert!(
            key(vec![new.clone(), None, new.clone()]).converged(),
            "GC in progress"
        );
        let old = tomb((A, 1), &[(A, 1)]);
        assert!(
            !key(vec![new.clone(), new, old]).converged(),
            "a stale replica needs repair"
        );
    }
}
