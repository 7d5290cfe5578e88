//! `dynamo cluster [join|decommission|replace|retry|abort|bootstrap]`: the cluster view,
//! membership changes and the controls of one that failed, optionally followed to their
//! end (`--wait`, in `wait`), and the idempotent first joins of a fixed node list
//! (`bootstrap`).

mod bootstrap;
mod wait;

use clap::{Args, Subcommand};
use dynamo_client::{
    AntiEntropyStatus, ChangeKindName, ClusterView, Handoff, NodeId, NodeRegistration, NodeState,
    RingGroupStatus,
};
use indicatif::HumanBytes;

use crate::cli::GlobalArgs;
use crate::error::CliError;
use crate::output;
pub use wait::{WaitArgs, WaitError};

/// Arguments of `dynamo cluster`: without a subcommand, show the view.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// A membership change; without one, the cluster view is shown.
    #[command(subcommand)]
    pub action: Option<ClusterAction>,
}

/// Membership changes, and the controls of a failed one (all need `admin`).
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
        /// Waiting for the change to finish.
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Decommission a node: its data is handed off before it leaves the ring.
    Decommission {
        /// The node's id.
        node: String,
        /// Waiting for the change to finish.
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Replace a member by a new node, which takes over exactly its partitions, filled
    /// from the surviving replicas (for a node that is lost for good). With the member's
    /// own id as `--node-id`, a replace in place: for a member whose volume was lost and
    /// whose new, empty volume the cluster refuses (the view says "volume lost"); it is
    /// refilled from the other replicas and serves again.
    Replace {
        /// The member to replace.
        old: String,
        /// The new node's id.
        #[arg(long)]
        node_id: String,
        /// The new node's internal API address, `http://host:port`.
        #[arg(long)]
        address: String,
        /// The new node's failure domain.
        #[arg(long)]
        zone: Option<String>,
        /// Waiting for the change to finish.
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Run the failed membership change again: the copies already done are kept.
    Retry {
        /// Waiting for the change to finish.
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Undo the membership change in progress, before its new ring is published: a new
    /// node is forgotten, a leaving one stays a member, the ring is untouched.
    Abort,
    /// Join each listed node that is not a member yet, one change at a time, waiting for
    /// the API while it starts and retrying a failed join; running it again changes
    /// nothing. For a compose file's init container or a deployment hook: it never
    /// decommissions or re-points a node.
    Bootstrap {
        /// The nodes, in join order: `ID=ADDRESS` or `ID=ADDRESS@ZONE`.
        #[arg(required = true, value_name = "ID=ADDRESS[@ZONE]", value_parser = bootstrap::parse_node)]
        nodes: Vec<NodeRegistration>,
        /// How long, in seconds, the whole bootstrap may take, waiting for the API included.
        #[arg(long, value_name = "SECONDS", default_value_t = 600,
            value_parser = clap::value_parser!(u64).range(1..))]
        timeout: u64,
    },
}

/// Shows the cluster, or applies a membership change, a retry or an abort (with `--wait`,
/// follows the change until it is done) and then shows the cluster.
///
/// # Errors
/// A usage error for an invalid node id; the API's errors (`membership_conflict`, also
/// for a retry of a change that has not failed and an abort after the new ring is
/// published; `node_not_found`, `forbidden`); with `--wait`, [`WaitError`] when the
/// change failed, was aborted or outlasted `--wait-timeout`.
pub async fn run(global: &GlobalArgs, args: &ClusterArgs) -> Result<(), CliError> {
    let client = global.client()?;
    let started = match &args.action {
        None => None,
        Some(ClusterAction::Join {
            node,
            address,
            zone,
            wait,
        }) => {
            let registration = NodeRegistration {
                node_id: node_id(node)?,
                address: address.clone(),
                zone: zone.clone(),
            };
            let began = client.join_node(&registration).await?;
            eprintln!("{node} is joining");
            let started = wait::Started::new(ChangeKindName::Join, registration.node_id, None, &began);
            Some((started, began, wait))
        }
        Some(ClusterAction::Decommission { node, wait }) => {
            let id = node_id(node)?;
            let began = client.decommission(&id).await?;
            eprintln!("{node} is being decommissioned");
            let started = wait::Started::new(ChangeKindName::Decommission, id, None, &began);
            Some((started, began, wait))
        }
        Some(ClusterAction::Replace {
            old,
            node_id: new,
            address,
            zone,
            wait,
        }) => {
            let old_id = node_id(old)?;
            let registration = NodeRegistration {
                node_id: node_id(new)?,
                address: address.clone(),
                zone: zone.clone(),
            };
            let began = client.replace_node(&old_id, &registration).await?;
            if registration.node_id == old_id {
                eprintln!("{old} is being refilled in place");
            } else {
                eprintln!("{new} is replacing {old}");
            }
            let started = wait::Started::new(
                ChangeKindName::Replace,
                old_id,
                Some(registration.node_id),
                &began,
            );
            Some((started, began, wait))
        }
        Some(ClusterAction::Retry { wait }) => {
            let began = client.retry_change().await?;
            match wait::Started::running(&began) {
                Some(started) => {
                    eprintln!("the {} runs again", started.describe());
                    Some((started, began, wait))
                }
                None => {
                    // The ring service answers with the change it retried; none means
                    // it ended before the answer was made, and without its name
                    // `--wait` has nothing to follow: the view below shows the ring.
                    eprintln!("the retried change no longer shows (ring epoch {})", began.epoch);
                    None
                }
            }
        }
        Some(ClusterAction::Bootstrap { nodes, timeout }) => {
            bootstrap::bootstrap(&client, nodes, std::time::Duration::from_secs(*timeout)).await?;
            None
        }
        Some(ClusterAction::Abort) => {
            let view = client.abort_change().await?;
            eprintln!(
                "the membership change is aborted; the ring stays at epoch {}",
                view.epoch
            );
            None
        }
    };
    if let Some((started, began, args)) = started
        && args.wait
    {
        let epoch = wait::wait(&client, &started, &began, args).await?;
        eprintln!("{}", started.done_line(epoch));
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
            let state = match n.volume_refused {
                // The one state an admin must act on: say what to do.
                Some(v) => format!(
                    "{} (volume lost: new volume {v} refused; replace in place)",
                    state_name(n.state)
                ),
                None => state_name(n.state).into(),
            };
            vec![
                n.node_id.to_string(),
                state,
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
    match &view.change {
        Some(p) => out.push_str(&format!("\nchange: {}\n", wait::change_line(p))),
        None => out.push_str("\nchange: none\n"),
    }
    if view.handoffs.is_empty() {
        out.push_str("handoffs: none\n");
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
                    HumanBytes(h.bytes).to_string(),
                    handoff_state(h),
                ]
            })
            .collect();
        out.push_str("handoffs:\n");
        out.push_str(&output::table(
            &["PARTITION", "FROM", "TO", "OBJECTS", "BYTES", "STATE"],
            &handoffs,
        ));
    }
    out.push_str(&ring_group_text(view.ring_group.as_ref()));
    out
}

/// The ring service's replicas: who leads, who votes, how far behind each one is.
fn ring_group_text(group: Option<&RingGroupStatus>) -> String {
    let Some(g) = group else {
        // The coordinator asks the ring service as it makes the view: no answer means no
        // leader or no replica reachable from it, which an operator must see.
        return "ring service: no leader answered\n".into();
    };
    let rows: Vec<Vec<String>> = g
        .replicas
        .iter()
        .map(|r| {
            let role = match (r.leader, r.voter) {
                (true, _) => "leader",
                (false, true) => "follower",
                (false, false) => "learner (being added)",
            };
            vec![
                r.id.to_string(),
                role.into(),
                r.url.clone(),
                r.lag.map_or_else(|| "-".into(), |l| l.to_string()),
            ]
        })
        .collect();
    let mut out = format!(
        "ring service: {} replicas, leader {} (term {})\n",
        g.replicas.len(),
        g.leader,
        g.term
    );
    out.push_str(&output::table(&["REPLICA", "ROLE", "URL", "LAG"], &rows));
    out
}

/// A copy's state as a table cell: done, skipped (its source was down; the other
/// holders fill the receiver), retrying with its last error, or copying.
fn handoff_state(h: &Handoff) -> String {
    // A skipped copy is also marked done, with the error that made it skipped.
    match (h.skipped, h.done, &h.error) {
        (true, _, _) => "skipped (source down)".into(),
        (_, true, _) => "done".into(),
        (_, _, Some(e)) => format!("retrying: {e}"),
        (_, _, None) => "copying".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamo_client::{ChangeProgress, ChangeSummary, NodeStatus, PartitionId, RingEpoch};

    fn id(s: &str) -> NodeId {
        NodeId::new(s).expect("id")
    }

    #[test]
    fn the_ring_group_shows_its_leader_voters_and_lag() {
        use dynamo_client::RingReplicaStatus;
        let replica = |id: u64, leader: bool, voter: bool, lag: Option<u64>| RingReplicaStatus {
            id,
            url: format!("http://ring-{id}:7000"),
            leader,
            voter,
            matched_index: lag.map(|l| 40 - l),
            lag,
        };
        let g = RingGroupStatus {
            leader: 1,
            term: 7,
            applied_index: Some(40),
            replicas: vec![
                replica(0, false, true, Some(0)),
                replica(1, true, true, Some(0)),
                replica(2, false, false, None),
            ],
        };
        let text = ring_group_text(Some(&g));
        assert!(
            text.starts_with("ring service: 3 replicas, leader 1 (term 7)\n"),
            "{text}"
        );
        assert!(
            text.contains("0        follower               http://ring-0:7000  0"),
            "{text}"
        );
        assert!(text.contains("1        leader "), "{text}");
        assert!(
            text.contains("2        learner (being added)  http://ring-2:7000  -"),
            "{text}"
        );
        assert_eq!(ring_group_text(None), "ring service: no leader answered\n");
    }

    #[test]
    fn a_member_whose_volume_was_lost_says_what_to_do() {
        let view = ClusterView {
            epoch: RingEpoch(3),
            nodes: vec![NodeStatus {
                node_id: id("node-b"),
                address: "http://b:7070".into(),
                zone: None,
                state: NodeState::Down,
                last_heartbeat_ms_ago: None,
                anti_entropy: None,
                volume: Some(dynamo_client::VolumeId(1)),
                volume_refused: Some(dynamo_client::VolumeId(0xab)),
            }],
            handoffs: Vec::new(),
            change: None,
            max_n: None,
            ring_group: None,
        };
        let text = view_text(&view, 0);
        assert!(
            text.contains("down (volume lost: new volume 00000000000000ab refused; replace in place)"),
            "{text}"
        );
    }

    #[test]
    fn the_view_reads_as_tables() {
        let view = ClusterView {
            epoch: RingEpoch(3),
            nodes: vec![
                NodeStatus {
                    node_id: id("node-a"),
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
                    volume: None,
                    volume_refused: None,
                },
                NodeStatus {
                    node_id: id("node-b"),
                    address: "http://b:7070".into(),
                    zone: None,
                    state: NodeState::Down,
                    last_heartbeat_ms_ago: None,
                    anti_entropy: None,
                    volume: None,
                    volume_refused: None,
                },
            ],
            handoffs: vec![Handoff {
                objects: 12,
                bytes: 2048,
                ..Handoff::new(PartitionId(9), id("node-a"), id("node-b"))
            }],
            change: None,
            max_n: None,
            ring_group: None,
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
        assert!(text.contains("\nchange: none\n"), "{text}");
        assert!(
            text.contains("9          node-a  node-b  12       2.00 KiB  copying"),
            "{text}"
        );
    }

    // Goal: a change in progress shows as one `change:` line (kind, node and replacement,
    // the epoch it publishes, phase, partitions done of total, bytes, why it is stuck),
    // and each copy's state says done, skipped or retrying with its error.
    #[test]
    fn the_view_shows_the_change_and_each_copy_state() {
        let to = id("node-d");
        let handoffs = vec![
            Handoff {
                done: true,
                bytes: 3 << 20,
                ..Handoff::new(PartitionId(1), id("node-a"), to.clone())
            },
            Handoff {
                done: true,
                skipped: true,
                error: Some("skipped: connection refused".into()),
                ..Handoff::new(PartitionId(1), id("node-c"), to.clone())
            },
            Handoff {
                error: Some("source_unavailable: timed out".into()),
                ..Handoff::new(PartitionId(2), id("node-a"), to.clone())
            },
        ];
        let change = ChangeSummary {
            kind: ChangeKindName::Replace,
            node: id("node-b"),
            replacement: Some(to),
            phase: "copy".into(),
            epoch: RingEpoch(4),
            failed: None,
        };
        let progress = ChangeProgress {
            change,
            partitions_total: 2,
            partitions_done: 1,
            objects: 0,
            bytes: 3 << 20,
            stuck: Some("partition 2 from node-a into node-d: source_unavailable: timed out".into()),
        };
        let view = ClusterView {
            epoch: RingEpoch(3),
            nodes: vec![],
            handoffs,
            change: Some(progress),
            max_n: None,
            ring_group: None,
        };
        let text = view_text(&view, 0);
        assert!(
            text.contains(
                "\nchange: replace of node-b by node-d (ring epoch 4): copy, 1/2 partitions, 3.00 MiB copied; \
                 stuck: partition 2 from node-a into node-d: source_unavailable: timed out\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("1          node-a  node-d  0        3.00 MiB  done\n"),
            "{text}"
        );
        assert!(
            text.contains("1          node-c  node-d  0        0 B       skipped (source down)\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "2          node-a  node-d  0        0 B       retrying: source_unavailable: timed out\n"
            ),
            "{text}"
        );
    }

    // Goal: --wait and --wait-timeout parse on every change and on a retry, and
    // --wait-timeout alone is a usage error (it would silently do nothing).
    #[test]
    fn wait_flags_parse_on_every_change() {
        use crate::cli::{Cli, Command};
        use clap::Parser as _;

        let parse = |args: &[&str]| Cli::try_parse_from(["dynamo", "cluster"].iter().chain(args));
        let cli = parse(&[
            "replace",
            "node-b",
            "--node-id",
            "node-d",
            "--address",
            "http://d:7100",
            "--zone",
            "z2",
            "--wait",
            "--wait-timeout",
            "60",
        ])
        .expect("parses");
        let Command::Cluster(ClusterArgs {
            action:
                Some(ClusterAction::Replace {
                    old,
                    node_id,
                    address,
                    zone,
                    wait,
                }),
        }) = cli.command
        else {
            panic!("a replace");
        };
        assert_eq!(
            (old.as_str(), node_id.as_str(), address.as_str()),
            ("node-b", "node-d", "http://d:7100")
        );
        assert_eq!(zone.as_deref(), Some("z2"));
        assert!(wait.wait);
        assert_eq!(wait.wait_timeout, 60);

        let cli = parse(&["join", "node-c", "http://c:7100", "--wait"]).expect("parses");
        let Command::Cluster(ClusterArgs {
            action: Some(ClusterAction::Join { wait, .. }),
        }) = cli.command
        else {
            panic!("a join");
        };
        assert!(wait.wait);
        assert_eq!(wait.wait_timeout, 1800, "the default is half an hour");
        assert!(parse(&["decommission", "node-c", "--wait"]).is_ok());
        assert!(parse(&["decommission", "node-c", "--wait-timeout", "5"]).is_err());
        assert!(parse(&["decommission", "node-c", "--wait", "--wait-timeout", "0"]).is_err());
        assert!(
            parse(&["replace", "node-b", "--address", "http://d:7100"]).is_err(),
            "--node-id is required"
        );

        let cli = parse(&["retry", "--wait", "--wait-timeout", "90"]).expect("parses");
        let Command::Cluster(ClusterArgs {
            action: Some(ClusterAction::Retry { wait }),
        }) = cli.command
        else {
            panic!("a retry");
        };
        assert!(wait.wait);
        assert_eq!(wait.wait_timeout, 90);
        assert!(parse(&["retry"]).is_ok());
        assert!(parse(&["retry", "--wait-timeout", "5"]).is_err());
    }

    // Goal: `abort` parses without arguments and takes no `--wait` (it is done when it
    // answers) and no node (it undoes whichever change is in progress).
    #[test]
    fn abort_takes_no_arguments() {
        use crate::cli::{Cli, Command};
        use clap::Parser as _;

        let parse = |args: &[&str]| Cli::try_parse_from(["dynamo", "cluster"].iter().chain(args));
        let cli = parse(&["abort"]).expect("parses");
        assert!(matches!(
            cli.command,
            Command::Cluster(ClusterArgs {
                action: Some(ClusterAction::Abort)
            })
        ));
        assert!(parse(&["abort", "--wait"]).is_err());
        assert!(parse(&["abort", "node-b"]).is_err());
    }
}
