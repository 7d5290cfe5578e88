//! Checks 5 and 6, made after the heal and before anything reads a key (the settle's
//! reads through the coordinator repair replicas, so they would hide what this looks
//! for). Only the storage nodes' own copies are read (`/internal/v1/replicas` `get`),
//! which repairs nothing.
//!
//! 5. **Convergence without reads**: every node of a key's preference list (under the
//!    final ring) holds every acknowledged write of the key: its copy's history holds
//!    the write's dot (the write is there, or something that saw it replaced it). A node
//!    holding nothing passes only for a register whose last acknowledged write was
//!    followed by a delete (the tombstone may have been collected). Hinted handoff and
//!    anti-entropy are what bring a replica that missed writes up to date here; without
//!    anti-entropy, a replica that missed writes while it was down, paused or cut off
//!    and got no hint stays behind.
//! 6. **Released partitions are let go**: a node that held a key's partition under some
//!    ring of the run and does not under the final one holds no copy of the key once
//!    its release is acknowledged (it left the state's releases); and every node still
//!    running acknowledges its release. A node that is gone for good (a lost disk) is
//!    not asked.
//!
//! Both wait, bounded, for the condition: anti-entropy and release run in the nodes'
//! own time.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use dynamo_core::ring::Ring;
use dynamo_core::wire::cluster::ClusterState;
use dynamo_core::{Dot, NodeId, PartitionId};
use tokio::time::Instant;

use super::check::{NodeObject, Placement, Violation, node_urls, read_copies};
use super::history::{Kind, Op};
use super::workload::REGS_DEL;
use crate::Cluster;
use crate::membership::{node_index, node_name};

/// Pause between two looks.
const POLL: Duration = Duration::from_millis(500);
/// Most lagging copies named in one violation.
const SHOWN: usize = 5;

/// How checks 5 and 6 went.
#[derive(Debug, Clone, Default)]
pub struct ConvergeReport {
    /// Copies checked (keys × preference-list nodes).
    pub copies: usize,
    /// Copies that lacked an acknowledged write at the first look.
    pub lagging_at_first: usize,
    /// Copies of released partitions checked on nodes that let them go.
    pub released_copies: usize,
    /// Copies of released partitions still held at the first look.
    pub released_held_at_first: usize,
    /// How long until everything held, or the wait ended.
    pub took: Duration,
    /// True when everything held.
    pub converged: bool,
}

impl fmt::Display for ConvergeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "convergence without reads: {} copies, {} lacked acknowledged writes at first; released copies: {} checked, {} still held at first; {} in {:.1} s",
            self.copies,
            self.lagging_at_first,
            self.released_copies,
            self.released_held_at_first,
            if self.converged {
                "converged"
            } else {
                "NOT converged"
            },
            self.took.as_secs_f64()
        )
    }
}

/// What one key must look like on the nodes.
struct Want {
    /// The dots of its acknowledged writes.
    dots: Vec<(Dot, String)>,
    /// True when a node may hold nothing (a delete after the last acknowledged write).
    may_be_gone: bool,
    /// Preference-list nodes (indexes; `None`: a name that is no node of the cluster).
    owners: Vec<Option<usize>>,
    /// Running nodes that held the key's partition under an earlier ring and do not
    /// under the final one.
    released: Vec<usize>,
}

/// Runs checks 5 and 6 over `keys` (with `placements` under the final ring), given the
/// history and every ring of the run (`rings`, oldest first), waiting at most `limit`.
pub async fn converge_without_reads(
    cluster: &Cluster,
    ops: &[Op],
    keys: &[(String, String)],
    placements: &[Placement],
    rings: &[Ring],
    limit: Duration,
) -> (ConvergeReport, Vec<Violation>) {
    let started = Instant::now();
    let deadline = started + limit;
    let running = |i: usize| cluster.nodes[i].id().is_some();
    let state = cluster.ring_state().await;
    let max_n = state.as_ref().map_or(3, ClusterState::max_n);
    let wants: Vec<Want> = keys
        .iter()
        .zip(placements)
        .map(|((bucket, key), placement)| {
            let key_ops: Vec<&Op> = ops
                .iter()
                .filter(|o| o.bucket == *bucket && o.key == *key)
                .collect();
            let final_holders = holders(
                state.as_ref().and_then(|s| s.ring.as_ref()),
                placement.partition,
                max_n,
            );
            let mut released = BTreeSet::new();
            for r in rings {
                for n in holders(Some(r), placement.partition, max_n) {
                    if !final_holders.contains(&n)
                        && let Some(i) = node_index(n.as_str(), cluster.nodes.len())
                        && running(i)
                    {
                        released.insert(i);
                    }
                }
            }
            Want {
                dots: acknowledged_dots(&key_ops),
                may_be_gone: bucket == REGS_DEL && deleted_last(&key_ops),
                owners: placement
                    .preference_list
                    .iter()
                    .map(|n| node_index(n, cluster.nodes.len()))
                    .collect(),
                released: released.into_iter().collect(),
            }
        })
        .collect();
    let wanted: Vec<Vec<usize>> = wants
        .iter()
        .map(|w| w.owners.iter().flatten().chain(&w.released).copied().collect())
        .collect();
    let mut report = ConvergeReport {
        copies: wants.iter().map(|w| w.owners.len()).sum(),
        released_copies: wants.iter().map(|w| w.released.len()).sum(),
        ..ConvergeReport::default()
    };
    let mut first = true;
    let urls = node_urls(cluster);
    loop {
        let copies = read_copies(&cluster.http, &urls, keys, &wanted).await;
        let state = cluster.ring_state().await;
        let pending = |node: usize, p: u32| {
            let id = NodeId::new(node_name(node)).expect("a node id");
            state.as_ref().is_none_or(|s| {
                s.release_for(&id)
                    .is_some_and(|r| r.partitions.contains(&PartitionId(p)))
            })
        };
        let mut lagging: Vec<Violation> = Vec::new();
        let mut held: Vec<Violation> = Vec::new();
        let mut unacknowledged: BTreeSet<usize> = BTreeSet::new();
        let mut lagging_copies = 0;
        for (k, ((bucket, key), want)) in keys.iter().zip(&wants).enumerate() {
            let mut got = copies[k].iter();
            let mut behind = Vec::new();
            for owner in &want.owners {
                let Some(node) = owner else {
                    behind.push("a preference-list node that is no node of this cluster".to_owned());
                    continue;
                };
                let copy = got.next().expect("one copy per node asked");
                if let Some(why) = lacks(copy, want) {
                    behind.push(format!("{}: {why}", node_name(*node)));
                }
            }
            lagging_copies += behind.len();
            if !behind.is_empty() {
                lagging.push(Violation {
                    check: "5 no-read convergence",
                    bucket: bucket.clone(),
                    key: key.clone(),
                    detail: format!(
                        "{} of the preference list {:?} lack acknowledged writes, {:.1} s after the heal with no read: {}",
                        behind.len(),
                        placements[k].preference_list,
                        started.elapsed().as_secs_f64(),
                        behind.join("; ")
                    ),
                });
            }
            for &node in &want.released {
                let copy = got.next().expect("one copy per node asked");
                if pending(node, placements[k].partition) {
                    unacknowledged.insert(node);
                    continue;
                }
                if let Ok(Some(o)) = copy {
                    held.push(Violation {
                        check: "6 release",
                        bucket: bucket.clone(),
                        key: key.clone(),
                        detail: format!(
                            "{} still holds a copy ({} siblings) of partition {}, which it let go (the final preference list is {:?}) and whose release it acknowledged",
                            node_name(node),
                            o.siblings.len(),
                            placements[k].partition,
                            placements[k].preference_list
                        ),
                    });
                }
            }
        }
        if first {
            report.lagging_at_first = lagging_copies;
            report.released_held_at_first = held.len();
            first = false;
        }
        let done = lagging.is_empty() && held.is_empty() && unacknowledged.is_empty();
        if done || Instant::now() >= deadline {
            report.took = started.elapsed();
            report.converged = done;
            let mut violations = lagging;
            violations.extend(held);
            violations.extend(unacknowledged.iter().map(|&n| Violation {
                check: "6 release",
                bucket: String::new(),
                key: String::new(),
                detail: format!(
                    "{} did not acknowledge its release within {:.1} s of the heal: {:?}",
                    node_name(n),
                    limit.as_secs_f64(),
                    state
                        .as_ref()
                        .and_then(|s| s.release_for(&NodeId::new(node_name(n)).expect("a node id")))
                ),
            }));
            return (report, violations);
        }
        // Polling: anti-entropy, hint delivery and releases run in the nodes' own time.
        tokio::time::sleep(POLL).await;
    }
}

/// The nodes that hold partition `p` under `ring`: the first `n` of its preference list.
fn holders(ring: Option<&Ring>, p: u32, n: usize) -> Vec<NodeId> {
    ring.map(|r| r.preference_list(PartitionId(p), n).preference_list)
        .unwrap_or_default()
}

/// The dot of every acknowledged write of one key, with its tag.
pub(super) fn acknowledged_dots(ops: &[&Op]) -> Vec<(Dot, String)> {
    ops.iter()
        .filter(|o| o.is_acked_write())
        .flat_map(|o| {
            o.minted_dots()
                .into_iter()
                .map(move |d| (d, format!("{} (op #{})", o.tag, o.id)))
        })
        .collect()
}

/// True when a delete (acknowledged or not) came at or after the key's last
/// acknowledged write: every copy may be collected.
pub(super) fn deleted_last(ops: &[&Op]) -> bool {
    let writes = || ops.iter().filter(|o| o.kind != Kind::Read);
    let floor = writes()
        .filter(|o| o.outcome.is_ok())
        .map(|o| o.seq)
        .max()
        .unwrap_or(0);
    writes().any(|o| {
        o.kind == Kind::Delete && o.seq >= floor && (o.outcome.is_ok() || o.is_indeterminate_write())
    })
}

/// Why `copy` does not hold every acknowledged write of `want`, if it does not.
fn lacks(copy: &Result<Option<NodeObject>, String>, want: &Want) -> Option<String> {
    let history = match copy {
        Err(e) => return Some(format!("unreadable ({e})")),
        Ok(None) if want.dots.is_empty() || want.may_be_gone => return None,
        Ok(None) => {
            return Some(format!(
                "holds nothing of {} acknowledged writes",
                want.dots.len()
            ));
        }
        Ok(Some(o)) => &o.history,
    };
    let missing: Vec<&str> = want
        .dots
        .iter()
        .filter(|(d, _)| !history.contains(d))
        .map(|(_, tag)| tag.as_str())
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "lacks {} of {} acknowledged writes: {}{}",
            missing.len(),
            want.dots.len(),
            missing[..missing.len().min(SHOWN)].join(", "),
            if missing.len() > SHOWN { ", …" } else { "" }
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamo_core::{ActorId, DotSet};

    fn want(dots: &[(u64, u64)], may_be_gone: bool) -> Want {
        Want {
            dots: dots
                .iter()
                .map(|&(a, c)| (Dot::new(ActorId(a), c), format!("v{c}")))
                .collect(),
            may_be_gone,
            owners: Vec::new(),
            released: Vec::new(),
        }
    }

    fn copy(history: &[(u64, u64)]) -> Result<Option<NodeObject>, String> {
        Ok(Some(NodeObject {
            history: history
                .iter()
                .map(|&(a, c)| Dot::new(ActorId(a), c))
                .collect::<DotSet>(),
            siblings: Vec::new(),
        }))
    }

    #[test]
    fn a_copy_holds_an_acknowledged_write_when_its_history_has_the_dot() {
        let w = want(&[(1, 1), (1, 2)], false);
        assert_eq!(lacks(&copy(&[(1, 1), (1, 2), (2, 1)]), &w), None);
        let why = lacks(&copy(&[(1, 1)]), &w).expect("v2 is missing");
        assert!(why.contains("lacks 1 of 2") && why.contains("v2"), "{why}");
        assert!(lacks(&Ok(None), &w).is_some(), "nothing held");
        assert!(lacks(&Err("timeout".into()), &w).is_some(), "unreadable");
        // After a delete, a collected copy is right; nothing acknowledged asks nothing.
        assert_eq!(lacks(&Ok(None), &want(&[(1, 1)], true)), None);
        assert_eq!(lacks(&Ok(None), &want(&[], false)), None);
    }
}
