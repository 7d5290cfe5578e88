//! Whether this node's volume may take part in the data path (its volume gate).
//!
//! A StatefulSet pod keeps its name when its volume is lost, so a node can come back
//! under a member's id with an empty data directory. Serving then would answer reads
//! with nothing for keys the member acknowledged, and count toward R and W while
//! holding none of them. So the node serves replica batches, listings and the change
//! log only while the ring service binds its volume to its member
//! (`NodeStatus::volume`), and not while a replace in place is still copying the
//! member's partitions into it. Pulls, Merkle exchanges and the node's own repair
//! workers are not gated: they are how a refused volume is filled.
//!
//! A volume created by this node carries a marker until the node first sees itself bound
//! (the marker is durable, so a restart before that does not turn the volume into a
//! trusted one); a volume from before volume ids carries none.

use dynamo_core::wire::cluster::{ChangeKindName, ClusterState};
use dynamo_core::{NodeId, VolumeId};

/// What the followed state says about this node's volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// The ring binds the volume to this node's member: it serves, and the volume is
    /// confirmed for good.
    Bound,
    /// Nothing says otherwise and the volume is not a new one: it serves.
    Serving,
    /// It takes no part in the data path, for this reason.
    Closed(String),
}

impl Standing {
    /// The reason the node refuses data-path requests, if it does.
    pub fn refusal(&self) -> Option<&str> {
        match self {
            Standing::Closed(why) => Some(why),
            Standing::Bound | Standing::Serving => None,
        }
    }
}

/// Judges the volume of node `me` against the state it follows (`None` before it learned
/// one). `unconfirmed`: the volume is new and was never seen bound.
pub fn standing(me: &NodeId, volume: VolumeId, unconfirmed: bool, state: Option<&ClusterState>) -> Standing {
    let entry = state.and_then(|s| s.nodes.iter().find(|n| n.node_id == *me));
    if let Some(n) = entry {
        if n.volume == Some(volume) {
            let refilling = state.and_then(|s| s.change.as_ref()).is_some_and(|c| {
                c.kind == ChangeKindName::Replace
                    && c.node == *me
                    && c.replacement.as_ref() == Some(me)
                    && c.phase == "copy"
            });
            return if refilling {
                Standing::Closed(format!(
                    "volume {volume} is being refilled with node {me}'s partitions (a replace in place); it serves once the copy ends"
                ))
            } else {
                Standing::Bound
            };
        }
        if n.volume_refused == Some(volume) {
            return Standing::Closed(format!(
                "volume {volume} is new under member {me}, whose volume was lost: the ring service refuses it until a replace in place refills it"
            ));
        }
        if let Some(bound) = n.volume {
            return Standing::Closed(format!(
                "member {me} is bound to volume {bound}, not to this node's volume {volume}"
            ));
        }
    }
    if unconfirmed {
        Standing::Closed(format!(
            "volume {volume} is new and the ring service has not yet bound it to node {me}"
        ))
    } else {
        Standing::Serving
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamo_core::wire::cluster::{ChangeSummary, NodeState, NodeStatus};

    fn me() -> NodeId {
        NodeId::new("node-1").expect("id")
    }

    fn state(volume: Option<u64>, refused: Option<u64>) -> ClusterState {
        ClusterState {
            version: 1,
            ring: None,
            nodes: vec![NodeStatus {
                node_id: me(),
                address: "http://127.0.0.1:1".into(),
                zone: None,
                state: NodeState::Up,
                last_heartbeat_ms_ago: None,
                anti_entropy: None,
                volume: volume.map(VolumeId),
                volume_refused: refused.map(VolumeId),
            }],
            buckets: Default::default(),
            tokens: Vec::new(),
            handoffs: Vec::new(),
            change: None,
            releases: Vec::new(),
        }
    }

    fn refill(phase: &str) -> Option<ChangeSummary> {
        Some(ChangeSummary {
            kind: ChangeKindName::Replace,
            node: me(),
            replacement: Some(me()),
            phase: phase.into(),
            epoch: dynamo_core::RingEpoch(2),
            failed: None,
        })
    }

    #[test]
    fn a_new_volume_serves_only_once_the_ring_binds_it() {
        let v = VolumeId(7);
        assert!(standing(&me(), v, true, None).refusal().is_some(), "no state yet");
        assert!(
            standing(&me(), v, true, Some(&state(None, None)))
                .refusal()
                .is_some(),
            "not bound yet"
        );
        assert_eq!(
            standing(&me(), v, true, Some(&state(Some(7), None))),
            Standing::Bound
        );
        assert!(
            standing(&me(), v, true, Some(&state(Some(8), None)))
                .refusal()
                .is_some(),
            "bound to the lost volume"
        );
        assert!(
            standing(&me(), v, true, Some(&state(Some(8), Some(7))))
                .refusal()
                .is_some()
        );
    }

    #[test]
    fn a_volume_from_before_volume_ids_serves_until_the_ring_says_otherwise() {
        let v = VolumeId(7);
        assert_eq!(standing(&me(), v, false, None), Standing::Serving);
        assert_eq!(
            standing(&me(), v, false, Some(&state(None, None))),
            Standing::Serving
        );
        assert!(
            standing(&me(), v, false, Some(&state(Some(8), None)))
                .refusal()
                .is_some()
        );
        assert!(
            standing(&me(), v, false, Some(&state(None, Some(7))))
                .refusal()
                .is_some(),
            "refused after an abort"
        );
    }

    #[test]
    fn a_volume_being_refilled_serves_from_the_catch_up_on() {
        let v = VolumeId(7);
        let mut s = state(Some(7), None);
        s.change = refill("copy");
        assert!(standing(&me(), v, true, Some(&s)).refusal().is_some());
        s.change = refill("catch_up");
        assert_eq!(standing(&me(), v, true, Some(&s)), Standing::Bound);
        let mut other = refill("copy");
        if let Some(c) = other.as_mut() {
            c.replacement = NodeId::new("node-9").ok();
        }
        s.change = other;
        assert_eq!(
            standing(&me(), v, false, Some(&s)),
            Standing::Bound,
            "a replace of this node by another is not a refill"
        );
    }
}
