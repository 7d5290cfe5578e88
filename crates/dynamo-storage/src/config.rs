//! The storage node's configuration: flags with `DYNAMO_*` environment variables.

pub use dynamo_server::config::ConfigError;
use dynamo_server::config::{Secret, ServeArgs};
use dynamo_server::internal::MemberArgs;
use dynamo_server::internal::testing::TEST_MEMBER_KEY;
use dynamo_server::ring_urls::RingUrls;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use dynamo_core::{NodeId, Partitioning};

use crate::engine::Durability;

/// A Dynamo storage node: one fjall database, the internal replica API.
#[derive(Debug, Clone, Parser)]
#[command(name = "dynamo-storage", version, about)]
pub struct Config {
    /// The node's id in the ring. Default: the id stored in the data directory, else the
    /// pod name (`HOSTNAME`) when it is a valid id, else a generated one.
    #[arg(long, env = "DYNAMO_NODE_ID")]
    pub node_id: Option<String>,

    /// Directory of the node's data (its volume).
    #[arg(long, env = "DYNAMO_DATA_DIR", default_value = "data/storage")]
    pub data_dir: PathBuf,

    /// Address the internal API listens on.
    #[arg(long, env = "DYNAMO_LISTEN", default_value = "127.0.0.1:7100")]
    pub listen: SocketAddr,

    /// How acknowledged writes are made durable: `sync` (fsync with group commit;
    /// survives power loss) or `buffered` (survives a process crash).
    #[arg(long, env = "DYNAMO_DURABILITY", value_enum, default_value = "sync")]
    pub durability: Durability,

    /// Partition count Q of the cluster (a power of two; fixed at cluster creation).
    #[arg(long, env = "DYNAMO_PARTITIONS", default_value_t = 256)]
    pub partitions: u64,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "DYNAMO_MAX_BODY_BYTES", default_value_t = 32 << 20)]
    pub max_body_bytes: usize,

    /// Most requests served at once (more get `503 overloaded`).
    #[arg(long, env = "DYNAMO_MAX_CONCURRENT_REQUESTS", default_value_t = 1024)]
    pub max_concurrent_requests: usize,

    /// Pause between hint delivery rounds.
    #[arg(long, env = "DYNAMO_HINT_INTERVAL_MS", default_value_t = 1_000)]
    pub hint_interval_ms: u64,

    /// Timeout of every call this node makes to another storage node (hint delivery,
    /// tombstone GC's questions, partition pulls' pages). `--hint-timeout-ms` is its old
    /// name.
    #[arg(
        long,
        alias = "hint-timeout-ms",
        env = "DYNAMO_PEER_TIMEOUT_MS",
        default_value_t = 2_000
    )]
    pub peer_timeout_ms: u64,

    /// In buffered mode, how often the journal is fsynced in the background.
    #[arg(long, env = "DYNAMO_BACKGROUND_FSYNC_MS", default_value_t = 1_000)]
    pub background_fsync_ms: u64,

    /// Base URL of the ring service (`http://host:port`): one URL or several,
    /// comma-separated (`http://ring-0:7000,http://ring-1:7000,http://ring-2:7000`); any
    /// replica, as each answers reads and forwards writes to its leader. Calls go to one
    /// replica and move on to the next when it does not answer. When set, the node sends
    /// heartbeats there and follows the cluster state (the ring), which it caches on its
    /// volume. Without it the node uses the last cached ring, if any.
    #[arg(long, env = "DYNAMO_RING_URL")]
    pub ring_url: Option<String>,

    /// The address other services reach this node at (`http://host:port`, or `https://`
    /// with TLS), sent in heartbeats. Default: the scheme the node serves followed by the
    /// address it is bound to.
    #[arg(long, env = "DYNAMO_ADVERTISE_ADDRESS")]
    pub advertise_address: Option<String>,

    /// Pause between heartbeats to the ring service.
    #[arg(long, env = "DYNAMO_HEARTBEAT_INTERVAL_MS", default_value_t = 1_000)]
    pub heartbeat_interval_ms: u64,

    /// Timeout of a heartbeat, and the slack added to a state long poll's 20 s wait.
    #[arg(long, env = "DYNAMO_RING_TIMEOUT_MS", default_value_t = 2_000)]
    pub ring_timeout_ms: u64,

    /// How long a tombstone is kept, at least, after the delete (the newest tombstone of
    /// a key counts). Covers in-flight writes, hints and clock skew; default one day.
    #[arg(long, env = "DYNAMO_TOMBSTONE_GRACE_MS", default_value_t = 86_400_000)]
    pub tombstone_grace_ms: u64,

    /// How long a write with an `Idempotency-Key` is remembered: a repeat within this
    /// window is answered as the first was and applies nothing. Ten minutes by default:
    /// far past any retry budget (the SDK's is seconds), while the records of every
    /// write inside the window stay on disk (the SDK keys every write).
    #[arg(long, env = "DYNAMO_IDEMPOTENCY_WINDOW_MS", default_value_t = 600_000)]
    pub idempotency_window_ms: u64,

    /// How long the change feed's log keeps an entry, at least (entries are purged each
    /// GC round, so at most this plus `--gc-interval-ms`). A feed reader whose cursor is
    /// older gets `410 cursor_expired`. Disk cost: about 100 bytes plus the key per
    /// change of a copy held here, so one hour at 1000 writes/s per node is ~400 MB.
    #[arg(long, env = "DYNAMO_FEED_RETENTION_MS", default_value_t = 3_600_000)]
    pub feed_retention_ms: u64,

    /// Pause between tombstone GC rounds (a round walks every object once).
    #[arg(long, env = "DYNAMO_GC_INTERVAL_MS", default_value_t = 600_000)]
    pub gc_interval_ms: u64,

    /// Pause between anti-entropy passes (a pass compares every partition this node
    /// replicates with its peers' copies); 0 turns anti-entropy off.
    #[arg(long, env = "DYNAMO_ANTI_ENTROPY_INTERVAL_MS", default_value_t = 60_000)]
    pub anti_entropy_interval_ms: u64,

    /// After each partition's exchanges, anti-entropy pauses this many times as long as
    /// they took, so repair yields to client traffic (2: busy at most a third of the
    /// time; 0: no pause).
    #[arg(long, env = "DYNAMO_ANTI_ENTROPY_TRANQUILITY", default_value_t = 2)]
    pub anti_entropy_tranquility: u32,

    /// Most stored bytes per second anti-entropy moves (pulled and pushed together).
    #[arg(long, env = "DYNAMO_ANTI_ENTROPY_MAX_BYTES_PER_SEC", default_value_t = 16 << 20)]
    pub anti_entropy_max_bytes_per_sec: u64,

    /// Serving and telemetry flags every service shares.
    #[command(flatten)]
    pub serve: ServeArgs,

    /// The member keys and the signature window of internal requests.
    #[command(flatten)]
    pub member: MemberArgs,
}

fn is_http_url(u: &str) -> bool {
    let rest = u.strip_prefix("http://").or_else(|| u.strip_prefix("https://"));
    rest.is_some_and(|r| !r.is_empty() && !r.contains(char::is_whitespace))
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
        if let Some(id) = &self.node_id
            && let Err(e) = NodeId::new(id.clone())
        {
            return bad("node-id", e.to_string());
        }
        let floor = dynamo_core::wire::internal::MAX_BATCH_BYTES;
        if self.max_body_bytes < floor {
            return bad(
                "max-body-bytes",
                format!("must hold a full replica batch ({floor} bytes)"),
            );
        }
        for (field, v) in [
            ("max-concurrent-requests", self.max_concurrent_requests as u64),
            ("hint-interval-ms", self.hint_interval_ms),
            ("peer-timeout-ms", self.peer_timeout_ms),
            ("background-fsync-ms", self.background_fsync_ms),
            ("heartbeat-interval-ms", self.heartbeat_interval_ms),
            ("ring-timeout-ms", self.ring_timeout_ms),
            ("tombstone-grace-ms", self.tombstone_grace_ms),
            ("gc-interval-ms", self.gc_interval_ms),
            ("idempotency-window-ms", self.idempotency_window_ms),
            ("feed-retention-ms", self.feed_retention_ms),
            (
                "anti-entropy-max-bytes-per-sec",
                self.anti_entropy_max_bytes_per_sec,
            ),
        ] {
            if v == 0 {
                return bad(field, "must be greater than 0".into());
            }
        }
        self.ring_urls()?;
        if let Some(u) = &self.advertise_address
            && !is_http_url(u)
        {
            return bad("advertise-address", format!("must be an http(s) URL, got {u:?}"));
        }
        self.serve.validate()?;
        self.member.validate()?;
        Ok(())
    }

    /// Parses `--ring-url` into the list of ring-service replicas; `None` without it.
    ///
    /// # Errors
    /// [`ConfigError`] for `ring-url` when the list is empty, too long, repeats a URL, or
    /// holds an entry that is not an http(s) base URL.
    pub fn ring_urls(&self) -> Result<Option<RingUrls>, ConfigError> {
        self.ring_url
            .as_deref()
            .map(RingUrls::parse)
            .transpose()
            .map_err(|e| ConfigError::new("ring-url", e.to_string()))
    }

    /// Returns the address to advertise: the configured one, else `http://` (`https://`
    /// when the node serves TLS) and the address the listener is bound to.
    pub fn advertise_address_for(&self, bound: SocketAddr) -> String {
        let scheme = if self.serve.tls.tls_cert_file.is_some() {
            "https"
        } else {
            "http"
        };
        self.advertise_address
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{bound}"))
    }

    /// Returns the configured node id, else `HOSTNAME` when it is a valid id (a
    /// StatefulSet pod name).
    pub fn effective_node_id(&self) -> Option<NodeId> {
        self.node_id
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .and_then(|s| NodeId::new(s).ok())
    }

    /// Returns the partitioning (after [`Config::validate`]).
    pub fn partitioning(&self) -> Partitioning {
        Partitioning::with_count(self.partitions).unwrap_or_else(|_| {
            Partitioning::with_count(1 << dynamo_core::limits::DEFAULT_PARTITION_BITS).expect("256 is valid")
        })
    }

    /// Builds a configuration for tests: defaults with `data_dir` and the public test
    /// member key ([`dynamo_server::internal::testing`]).
    pub fn for_dir(data_dir: impl Into<PathBuf>) -> Config {
        let mut c = Config::parse_from(["dynamo-storage"]);
        c.data_dir = data_dir.into();
        c.member.member_key = Secret(TEST_MEMBER_KEY.into());
        c
    }

    /// The drain deadline.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.serve.drain_timeout_ms)
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
    fn ring_flags_are_validated() {
        let mut c = Config::for_dir("/tmp/x");
        assert!(c.validate().is_ok());
        assert_eq!(c.tombstone_grace_ms, 86_400_000);
        c.ring_url = Some("http://ring:7000".into());
        c.advertise_address = Some("https://node-0.storage:7100".into());
        assert!(c.validate().is_ok());
        c.ring_url = Some("ring:7000".into());
        assert!(c.validate().is_err());
        c.ring_url = Some("http://".into());
        assert!(c.validate().is_err());
        // Several replicas, comma-separated; an empty entry is refused.
        c.ring_url = Some("http://ring-0:7000, http://ring-1:7000,https://ring-2:7000/".into());
        assert!(c.validate().is_ok());
        assert_eq!(c.ring_urls().expect("valid").map(|u| u.len()), Some(3));
        c.ring_url = Some("http://ring-0:7000,,http://ring-1:7000".into());
        assert_eq!(c.validate().map_err(|e| e.field), Err("ring-url"));
        c.ring_url = None;
        c.advertise_address = Some("ftp://x".into());
        assert!(c.validate().is_err());
        c.advertise_address = None;
        assert_eq!(
            c.advertise_address_for("127.0.0.1:7100".parse().expect("addr")),
            "http://127.0.0.1:7100"
        );
        c.tombstone_grace_ms = 0;
        assert!(c.validate().is_err());
    }

    #[test]
    fn the_otlp_endpoint_must_be_an_http_url() {
        let mut c = Config::for_dir("/tmp/x");
        c.serve.otlp_endpoint = Some("http://otel-collector:4318".into());
        assert!(c.validate().is_ok());
        c.serve.otlp_endpoint = Some("otel-collector:4318".into());
        let e = c.validate().expect_err("not a URL").to_string();
        assert!(e.contains("--otlp-endpoint"), "{e}");
    }
}
