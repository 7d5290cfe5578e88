//! The command line's shape: global flags and the subcommands.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use dynamo_client::{Client, ClientError, RetryPolicy};

use crate::commands::{
    bench, bucket, cluster, crdt, delete, dev, get, keygen, list, put, ring, token, watch,
};
use crate::error::CliError;

/// The file, inside the data directory, where `dynamo dev` writes the root token.
pub const ROOT_TOKEN_FILE: &str = "root-token";

/// The command line of a Dynamo cluster.
#[derive(Debug, Parser)]
#[command(name = "dynamo", version, about, propagate_version = true)]
pub struct Cli {
    /// Flags every subcommand takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand takes (before or after its name).
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// The coordinator's URL.
    #[arg(
        long,
        env = "DYNAMO_ENDPOINT",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub endpoint: String,

    /// The bearer token. Without one, the root token is read from `<data-dir>/root-token`.
    #[arg(long, env = "DYNAMO_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,

    /// A file holding the bearer token (a mounted Kubernetes Secret, a Docker secret), so
    /// the token need not be in the environment or on the command line.
    #[arg(long, env = "DYNAMO_TOKEN_FILE", conflicts_with = "token", global = true)]
    pub token_file: Option<PathBuf>,

    /// The CA certificates (PEM) trusted for an `https://` endpoint. Default: the
    /// system's roots, or `<data-dir>/tls/ca.pem` when it exists (`dynamo dev --tls`).
    #[arg(long, env = "DYNAMO_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,

    /// The data directory of a local cluster (`dynamo dev` writes its root token there).
    #[arg(long, env = "DYNAMO_DATA_DIR", default_value = "data", global = true)]
    pub data_dir: PathBuf,

    /// The bound on each request to the coordinator, in milliseconds.
    #[arg(long, env = "DYNAMO_TIMEOUT_MS", default_value_t = 10_000, global = true)]
    pub timeout_ms: u64,

    /// Print JSON instead of text, for commands with structured output.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The subcommands. Each lives in its own module under `commands/`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read a key: print its value, or every sibling when there are several.
    Get(get::GetArgs),
    /// Write a value from the command line, a file or stdin; print the new context.
    Put(put::PutArgs),
    /// Delete a key (writes a tombstone).
    Delete(delete::DeleteArgs),
    /// List a bucket's keys, one per line, in byte order (streamed page by page).
    List(list::ListArgs),
    /// Print a bucket's changes as they happen, one per line, until interrupted; on exit,
    /// print the cursor to resume from (`--cursor`) on stderr.
    Watch(watch::WatchArgs),
    /// Read and change the keys of CRDT buckets: counters, sets, registers, maps.
    #[command(subcommand)]
    Crdt(crdt::CrdtCommand),
    /// Show or change a bucket's properties.
    #[command(subcommand)]
    Bucket(bucket::BucketCommand),
    /// Show the cluster's nodes and the change in progress; join, decommission and
    /// replace nodes; retry or abort a failed change (`--wait` follows a change to its
    /// end).
    Cluster(cluster::ClusterArgs),
    /// Show the ring, or where a key lives.
    Ring(ring::RingArgs),
    /// Create, list and delete scoped tokens.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Run a whole local cluster (ring service, storage nodes, coordinator) on loopback.
    Dev(dev::DevArgs),
    /// Measure throughput and latency under a YCSB-style load (Dynamo or etcd).
    Bench(bench::BenchArgs),
    /// Print a fresh secret key: a line of a context, member or control key file.
    Keygen(keygen::KeygenArgs),
}

impl GlobalArgs {
    /// Builds a client for the endpoint with the resolved token.
    ///
    /// # Errors
    /// [`CliError::Usage`] when no token can be found or the endpoint is not a URL the
    /// client accepts; [`CliError::Io`] when the token file exists but cannot be read.
    pub fn client(&self) -> Result<Client, CliError> {
        self.client_for(
            &self.endpoint,
            RetryPolicy::default(),
            Duration::from_millis(self.timeout_ms),
        )
    }

    /// Builds a client for `endpoint` with the resolved token, the `retry` policy and the
    /// request `timeout` (`dynamo bench` spreads its load over several endpoints and
    /// counts every failure, so it retries nothing).
    ///
    /// # Errors
    /// As [`GlobalArgs::client`].
    pub fn client_for(
        &self,
        endpoint: &str,
        retry: RetryPolicy,
        timeout: Duration,
    ) -> Result<Client, CliError> {
        let token = self.resolve_token()?;
        let mut builder = Client::builder(endpoint);
        if let Some(ca) = self.resolve_ca_file(endpoint) {
            builder = builder.ca_file(ca);
        }
        builder
            .token(token)
            .timeout(timeout)
            .retry(retry)
            .build()
            .map_err(|e| match e {
                ClientError::Config { message } => CliError::Usage(message),
                other => CliError::Client(other),
            })
    }

    /// Returns `--ca-file`, else the CA of a local TLS cluster when the endpoint is
    /// `https://` and `<data-dir>/tls/ca.pem` exists, else nothing (the system's roots).
    fn resolve_ca_file(&self, endpoint: &str) -> Option<PathBuf> {
        if let Some(ca) = &self.ca_file {
            return Some(ca.clone());
        }
        let local = self.data_dir.join(crate::commands::dev::TLS_DIR).join("ca.pem");
        (endpoint.starts_with("https://") && local.is_file()).then_some(local)
    }

    /// Returns `--token` / `DYNAMO_TOKEN`, else the content of `--token-file`, else that
    /// of `<data-dir>/root-token`.
    fn resolve_token(&self) -> Result<String, CliError> {
        if let Some(token) = &self.token {
            return Ok(token.clone());
        }
        if let Some(path) = &self.token_file {
            return read_token_file(path, |path| {
                format!("the token file {} does not exist", path.display())
            });
        }
        let path = self.data_dir.join(ROOT_TOKEN_FILE);
        read_token_file(&path, |path| {
            format!(
                "no token: pass --token or --token-file, set DYNAMO_TOKEN or DYNAMO_TOKEN_FILE, or \
                 point --data-dir at a directory with a {ROOT_TOKEN_FILE} file ({} does not exist)",
                path.display()
            )
        })
    }
}

/// Reads a token file: its first token line (blank lines and `#` comments skipped, as
/// the coordinator reads its root-token file, which holds a second, older token while one
/// is rotated; the first is the current one). `missing` words the error for a file that
/// does not exist.
fn read_token_file(path: &Path, missing: impl FnOnce(&Path) -> String) -> Result<String, CliError> {
    match std::fs::read_to_string(path) {
        Ok(content) => content
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .ok_or_else(|| CliError::Usage(format!("the token file {} is empty", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(CliError::Usage(missing(path))),
        Err(source) => Err(CliError::Io {
            what: format!("cannot read {}", path.display()),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_before_or_after_the_subcommand() {
        let cli = Cli::try_parse_from(["dynamo", "get", "b", "k", "--endpoint", "http://h:1", "--json"])
            .expect("parses");
        assert_eq!(cli.global.endpoint, "http://h:1");
        assert!(cli.global.json);
    }

    #[test]
    fn a_token_file_gives_its_first_token_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(
            &path,
            "# rotated on Monday\n\n  new-token-0123456789  \nold-token-0123456789\n",
        )
        .expect("write");
        let cli = Cli::try_parse_from(["dynamo", "cluster", "--token-file", path.to_str().expect("utf-8")])
            .expect("parses");
        assert_eq!(cli.global.resolve_token().expect("token"), "new-token-0123456789");

        std::fs::write(&path, "# nothing yet\n").expect("write");
        let err = cli.global.resolve_token().expect_err("empty");
        assert!(err.to_string().contains("is empty"), "{err}");

        let missing = dir.path().join("absent");
        let cli = Cli::try_parse_from([
            "dynamo",
            "cluster",
            "--token-file",
            missing.to_str().expect("utf-8"),
        ])
        .expect("parses");
        let err = cli.global.resolve_token().expect_err("missing");
        assert!(err.to_string().contains("does not exist"), "{err}");
    }

    #[test]
    fn a_token_and_a_token_file_are_exclusive() {
        let parsed = Cli::try_parse_from(["dynamo", "cluster", "--token", "t", "--token-file", "f"]);
        assert!(parsed.is_err());
    }
}
