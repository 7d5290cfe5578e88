//! The ring service as a group of replicas that agree on one log ([`openraft`]).
//!
//! **What the log holds.** Each entry is a whole new state (a [`Proposal`]): the leader
//! applies a mutation to its applied state (every rule of [`crate::cluster`] still runs in
//! one place), bumps the version and proposes the result; every replica applies committed
//! proposals in log order. State transfer rather than commands: applying cannot diverge
//! between replicas, and nothing that a rule reads (liveness, the clock) has to be put in
//! the log. The cost is an entry the size of the state, as `state.json` was rewritten
//! whole before; the state is bounded (`MAX_BUCKETS`, `MAX_TOKENS`).
//!
//! **A proposal names its base version** and is applied only on that version, so a
//! proposal of a deposed leader that still got committed after a newer one is skipped,
//! never applied over it. The leader reads its applied state only after
//! [`openraft::Raft::ensure_linearizable`], so it never computes from a stale base.
//!
//! **Persistence.** The log, the vote and the snapshots are in a fjall database in the
//! data directory (`raft/`), every write fsynced before it is acknowledged; the applied
//! state is rebuilt at start from the last snapshot and the log after it.
//!
//! **The group** is named by flags (`--replica-id`, `--replicas`): on Kubernetes the
//! StatefulSet's stable pod names. The replica with the lowest id initializes a group
//! whose log is empty (openraft: initializing with the same members is safe to repeat),
//! and migrates a single-instance `state.json` into it while the group holds nothing
//! (`migrate`). A longer list later grows the group; it never shrinks ([`grow`]).
//!
//! Layout: `log` (the log store), `sm` (the state machine and snapshots), `net` (the
//! RPCs between replicas, signed with the control key), `grow` (the leader adding
//! configured replicas).

// openraft's storage traits return its `StorageError` (large); the helpers that feed
// them return it too rather than boxing and unboxing at every call.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use serde::{Deserialize, Serialize};

use crate::store::StateFile;

pub mod grow;
pub mod log;
pub mod net;
pub mod sm;

/// A ring replica's id in the group.
pub type ReplicaId = u64;

openraft::declare_raft_types!(
    /// The ring group's types.
    pub TypeConfig:
        D = Proposal,
        R = Applied,
        NodeId = ReplicaId,
        Node = BasicNode,
);

/// The ring group's openraft handle.
pub type Raft = openraft::Raft<TypeConfig>;

/// One log entry: a whole new state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The version the state was computed from (0 for the migration of a
    /// single-instance state file into a group that applied nothing yet).
    pub base: u64,
    /// The new state.
    pub file: StateFile,
}

/// What applying a proposal did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// False when it was skipped (its base is not the applied version, or it would break
    /// an invariant).
    pub applied: bool,
    /// The applied version afterwards.
    pub version: u64,
}

/// Most entries in one append request: each is a whole state.
pub const MAX_PAYLOAD_ENTRIES: u64 = 8;
/// A snapshot is taken once this many entries were applied since the last one, and the
/// log before it is purged (each entry is a whole state, so the log is kept short).
pub const SNAPSHOT_EVERY: u64 = 128;
/// Largest body of a replica-to-replica request (a snapshot chunk or an append of
/// [`MAX_PAYLOAD_ENTRIES`] states).
pub const MAX_RPC_BODY_BYTES: usize = 256 << 20;
/// Snapshot chunk size.
pub const SNAPSHOT_CHUNK_BYTES: u64 = 4 << 20;

/// The group: every replica's id and base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// This replica's id.
    pub me: ReplicaId,
    /// Every replica (this one included), by id.
    pub replicas: BTreeMap<ReplicaId, String>,
}

impl Group {
    /// True when this replica initializes a group whose log is empty.
    pub fn initializer(&self) -> bool {
        self.replicas.keys().next() == Some(&self.me)
    }

    /// The replica list in one canonical form (`id=url,...` by id): what the group's
    /// messages carry to tell groups apart.
    pub fn canonical(&self) -> String {
        self.replicas
            .iter()
            .map(|(id, url)| format!("{id}={url}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Whether `theirs` (another replica's canonical list) names this group: the lists
    /// share an id and agree on the URL of every id both name. Equal lists agree, and so
    /// do a list and its extension while the group grows (a replica restarted with the
    /// longer list talks to one not yet restarted); a foreign group on a reused address
    /// names some shared id at another URL.
    pub fn agrees_with(&self, theirs: &str) -> bool {
        let mut shared = false;
        for entry in theirs.split(',') {
            let Some((id, url)) = entry.split_once('=') else {
                return false;
            };
            let Ok(id) = id.parse::<ReplicaId>() else {
                return false;
            };
            match self.replicas.get(&id) {
                Some(mine) if mine == url => shared = true,
                Some(_) => return false,
                None => {}
            }
        }
        shared
    }

    /// The members as openraft nodes.
    pub fn nodes(&self) -> BTreeMap<ReplicaId, BasicNode> {
        self.replicas
            .iter()
            .map(|(id, url)| (*id, BasicNode { addr: url.clone() }))
            .collect()
    }
}

/// The openraft configuration of the ring group: elections within about a second of a
/// leader's loss, heartbeats well inside that, short logs of whole states.
///
/// # Errors
/// openraft's validation (never, for these constants).
pub fn raft_config(cluster_name: &str, election_timeout: Duration) -> Result<Arc<openraft::Config>, String> {
    let min = election_timeout.as_millis().max(50) as u64;
    let config = openraft::Config {
        cluster_name: cluster_name.to_owned(),
        election_timeout_min: min,
        election_timeout_max: min * 2,
        heartbeat_interval: (min / 5).max(10),
        max_payload_entries: MAX_PAYLOAD_ENTRIES,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY),
        max_in_snapshot_log_to_keep: SNAPSHOT_EVERY / 2,
        snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
        ..Default::default()
    };
    config.validate().map(Arc::new).map_err(|e| e.to_string())
}

/// The directory of the raft store, inside the data directory.
pub const DB_DIR: &str = "raft";

/// The `raft-leadership` worker: follows the group's metrics; when this replica becomes
/// leader it gives every node a liveness grace period and resumes a running change's
/// handoff, and when it stops leading it stops that worker. It also keeps the
/// `dynamo_ring_raft_*` gauges.
pub(crate) struct Leadership {
    svc: Arc<crate::service::Service>,
    metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<ReplicaId, BasicNode>>,
    leading: bool,
}

impl Leadership {
    /// The worker for `svc`.
    pub fn new(svc: Arc<crate::service::Service>) -> Leadership {
        Leadership {
            metrics: svc.raft.metrics(),
            svc,
            leading: false,
        }
    }
}

/// Replica `id`'s matched log index and its lag behind the last entry, as `m` (a
/// leader's metrics) shows them: this replica matches its own last entry; a follower's
/// match is known only to a leader, and only once an append reached it.
pub fn progress(
    m: &openraft::RaftMetrics<ReplicaId, BasicNode>,
    me: ReplicaId,
    id: ReplicaId,
) -> (Option<u64>, Option<u64>) {
    let last = m.last_log_index;
    let matched = if id == me {
        last
    } else {
        m.replication
            .as_ref()
            .and_then(|r| r.get(&id).copied().flatten())
            .map(|l| l.index)
    };
    (matched, matched.zip(last).map(|(m, l)| l.saturating_sub(m)))
}

fn index(i: Option<u64>) -> i64 {
    i.map_or(-1, |i| i64::try_from(i).unwrap_or(i64::MAX))
}

impl dynamo_server::worker::Worker for Leadership {
    type Error = std::convert::Infallible;

    fn name(&self) -> &'static str {
        "raft-leadership"
    }

    async fn work(
        &mut self,
        _stop: &tokio_util::sync::CancellationToken,
    ) -> Result<dynamo_server::worker::Next, Self::Error> {
        let m = self.metrics.borrow_and_update().clone();
        let me = self.svc.group.me;
        let g = &self.svc.metrics;
        g.raft_term.set(i64::try_from(m.current_term).unwrap_or(i64::MAX));
        g.raft_leader
            .set(m.current_leader.map_or(-1, |l| i64::try_from(l).unwrap_or(-1)));
        g.raft_last_log_index.set(index(m.last_log_index));
        g.raft_applied_index.set(index(m.last_applied.map(|l| l.index)));
        g.raft_snapshot_index.set(index(m.snapshot.map(|l| l.index)));
        g.raft_purged_index.set(index(m.purged.map(|l| l.index)));
        let leading = m.current_leader == Some(me);
        g.raft_is_leader.set(i64::from(leading));
        g.raft_voters
            .set(i64::try_from(m.membership_config.membership().voter_ids().count()).unwrap_or(i64::MAX));
        g.raft_replication_lag.reset();
        if let Some(repl) = &m.replication {
            for id in repl.keys().filter(|id| **id != me) {
                // A follower no append reached yet lacks the whole log.
                let lag = progress(&m, me, *id).1.unwrap_or(m.last_log_index.unwrap_or(0));
                g.raft_replication_lag
                    .with_label_values(&[&id.to_string()])
                    .set(i64::try_from(lag).unwrap_or(i64::MAX));
            }
        }
        if leading != self.leading {
            self.leading = leading;
            if leading {
                tracing::info!(
                    replica = me,
                    term = m.current_term,
                    "this replica leads the ring group"
                );
            } else {
                tracing::info!(replica = me, leader = ?m.current_leader, "this replica follows the ring group");
            }
            self.svc.take_office(leading);
        }
        Ok(dynamo_server::worker::Next::Idle)
    }

    async fn wait_for_work(&mut self) {
        if self.metrics.changed().await.is_err() {
            // The consensus stopped: nothing more will change.
            std::future::pending::<()>().await;
        }
    }
}

/// Migrates a single-instance `state.json` into the group, once: on the replica that
/// initializes the group (the lowest id), while it leads and the group applied nothing
/// yet, as a proposal on version 0; the file is then renamed `state.json.migrated`.
/// Otherwise the file is kept and a warning says why (another replica's file, or a group
/// that already holds a state, is never migrated; a start that did not get to lead tries
/// again at the next start).
///
/// # Errors
/// [`crate::error::RingServiceError`] when the group refused the proposal or the file
/// cannot be renamed.
pub(crate) async fn migrate(
    svc: &Arc<crate::service::Service>,
    legacy: crate::cluster::Cluster,
) -> Result<(), crate::error::RingServiceError> {
    use crate::error::RingServiceError;
    let path = svc.config.data_dir.join(crate::store::STATE_FILE);
    if !svc.group.initializer() {
        tracing::warn!(path = %path.display(), "a single-instance state file is here, but only the replica with the lowest id migrates one: it is ignored");
        return Ok(());
    }
    // In a pristine group only the initializer can be elected first, so the first leader
    // known is this replica unless the group was formed before.
    let led = svc.leader_url().await.is_some_and(|(id, _)| id == svc.group.me);
    if !led || svc.raft.ensure_linearizable().await.is_err() {
        tracing::warn!(path = %path.display(), "this replica does not lead the ring group yet: the single-instance state file is kept, to be migrated at a later start");
        return Ok(());
    }
    if svc.snapshot().state.version != 0 {
        tracing::warn!(path = %path.display(), "the ring group already holds a state: the single-instance state file is not migrated");
        return Ok(());
    }
    let version = legacy.state.version;
    let proposal = Proposal {
        base: 0,
        file: StateFile::of(&legacy),
    };
    match svc.raft.client_write(proposal).await {
        Ok(r) if r.data.applied => {}
        Ok(_) => {
            return Err(RingServiceError::Raft(
                "the migrated state was not applied (the group changed meanwhile)".into(),
            ));
        }
        Err(e) => {
            return Err(RingServiceError::Raft(format!(
                "cannot migrate the state file: {e}"
            )));
        }
    }
    let done = svc
        .config
        .data_dir
        .join(format!("{}.migrated", crate::store::STATE_FILE));
    std::fs::rename(&path, &done).map_err(|source| RingServiceError::DataDir {
        path: done.clone(),
        source,
    })?;
    // The migrated nodes get their grace period, and a change left running resumes.
    svc.take_office(true);
    tracing::info!(version, from = %path.display(), "single-instance state migrated into the ring group");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(me: ReplicaId, list: &[(ReplicaId, &str)]) -> Group {
        Group {
            me,
            replicas: list.iter().map(|(id, url)| (*id, (*url).to_owned())).collect(),
        }
    }

    #[test]
    fn a_group_agrees_with_its_own_list_and_its_extension_not_with_a_foreign_one() {
        let three = group(1, &[(0, "http://a"), (1, "http://b"), (2, "http://c")]);
        let one = group(0, &[(0, "http://a")]);
        assert!(three.agrees_with(&three.canonical()));
        assert!(three.agrees_with(&one.canonical()), "the group before it grew");
        assert!(one.agrees_with(&three.canonical()), "the group after it grew");
        for foreign in [
            "0=http://elsewhere",
            "0=http://a,1=http://elsewhere",
            "5=http://z",
            "",
            "garbage",
            "x=http://a",
        ] {
            assert!(!three.agrees_with(foreign), "{foreign:?}");
        }
    }
}
