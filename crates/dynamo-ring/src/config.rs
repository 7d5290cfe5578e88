//! The ring service's configuration: flags with `DYNAMO_*` environment variables.

pub use dynamo_server::config::ConfigError;
use dynamo_server::config::{Secret, ServeArgs};
use dynamo_server::internal::testing::{TEST_CONTROL_KEY, TEST_MEMBER_KEY};
use dynamo_server::internal::{ControlArgs, MemberArgs};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use dynamo_core::Partitioning;
use dynamo_core::limits::MAX_N;

use crate::raft::Group;

/// Most replicas of a ring group (a majority of 7 is 4: more only slows commits).
pub const MAX_REPLICAS: usize = 7;

/// Smallest accepted `--max-body-bytes`: a registration or a token with a long bucket
/// list must fit.
pub const MIN_BODY_BYTES: usize = 4 << 10;

/// The Dynamo ring service: membership, liveness, ring epochs, bucket properties, tokens.
#[derive(Debug, Clone, Parser)]
#[command(name = "dynamo-ring", version, about)]
pub struct Config {
    /// Address the internal API listens on.
    #[arg(long, env = "DYNAMO_LISTEN", default_value = "127.0.0.1:7000")]
    pub listen: SocketAddr,

    /// Directory of the persisted cluster state (`state.json`).
    #[arg(long, env = "DYNAMO_DATA_DIR", default_value = "data/ring")]
    pub data_dir: PathBuf,

    /// Partition count Q (a power of two). Fixed when the first node joins; a stored
    /// state with another Q is refused at start-up.
    #[arg(long, env = "DYNAMO_PARTITIONS", default_value_t = 256)]
    pub partitions: u64,

    /// The ring's N: the replicas placement keeps on distinct nodes (and zones) and that
    /// handoff plans copy for; set it to the largest `n` a bucket will use.
    #[arg(long = "n", alias = "spread", env = "DYNAMO_N", default_value_t = 3)]
    pub n: u8,

    /// A member whose last heartbeat is older than this is `down` (liveness only; never a
    /// membership change).
    #[arg(long, env = "DYNAMO_HEARTBEAT_TIMEOUT_MS", default_value_t = 3_000)]
    pub heartbeat_timeout_ms: u64,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "DYNAMO_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,

    /// Most requests served at once (more get `503 overloaded`); each long-poll holds one.
    #[arg(long, env = "DYNAMO_MAX_CONCURRENT_REQUESTS", default_value_t = 1024)]
    pub max_concurrent_requests: usize,

    /// Timeout of one partition pull request sent to a receiving storage node.
    #[arg(long, env = "DYNAMO_HANDOFF_TIMEOUT_MS", default_value_t = 60_000)]
    pub handoff_timeout_ms: u64,

    /// Attempts per partition pull before the membership change is marked failed (it can
    /// then be retried or aborted).
    #[arg(long, env = "DYNAMO_HANDOFF_MAX_ATTEMPTS", default_value_t = 6)]
    pub handoff_max_attempts: u32,

    /// Partition pulls in flight at once during a membership change.
    #[arg(long, env = "DYNAMO_HANDOFF_CONCURRENCY", default_value_t = 4)]
    pub handoff_concurrency: usize,

    /// For the fault checker only: old holders delete a partition as soon as the new
    /// ring is published, before the catch-up copy confirmed the new holders have it.
    /// This is unsafe by design (it can lose acknowledged writes); the checker runs with
    /// it to show that it notices.
    #[arg(
        long,
        env = "DYNAMO_UNSAFE_EARLY_RELEASE",
        hide = true,
        default_value_t = false
    )]
    pub unsafe_early_release: bool,

    /// This replica's id in the ring group (`--replicas`); on Kubernetes the ordinal of
    /// its StatefulSet pod.
    #[arg(long, env = "DYNAMO_REPLICA_ID", default_value_t = 0)]
    pub replica_id: u64,

    /// Every replica of the ring group, this one included: `id=url,id=url,...` (e.g.
    /// `0=http://ring-0:7000,1=http://ring-1:7000,2=http://ring-2:7000`). Empty: a
    /// group of this one replica. All replicas must be given the same list; a longer one
    /// later grows the group (the leader adds the new replicas), a shorter one never
    /// shrinks it.
    #[arg(long, env = "DYNAMO_REPLICAS", default_value = "")]
    pub replicas: String,

    /// Minimum election timeout of the ring group: a follower that heard nothing from a
    /// leader for this long (randomised up to twice it) starts an election.
    #[arg(long, env = "DYNAMO_ELECTION_TIMEOUT_MS", default_value_t = 500)]
    pub election_timeout_ms: u64,

    /// Serving and telemetry flags every service shares.
    #[command(flatten)]
    pub serve: ServeArgs,

    /// The member keys and the signature window of internal requests.
    #[command(flatten)]
    pub member: MemberArgs,

    /// The control keys (membership, tokens, bucket properties).
    #[command(flatten)]
    pub control: ControlArgs,
}

impl Config {
    /// Checks ranges and cross-field rules.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first bad flag.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, reason: String| Err(ConfigError { field, reason });
        if let Err(e) = Partitioning::with_count(self.partitions) {
            return bad("partitions", e.to_string());
        }
        if self.n == 0 || self.n > MAX_N {
            return bad("n", format!("must be 1..={MAX_N}, got {}", self.n));
        }
        if self.max_body_bytes < MIN_BODY_BYTES {
            return bad("max-body-bytes", format!("must be at least {MIN_BODY_BYTES}"));
        }
        if self.handoff_concurrency > 64 {
            return bad("handoff-concurrency", "must be at most 64".into());
        }
        if self.handoff_max_attempts > 100 {
            return bad("handoff-max-attempts", "must be at most 100".into());
        }
        for (field, v) in [
            ("heartbeat-timeout-ms", self.heartbeat_timeout_ms),
            ("max-concurrent-requests", self.max_concurrent_requests as u64),
            ("handoff-timeout-ms", self.handoff_timeout_ms),
            ("handoff-max-attempts", u64::from(self.handoff_max_attempts)),
            ("handoff-concurrency", self.handoff_concurrency as u64),
        ] {
            if v == 0 {
                return bad(field, "must be greater than 0".into());
            }
        }
        if !(50..=60_000).contains(&self.election_timeout_ms) {
            return bad("election-timeout-ms", "must be 50..=60000".into());
        }
        self.group()?;
        self.serve.validate()?;
        self.member.validate()?;
        Ok(())
    }

    /// The ring group `--replica-id` and `--replicas` describe.
    ///
    /// # Errors
    /// A malformed list, a duplicate id, a URL that is not http(s), more than
    /// [`MAX_REPLICAS`] replicas, or a list without this replica's id.
    pub fn group(&self) -> Result<Group, ConfigError> {
        let bad = |reason: String| ConfigError {
            field: "replicas",
            reason,
        };
        let mut replicas = BTreeMap::new();
        for item in self.replicas.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (id, url) = item
                .split_once('=')
                .ok_or_else(|| bad(format!("{item:?} is not id=url")))?;
            let id: u64 = id
                .trim()
                .parse()
                .map_err(|_| bad(format!("{id:?} is not a replica id (an integer)")))?;
            let url = url.trim().trim_end_matches('/');
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(bad(format!("{url:?} is not an http(s) URL")));
            }
            if replicas.insert(id, url.to_owned()).is_some() {
                return Err(bad(format!("replica {id} is listed twice")));
            }
        }
        if replicas.is_empty() {
            let scheme = if self.serve.tls.tls_cert_file.is_some() {
                "https"
            } else {
                "http"
            };
            replicas.insert(self.replica_id, format!("{scheme}://{}", self.listen));
        }
        if replicas.len() > MAX_REPLICAS {
            return Err(bad(format!("at most {MAX_REPLICAS} replicas")));
        }
        if !replicas.contains_key(&self.replica_id) {
            return Err(bad(format!(
                "the list does not hold this replica's id {}",
                self.replica_id
            )));
        }
        Ok(Group {
            me: self.replica_id,
            replicas,
        })
    }

    /// The election timeout.
    pub fn election_timeout(&self) -> Duration {
        Duration::from_millis(self.election_timeout_ms)
    }

    /// Builds a configuration for tests: defaults with `data_dir` and the public test
    /// member and control keys ([`dynamo_server::internal::testing`]).
    pub fn for_dir(data_dir: impl Into<PathBuf>) -> Config {
        let mut c = Config::parse_from(["dynamo-ring"]);
        c.data_dir = data_dir.into();
        c.member.member_key = Secret(TEST_MEMBER_KEY.into());
        c.control.control_key = Secret(TEST_CONTROL_KEY.into());
        c
    }

    /// Returns the partitioning (after [`Config::validate`]; the default otherwise).
    pub fn partitioning(&self) -> Partitioning {
        Partitioning::with_count(self.partitions).unwrap_or_else(|_| {
            Partitioning::with_count(1 << dynamo_core::limits::DEFAULT_PARTITION_BITS).expect("256 is valid")
        })
    }

    /// The drain deadline.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.serve.drain_timeout_ms)
    }

    /// The heartbeat timeout.
    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_millis(self.heartbeat_timeout_ms)
    }

    /// The timeout of one pull request.
    pub fn handoff_timeout(&self) -> Duration {
        Duration::from_millis(self.handoff_timeout_ms)
    }
}

impl dynamo_server::config::ServiceConfig for Config {
    fn listen(&self) -> std::net::SocketAddr {
        self.listen
    }

    fn serve_args(&self) -> &ServeArgs {
        &self.serve
    }

    fn validate(&self) -> Result<(), ConfigError> {
        Config::validate(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_their_flag() {
        let c = Config::for_dir("x");
        c.validate().expect("defaults are valid");
        assert_eq!(c.listen.to_string(), "127.0.0.1:7000");
        assert_eq!((c.partitions, c.n, c.heartbeat_timeout_ms), (256, 3, 3_000));
        assert_eq!(c.max_body_bytes, 1 << 20);

        let mut bad = c.clone();
        bad.partitions = 100;
        assert!(
            bad.validate()
                .expect_err("not a power of two")
                .to_string()
                .contains("--partitions")
        );
        let mut bad = c.clone();
        bad.n = 0;
        assert!(bad.validate().expect_err("n 0").to_string().contains("--n"));
        let mut bad = c.clone();
        bad.heartbeat_timeout_ms = 0;
        assert!(bad.validate().is_err());
        let mut bad = c;
        bad.max_body_bytes = 10;
        assert!(bad.validate().is_err());
    }

    #[test]
    fn the_otlp_endpoint_must_be_an_http_url() {
        let mut c = Config::for_dir("x");
        c.serve.otlp_endpoint = Some("http://otel-collector:4318".into());
        assert!(c.validate().is_ok());
        c.serve.otlp_endpoint = Some("otel-collector:4318".into());
        let e = c.validate().expect_err("not a URL").to_string();
        assert!(e.contains("--otlp-endpoint"), "{e}");
    }
}
