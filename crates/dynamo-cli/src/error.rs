//! [`CliError`]: why a command failed, and the exit code that says so.

use std::process::ExitCode;

use dynamo_client::{ClientError, ErrorCode};

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line cannot work as given (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// The coordinator refused, or could not be reached (exit code 1).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The operation failed with a code, without a server answer to carry it (a key with
    /// no value, a value over the size limit; exit code 1).
    #[error("{code}: {message}")]
    Failed {
        /// The code, as the server would answer it.
        code: ErrorCode,
        /// What failed.
        message: String,
    },
    /// A membership change waited for (`--wait`) failed, was aborted or outlasted the
    /// wait (exit code 1).
    #[error(transparent)]
    Change(#[from] crate::commands::cluster::WaitError),
    /// A local operation failed, e.g. `dynamo dev` could not start a service (exit code 1).
    #[error("{0}")]
    Local(String),
    /// A local file or stream failed (exit code 1).
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl CliError {
    /// Returns the process exit code: 2 for usage errors, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            _ => 1,
        }
    }

    /// Returns the one-line description: `<code>: <message>` when there is a code,
    /// otherwise the error with its causes.
    pub fn describe(&self) -> String {
        match self {
            CliError::Client(ClientError::Api { code, message, .. })
            | CliError::Client(ClientError::InvalidInput { code, message }) => format!("{code}: {message}"),
            CliError::Failed { code, message } => format!("{code}: {message}"),
            other => {
                let mut text = other.to_string();
                let mut cause = std::error::Error::source(other);
                while let Some(c) = cause {
                    text.push_str(": ");
                    text.push_str(&c.to_string());
                    cause = c.source();
                }
                text
            }
        }
    }

    /// Prints the error to stderr (`error: ...`, then the request id when the server gave
    /// one) and returns the exit code. A closed stdout (`dynamo ... | head`) is not an
    /// error worth reporting.
    pub fn report(&self) -> ExitCode {
        if let CliError::Io { source, .. } = self
            && source.kind() == std::io::ErrorKind::BrokenPipe
        {
            return ExitCode::SUCCESS;
        }
        eprintln!("error: {}", self.describe());
        if let CliError::Client(e) = self
            && let Some(id) = e.request_id()
        {
            eprintln!("request id: {id}");
        }
        ExitCode::from(self.exit_code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_read_code_then_message_and_exit_1() {
        let e = CliError::Client(ClientError::Api {
            status: 503,
            code: ErrorCode::QuorumUnavailable,
            message: "1 of 2 replicas answered".into(),
            request_id: None,
        });
        assert_eq!(e.describe(), "quorum_unavailable: 1 of 2 replicas answered");
        assert_eq!(e.exit_code(), 1);
        assert_eq!(CliError::Usage("no token".into()).exit_code(), 2);
    }

    #[test]
    fn io_errors_print_their_cause() {
        let e = CliError::Io {
            what: "cannot read v.bin".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        };
        assert_eq!(e.describe(), "cannot read v.bin: no such file");
    }
}
