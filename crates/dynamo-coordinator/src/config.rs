//! The coordinator's configuration: flags with `DYNAMO_*` environment variables.

pub use dynamo_server::config::ConfigError;
pub use dynamo_server::config::Secret;
use dynamo_server::config::ServeArgs;
use dynamo_server::internal::testing::{TEST_CONTROL_KEY, TEST_MEMBER_KEY};
use dynamo_server::internal::{ControlArgs, MemberArgs};
use dynamo_server::ring_urls::RingUrls;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use dynamo_core::context::ContextKeys;
use dynamo_core::wire::BucketProps;

/// Fewest characters of a root token, however it is given (a guessable root token is
/// every permission on every bucket).
pub const MIN_ROOT_TOKEN_CHARS: usize = 16;

/// The context key of [`Config::for_ring`]: public, so for tests only.
pub const TEST_CONTEXT_KEY: &str = "1:dGVzdC1vbmx5LWNvbnRleHQta2V5LW5ldmVyLWluLXByb2R1Y3Rpb24";

/// Most root tokens a root token file holds: the current one and, while it rotates, the
/// one before.
pub const MAX_ROOT_TOKENS: usize = 2;

/// Reads a root token file: one token per line (blank lines and `#` comments skipped), at
/// most [`MAX_ROOT_TOKENS`], each at least [`MIN_ROOT_TOKEN_CHARS`] characters. Two lines
/// are a rotation in progress: both are accepted.
///
/// # Errors
/// What is wrong with the file, as a sentence.
pub fn parse_root_token_file(text: &str) -> Result<Vec<Secret>, String> {
    let tokens: Vec<Secret> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| Secret(l.to_owned()))
        .collect();
    if tokens.is_empty() {
        return Err("the file holds no token".into());
    }
    if tokens.len() > MAX_ROOT_TOKENS {
        return Err(format!(
            "the file holds {} tokens; at most {MAX_ROOT_TOKENS} (the new one and, while rotating, the old one)",
            tokens.len()
        ));
    }
    if tokens.iter().any(|t| t.0.len() < MIN_ROOT_TOKEN_CHARS) {
        return Err(format!(
            "the token must be at least {MIN_ROOT_TOKEN_CHARS} characters"
        ));
    }
    Ok(tokens)
}

/// A Dynamo coordinator: stateless, serves the public REST API.
#[derive(Debug, Clone, Parser)]
#[command(name = "dynamo-coordinator", version, about)]
pub struct Config {
    /// Address the public API listens on.
    #[arg(long, env = "DYNAMO_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// The ring service's internal address: one URL or several, comma-separated
    /// (`http://ring-0:7000,http://ring-1:7000,http://ring-2:7000`); any replica, as each
    /// answers reads and forwards writes to its leader. Calls go to one replica and move
    /// on to the next when it does not answer.
    #[arg(long, env = "DYNAMO_RING_URL", default_value = "http://127.0.0.1:7000")]
    pub ring_url: String,

    /// The root (admin) token. Prefer `--root-token-file` or the environment variable
    /// over the flag, which shows in process listings.
    #[arg(long, env = "DYNAMO_ROOT_TOKEN", default_value = "", hide_env_values = true)]
    pub root_token: Secret,

    /// A file holding the root token (first line), e.g. `<data-dir>/root-token`.
    #[arg(long, env = "DYNAMO_ROOT_TOKEN_FILE")]
    pub root_token_file: Option<PathBuf>,

    /// The keys that seal context tokens, as the lines of a key file
    /// (`<id>:<base64url secret>`, the sealing key first). Every coordinator of a cluster
    /// needs the same keys. Prefer `--context-key-file`.
    #[arg(long, env = "DYNAMO_CONTEXT_KEY", default_value = "", hide_env_values = true)]
    pub context_key: Secret,

    /// A file holding the context keys (see `--context-key`), e.g. `<data-dir>/context-key`.
    #[arg(long, env = "DYNAMO_CONTEXT_KEY_FILE")]
    pub context_key_file: Option<PathBuf>,

    /// Replicas per key for buckets without explicit properties.
    #[arg(long, env = "DYNAMO_DEFAULT_N", default_value_t = 3)]
    pub default_n: u8,

    /// Read quorum for buckets without explicit properties.
    #[arg(long, env = "DYNAMO_DEFAULT_R", default_value_t = 2)]
    pub default_r: u8,

    /// Write quorum for buckets without explicit properties.
    #[arg(long, env = "DYNAMO_DEFAULT_W", default_value_t = 2)]
    pub default_w: u8,

    /// How long a request waits for its quorum unless `?timeout_ms=` says less.
    #[arg(long, env = "DYNAMO_REQUEST_TIMEOUT_MS", default_value_t = 2_000)]
    pub request_timeout_ms: u64,

    /// The largest `?timeout_ms=` a client may ask for.
    #[arg(long, env = "DYNAMO_MAX_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub max_request_timeout_ms: u64,

    /// Timeout of one call to a storage node: a hung node costs at most this once, then
    /// it is skipped until a probe succeeds.
    #[arg(long, env = "DYNAMO_REPLICA_TIMEOUT_MS", default_value_t = 1_000)]
    pub replica_timeout_ms: u64,

    /// How many replicas a read asks at first: `all` (every replica; the first R
    /// replies answer, the rest repair) or `first` (R replicas, the others only when one
    /// fails or `--read-hedge-ms` passes without R replies). docs/architecture.md says
    /// which is the default and why.
    #[arg(long, env = "DYNAMO_READ_FANOUT", value_enum, default_value_t = ReadFanoutArg::First)]
    pub read_fanout: ReadFanoutArg,

    /// With `--read-fanout first`: how long a read waits for its first R replies before
    /// it asks the other replicas too.
    #[arg(long, env = "DYNAMO_READ_HEDGE_MS", default_value_t = 20)]
    pub read_hedge_ms: u64,

    /// How often a background probe asks a node marked down whether it answers again
    /// (so a node that is back is used again within about this long).
    #[arg(long, env = "DYNAMO_NODE_BACKOFF_MS", default_value_t = 500)]
    pub node_backoff_ms: u64,

    /// Replica batches in flight per storage node and lane (reads, writes). One keeps
    /// batches large: operations queue while a batch is out and all go in the next, and
    /// a request costs about the same whether it carries one operation or twenty.
    #[arg(long, env = "DYNAMO_MAX_INFLIGHT_PER_NODE", default_value_t = 1)]
    pub max_inflight_per_node: usize,

    /// Read repairs waiting at most; more are dropped and counted.
    #[arg(long, env = "DYNAMO_READ_REPAIR_QUEUE", default_value_t = 1024)]
    pub read_repair_queue: usize,

    /// Largest request body accepted (a value is at most 1 MiB).
    #[arg(long, env = "DYNAMO_MAX_BODY_BYTES", default_value_t = 2 << 20)]
    pub max_body_bytes: usize,

    /// Most requests served at once (more get `503 overloaded`).
    #[arg(long, env = "DYNAMO_MAX_CONCURRENT_REQUESTS", default_value_t = 4096)]
    pub max_concurrent_requests: usize,

    /// Requests per second a scoped token may make through this coordinator (a burst of
    /// one second's worth; more get `429 rate_limited` with `Retry-After`), unless the
    /// token carries its own `rate_limit_rps`. 0 turns the default off.
    #[arg(long, env = "DYNAMO_TOKEN_RATE_LIMIT_RPS", default_value_t = 5_000)]
    pub token_rate_limit_rps: u32,

    /// Requests per second the root token may make through this coordinator. 0 (the
    /// default) is no limit: the root token is the operator's way in during an incident.
    #[arg(long, env = "DYNAMO_ROOT_RATE_LIMIT_RPS", default_value_t = 0)]
    pub root_rate_limit_rps: u32,

    /// How long the ring service may hold each state poll of this coordinator: it answers
    /// at least this often while it is up.
    #[arg(long, env = "DYNAMO_RING_POLL_WAIT_MS", default_value_t = 20_000)]
    pub ring_poll_wait_ms: u64,

    /// After this long without an answer from the ring service, scoped tokens are
    /// refused (`503 ring_unavailable`): this coordinator can no longer confirm that a
    /// token was not revoked, so a revocation takes effect within this bound even when
    /// the coordinator cannot hear of it. The root token and the data path's cached ring
    /// are not affected. At least twice `--ring-poll-wait-ms`.
    #[arg(long, env = "DYNAMO_MAX_RING_SILENCE_MS", default_value_t = 60_000)]
    pub max_ring_silence_ms: u64,

    /// How often `--root-token-file` is read again, so a rotated root token takes effect
    /// without a restart.
    #[arg(long, env = "DYNAMO_ROOT_TOKEN_RELOAD_MS", default_value_t = 2_000)]
    pub root_token_reload_ms: u64,

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
        if let Err(e) = self.default_props().validate() {
            return bad("default-n", e.to_string());
        }
        self.ring_urls()?;
        if self.max_body_bytes <= dynamo_core::limits::MAX_VALUE_BYTES {
            return bad("max-body-bytes", "must exceed the 1 MiB value limit".into());
        }
        for (field, v) in [
            ("request-timeout-ms", self.request_timeout_ms),
            ("max-request-timeout-ms", self.max_request_timeout_ms),
            ("replica-timeout-ms", self.replica_timeout_ms),
            ("node-backoff-ms", self.node_backoff_ms),
            ("max-inflight-per-node", self.max_inflight_per_node as u64),
            ("read-repair-queue", self.read_repair_queue as u64),
            ("max-concurrent-requests", self.max_concurrent_requests as u64),
            ("root-token-reload-ms", self.root_token_reload_ms),
            ("ring-poll-wait-ms", self.ring_poll_wait_ms),
        ] {
            if v == 0 {
                return bad(field, "must be greater than 0".into());
            }
        }
        if self.read_hedge_ms >= self.request_timeout_ms {
            return bad(
                "read-hedge-ms",
                "must be below --request-timeout-ms (a hedge after the deadline never helps)".into(),
            );
        }
        if self.max_ring_silence_ms < self.ring_poll_wait_ms.saturating_mul(2) {
            return bad(
                "max-ring-silence-ms",
                "must be at least twice --ring-poll-wait-ms (a quiet ring service answers once a wait)"
                    .into(),
            );
        }
        if self.ring_poll_wait_ms > dynamo_core::wire::cluster::MAX_STATE_WAIT_MS {
            return bad(
                "ring-poll-wait-ms",
                format!(
                    "must be at most {} ms (the ring service holds a poll no longer)",
                    dynamo_core::wire::cluster::MAX_STATE_WAIT_MS
                ),
            );
        }
        for (field, rps) in [
            ("token-rate-limit-rps", self.token_rate_limit_rps),
            ("root-rate-limit-rps", self.root_rate_limit_rps),
        ] {
            if rps > dynamo_core::wire::cluster::MAX_TOKEN_RATE_LIMIT_RPS {
                return bad(field, "must be at most 1000000 (0 for no limit)".into());
            }
        }
        if self.request_timeout_ms > self.max_request_timeout_ms {
            return bad(
                "request-timeout-ms",
                "must not exceed --max-request-timeout-ms".into(),
            );
        }
        self.serve.validate()?;
        self.member.validate()?;
        Ok(())
    }

    /// Reads the root tokens: the one of the flag/env, or those of the file (see
    /// [`parse_root_token_file`]).
    ///
    /// # Errors
    /// [`ConfigError`] when neither gives a token, the file cannot be read, or a token is
    /// shorter than [`MIN_ROOT_TOKEN_CHARS`].
    pub fn load_root_tokens(&self) -> Result<Vec<Secret>, ConfigError> {
        if !self.root_token.0.is_empty() {
            let token = self.root_token.0.trim();
            if token.len() < MIN_ROOT_TOKEN_CHARS {
                return Err(ConfigError::new(
                    "root-token",
                    format!("the token must be at least {MIN_ROOT_TOKEN_CHARS} characters"),
                ));
            }
            return Ok(vec![Secret(token.to_owned())]);
        }
        let Some(path) = &self.root_token_file else {
            return Err(ConfigError::new(
                "root-token",
                "a root token is required (--root-token, DYNAMO_ROOT_TOKEN or --root-token-file)",
            ));
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new("root-token-file", format!("{}: {e}", path.display())))?;
        parse_root_token_file(&text).map_err(|reason| ConfigError::new("root-token-file", reason))
    }

    /// Reads the context keys from the flag/env or the file.
    ///
    /// # Errors
    /// [`ConfigError`] when neither gives keys, the file cannot be read, or a key is
    /// malformed.
    pub fn load_context_keys(&self) -> Result<ContextKeys, ConfigError> {
        let ring = dynamo_server::internal::load_keys(
            ("context-key", &self.context_key),
            ("context-key-file", self.context_key_file.as_ref()),
        )?;
        Ok(ContextKeys::from(ring))
    }

    /// Properties of buckets without explicit ones.
    pub fn default_props(&self) -> BucketProps {
        BucketProps {
            n: self.default_n,
            r: self.default_r,
            w: self.default_w,
            ..BucketProps::default()
        }
    }

    /// Parses `--ring-url` into the list of ring-service replicas.
    ///
    /// # Errors
    /// [`ConfigError`] for `ring-url` when the list is empty, too long, repeats a URL, or
    /// holds an entry that is not an http(s) base URL.
    pub fn ring_urls(&self) -> Result<RingUrls, ConfigError> {
        RingUrls::parse(&self.ring_url).map_err(|e| ConfigError::new("ring-url", e.to_string()))
    }

    /// The default quorum wait.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// Builds a configuration for tests, with [`TEST_CONTEXT_KEY`] and the public test
    /// member and control keys ([`dynamo_server::internal::testing`]).
    pub fn for_ring(ring_url: impl Into<String>, root_token: impl Into<String>) -> Config {
        let mut c = Config::parse_from(["dynamo-coordinator"]);
        c.ring_url = ring_url.into();
        c.root_token = Secret(root_token.into());
        c.context_key = Secret(TEST_CONTEXT_KEY.into());
        c.member.member_key = Secret(TEST_MEMBER_KEY.into());
        c.control.control_key = Secret(TEST_CONTROL_KEY.into());
        c
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
    fn the_read_hedge_must_come_before_the_request_deadline() {
        let mut c = Config::for_ring("http://127.0.0.1:7000", "root-token-for-tests-0123");
        c.read_fanout = ReadFanoutArg::First;
        c.read_hedge_ms = c.request_timeout_ms;
        let e = c.validate().expect_err("hedge past the deadline").to_string();
        assert!(e.contains("--read-hedge-ms"), "{e}");
        c.read_hedge_ms = 20;
        assert!(c.validate().is_ok());
        assert_eq!(
            c.read_fanout(),
            dynamo_core::round::ReadFanout::First { hedge_ms: 20 }
        );
    }

    // Goal: `--ring-url` takes one URL or several, comma-separated, and refuses a list
    // with an empty or non-http(s) entry, naming the flag.
    #[test]
    fn the_ring_url_is_a_list_of_http_urls() {
        let mut c = Config::for_ring("http://ring-0:7000", "root-token-for-tests-0123");
        assert!(c.validate().is_ok());
        c.ring_url = "http://ring-0:7000, http://ring-1:7000/,https://ring-2:7000".into();
        assert!(c.validate().is_ok());
        assert_eq!(
            c.ring_urls().expect("a list").as_slice(),
            ["http://ring-0:7000", "http://ring-1:7000", "https://ring-2:7000"]
        );
        for bad in [
            "",
            "ring-0:7000",
            "http://ring-0:7000,,http://ring-1:7000",
            "http://ring-0:7000,",
        ] {
            c.ring_url = bad.into();
            let e = c.validate().expect_err(bad).to_string();
            assert!(e.starts_with("invalid --ring-url"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_otlp_endpoint_must_be_an_http_url() {
        let mut c = Config::for_ring("http://127.0.0.1:7000", "root-token-for-tests-0123");
        c.serve.otlp_endpoint = Some("http://otel-collector:4318".into());
        assert!(c.validate().is_ok());
        c.serve.otlp_endpoint = Some("otel-collector:4318".into());
        let e = c.validate().expect_err("not a URL").to_string();
        assert!(e.contains("--otlp-endpoint"), "{e}");
    }

    #[test]
    fn a_root_token_is_long_however_it_is_given() {
        let mut c = Config::for_ring("http://127.0.0.1:7000", "a");
        let e = c.load_root_tokens().expect_err("one character").to_string();
        assert!(e.contains("--root-token") && e.contains("16"), "{e}");
        c.root_token = Secret("  padded-root-token-0123  ".into());
        assert_eq!(
            c.load_root_tokens().expect("long enough"),
            vec![Secret("padded-root-token-0123".into())]
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("root-token");
        std::fs::write(&path, "short\n").expect("write");
        c.root_token = Secret(String::new());
        c.root_token_file = Some(path);
        let e = c.load_root_tokens().expect_err("short file").to_string();
        assert!(e.contains("--root-token-file"), "{e}");
    }

    #[test]
    fn a_root_token_file_holds_one_token_or_a_rotation() {
        let one = parse_root_token_file("# root\nroot-token-0123456789\n").expect("one");
        assert_eq!(one, vec![Secret("root-token-0123456789".into())]);
        let two = parse_root_token_file("new-root-token-0123456\n\nold-root-token-0123456\n").expect("two");
        assert_eq!(two.len(), 2);
        assert!(parse_root_token_file("").is_err());
        assert!(
            parse_root_token_file("a-root-token-000000001\na-root-token-000000002\na-root-token-000000003")
                .is_err()
        );
        assert!(parse_root_token_file("a-root-token-000000001\nshort").is_err());
    }

    #[test]
    fn context_keys_are_required_and_checked() {
        let mut c = Config::for_ring("http://127.0.0.1:7000", "root-token-for-tests-0123");
        assert_eq!(c.load_context_keys().expect("the test key").sealing().id(), 1);
        c.context_key = Secret(String::new());
        let e = c.load_context_keys().expect_err("no key").to_string();
        assert!(e.contains("--context-key"), "{e}");
        c.context_key = Secret("1:c2hvcnQ".into());
        let e = c.load_context_keys().expect_err("short key").to_string();
        assert!(e.contains("32 to 64"), "{e}");

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("context-key");
        std::fs::write(
            &path,
            format!("# rotated in 2026\n2:{}\n{TEST_CONTEXT_KEY}\n", "QUJD".repeat(11)),
        )
        .expect("write");
        c.context_key = Secret(String::new());
        c.context_key_file = Some(path);
        let keys = c.load_context_keys().expect("file");
        assert_eq!(keys.sealing().id(), 2, "the first line seals");
        c.context_key_file = Some(dir.path().join("missing"));
        let e = c.load_context_keys().expect_err("missing file").to_string();
        assert!(e.contains("--context-key-file"), "{e}");
    }
}

/// `--read-fanout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReadFanoutArg {
    /// Ask every replica.
    All,
    /// Ask R replicas, hedge after `--read-hedge-ms`.
    First,
}

impl Config {
    /// The read fan-out the rounds use.
    pub fn read_fanout(&self) -> dynamo_core::round::ReadFanout {
        match self.read_fanout {
            ReadFanoutArg::All => dynamo_core::round::ReadFanout::All,
            ReadFanoutArg::First => dynamo_core::round::ReadFanout::First {
                hedge_ms: self.read_hedge_ms,
            },
        }
    }
}
