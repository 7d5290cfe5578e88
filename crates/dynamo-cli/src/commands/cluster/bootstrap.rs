//! `dynamo cluster bootstrap ID=ADDRESS[@ZONE]...`: joins a fixed list of storage nodes,
//! one change at a time, each only if it is not a member yet. It is what a compose file's
//! init container or a Helm hook Job runs on every start, before an operator exists, so
//! running it again must change nothing, and it must outwait services that are still
//! starting.

use std::time::Duration;

use dynamo_client::{ChangeKindName, Client, ClientError, ClusterView, NodeId, NodeRegistration, NodeState};
use tokio::time::Instant;

use super::wait::{self, Started, WaitArgs, WaitError};
use crate::error::CliError;

/// Failed changes of one node run again at most this often before bootstrap gives up (a
/// join fails when its new node is not up yet; the retry keeps the copies already done).
const MAX_RETRIES: u32 = 10;
/// Pause before asking again after an answer that may change (a service still starting).
const PAUSE: Duration = Duration::from_secs(1);

/// A node to join, parsed from `ID=ADDRESS` or `ID=ADDRESS@ZONE`.
///
/// # Errors
/// A sentence for a missing `=`, an invalid id or an address that is not `http(s)://`.
pub fn parse_node(spec: &str) -> Result<NodeRegistration, String> {
    let (id, rest) = spec
        .split_once('=')
        .ok_or_else(|| format!("{spec:?} is not ID=ADDRESS[@ZONE]"))?;
    let node_id = NodeId::new(id).map_err(|e| format!("node id {id:?}: {e}"))?;
    // A zone never holds `/` or `:`, so an `@` followed by either belongs to the URL.
    let (address, zone) = match rest.rsplit_once('@') {
        Some((address, zone)) if !zone.is_empty() && !zone.contains(['/', ':']) => {
            (address, Some(zone.to_owned()))
        }
        _ => (rest, None),
    };
    if !(address.starts_with("http://") || address.starts_with("https://")) {
        return Err(format!(
            "the address of {id} must be an http:// or https:// URL, got {address:?}"
        ));
    }
    Ok(NodeRegistration {
        node_id,
        address: address.to_owned(),
        zone,
    })
}

/// What bootstrap does next for one node, given the cluster view.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// The node is a member at the address asked for: nothing to do.
    Member,
    /// A change is in progress (this node's, or another one): follow it first.
    Follow(Started),
    /// No change runs and the node is unknown: join it.
    Join,
}

fn next(view: &ClusterView, node: &NodeRegistration) -> Result<Next, CliError> {
    if let Some(holder) = view
        .nodes
        .iter()
        .find(|n| n.address == node.address && n.node_id != node.node_id)
    {
        return Err(CliError::Usage(format!(
            "{} is the address of member {}, not of {}; bootstrap re-points nothing (`dynamo \
             cluster replace` does)",
            node.address, holder.node_id, node.node_id
        )));
    }
    if let Some(started) = Started::running(view) {
        return Ok(Next::Follow(started));
    }
    match view.nodes.iter().find(|n| n.node_id == node.node_id) {
        None => Ok(Next::Join),
        Some(member) if member.address != node.address => Err(CliError::Usage(format!(
            "{} is a member at {}, not at {}; bootstrap re-points nothing (`dynamo cluster \
             replace` does)",
            node.node_id, member.address, node.address
        ))),
        Some(member) if member.state == NodeState::Leaving => Err(CliError::Usage(format!(
            "{} is being decommissioned; bootstrap does not join it back",
            node.node_id
        ))),
        Some(_) => Ok(Next::Member),
    }
}

/// True for an error that asking again can fix while the cluster starts: a refused or
/// unresolvable connection, a timeout, a transient code (a coordinator that cannot reach
/// the ring service yet answers `503`).
fn retryable(e: &ClientError) -> bool {
    e.is_transient() || matches!(e, ClientError::Transport { .. } | ClientError::Timeout { .. })
}

/// Joins `nodes` in order, skipping members, within `timeout` for the whole list.
///
/// # Errors
/// [`CliError::Usage`] when a node's id or address belongs to another member; the
/// client's error when an answer cannot be fixed by asking again; [`WaitError`] when a
/// change failed [`MAX_RETRIES`] times, someone else's change failed, or the time ran out.
pub async fn bootstrap(
    client: &Client,
    nodes: &[NodeRegistration],
    timeout: Duration,
) -> Result<(), CliError> {
    let deadline = Instant::now() + timeout;
    for node in nodes {
        let mut retries = 0;
        loop {
            let view = view(client, deadline).await?;
            let started = match next(&view, node)? {
                Next::Member => {
                    eprintln!("{} is a member", node.node_id);
                    break;
                }
                Next::Follow(started) => {
                    eprintln!("following the {} first", started.describe());
                    started
                }
                Next::Join => match client.join_node(node).await {
                    Ok(began) => {
                        eprintln!("{} is joining", node.node_id);
                        Started::new(ChangeKindName::Join, node.node_id.clone(), None, &began)
                    }
                    // Another change began between the view and the join, or a retried
                    // request of ours landed first: the next view says which.
                    Err(e) if e.code() == Some(dynamo_client::ErrorCode::MembershipConflict) => continue,
                    Err(e) if retryable(&e) => {
                        pause(deadline, &e).await?;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                },
            };
            let ours = started.kind == ChangeKindName::Join && started.node == node.node_id;
            match follow(client, &started, &view, deadline).await {
                Ok(()) => {}
                Err(CliError::Change(WaitError::Failed { .. })) if ours && retries < MAX_RETRIES => {
                    retries += 1;
                    eprintln!(
                        "the {} failed; running it again ({retries} of {MAX_RETRIES})",
                        started.describe()
                    );
                    if let Err(e) = client.retry_change().await
                        && !retryable(&e)
                        && e.code() != Some(dynamo_client::ErrorCode::MembershipConflict)
                    {
                        return Err(e.into());
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// The cluster view, asked again after retryable failures until `deadline`.
async fn view(client: &Client, deadline: Instant) -> Result<ClusterView, CliError> {
    loop {
        match client.cluster().await {
            Ok(view) => return Ok(view),
            Err(e) if retryable(&e) => pause(deadline, &e).await?,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sleeps [`PAUSE`] after `e`, or returns `e` when the deadline would pass.
async fn pause(deadline: Instant, e: &ClientError) -> Result<(), CliError> {
    if Instant::now() + PAUSE > deadline {
        return Err(CliError::Local(format!(
            "the cluster did not answer in time; last error: {e}"
        )));
    }
    eprintln!("waiting for the cluster: {e}");
    tokio::time::sleep(PAUSE).await;
    Ok(())
}

/// Follows `started` to its end with what is left of the time.
async fn follow(
    client: &Client,
    started: &Started,
    began: &ClusterView,
    deadline: Instant,
) -> Result<(), CliError> {
    let left = deadline
        .saturating_duration_since(Instant::now())
        .as_secs()
        .max(1);
    let args = WaitArgs {
        wait: true,
        wait_timeout: left,
    };
    let epoch = wait::wait(client, started, began, &args).await?;
    eprintln!("{}", started.done_line(epoch));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamo_client::{NodeStatus, RingEpoch};

    fn reg(spec: &str) -> NodeRegistration {
        parse_node(spec).expect("valid spec")
    }

    fn status(id: &str, address: &str, state: NodeState) -> NodeStatus {
        NodeStatus {
            node_id: NodeId::new(id).expect("id"),
            address: address.into(),
            zone: None,
            state,
            last_heartbeat_ms_ago: None,
            anti_entropy: None,
            volume: None,
            volume_refused: None,
        }
    }

    fn view(nodes: Vec<NodeStatus>) -> ClusterView {
        ClusterView {
            epoch: RingEpoch(1),
            nodes,
            handoffs: Vec::new(),
            change: None,
            max_n: None,
            ring_group: None,
        }
    }

    #[test]
    fn node_specs_parse_with_and_without_a_zone() {
        let n = reg("storage-1=http://storage-1:7100");
        assert_eq!(n.node_id.as_str(), "storage-1");
        assert_eq!(n.address, "http://storage-1:7100");
        assert_eq!(n.zone, None);
        let z = reg("storage-2=https://s2.ns.svc:7100@eu-west-1a");
        assert_eq!(z.address, "https://s2.ns.svc:7100");
        assert_eq!(z.zone.as_deref(), Some("eu-west-1a"));
        // An `@` inside the URL is not a zone.
        let u = reg("s3=http://user@host:7100");
        assert_eq!((u.address.as_str(), u.zone), ("http://user@host:7100", None));
        for bad in ["storage-1", "=http://h:1", "s1=host:7100", "s 1=http://h:1"] {
            assert!(parse_node(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn members_are_skipped_unknown_nodes_joined() {
        let v = view(vec![status("s1", "http://s1:7100", NodeState::Up)]);
        assert_eq!(next(&v, &reg("s1=http://s1:7100")).expect("next"), Next::Member);
        assert_eq!(next(&v, &reg("s2=http://s2:7100")).expect("next"), Next::Join);
        // A member that is down is still a member: bootstrap does not join it again.
        let down = view(vec![status("s1", "http://s1:7100", NodeState::Down)]);
        assert_eq!(
            next(&down, &reg("s1=http://s1:7100")).expect("next"),
            Next::Member
        );
    }

    #[test]
    fn a_member_elsewhere_or_leaving_is_refused() {
        let v = view(vec![
            status("s1", "http://s1:7100", NodeState::Up),
            status("s2", "http://s2:7100", NodeState::Leaving),
        ]);
        for spec in ["s1=http://other:7100", "s3=http://s1:7100", "s2=http://s2:7100"] {
            let err = next(&v, &reg(spec)).expect_err(spec);
            assert!(matches!(err, CliError::Usage(_)), "{spec}: {err}");
        }
    }
}
