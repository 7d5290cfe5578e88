//! The ring service's configuration: flags with `DYNAMO_*` environment variables.

pub use dynamo_server::config::ConfigError;
use dynamo_server::config::{Secret, ServeArgs};
use dynamo_server::internal::testing::{TEST_CONTROL_KEY, TEST_MEMBER_KEY};
use dynamo_server::internal::{ControlArgs, MemberArgs};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use dynamo_core::Partitioning;
use dynamo_core::limits::MAX_N;

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
        self.serve.validate()?;
        self.member.validate()?;
        Ok(())
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
