//! Replica-to-replica RPCs over the internal HTTP API, signed with the control key (only
//! ring replicas hold it; a storage node's member key cannot vote or append):
//!
//! | route | body | answer |
//! |---|---|---|
//! | `POST /internal/v1/raft/append` | `AppendEntriesRequest` | `Result<AppendEntriesResponse, RaftError>` |
//! | `POST /internal/v1/raft/vote` | `VoteRequest` | `Result<VoteResponse, RaftError>` |
//! | `POST /internal/v1/raft/snapshot` | `InstallSnapshotRequest` (a chunk) | `Result<InstallSnapshotResponse, RaftError<InstallSnapshotError>>` |
//!
//! Every RPC names the group it belongs to ([`GROUP_HEADER`]: the sender's canonical
//! replica list), and a replica refuses one from another group with `403 forbidden`
//! ([`super::Group::agrees_with`]): two groups sharing a control key (a misconfigured
//! list, a reused address) must never count each other's votes or entries.
//!
//! A connection failure is `Unreachable` (openraft backs off before retrying it), any
//! other failure a `NetworkError`.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use dynamo_server::internal::InternalClient;
use openraft::BasicNode;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Raft, ReplicaId, TypeConfig};

/// The append route.
pub const APPEND: &str = "/internal/v1/raft/append";
/// The vote route.
pub const VOTE: &str = "/internal/v1/raft/vote";
/// The snapshot route.
pub const SNAPSHOT: &str = "/internal/v1/raft/snapshot";
/// Names the sender's group on every RPC.
pub const GROUP_HEADER: &str = "x-dynamo-ring-group";

/// Makes connections to the other replicas.
#[derive(Clone)]
pub struct Network {
    /// Signed with the control key.
    pub client: InternalClient,
    /// The group's canonical replica list ([`super::Group::canonical`]).
    pub group: String,
}

/// A connection to one replica.
pub struct Connection {
    client: InternalClient,
    group: String,
    target: ReplicaId,
    url: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: ReplicaId, node: &BasicNode) -> Connection {
        Connection {
            client: self.client.clone(),
            group: self.group.clone(),
            target,
            url: node.addr.clone(),
        }
    }
}

impl Connection {
    async fn call<Req, Resp, E>(
        &self,
        route: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<ReplicaId, BasicNode, RaftError<ReplicaId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let url = format!("{}{route}", self.url);
        let resp = self
            .client
            .post(url)
            .header(GROUP_HEADER, &self.group)
            .json(req)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| match &e {
                reqwest_middleware::Error::Reqwest(r) if r.is_connect() => {
                    RPCError::Unreachable(Unreachable::new(&e))
                }
                _ => RPCError::Network(NetworkError::new(&e)),
            })?;
        if !resp.status().is_success() {
            let status = resp.status();
            return Err(RPCError::Network(NetworkError::new(&std::io::Error::other(
                format!("replica {} answered {status}", self.target),
            ))));
        }
        let answer: Result<Resp, RaftError<ReplicaId, E>> = resp
            .json()
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<ReplicaId>, RPCError<ReplicaId, BasicNode, RaftError<ReplicaId>>> {
        self.call(APPEND, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<ReplicaId>,
        RPCError<ReplicaId, BasicNode, RaftError<ReplicaId, InstallSnapshotError>>,
    > {
        self.call(SNAPSHOT, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<ReplicaId>,
        option: RPCOption,
    ) -> Result<VoteResponse<ReplicaId>, RPCError<ReplicaId, BasicNode, RaftError<ReplicaId>>> {
        self.call(VOTE, &rpc, option.hard_ttl()).await
    }
}

/// The RPC routes, served to the other replicas of `group`.
pub fn routes(raft: Raft, group: super::Group) -> Router {
    Router::new()
        .route(APPEND, post(append))
        .route(VOTE, post(vote))
        .route(SNAPSHOT, post(snapshot))
        .with_state(raft)
        .layer(axum::middleware::from_fn_with_state(
            std::sync::Arc::new(group),
            same_group,
        ))
}

/// Refuses an RPC from another group (module doc).
async fn same_group(
    State(group): State<std::sync::Arc<super::Group>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let theirs = req.headers().get(GROUP_HEADER).and_then(|v| v.to_str().ok());
    if !theirs.is_some_and(|t| group.agrees_with(t)) {
        return dynamo_server::ApiError::new(
            dynamo_core::ErrorCode::Forbidden,
            "a consensus message from another ring group (its replica list names a replica at another URL, or none of this group's)",
        )
        .into_response();
    }
    next.run(req).await
}

async fn append(
    State(raft): State<Raft>,
    axum::Json(req): axum::Json<AppendEntriesRequest<TypeConfig>>,
) -> axum::Json<Result<AppendEntriesResponse<ReplicaId>, RaftError<ReplicaId>>> {
    axum::Json(raft.append_entries(req).await)
}

async fn vote(
    State(raft): State<Raft>,
    axum::Json(req): axum::Json<VoteRequest<ReplicaId>>,
) -> axum::Json<Result<VoteResponse<ReplicaId>, RaftError<ReplicaId>>> {
    axum::Json(raft.vote(req).await)
}

async fn snapshot(
    State(raft): State<Raft>,
    axum::Json(req): axum::Json<InstallSnapshotRequest<TypeConfig>>,
) -> axum::Json<Result<InstallSnapshotResponse<ReplicaId>, RaftError<ReplicaId, InstallSnapshotError>>> {
    axum::Json(raft.install_snapshot(req).await)
}
