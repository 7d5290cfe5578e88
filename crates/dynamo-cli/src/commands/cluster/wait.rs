//! `--wait` of `dynamo cluster join|decommission|replace|retry`: follows the membership
//! change the command started (or ran again) through `GET /v1/cluster` until it is done,
//! showing its progress.
//!
//! What "done" means is decided by [`judge`], a plain function of the change as it began
//! and one cluster view, so it is tested without a server; [`wait`] only polls, paces and
//! draws.

use std::io::IsTerminal as _;
use std::time::Duration;

use clap::Args;
use dynamo_client::{
    ChangeKindName, ChangeProgress, ChangeSummary, Client, ClientError, ClusterView, NodeId, RingEpoch,
};
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::time::Instant;

use crate::error::CliError;

/// How often the cluster view is asked for.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Least time between two plain progress lines (stderr is not a terminal): a log or a CI
/// job gets a line every few seconds, not one per poll.
const PLAIN_LINE_EVERY: Duration = Duration::from_secs(5);
/// Polls in a row that must show the change gone without its ring before it counts as
/// aborted. One coordinator never shows an older state than one it showed, but behind a
/// load balancer a poll may reach a coordinator that has not yet heard of the change.
const GONE_POLLS: u32 = 4;

/// The `--wait` flags.
#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// Wait until the change is done, showing its progress (partitions copied, bytes,
    /// why it is stuck); exit non-zero if it fails or is aborted.
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` waits, in seconds; the change itself goes on after it.
    #[arg(long, value_name = "SECONDS", default_value_t = 1800, requires = "wait",
        value_parser = clap::value_parser!(u64).range(1..))]
    pub wait_timeout: u64,
}

/// Why a change waited for did not end well (exit code 1). Either way the cluster keeps
/// what it has: a failed change waits for a retry or an abort.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// The change failed; the ring service keeps it until it is retried or (before its
    /// ring is published) aborted.
    #[error("the {change} failed: {reason}. {}", after_failure(*.published))]
    Failed {
        /// Which change, in words.
        change: String,
        /// The ring service's reason.
        reason: String,
        /// True when its new ring is already published: it can then only be retried.
        published: bool,
    },
    /// The change ended without publishing its ring: someone aborted it.
    #[error("the {change} ended without publishing ring epoch {epoch}: it was aborted")]
    Aborted {
        /// Which change, in words.
        change: String,
        /// The epoch it would have published.
        epoch: RingEpoch,
    },
    /// `--wait-timeout` passed first.
    #[error(
        "the {change} is still running after {waited_s} s ({progress}); it goes on without this \
         command: `dynamo cluster` shows its progress"
    )]
    TimedOut {
        /// Which change, in words.
        change: String,
        /// How long was waited, in seconds.
        waited_s: u64,
        /// Where it stood at the last poll.
        progress: String,
    },
}

/// What an operator can do with a failed change: the ring service aborts one only
/// before its new ring is published (after, nodes already serve the new ring, so the
/// change can only go forward).
fn after_failure(published: bool) -> &'static str {
    if published {
        "Its new ring is already published, so it can only go forward: `dynamo cluster retry \
         --wait` runs it again, keeping the copies already done (docs/operations.md, \"Membership\")"
    } else {
        "It waits: `dynamo cluster retry --wait` runs it again, keeping the copies already done, \
         or `dynamo cluster abort` undoes it (docs/operations.md, \"Membership\")"
    }
}

/// The change a command started, as the waiter recognises it in later views.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    /// Its kind.
    pub kind: ChangeKindName,
    /// The node that joins, leaves or is replaced.
    pub node: NodeId,
    /// The replacement, for a replace.
    pub replacement: Option<NodeId>,
    /// The ring epoch it publishes, from the accepted answer (absent when that answer
    /// showed no change: then it is done once no change of its kind shows).
    pub epoch: Option<RingEpoch>,
}

impl Started {
    /// The change `kind` of `node` (replaced by `replacement`), as the answer `began`
    /// shows it.
    pub fn new(
        kind: ChangeKindName,
        node: NodeId,
        replacement: Option<NodeId>,
        began: &ClusterView,
    ) -> Started {
        let mut started = Started {
            kind,
            node,
            replacement,
            epoch: None,
        };
        started.epoch = began
            .change
            .as_ref()
            .filter(|p| started.is(&p.change))
            .map(|p| p.change.epoch);
        started
    }

    /// The change `began` shows in progress, with the epoch it publishes (a retry's
    /// answer: the change it runs again), or `None` when it shows none.
    pub fn running(began: &ClusterView) -> Option<Started> {
        began.change.as_ref().map(|p| Started {
            kind: p.change.kind,
            node: p.change.node.clone(),
            replacement: p.change.replacement.clone(),
            epoch: Some(p.change.epoch),
        })
    }

    /// Returns true when `c` is this change.
    fn is(&self, c: &ChangeSummary) -> bool {
        c.kind == self.kind
            && c.node == self.node
            && c.replacement == self.replacement
            && self.epoch.is_none_or(|e| e == c.epoch)
    }

    /// The change in words: `join of node-c`, `replace of node-b by node-d`.
    pub fn describe(&self) -> String {
        describe(self.kind, &self.node, self.replacement.as_ref())
    }

    /// The one-line result of a change that is done.
    pub fn done_line(&self, epoch: RingEpoch) -> String {
        match (self.kind, &self.replacement) {
            (ChangeKindName::Join, _) => format!("{} is a member (ring epoch {epoch})", self.node),
            (ChangeKindName::Decommission, _) => {
                format!("{} has left the cluster (ring epoch {epoch})", self.node)
            }
            (ChangeKindName::Replace, Some(new)) => {
                format!("{new} took over from {} (ring epoch {epoch})", self.node)
            }
            (ChangeKindName::Replace, None) => {
                format!("{} was replaced (ring epoch {epoch})", self.node)
            }
        }
    }
}

/// Where the change stands in one view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Running, this far.
    Running(ChangeProgress),
    /// Failed: waits for a retry or (while not `published`) an abort.
    Failed {
        /// The ring service's reason.
        reason: String,
        /// True when its new ring is already published (past the `copy` phase).
        published: bool,
    },
    /// Done: the ring is at this epoch.
    Done(RingEpoch),
    /// Gone without its ring published: aborted, or the coordinator asked has not heard
    /// of it yet.
    Gone(RingEpoch),
}

/// Judges `view` for the change `started`.
///
/// A change finishes only after it published its ring, and is aborted only before
/// (the ring service refuses a later abort), so a change no longer shown is done exactly
/// when the view's ring has reached the epoch it was to publish.
pub fn judge(started: &Started, view: &ClusterView) -> Step {
    if let Some(p) = view.change.as_ref().filter(|p| started.is(&p.change)) {
        return match &p.change.failed {
            Some(reason) => Step::Failed {
                reason: reason.clone(),
                published: p.change.phase != "copy",
            },
            None => Step::Running(p.clone()),
        };
    }
    match started.epoch {
        Some(e) if view.epoch < e => Step::Gone(e),
        _ => Step::Done(view.epoch),
    }
}

/// A change in words: `join of node-c`, `replace of node-b by node-d`.
fn describe(kind: ChangeKindName, node: &NodeId, replacement: Option<&NodeId>) -> String {
    match (kind, replacement) {
        (ChangeKindName::Join, _) => format!("join of {node}"),
        (ChangeKindName::Decommission, _) => format!("decommission of {node}"),
        (ChangeKindName::Replace, Some(new)) => format!("replace of {node} by {new}"),
        (ChangeKindName::Replace, None) => format!("replace of {node}"),
    }
}

/// A phase as people read it (`catch_up` is `catch-up`).
fn phase_name(phase: &str) -> &str {
    match phase {
        "catch_up" => "catch-up",
        other => other,
    }
}

/// Where a change stands, after its description: the phase, the bytes copied in it and,
/// when it is stuck or failed, why (without the partition count, which the bar shows).
fn status_text(p: &ChangeProgress) -> String {
    let mut text = format!("{}, {} copied", phase_name(&p.change.phase), HumanBytes(p.bytes));
    if let Some(why) = &p.stuck {
        let label = if p.change.failed.is_some() {
            "failed"
        } else {
            "stuck"
        };
        text.push_str(&format!("; {label}: {why}"));
    }
    text
}

/// A change in progress on one line: what, the epoch it publishes, the phase, partitions
/// copied of the phase's total, bytes copied, and why it is stuck (or failed), if it is.
/// `dynamo cluster` shows it after `change:`; `--wait` prints it when stderr is not a
/// terminal.
pub fn change_line(p: &ChangeProgress) -> String {
    let c = &p.change;
    let mut text = format!(
        "{} (ring epoch {}): {}, {}/{} partitions, {} copied",
        describe(c.kind, &c.node, c.replacement.as_ref()),
        c.epoch,
        phase_name(&c.phase),
        p.partitions_done,
        p.partitions_total,
        HumanBytes(p.bytes)
    );
    if let Some(why) = &p.stuck {
        let label = if c.failed.is_some() { "failed" } else { "stuck" };
        text.push_str(&format!("; {label}: {why}"));
    }
    text
}

/// Where progress goes: a bar when stderr is a terminal, else plain lines at most every
/// [`PLAIN_LINE_EVERY`].
enum ProgressOutput {
    /// The bar, drawn from the first progress on (so it never shows an empty `0/0`).
    Bar { bar: ProgressBar, drawn: bool },
    /// Plain lines; `last` is when the last one was printed, and what it said.
    Lines { last: Option<(Instant, String)> },
}

impl ProgressOutput {
    fn new(started: &Started) -> ProgressOutput {
        if !std::io::stderr().is_terminal() {
            return ProgressOutput::Lines { last: None };
        }
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden());
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} {prefix} [{bar:30}] {pos}/{len} partitions, {msg}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(started.describe());
        ProgressOutput::Bar { bar, drawn: false }
    }

    fn progress(&mut self, p: &ChangeProgress) {
        match self {
            ProgressOutput::Bar { bar, drawn } => {
                bar.set_length(p.partitions_total);
                bar.set_position(p.partitions_done);
                bar.set_message(status_text(p));
                if !*drawn {
                    *drawn = true;
                    bar.set_draw_target(ProgressDrawTarget::stderr());
                    bar.enable_steady_tick(Duration::from_millis(200));
                }
            }
            ProgressOutput::Lines { .. } => self.line(change_line(p)),
        }
    }

    /// A poll failed in a way worth retrying: say so and go on.
    fn unreachable(&mut self, started: &Started, e: &ClientError) {
        let text = format!(
            "{}: the cluster view did not answer ({e}); asking again",
            started.describe()
        );
        match self {
            ProgressOutput::Bar { bar, .. } => bar.set_message(text),
            ProgressOutput::Lines { .. } => self.line(text),
        }
    }

    /// Prints `text` unless a line was printed less than [`PLAIN_LINE_EVERY`] ago, or the
    /// same line was already printed.
    fn line(&mut self, text: String) {
        if let ProgressOutput::Lines { last } = self {
            let now = Instant::now();
            let due = last.as_ref().is_none_or(|(at, previous)| {
                now.duration_since(*at) >= PLAIN_LINE_EVERY && *previous != text
            });
            if due {
                eprintln!("{text}");
                *last = Some((now, text));
            }
        }
    }

    fn finish(&self) {
        if let ProgressOutput::Bar { bar, .. } = self {
            bar.finish_and_clear();
        }
    }
}

/// Follows the change `started` (whose accepted answer was `began`) until it is done, or
/// fails, or `args.wait_timeout` passes, asking `client` for the cluster view every
/// [`POLL_INTERVAL`]. Returns the ring epoch it published.
///
/// # Errors
/// [`WaitError`] when the change failed, was aborted or outlasted the timeout; the
/// client's error when a poll fails in a way asking again cannot fix (a transient one is
/// shown and asked again until the timeout).
pub async fn wait(
    client: &Client,
    started: &Started,
    began: &ClusterView,
    args: &WaitArgs,
) -> Result<RingEpoch, CliError> {
    let timeout = Duration::from_secs(args.wait_timeout);
    let deadline = Instant::now() + timeout;
    let mut output = ProgressOutput::new(started);
    let mut last = judge(started, began);
    // False after a failed poll: `last` is then an old view, which must not count again.
    let mut fresh = true;
    let mut gone_polls = 0;
    let outcome = loop {
        match &last {
            _ if !fresh => {}
            Step::Running(p) => {
                gone_polls = 0;
                output.progress(p);
            }
            Step::Failed { reason, published } => {
                break Err(WaitError::Failed {
                    change: started.describe(),
                    reason: reason.clone(),
                    published: *published,
                }
                .into());
            }
            Step::Done(epoch) => break Ok(*epoch),
            Step::Gone(epoch) => {
                gone_polls += 1;
                if gone_polls >= GONE_POLLS {
                    break Err(WaitError::Aborted {
                        change: started.describe(),
                        epoch: *epoch,
                    }
                    .into());
                }
            }
        }
        let now = Instant::now();
        if now >= deadline {
            let progress = match &last {
                Step::Running(p) => change_line(p),
                _ => "not shown by the last poll".into(),
            };
            break Err(WaitError::TimedOut {
                change: started.describe(),
                waited_s: timeout.as_secs(),
                progress,
            }
            .into());
        }
        tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
        match client.cluster().await {
            Ok(view) => {
                last = judge(started, &view);
                fresh = true;
            }
            // Asking again may help (a coordinator restarting, a slow answer): the change
            // runs on the ring service whatever this command sees.
            Err(e) if e.is_transient() || matches!(e, ClientError::Timeout { .. }) => {
                output.unreachable(started, &e);
                fresh = false;
            }
            Err(e) => break Err(e.into()),
        }
    };
    output.finish();
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).expect("node id")
    }

    fn progress(phase: &str, done: u64, total: u64, bytes: u64) -> ChangeProgress {
        ChangeProgress {
            change: ChangeSummary {
                kind: ChangeKindName::Replace,
                node: id("node-b"),
                replacement: Some(id("node-d")),
                phase: phase.into(),
                epoch: RingEpoch(8),
                failed: None,
            },
            partitions_total: total,
            partitions_done: done,
            objects: 0,
            bytes,
            stuck: None,
        }
    }

    fn view(epoch: u64, change: Option<ChangeProgress>) -> ClusterView {
        ClusterView {
            epoch: RingEpoch(epoch),
            nodes: vec![],
            handoffs: vec![],
            change,
            max_n: None,
            ring_group: None,
        }
    }

    fn replace_started() -> Started {
        Started::new(
            ChangeKindName::Replace,
            id("node-b"),
            Some(id("node-d")),
            &view(7, Some(progress("copy", 0, 4, 0))),
        )
    }

    // Goal: the change is recognised from the accepted answer, with the epoch it publishes.
    #[test]
    fn the_started_change_takes_its_epoch_from_the_answer() {
        let s = replace_started();
        assert_eq!(s.epoch, Some(RingEpoch(8)));
        // An answer without the change (a change done at once) leaves the epoch unknown.
        let s = Started::new(ChangeKindName::Join, id("node-c"), None, &view(7, None));
        assert_eq!(s.epoch, None);
    }

    // Goal: judge says running while the change shows, failed with the reason when it
    // failed, done once it is gone and the ring reached its epoch, and gone (aborted)
    // when it vanished with the ring short of that epoch.
    #[test]
    fn judge_tells_running_failed_done_and_aborted_apart() {
        let s = replace_started();
        let running = progress("catch_up", 2, 4, 10);
        assert_eq!(
            judge(&s, &view(8, Some(running.clone()))),
            Step::Running(running.clone())
        );

        let mut failed = running.clone();
        failed.change.failed = Some("node-c is down".into());
        assert_eq!(
            judge(&s, &view(8, Some(failed.clone()))),
            Step::Failed {
                reason: "node-c is down".into(),
                published: true
            },
            "a catch-up failure is past the publish"
        );
        failed.change.phase = "copy".into();
        assert_eq!(
            judge(&s, &view(7, Some(failed))),
            Step::Failed {
                reason: "node-c is down".into(),
                published: false
            }
        );

        assert_eq!(judge(&s, &view(8, None)), Step::Done(RingEpoch(8)));
        assert_eq!(judge(&s, &view(7, None)), Step::Gone(RingEpoch(8)));

        // Another change after ours: ours is done, since its ring is published.
        let mut next = running;
        next.change.kind = ChangeKindName::Join;
        next.change.node = id("node-e");
        next.change.replacement = None;
        next.change.epoch = RingEpoch(9);
        assert_eq!(judge(&s, &view(8, Some(next))), Step::Done(RingEpoch(8)));
    }

    // Goal: without a known epoch, the change is done once no change of its kind and node
    // shows.
    #[test]
    fn judge_without_an_epoch_waits_for_the_change_to_go() {
        let s = Started::new(
            ChangeKindName::Replace,
            id("node-b"),
            Some(id("node-d")),
            &view(7, None),
        );
        let running = progress("copy", 1, 4, 0);
        assert_eq!(judge(&s, &view(7, Some(running.clone()))), Step::Running(running));
        assert_eq!(judge(&s, &view(8, None)), Step::Done(RingEpoch(8)));
    }

    // Goal: the change line names the change, its epoch, its phase as people write it,
    // partitions done of total, bytes in binary units, and why it is stuck or failed.
    #[test]
    fn change_lines_read_as_a_sentence() {
        let mut p = progress("catch_up", 3, 4, 1536 * 1024);
        assert_eq!(
            change_line(&p),
            "replace of node-b by node-d (ring epoch 8): catch-up, 3/4 partitions, 1.50 MiB copied"
        );
        p.stuck = Some("partition 2 from node-a into node-d: refused".into());
        assert_eq!(
            change_line(&p),
            "replace of node-b by node-d (ring epoch 8): catch-up, 3/4 partitions, 1.50 MiB copied; \
             stuck: partition 2 from node-a into node-d: refused"
        );
        assert_eq!(
            status_text(&p),
            "catch-up, 1.50 MiB copied; stuck: partition 2 from node-a into node-d: refused"
        );
        p.change.failed = Some("node-a is down".into());
        p.stuck = p.change.failed.clone();
        assert!(
            change_line(&p).ends_with("; failed: node-a is down"),
            "{}",
            change_line(&p)
        );
    }

    // Goal: a retry's answer names the change it runs again, with the epoch it publishes,
    // so `retry --wait` follows it as the command that started it would; an answer
    // without a change gives nothing to follow.
    #[test]
    fn a_retried_change_is_recognised_from_the_answer() {
        let began = view(7, Some(progress("copy", 1, 4, 0)));
        let s = Started::running(&began).expect("the change in the answer");
        assert_eq!(s, replace_started());
        assert_eq!(judge(&s, &began), Step::Running(progress("copy", 1, 4, 0)));
        assert_eq!(Started::running(&view(7, None)), None);
    }

    // Goal: a failure says what to do next: retry or abort while the new ring is not
    // published, only retry after, each by its CLI command (not an internal route).
    #[test]
    fn a_failure_names_the_commands_that_handle_it() {
        let failed = |published| {
            WaitError::Failed {
                change: "join of node-c".into(),
                reason: "node-a is down".into(),
                published,
            }
            .to_string()
        };
        let before = failed(false);
        assert!(
            before.starts_with("the join of node-c failed: node-a is down. "),
            "{before}"
        );
        assert!(before.contains("`dynamo cluster retry --wait`"), "{before}");
        assert!(before.contains("`dynamo cluster abort`"), "{before}");
        assert!(!before.contains("/internal/"), "{before}");
        let after = failed(true);
        assert!(after.contains("`dynamo cluster retry --wait`"), "{after}");
        assert!(!after.contains("dynamo cluster abort"), "{after}");
        assert!(after.contains("already published"), "{after}");
    }

    // Goal: the result line says what the change achieved, for each kind.
    #[test]
    fn done_lines_say_what_changed() {
        let v = view(7, None);
        let join = Started::new(ChangeKindName::Join, id("node-c"), None, &v);
        assert_eq!(join.done_line(RingEpoch(8)), "node-c is a member (ring epoch 8)");
        let leave = Started::new(ChangeKindName::Decommission, id("node-c"), None, &v);
        assert_eq!(
            leave.done_line(RingEpoch(8)),
            "node-c has left the cluster (ring epoch 8)"
        );
        assert_eq!(
            replace_started().done_line(RingEpoch(8)),
            "node-d took over from node-b (ring epoch 8)"
        );
    }
}
