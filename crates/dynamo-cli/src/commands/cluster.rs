//! `dynamo cluster [join|decommission]`: the cluster view and membership changes.

use clap::{Args, Subcommand};
use dynamo_client::{AntiEntropyStatus, ClusterView, NodeId, NodeRegistration, NodeState};

use crate::cli::GlobalArgs;
use crate::error::CliError;
use crate::output;

/// Arguments of `dynamo cluster`: without a subcommand, show the view.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// A membership change; without one, the cluster view is shown.
    #[command(subcommand)]
    pub action: Option<ClusterAction>,
}

/// Membership changes (need `admin`).
#[derive(Debug, Subcommand)]
pub enum ClusterAction {
    /// Join a storage node; it takes its partitions through handoffs.
    Join {
        /// The node's id (its StatefulSet pod name, or the id on its volume).
        node: String,
        /// Its internal API address, `http://host:port`.
        address: String,
        /// Its failure domain.
        #[arg(long)]
        zone: Option<String>,
    },
    /// Decommission a node: its data is handed off before it leaves the ring.
    Decommission {
        /// The node's id.
        node: String,
    },
}

/// Shows the cluster, or applies a membership change and then shows the cluster.
///
/// # Errors
/// A usage error for an invalid node id; the API's errors (`membership_conflict`,
/// `node_not_found`, `forbidden`).
pub async fn run(global: &GlobalArgs, args: &ClusterArgs) -> Result<(), CliError> {
    let client = global.client()?;
    match &args.action {
        None => {}
        Some(ClusterAction::Join { node, address, zone }) => {
            let registration = NodeRegistration {
                node_id: node_id(node)?,
                address: address.clone(),
                zone: zone.clone(),
            };
            client.join_node(&registration).await?;
            eprintln!("{node} is joining");
        }
        Some(ClusterAction::Decommission { node }) => {
            client.decommission(&node_id(node)?).await?;
            eprintln!("{node} is being decommissioned");
        }
    }
    let view = client.cluster().await?;
    if global.json {
        return output::json(&view);
    }
    output::stdout(view_text(&view, dynamo_server::clock::now_ms()).as_bytes())
}

/// A node's anti-entropy progress as a table cell: `off`, `-` (it did not say), or the
/// passes and how long ago its least recently confirmed partition was compared.
fn anti_entropy_text(ae: Option<&AntiEntropyStatus>, now_ms: u64) -> String {
    match ae {
        None => "-".into(),
        Some(ae) if !ae.enabled => "off".into(),
        Some(ae) if ae.passes > 0 && ae.compared_partitions == 0 => {
            format!(
                "{} passes; compares no partition itself (its peers do)",
                ae.passes
            )
        }
        Some(ae) => {
            let oldest = ae.oldest_partition_ms.map_or_else(
                || "not all partitions compared yet".to_owned(),
                |ms| {
                    format!(
                        "all partitions in sync {} s ago",
                        now_ms.saturating_sub(ms) / 1000
                    )
                },
            );
            format!("{} passes; {oldest}", ae.passes)
        }
    }
}

fn node_id(node: &str) -> Result<NodeId, CliError> {
    NodeId::new(node).map_err(|e| CliError::Usage(e.to_string()))
}

fn state_name(state: NodeState) -> &'static str {
    match state {
        NodeState::Joining => "joining",
        NodeState::Up => "up",
        NodeState::Down => "down",
        NodeState::Leaving => "leaving",
    }
}

fn view_text(view: &ClusterView, now_ms: u64) -> String {
    let mut out = format!("ring epoch: {}\n\n", view.epoch);
    let nodes: Vec<Vec<String>> = view
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.node_id.to_string(),
                state_name(n.state).into(),
                n.zone.clone().unwrap_or_else(|| "-".into()),
                n.address.clone(),
                n.last_heartbeat_ms_ago
                    .map_or_else(|| "-".into(), |ms| format!("{ms} ms ago")),
                anti_entropy_text(n.anti_entropy.as_ref(), now_ms),
            ]
        })
        .collect();
    out.push_str(&output::table(
        &[
            "NODE",
            "STATE",
            "ZONE",
            "ADDRESS",
            "LAST HEARTBEAT",
            "ANTI-ENTROPY",
        ],
        &nodes,
    ));
    if view.handoffs.is_empty() {
        out.push_str("\nhandoffs: none\n");
    } else {
        let handoffs: Vec<Vec<String>> = view
            .handoffs
            .iter()
            .map(|h| {
                vec![
                    h.partition.to_string(),
                    h.from.to_string(),
                    h.to.to_string(),
                    h.objects.to_string(),
                    if h.done { "done" } else { "copying" }.into(),
                ]
            })
            .collect();
        out.push_str("\nhandoffs:\n");
        out.push_str(&output::table(
            &["PARTITION", "FROM", "TO", "OBJECTS", "STATE"],
            &handoffs,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamo_client::{Handoff, NodeStatus, PartitionId, RingEpoch};

    #[test]
    fn the_view_reads_as_tables() {
        let view = ClusterView {
            epoch: RingEpoch(3),
            nodes: vec![
                NodeStatus {
                    node_id: NodeId::new("node-a").expect("id"),
                    address: "http://a:7070".into(),
                    zone: None,
                    state: NodeState::Up,
                    last_heartbeat_ms_ago: Some(40),
                    anti_entropy: Some(AntiEntropyStatus {
                        enabled: true,
                        passes: 7,
                        compared_partitions: 64,
                        last_pass_ms: Some(95_000),
                        oldest_partition_ms: Some(90_000),
                        ..AntiEntropyStatus::default()
                    }),
                },
                NodeStatus {
                    node_id: NodeId::new("node-b").expect("id"),
                    address: "http://b:7070".into(),
                    zone: None,
                    state: NodeState::Down,
                    last_heartbeat_ms_ago: None,
                    anti_entropy: None,
                },
            ],
            handoffs: vec![Handoff {
                partition: PartitionId(9),
                from: NodeId::new("node-a").expect("id"),
                to: NodeId::new("node-b").expect("id"),
                objects: 12,
                done: false,
            }],
        };
        let text = view_text(&view, 100_000);
        assert!(text.starts_with("ring epoch: 3\n"));
        assert!(
            text.contains("node-a  up     -     http://a:7070  40 ms ago       7 passes; all partitions in sync 10 s ago"),
            "{text}"
        );
        assert!(
            text.contains("node-b  down   -     http://b:7070  -               -"),
            "{text}"
        );
        let last = AntiEntropyStatus {
            enabled: true,
            passes: 3,
            ..AntiEntropyStatus::default()
        };
        assert_eq!(
            anti_entropy_text(Some(&last), 0),
            "3 passes; compares no partition itself (its peers do)"
        );
        let off = AntiEntropyStatus::default();
        assert_eq!(anti_entropy_text(Some(&off), 0), "off");
        assert!(
            text.contains("9          node-a  node-b  12       copying"),
            "{text}"
        );
    }
}
