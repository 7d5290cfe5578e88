//! The coordinator's configuration: flags with `DYNAMO_*` environment variables.

pub use dynamo_server::config::ConfigError;
use dynamo_server::config::ServeArgs;
use std::fmt;
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

/// A secret string whose `Debug` never prints it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "<unset>"
        } else {
            "<redacted>"
        })
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

/// A Dynamo coordinator: stateless, serves the public REST API.
#[derive(Debug, Clone, Parser)]
#[command(name = "dynamo-coordinator", version, about)]
pub struct Config {
    /// Address the public API listens on.
    #[arg(long, env = "DYNAMO_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// The ring service's internal address.
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

    /// Serving and telemetry flags every service shares.
    #[command(flatten)]
    pub serve: ServeArgs,
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
        if !(self.ring_url.starts_with("http://") || self.ring_url.starts_with("https://")) {
            return bad("ring-url", "must be an http(s) URL".into());
        }
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
        ] {
            if v == 0 {
                return bad(field, "must be greater than 0".into());
            }
        }
        if self.request_timeout_ms > self.max_request_timeout_ms {
            return bad(
                "request-timeout-ms",
                "must not exceed --max-request-timeout-ms".into(),
            );
        }
        self.serve.validate()?;
        Ok(())
    }

    /// Reads the root token from the flag/env or the file.
    ///
    /// # Errors
    /// [`ConfigError`] when neither gives a non-empty token, or the file cannot be read.
    pub fn load_root_token(&self) -> Result<Secret, ConfigError> {
        if !self.root_token.0.is_empty() {
            if self.root_token.0.trim().len() < MIN_ROOT_TOKEN_CHARS {
                return Err(ConfigError {
                    field: "root-token",
                    reason: format!("the token must be at least {MIN_ROOT_TOKEN_CHARS} characters"),
                });
            }
            return Ok(Secret(self.root_token.0.trim().to_owned()));
        }
        let Some(path) = &self.root_token_file else {
            return Err(ConfigError {
                field: "root-token",
                reason: "a root token is required (--root-token, DYNAMO_ROOT_TOKEN or --root-token-file)"
                    .into(),
            });
        };
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            field: "root-token-file",
            reason: format!("{}: {e}", path.display()),
        })?;
        let token = text.lines().next().unwrap_or("").trim().to_owned();
        if token.len() < MIN_ROOT_TOKEN_CHARS {
            return Err(ConfigError {
                field: "root-token-file",
                reason: format!("the token must be at least {MIN_ROOT_TOKEN_CHARS} characters"),
            });
        }
        Ok(Secret(token))
    }

    /// Reads the context keys from the flag/env or the file.
    ///
    /// # Errors
    /// [`ConfigError`] when neither gives keys, the file cannot be read, or a key is
    /// malformed.
    pub fn load_context_keys(&self) -> Result<ContextKeys, ConfigError> {
        let (field, text) = if !self.context_key.0.is_empty() {
            ("context-key", self.context_key.0.clone())
        } else if let Some(path) = &self.context_key_file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
                field: "context-key-file",
                reason: format!("{}: {e}", path.display()),
            })?;
            ("context-key-file", text)
        } else {
            return Err(ConfigError {
                field: "context-key",
                reason:
                    "context keys are required (--context-key, DYNAMO_CONTEXT_KEY or --context-key-file; \
                         `dynamo keygen` writes one)"
                        .into(),
            });
        };
        ContextKeys::parse(&text).map_err(|e| ConfigError {
            field,
            reason: e.to_string(),
        })
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

    /// The default quorum wait.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// Builds a configuration for tests, with [`TEST_CONTEXT_KEY`].
    pub fn for_ring(ring_url: impl Into<String>, root_token: impl Into<String>) -> Config {
        let mut c = Config::parse_from(["dynamo-coordinator"]);
        c.ring_url = ring_url.into();
        c.root_token = Secret(root_token.into());
        c.context_key = Secret(TEST_CONTEXT_KEY.into());
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
        let e = c.load_root_token().expect_err("one character").to_string();
        assert!(e.contains("--root-token") && e.contains("16"), "{e}");
        c.root_token = Secret("  padded-root-token-0123  ".into());
        assert_eq!(
            c.load_root_token().expect("long enough").0,
            "padded-root-token-0123"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("root-token");
        std::fs::write(&path, "short\n").expect("write");
        c.root_token = Secret(String::new());
        c.root_token_file = Some(path);
        let e = c.load_root_token().expect_err("short file").to_string();
        assert!(e.contains("--root-token-file"), "{e}");
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
