//! The fault schedule and the faults themselves.
//!
//! A [`Schedule`] is a function of the seed and the node count only: a sequence of steps
//! "wait `gap`, fault one node for `hold`, heal it". One node is faulted at a time: a
//! step starts only once the previous one healed (a killed node restarted and answers
//! `/readyz` again). A run of D seconds plays the prefix that fits in D, so a longer
//! replay of a seed begins with the same faults. Real times drift from the nominal ones
//! (a restart takes as long as it takes); the order, nodes, kinds and holds do not.
//!
//! Faults: `kill -9` then restart with the same flags and data dir; SIGSTOP then SIGCONT
//! (a hung process whose sockets stay open); a partition, iptables rules that drop TCP
//! to and from the node's loopback port. The partition is asymmetric by construction:
//! connections to the node (coordinator requests, other nodes' replication and hint
//! delivery) hang, while connections the node opens (heartbeats to the ring service,
//! its own hint deliveries) still flow, since they leave from ephemeral ports.
//!
//! [`Firewall`] owns the rules: each is tagged `dynamo-checker-<pid>`, removed when the
//! fault heals and again on drop (so on panic too); at start, rules left by checker
//! processes that no longer exist are swept. Without root or without a working
//! `iptables`, partitions are skipped with the reason printed and the steps stay in the
//! schedule as pauses, so the rest of the schedule is unchanged.

use std::fmt;
use std::process::Command;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::time::Instant;

use crate::{Cluster, wait_ready};

/// Shortest and longest quiet time before a fault.
const GAP_MS: (u64, u64) = (1_000, 3_000);
/// Shortest and longest time a fault is held.
const HOLD_MS: (u64, u64) = (2_000, 6_000);
/// Quiet time kept at the end of the load phase, so its last seconds see a healed cluster.
const TAIL_MS: u64 = 1_000;

/// What is done to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// `kill -9`, then restart.
    Kill,
    /// SIGSTOP, then SIGCONT.
    Pause,
    /// iptables DROP of TCP to and from the node's port, then removal of the rules.
    Partition,
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultKind::Kill => "kill-9",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
        })
    }
}

/// One step of a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// Quiet time after the previous step healed.
    pub gap: Duration,
    /// The storage node (`node-<i>`).
    pub node: usize,
    /// What is done to it.
    pub kind: FaultKind,
    /// How long it is held.
    pub hold: Duration,
}

/// The faults of a run, from its seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// The seed.
    pub seed: u64,
    /// The steps, in order.
    pub faults: Vec<Fault>,
}

impl Schedule {
    /// The schedule of `seed` over `nodes` storage nodes, for a load phase of `duration`:
    /// the steps whose nominal end fits before the phase's last `TAIL_MS`.
    pub fn generate(seed: u64, nodes: usize, duration: Duration) -> Schedule {
        // The schedule's own stream: workload clients use other streams of the same seed.
        let mut rng = StdRng::seed_from_u64(seed);
        let budget = duration.as_millis() as u64;
        let mut t = 0;
        let mut faults = Vec::new();
        loop {
            let gap = rng.random_range(GAP_MS.0..=GAP_MS.1);
            let hold = rng.random_range(HOLD_MS.0..=HOLD_MS.1);
            let node = rng.random_range(0..nodes);
            let kind = match rng.random_range(0..3) {
                0 => FaultKind::Kill,
                1 => FaultKind::Pause,
                _ => FaultKind::Partition,
            };
            if t + gap + hold + TAIL_MS > budget {
                break;
            }
            t += gap + hold;
            faults.push(Fault {
                gap: Duration::from_millis(gap),
                node,
                kind,
                hold: Duration::from_millis(hold),
            });
        }
        Schedule { seed, faults }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "fault schedule of seed {} ({} faults):",
            self.seed,
            self.faults.len()
        )?;
        let mut t = Duration::ZERO;
        for (i, s) in self.faults.iter().enumerate() {
            t += s.gap;
            writeln!(
                f,
                "  {i:>2}. ~{:>6.1}s  {:<9} node-{} for {:.1}s",
                t.as_secs_f64(),
                s.kind.to_string(),
                s.node,
                s.hold.as_secs_f64()
            )?;
            t += s.hold;
        }
        Ok(())
    }
}

/// A fault as it was played.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The step.
    pub fault: Fault,
    /// When it began (since the run started).
    pub start: Duration,
    /// When it was healed (the node answering again, for a kill).
    pub healed: Duration,
    /// Why it was not applied, if it was not.
    pub skipped: Option<String>,
}

impl fmt::Display for Applied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>8.3}s–{:>8.3}s {:<9} node-{}",
            self.start.as_secs_f64(),
            self.healed.as_secs_f64(),
            self.fault.kind.to_string(),
            self.fault.node
        )?;
        if let Some(why) = &self.skipped {
            write!(f, " (skipped: {why})")?;
        }
        Ok(())
    }
}

/// Plays `schedule` on `cluster` until `until`, healing the fault in progress then; the
/// clock of the recorded times starts at `t0`.
pub async fn play(
    cluster: &mut Cluster,
    schedule: &Schedule,
    firewall: &mut Result<Firewall, String>,
    t0: Instant,
    until: Instant,
) -> Vec<Applied> {
    let mut played = Vec::new();
    for &fault in &schedule.faults {
        let start = Instant::now() + fault.gap;
        if start >= until {
            break;
        }
        // A timed phase of the schedule, not a wait for a condition.
        tokio::time::sleep_until(start).await;
        let node = &mut cluster.nodes[fault.node];
        let mut skipped = None;
        match fault.kind {
            FaultKind::Kill => node.kill9(),
            FaultKind::Pause => node.pause(),
            FaultKind::Partition => match firewall {
                Ok(fw) => {
                    if let Err(e) = fw.cut(node.port) {
                        skipped = Some(e);
                    }
                }
                Err(why) => skipped = Some(why.clone()),
            },
        }
        let begun = t0.elapsed();
        tokio::time::sleep_until((Instant::now() + fault.hold).min(until)).await;
        heal(cluster, fault, firewall).await;
        played.push(Applied {
            fault,
            start: begun,
            healed: t0.elapsed(),
            skipped,
        });
    }
    played
}

/// Undoes `fault` and waits (bounded) until the node answers again.
async fn heal(cluster: &mut Cluster, fault: Fault, firewall: &mut Result<Firewall, String>) {
    let node = &mut cluster.nodes[fault.node];
    match fault.kind {
        FaultKind::Kill => node.start(),
        FaultKind::Pause => node.resume(),
        FaultKind::Partition => {
            if let Ok(fw) = firewall {
                fw.heal(node.port);
            }
        }
    }
    wait_ready(&node.url()).await;
}

/// The iptables rules of one checker process.
#[derive(Debug)]
pub struct Firewall {
    tag: String,
    active: Vec<Vec<String>>,
}

/// The comment prefix of every rule a checker inserts.
const TAG_PREFIX: &str = "dynamo-checker-";

impl Firewall {
    /// Checks that partitions can be made here (root, a working `iptables`) and sweeps
    /// rules left by checker processes that are gone.
    ///
    /// # Errors
    /// Why partitions cannot be made, to print.
    pub fn open() -> Result<Firewall, String> {
        if !is_root() {
            return Err("not root: iptables needs root".into());
        }
        let listing = iptables(&["-S"]).map_err(|e| format!("iptables does not work: {e}"))?;
        for line in listing.lines() {
            let Some(pid) = line
                .split_once(TAG_PREFIX)
                .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
            else {
                continue;
            };
            let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
            if !alive && let Some(spec) = line.strip_prefix("-A ") {
                let args: Vec<&str> = std::iter::once("-D").chain(spec.split_whitespace()).collect();
                match iptables(&args) {
                    Ok(_) => println!("checker: removed a stale rule: {line}"),
                    Err(e) => println!("checker: could not remove a stale rule {line}: {e}"),
                }
            }
        }
        Ok(Firewall {
            tag: format!("{TAG_PREFIX}{}", std::process::id()),
            active: Vec::new(),
        })
    }

    fn rules(&self, port: u16) -> [Vec<String>; 2] {
        let rule = |chain: &str, dir: &str| -> Vec<String> {
            [
                chain,
                "-p",
                "tcp",
                dir,
                &port.to_string(),
                "-m",
                "comment",
                "--comment",
                &self.tag,
                "-j",
                "DROP",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
        };
        // On loopback a packet passes OUTPUT then INPUT: these two drop everything sent to
        // the port and everything sent from it.
        [rule("INPUT", "--dport"), rule("OUTPUT", "--sport")]
    }

    /// Drops TCP to and from `port`.
    ///
    /// # Errors
    /// iptables' complaint; rules inserted before it are kept and removed on heal.
    pub fn cut(&mut self, port: u16) -> Result<(), String> {
        for rule in self.rules(port) {
            let args: Vec<&str> = std::iter::once("-I")
                .chain(rule.iter().map(String::as_str))
                .collect();
            iptables(&args)?;
            self.active.push(rule);
        }
        Ok(())
    }

    /// Removes the rules of `port`.
    pub fn heal(&mut self, port: u16) {
        for rule in self.rules(port) {
            if let Some(i) = self.active.iter().position(|r| *r == rule) {
                let r = self.active.remove(i);
                remove(&r);
            }
        }
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        for rule in std::mem::take(&mut self.active) {
            remove(&rule);
        }
    }
}

fn remove(rule: &[String]) {
    let args: Vec<&str> = std::iter::once("-D")
        .chain(rule.iter().map(String::as_str))
        .collect();
    if let Err(e) = iptables(&args) {
        // Printed, not panicked: this runs in Drop, maybe while unwinding.
        println!("checker: could not remove iptables rule {rule:?}: {e}");
    }
}

/// Runs iptables (waiting for the xtables lock, which Docker may hold), answering its
/// stdout.
fn iptables(args: &[&str]) -> Result<String, String> {
    let out = Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run iptables: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "iptables {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// True when the effective uid is 0 (read from /proc: no libc binding needed).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_one_schedule_and_longer_runs_extend_it() {
        let a = Schedule::generate(7, 3, Duration::from_secs(40));
        assert_eq!(a, Schedule::generate(7, 3, Duration::from_secs(40)));
        let long = Schedule::generate(7, 3, Duration::from_secs(400));
        assert_eq!(long.faults[..a.faults.len()], a.faults[..]);
        assert_ne!(a, Schedule::generate(8, 3, Duration::from_secs(40)));
        assert!(a.faults.iter().all(|f| f.node < 3));
    }
}
