//! A tiny stand-in for the ring service: it answers the routes a storage node calls
//! (`POST /internal/v1/heartbeat`, `GET /internal/v1/state?after=&wait_ms=`,
//! `POST /internal/v1/releases`) from a `ClusterState` the test publishes, and records
//! the heartbeats and release acknowledgements it receives.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use dynamo_core::ring::{Member, Ring};
use dynamo_core::wire::cluster::{ClusterState, Heartbeat, NodeState, NodeStatus, ReleaseDone};
use dynamo_core::{NodeId, Partitioning, VolumeId};

/// The longest this fake holds a long poll (shorter than the node's 20 s ask, so tests
/// never wait on it).
const MAX_HOLD: Duration = Duration::from_millis(500);

#[derive(Default)]
struct Inner {
    state: Option<ClusterState>,
    /// The volume each node first heartbeated with: bound into every state served, as
    /// the ring service binds members.
    volumes: BTreeMap<NodeId, VolumeId>,
    /// Versions added to the served state by binds.
    bumps: u64,
    members: BTreeSet<NodeId>,
    heartbeats: Vec<Heartbeat>,
    state_polls: usize,
    releases_done: Vec<ReleaseDone>,
}

pub struct FakeRing {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(serde::Deserialize)]
struct StateQuery {
    /// Absent: the state at once, whatever its version (a follower's first poll).
    after: Option<u64>,
    wait_ms: u64,
}

async fn heartbeat(
    State(inner): State<Arc<Mutex<Inner>>>,
    axum::Json(beat): axum::Json<Heartbeat>,
) -> StatusCode {
    let mut i = inner.lock().expect("lock");
    let member = i.members.contains(&beat.node_id);
    if let Some(v) = beat.volume
        && !i.volumes.contains_key(&beat.node_id)
    {
        i.volumes.insert(beat.node_id.clone(), v);
        let volumes = i.volumes.clone();
        let mut bumped = false;
        if let Some(s) = &mut i.state
            && bind(s, &volumes)
        {
            s.version += 1;
            bumped = true;
        }
        i.bumps += u64::from(bumped);
    }
    i.heartbeats.push(beat);
    if member {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

/// As the ring service does: records the acknowledgement and drops the release it
/// covers from the served state (a new version).
async fn release_done(
    State(inner): State<Arc<Mutex<Inner>>>,
    axum::Json(done): axum::Json<ReleaseDone>,
) -> StatusCode {
    let mut i = inner.lock().expect("lock");
    if let Some(s) = &mut i.state {
        s.releases
            .retain(|r| !(r.node == done.node && r.epoch <= done.epoch));
        s.version += 1;
    }
    i.releases_done.push(done);
    StatusCode::NO_CONTENT
}

async fn state(State(inner): State<Arc<Mutex<Inner>>>, Query(q): Query<StateQuery>) -> Response {
    inner.lock().expect("lock").state_polls += 1;
    let hold = Duration::from_millis(q.wait_ms).min(MAX_HOLD);
    let deadline = tokio::time::Instant::now() + hold;
    loop {
        let newer = {
            let i = inner.lock().expect("lock");
            i.state
                .clone()
                .filter(|s| q.after.is_none_or(|after| s.version > after))
        };
        if let Some(s) = newer {
            return axum::Json(s).into_response();
        }
        if tokio::time::Instant::now() >= deadline {
            return StatusCode::NOT_MODIFIED.into_response();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl FakeRing {
    pub async fn start() -> FakeRing {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .route("/internal/v1/heartbeat", post(heartbeat))
            .route("/internal/v1/state", get(state))
            .route("/internal/v1/releases", post(release_done))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeRing { url, inner, task }
    }

    /// Serves `state` from now on (the node sees it if its version is newer than the
    /// node's), with the volumes nodes heartbeated with bound to their entries.
    pub fn publish(&self, mut state: ClusterState) {
        let mut i = self.inner.lock().expect("lock");
        bind(&mut state, &i.volumes);
        // Binds bumped the served versions: later states stay newer by as many.
        state.version += i.bumps;
        i.state = Some(state);
    }

    /// Answers heartbeats from `node` with 204 from now on (404 before: not a member).
    pub fn accept(&self, node: &str) {
        self.inner
            .lock()
            .expect("lock")
            .members
            .insert(NodeId::new(node).expect("id"));
    }

    pub fn heartbeats(&self) -> Vec<Heartbeat> {
        self.inner.lock().expect("lock").heartbeats.clone()
    }

    pub fn releases_done(&self) -> Vec<ReleaseDone> {
        self.inner.lock().expect("lock").releases_done.clone()
    }

    pub fn state_polls(&self) -> usize {
        self.inner.lock().expect("lock").state_polls
    }

    /// Stops serving: the port closes.
    pub fn stop(self) {
        self.task.abort();
    }
}

/// Binds each listed node without a volume to the one it heartbeated with; true when
/// anything changed.
fn bind(state: &mut ClusterState, volumes: &BTreeMap<NodeId, VolumeId>) -> bool {
    let mut changed = false;
    for n in &mut state.nodes {
        if n.volume.is_none()
            && let Some(v) = volumes.get(&n.node_id)
        {
            n.volume = Some(*v);
            changed = true;
        }
    }
    changed
}

/// A node `up` at `address`, not yet bound to a volume.
pub fn up(id: &str, address: &str) -> NodeStatus {
    NodeStatus {
        node_id: NodeId::new(id).expect("id"),
        address: address.to_owned(),
        zone: None,
        state: NodeState::Up,
        last_heartbeat_ms_ago: Some(0),
        anti_entropy: None,
        volume: None,
        volume_refused: None,
    }
}

/// A first ring (epoch 1, Q = 256 like the nodes' default) over `(id, address)` members.
pub fn ring_of(members: &[(&str, String)]) -> Ring {
    let members: BTreeMap<NodeId, Member> = members
        .iter()
        .map(|(id, addr)| {
            (
                NodeId::new(*id).expect("id"),
                Member {
                    zone: None,
                    address: Some(addr.clone()),
                },
            )
        })
        .collect();
    Ring::new(Partitioning::with_count(256).expect("q"), 3, members).expect("ring")
}

/// A cluster state at `version` with `ring`, every member up at its ring address.
pub fn state_of(version: u64, ring: &Ring) -> ClusterState {
    ClusterState {
        version,
        ring: Some(ring.clone()),
        nodes: ring
            .members()
            .iter()
            .map(|(id, m)| up(id.as_str(), m.address.as_deref().unwrap_or_default()))
            .collect(),
        buckets: BTreeMap::new(),
        ..ClusterState::default()
    }
}
