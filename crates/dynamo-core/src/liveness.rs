//! The local failure detector of one peer (Dynamo §4.8.1): a node is marked down when a
//! call to it fails, skipped while marked (sloppy quorum), and probed once per window in
//! the background until it answers. Fed with outcomes and the time; it sends nothing.
//!
//! The window does not grow: a probe is one small request per window in the background,
//! and a window that doubled while a node was away (a restart takes seconds) kept a node
//! that was back out of every preference list for seconds more, long enough for the next
//! fault elsewhere to leave keys with one reachable replica.

/// A change of a peer's health worth logging and counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The peer was up and is now marked down.
    WentDown,
    /// The peer was marked down and answered.
    CameBack,
}

/// The health of one peer as this process sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerHealth {
    probe_window_ms: u64,
    /// While marked down: when the next probe is due.
    probe_at_ms: Option<u64>,
}

impl PeerHealth {
    /// A peer believed up, probed every `probe_window_ms` once marked down.
    pub fn new(probe_window_ms: u64) -> Self {
        PeerHealth {
            probe_window_ms,
            probe_at_ms: None,
        }
    }

    /// Returns true when calls should go to the peer.
    pub fn is_up(&self) -> bool {
        self.probe_at_ms.is_none()
    }

    /// Records a call (or probe) the peer answered.
    pub fn on_success(&mut self) -> Option<Transition> {
        self.probe_at_ms.take().map(|_| Transition::CameBack)
    }

    /// Records a call the peer failed at `now_ms` (or another source's word that it is
    /// down): marks it down, with a probe one window later.
    pub fn on_failure(&mut self, now_ms: u64) -> Option<Transition> {
        if self.probe_at_ms.is_some() {
            return None;
        }
        self.probe_at_ms = Some(now_ms.saturating_add(self.probe_window_ms));
        Some(Transition::WentDown)
    }

    /// Returns when the next probe is due, while the peer is marked down.
    pub fn next_probe_ms(&self) -> Option<u64> {
        self.probe_at_ms
    }

    /// Returns true when a probe should be sent at `now_ms`; if so, the one after it is
    /// scheduled a window later (a failed probe changes nothing else).
    pub fn take_probe(&mut self, now_ms: u64) -> bool {
        match self.probe_at_ms {
            Some(at) if now_ms >= at => {
                self.probe_at_ms = Some(now_ms.saturating_add(self.probe_window_ms));
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_marks_the_peer_down_until_it_answers() {
        let mut h = PeerHealth::new(100);
        assert!(h.is_up());
        assert_eq!(h.on_failure(10), Some(Transition::WentDown));
        assert!(!h.is_up());
        assert_eq!(h.on_failure(20), None, "one transition per outage");
        assert_eq!(
            h.next_probe_ms(),
            Some(110),
            "the first failure schedules the probe"
        );
        assert_eq!(h.on_success(), Some(Transition::CameBack));
        assert!(h.is_up());
        assert_eq!(h.on_success(), None);
        assert_eq!(h.next_probe_ms(), None);
    }

    #[test]
    fn probes_come_once_per_window_and_the_window_does_not_grow() {
        let mut h = PeerHealth::new(100);
        h.on_failure(0);
        assert!(!h.take_probe(99));
        assert!(h.take_probe(100));
        assert!(!h.take_probe(150), "one probe per window");
        assert!(h.take_probe(200));
        assert!(h.take_probe(1_000), "late ticks probe at once");
        assert_eq!(h.next_probe_ms(), Some(1_100));
        let mut up = PeerHealth::new(100);
        assert!(!up.take_probe(1_000), "a peer that is up is not probed");
    }
}
