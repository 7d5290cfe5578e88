//! What every service's configuration shares: the flags of serving and telemetry
//! ([`ServeArgs`], flattened into each service's `Config`), the one [`ConfigError`], and
//! the one `main` of the service binaries ([`service_main`]).

use std::fmt::Debug;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use dynamo_tls::{ClientTls, ServerTls};

use tokio_util::sync::CancellationToken;

/// A secret string whose `Debug` never prints it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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

/// A configuration that cannot work: the flag, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid --{field}: {reason}")]
pub struct ConfigError {
    /// The flag, without its dashes.
    pub field: &'static str,
    /// What is wrong.
    pub reason: String,
}

impl ConfigError {
    /// A refusal of `--field` for `reason`.
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        ConfigError {
            field,
            reason: reason.into(),
        }
    }
}

/// Flags every service takes, the same way.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ServeArgs {
    /// How long in-flight requests may drain at shutdown.
    #[arg(long, env = "DYNAMO_DRAIN_TIMEOUT_MS", default_value_t = 10_000)]
    pub drain_timeout_ms: u64,

    /// Log JSON lines instead of human-readable text.
    #[arg(long, env = "DYNAMO_LOG_JSON")]
    pub log_json: bool,

    /// Base URL of an OpenTelemetry collector's OTLP/HTTP receiver, e.g.
    /// `http://otel-collector:4318`. When set, spans are exported to `<url>/v1/traces`
    /// (protobuf); unset, nothing is exported.
    #[arg(long, env = "DYNAMO_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// Most connections open at once; past it the listener stops accepting until one
    /// closes.
    #[arg(long, env = "DYNAMO_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// A client must send a request's headers within this, counted from its first byte
    /// (else the connection is closed).
    #[arg(long, env = "DYNAMO_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,

    /// A client must send a request's whole body within this (else `400
    /// request_timeout`).
    #[arg(long, env = "DYNAMO_BODY_READ_TIMEOUT_MS", default_value_t = 30_000)]
    pub body_read_timeout_ms: u64,

    /// TLS of the listener and of the clients the service calls others with.
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// TLS flags every service takes: its listener's certificate and the CA its clients
/// trust. Without a certificate the listener speaks plain HTTP.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct TlsArgs {
    /// The listener's certificate chain (PEM, leaf first). With `--tls-key-file`, the
    /// service speaks only HTTPS.
    #[arg(long, env = "DYNAMO_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// The private key of `--tls-cert-file` (PEM: PKCS#8, SEC1 or PKCS#1).
    #[arg(long, env = "DYNAMO_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// The CA certificates (PEM) that the service's own clients trust for `https://`
    /// peers: storage nodes, the ring service. Unset, the system's roots.
    #[arg(long, env = "DYNAMO_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,

    /// How often the certificate, key and CA files are looked at again (on the next
    /// handshake after the interval); changed files that load replace the old ones
    /// without a restart.
    #[arg(long, env = "DYNAMO_TLS_RELOAD_MS", default_value_t = 10_000)]
    pub tls_reload_ms: u64,
}

impl Default for TlsArgs {
    fn default() -> Self {
        TlsArgs {
            tls_cert_file: None,
            tls_key_file: None,
            tls_ca_file: None,
            tls_reload_ms: 10_000,
        }
    }
}

impl TlsArgs {
    fn reload(&self) -> Duration {
        Duration::from_millis(self.tls_reload_ms)
    }

    /// Loads the listener's certificate and key; `None` without them (plain HTTP).
    ///
    /// # Errors
    /// [`ConfigError`] naming the flag of a file that cannot be read or used.
    pub fn server(&self) -> Result<Option<ServerTls>, ConfigError> {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => ServerTls::load(cert, key, self.reload())
                .map(Some)
                .map_err(|e| ConfigError::new("tls-cert-file", e.to_string())),
            (None, None) => Ok(None),
            (Some(_), None) => Err(ConfigError::new(
                "tls-key-file",
                "is required with --tls-cert-file",
            )),
            (None, Some(_)) => Err(ConfigError::new(
                "tls-cert-file",
                "is required with --tls-key-file",
            )),
        }
    }

    /// Returns what the service's clients trust: `--tls-ca-file`, else the system's roots.
    ///
    /// # Errors
    /// [`ConfigError`] when the CA file cannot be read or used.
    pub fn client(&self) -> Result<ClientTls, ConfigError> {
        ClientTls::new(self.tls_ca_file.as_deref(), self.reload())
            .map_err(|e| ConfigError::new("tls-ca-file", e.to_string()))
    }

    /// Starts the HTTP client builder of a service: `https://` peers are checked against
    /// [`TlsArgs::client`]; `http://` ones are unaffected.
    ///
    /// # Errors
    /// As [`TlsArgs::client`].
    pub fn http_client(&self) -> Result<reqwest::ClientBuilder, ConfigError> {
        Ok(reqwest::Client::builder().tls_backend_preconfigured(self.client()?.config()))
    }
}

impl Default for ServeArgs {
    fn default() -> Self {
        ServeArgs {
            drain_timeout_ms: 10_000,
            log_json: false,
            otlp_endpoint: None,
            max_connections: 4096,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            tls: TlsArgs::default(),
        }
    }
}

impl ServeArgs {
    /// Checks the shared flags.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first bad flag.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, v) in [
            ("drain-timeout-ms", self.drain_timeout_ms),
            ("max-connections", self.max_connections as u64),
            ("header-read-timeout-ms", self.header_read_timeout_ms),
            ("body-read-timeout-ms", self.body_read_timeout_ms),
        ] {
            if v == 0 {
                return Err(ConfigError::new(field, "must be at least 1"));
            }
        }
        if self.header_read_timeout_ms <= dynamo_core::limits::CLIENT_POOL_IDLE_MS {
            return Err(ConfigError::new(
                "header-read-timeout-ms",
                format!(
                    "must be longer than the {} ms clients keep an idle connection, or a request \
                     may race the server's close",
                    dynamo_core::limits::CLIENT_POOL_IDLE_MS
                ),
            ));
        }
        // Loads the files once, so a bad certificate is reported with the other flags.
        self.tls.server()?;
        self.tls.client()?;
        if let Some(url) = &self.otlp_endpoint
            && let Err(reason) = crate::telemetry::check_otlp_endpoint(url)
        {
            return Err(ConfigError::new("otlp-endpoint", reason));
        }
        Ok(())
    }
}

/// What [`service_main`] needs from a service's configuration.
pub trait ServiceConfig: clap::Parser + Debug {
    /// Where to listen.
    fn listen(&self) -> SocketAddr;
    /// The shared flags.
    fn serve_args(&self) -> &ServeArgs;
    /// Checks every flag, the shared ones included.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first bad flag.
    fn validate(&self) -> Result<(), ConfigError>;
}

/// The error of a service binary's `main`. Rust prints a `main` error with `Debug`;
/// this one's `Debug` is the message and its causes, as an operator should read it.
pub struct MainError(Box<dyn std::error::Error + Send + Sync>);

impl<E: std::error::Error + Send + Sync + 'static> From<E> for MainError {
    fn from(e: E) -> Self {
        MainError(Box::new(e))
    }
}

impl Debug for MainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, "\n  caused by: {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

/// The `main` of every service binary: parse the flags and environment, set up logging
/// and tracing, validate, log the configuration, bind, and run until SIGTERM/SIGINT.
///
/// # Errors
/// Whatever stops the service: a bad flag, a port in use, the service's own error.
pub async fn service_main<C, F, Fut, E>(name: &'static str, run: F) -> Result<(), MainError>
where
    C: ServiceConfig,
    F: FnOnce(C, tokio::net::TcpListener, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    // Before any HTTP client is built (the OTLP exporter builds its own).
    dynamo_tls::install_default_provider();
    let config = C::parse();
    let serve = config.serve_args();
    // Kept to the end: dropping it flushes the spans still buffered for export.
    let _telemetry = crate::telemetry::init_with_otlp(serve.log_json, serve.otlp_endpoint.as_deref(), name)?;
    config.validate()?;
    tracing::info!(config = ?config, "configuration");
    let listener = tokio::net::TcpListener::bind(config.listen()).await?;
    let shutdown = crate::shutdown::on_signals();
    run(config, listener, shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_main_error_reads_as_its_message_and_causes() {
        let io = std::io::Error::other("disk on fire");
        let e = MainError::from(io);
        assert_eq!(format!("{e:?}"), "disk on fire");
        let e = MainError::from(ConfigError::new("partitions", "must be a power of two"));
        assert_eq!(format!("{e:?}"), "invalid --partitions: must be a power of two");
    }

    #[test]
    fn the_shared_flags_are_checked() {
        assert_eq!(ServeArgs::default().validate(), Ok(()));
        let no_drain = ServeArgs {
            drain_timeout_ms: 0,
            ..ServeArgs::default()
        };
        assert_eq!(no_drain.validate().map_err(|e| e.field), Err("drain-timeout-ms"));
        let bad_otlp = ServeArgs {
            otlp_endpoint: Some("otel-collector:4318".into()),
            ..ServeArgs::default()
        };
        let e = bad_otlp.validate().expect_err("not a URL").to_string();
        assert!(e.starts_with("invalid --otlp-endpoint"), "{e}");
        for (field, args) in [
            (
                "max-connections",
                ServeArgs {
                    max_connections: 0,
                    ..ServeArgs::default()
                },
            ),
            (
                "body-read-timeout-ms",
                ServeArgs {
                    body_read_timeout_ms: 0,
                    ..ServeArgs::default()
                },
            ),
            // A certificate without its key, and a key without its certificate.
            (
                "tls-key-file",
                ServeArgs {
                    tls: TlsArgs {
                        tls_cert_file: Some("/etc/dynamo/tls.crt".into()),
                        ..TlsArgs::default()
                    },
                    ..ServeArgs::default()
                },
            ),
            (
                "tls-cert-file",
                ServeArgs {
                    tls: TlsArgs {
                        tls_key_file: Some("/etc/dynamo/tls.key".into()),
                        ..TlsArgs::default()
                    },
                    ..ServeArgs::default()
                },
            ),
            // A CA file that is not there.
            (
                "tls-ca-file",
                ServeArgs {
                    tls: TlsArgs {
                        tls_ca_file: Some("/nonexistent/ca.pem".into()),
                        ..TlsArgs::default()
                    },
                    ..ServeArgs::default()
                },
            ),
            // Shorter than a client's idle pool: the close would race the next request.
            (
                "header-read-timeout-ms",
                ServeArgs {
                    header_read_timeout_ms: 5_000,
                    ..ServeArgs::default()
                },
            ),
        ] {
            assert_eq!(args.validate().map_err(|e| e.field), Err(field));
        }
    }
}
