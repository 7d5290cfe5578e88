//! Membership changes on a running test cluster: start another storage node with the
//! flags of the others, then join it, decommission a member or replace one, through the
//! coordinator's public API (`/v1/cluster/nodes…`), and wait, bounded, until the ring
//! service says the change finished.
//!
//! The ring service is the authority on a change: [`Cluster::ring_state`] reads its
//! state (`GET /internal/v1/state`, signed as a member), which carries the change in
//! progress (kind, phase, failure), the ring and the releases nodes still owe. A change
//! whose pulls ran out of attempts is *failed* and waits for
//! [`Cluster::retry_change`] (`POST /v1/cluster/change/retry`); [`Cluster::wait_change`]
//! reports that rather than retrying by itself, so the caller decides when (after the
//! fault that broke it healed).

use std::time::Duration;

use dynamo_core::wire::cluster::{ChangeSummary, ClusterState};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::{Cluster, spawn_storage, wait_ready};

/// Timeout of one call made here.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two looks at a change in progress.
const POLL: Duration = Duration::from_millis(100);

/// How a wait for a membership change ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeWait {
    /// No change is in progress any more: it finished (or none was running).
    Finished,
    /// The change failed and waits for a retry (or an abort): why.
    Failed(String),
    /// Still running when the wait ended: where it stood.
    Running(String),
}

/// Returns the node id of storage node `i` in a test cluster.
pub fn node_name(i: usize) -> String {
    format!("node-{i}")
}

/// Returns the index of storage node `name` (`node-<i>`) among `nodes` of a cluster.
pub fn node_index(name: &str, nodes: usize) -> Option<usize> {
    name.strip_prefix("node-")
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&i| i < nodes)
}

/// Describes a change for a report: `join of node-4 (copy)`.
pub fn describe(c: &ChangeSummary) -> String {
    let what = match &c.replacement {
        Some(r) => format!("{:?} of {} by {r}", c.kind, c.node),
        None => format!("{:?} of {}", c.kind, c.node),
    };
    match &c.failed {
        Some(why) => format!("{what} ({}, failed: {why})", c.phase),
        None => format!("{what} ({})", c.phase),
    }
    .to_lowercase()
}

impl Cluster {
    /// Starts storage node `node-<n>` (`n` the number of nodes so far) on a fresh port
    /// and data dir with the same flags as the others, and waits until it is ready. It is
    /// not a member until it is joined (or replaces one). Returns its index.
    pub async fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        let node = spawn_storage(&self.opts, i, self.dir.path(), &self.ring_urls);
        wait_ready(&node.url()).await;
        self.nodes.push(node);
        i
    }

    /// The data dir of storage node `i`.
    pub fn node_dir(&self, i: usize) -> std::path::PathBuf {
        self.dir.path().join(node_name(i))
    }

    /// A lost disk: kills storage node `i` (-9) and deletes its data dir. It is not
    /// started again (its place is taken by a replacement with another id).
    pub fn wipe(&mut self, i: usize) {
        self.nodes[i].kill9();
        let dir = self.node_dir(i);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            panic!("cannot wipe {}: {e}", dir.display());
        }
    }

    /// The ring service's current state, from the first running replica that answers;
    /// `None` when none does.
    pub async fn ring_state(&self) -> Option<ClusterState> {
        for ring in std::iter::once(&self.ring)
            .chain(&self.ring_others)
            .filter(|p| p.id().is_some())
        {
            let r = self
                .http
                .get(format!("{}/internal/v1/state?after=0&wait_ms=0", ring.url()))
                .timeout(CALL_TIMEOUT)
                .send()
                .await;
            if let Ok(r) = r
                && let Ok(r) = r.error_for_status()
                && let Ok(state) = r.json().await
            {
                return Some(state);
            }
        }
        None
    }

    /// Joins storage node `i`: `POST /v1/cluster/nodes`.
    ///
    /// # Errors
    /// The status and body of a refusal (e.g. `409 membership_conflict`), or why no
    /// answer came.
    pub async fn join(&self, i: usize) -> Result<(), String> {
        let body = json!({"node_id": node_name(i), "address": self.nodes[i].url()});
        let r = self
            .req(Method::POST, "/v1/cluster/nodes")
            .json(&body)
            .timeout(CALL_TIMEOUT)
            .send()
            .await;
        accepted(r).await.map(|_| ())
    }

    /// Decommissions member `i`: `DELETE /v1/cluster/nodes/node-<i>`.
    ///
    /// # Errors
    /// As [`Cluster::join`].
    pub async fn decommission(&self, i: usize) -> Result<(), String> {
        let r = self
            .req(Method::DELETE, &format!("/v1/cluster/nodes/{}", node_name(i)))
            .timeout(CALL_TIMEOUT)
            .send()
            .await;
        accepted(r).await.map(|_| ())
    }

    /// Replaces member `old` by storage node `new` (started, not a member):
    /// `POST /v1/cluster/nodes/node-<old>/replace`. Where the coordinator does not serve
    /// that route yet (`route_not_found`), the ring service's own
    /// `POST /internal/v1/nodes/{node}/replace`, signed with the control key.
    ///
    /// # Errors
    /// As [`Cluster::join`].
    pub async fn replace(&self, old: usize, new: usize) -> Result<(), String> {
        let new_node = json!({"node_id": node_name(new), "address": self.nodes[new].url()});
        let r = self
            .req(
                Method::POST,
                &format!("/v1/cluster/nodes/{}/replace", node_name(old)),
            )
            .json(&new_node)
            .timeout(CALL_TIMEOUT)
            .send()
            .await;
        match accepted(r).await {
            Err(e) if e.contains("route_not_found") || e.starts_with("405") => {
                let r = dynamo_testkit::control_http()
                    .post(format!(
                        "{}/internal/v1/nodes/{}/replace",
                        self.ring.url(),
                        node_name(old)
                    ))
                    .json(&json!({ "new_node": new_node }))
                    .timeout(CALL_TIMEOUT)
                    .send()
                    .await;
                accepted(r).await.map(|_| ())
            }
            other => other.map(|_| ()),
        }
    }

    /// Sets a failed change running again: `POST /v1/cluster/change/retry`, or, where
    /// the coordinator does not serve that route, the ring service's
    /// `POST /internal/v1/change/retry` (control key).
    ///
    /// # Errors
    /// As [`Cluster::join`] (`409` when no change has failed).
    pub async fn retry_change(&self) -> Result<(), String> {
        let r = self
            .req(Method::POST, "/v1/cluster/change/retry")
            .timeout(CALL_TIMEOUT)
            .send()
            .await;
        match accepted(r).await {
            Err(e) if e.contains("route_not_found") || e.starts_with("405") => {
                let r = dynamo_testkit::control_http()
                    .post(format!("{}/internal/v1/change/retry", self.ring.url()))
                    .timeout(CALL_TIMEOUT)
                    .send()
                    .await;
                accepted(r).await.map(|_| ())
            }
            other => other.map(|_| ()),
        }
    }

    /// Waits until no membership change is in progress, the change in progress failed,
    /// or `limit` passed, whichever comes first.
    pub async fn wait_change(&self, limit: Duration) -> ChangeWait {
        let deadline = Instant::now() + limit;
        let mut last = "the ring service did not answer".to_owned();
        loop {
            if let Some(s) = self.ring_state().await {
                match &s.change {
                    None => return ChangeWait::Finished,
                    Some(c) if c.failed.is_some() => return ChangeWait::Failed(describe(c)),
                    Some(c) => last = describe(c),
                }
            }
            if Instant::now() >= deadline {
                return ChangeWait::Running(last);
            }
            // Polling: the ring service's long poll would do, but a change's progress
            // commits wake it every half second anyway.
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the coordinator routes with ring epoch `epoch` or newer (it follows
    /// the ring service by long poll), at most `limit`. Returns whether it does.
    pub async fn wait_coordinator_epoch(&self, epoch: u64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let seen = async {
                let r = self
                    .req(Method::GET, "/v1/ring")
                    .timeout(CALL_TIMEOUT)
                    .send()
                    .await
                    .ok()?;
                r.json::<Value>().await.ok()?["epoch"].as_u64()
            }
            .await;
            if seen.is_some_and(|e| e >= epoch) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// A 2xx answer, or the status and body of another one, or why none came.
async fn accepted(r: reqwest_middleware::Result<reqwest::Response>) -> Result<Value, String> {
    let r = r.map_err(|e| format!("no answer: {e}"))?;
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("{} {body}", status.as_u16()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_map_to_indexes_of_this_cluster_only() {
        assert_eq!(node_name(4), "node-4");
        assert_eq!(node_index("node-4", 5), Some(4));
        assert_eq!(node_index("node-5", 5), None);
        assert_eq!(node_index("other-1", 5), None);
    }
}
