//! The operator's flags (`DYNAMO_*` environment variables).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use dynamo_server::config::{ConfigError, ServeArgs, ServiceConfig};

use crate::lease::LeaseConfig;
use crate::reconcile::Settings;

/// `dynamo-operator` flags.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "dynamo-operator",
    version,
    about = "The DynamoCluster operator (`dynamo-operator crd` prints the CRD)"
)]
pub struct Config {
    /// Where `/healthz`, `/readyz` and `/metrics` answer.
    #[arg(long, env = "DYNAMO_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// The namespace whose DynamoClusters it manages (its own: the chart grants a Role
    /// there, nothing cluster-wide).
    #[arg(long, env = "DYNAMO_OPERATOR_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// The leader Lease's name, in that namespace.
    #[arg(long, env = "DYNAMO_OPERATOR_LEASE", default_value = "dynamo-operator")]
    pub lease_name: String,
    /// This replica's identity in the Lease (its pod name).
    #[arg(long, env = "POD_NAME", default_value = "dynamo-operator")]
    pub identity: String,
    /// How long a Lease not renewed stays its holder's.
    #[arg(long, env = "DYNAMO_OPERATOR_LEASE_DURATION_MS", default_value_t = 15_000)]
    pub lease_duration_ms: u64,
    /// How often the leader renews the Lease.
    #[arg(long, env = "DYNAMO_OPERATOR_LEASE_RENEW_MS", default_value_t = 5_000)]
    pub lease_renew_ms: u64,
    /// Reach every cluster's coordinators here instead of through their Service (an
    /// operator run outside the cluster, through a port-forward).
    #[arg(long, env = "DYNAMO_OPERATOR_COORDINATOR_URL")]
    pub coordinator_url: Option<String>,
    /// The CA of the coordinators' certificate, for clusters with TLS.
    #[arg(long, env = "DYNAMO_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Timeout of each call to the coordinators.
    #[arg(long, env = "DYNAMO_OPERATOR_API_TIMEOUT_MS", default_value_t = 10_000)]
    pub api_timeout_ms: u64,
    /// Flags every service shares.
    #[command(flatten)]
    pub serve: ServeArgs,
}

impl Config {
    /// The leader election's settings.
    pub fn lease(&self) -> LeaseConfig {
        LeaseConfig {
            name: self.lease_name.clone(),
            identity: self.identity.clone(),
            duration: Duration::from_millis(self.lease_duration_ms),
            renew_every: Duration::from_millis(self.lease_renew_ms),
        }
    }

    /// How reconcile reaches the coordinators.
    pub fn settings(&self) -> Settings {
        Settings {
            coordinator_url: self.coordinator_url.clone(),
            ca_file: self.ca_file.clone(),
            api_timeout: Duration::from_millis(self.api_timeout_ms),
        }
    }
}

impl ServiceConfig for Config {
    fn listen(&self) -> SocketAddr {
        self.listen
    }

    fn serve_args(&self) -> &ServeArgs {
        &self.serve
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.serve.validate()?;
        if self.lease_renew_ms == 0 || self.lease_renew_ms * 2 > self.lease_duration_ms {
            return Err(ConfigError::new(
                "lease-renew-ms",
                "must be above 0 and at most half of --lease-duration-ms, so a leader renews before its lease lapses",
            ));
        }
        if self.api_timeout_ms == 0 {
            return Err(ConfigError::new("api-timeout-ms", "must be above 0"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn a_renewal_slower_than_half_the_lease_is_refused() {
        let ok = Config::parse_from(["dynamo-operator"]);
        assert_eq!(ok.validate(), Ok(()));
        let bad = Config::parse_from(["dynamo-operator", "--lease-renew-ms", "10000"]);
        assert_eq!(bad.validate().map_err(|e| e.field), Err("lease-renew-ms"));
    }
}
