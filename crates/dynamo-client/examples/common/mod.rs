//! What every example shares: the client from the environment, bucket names under a
//! prefix, fresh keys, checks, and the exit code.
//!
//! - `DYNAMO_URL`: the coordinator (default `http://127.0.0.1:8080`).
//! - `DYNAMO_TOKEN`: a token that may create buckets (`dynamo dev` prints its root token
//!   and writes it to `<data-dir>/root-token`). Required.
//! - `DYNAMO_EXAMPLE_PREFIX`: the prefix of the buckets the examples create (default
//!   `example`), so a test can run them in buckets of its own.

// Each example uses only some of these helpers.
#![allow(dead_code)]

use std::error::Error;
use std::process::ExitCode;

use dynamo_client::Client;

/// What an example's body returns: any error, printed by [`exit`].
pub type Result<T = ()> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

/// Returns a client for `DYNAMO_URL` with `DYNAMO_TOKEN`.
pub fn client() -> Result<Client> {
    let url = std::env::var("DYNAMO_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".to_owned());
    let token = std::env::var("DYNAMO_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
        .ok_or("set DYNAMO_TOKEN to a token that may create buckets (`dynamo dev` prints one)")?;
    Ok(Client::new(&url, token)?)
}

/// Returns the name of the example's bucket `name`, under `DYNAMO_EXAMPLE_PREFIX`.
pub fn bucket(name: &str) -> String {
    let prefix = std::env::var("DYNAMO_EXAMPLE_PREFIX").unwrap_or_else(|_| "example".to_owned());
    format!("{prefix}-{name}")
}

/// Returns `name` with a suffix of its own, so every run starts from a key no earlier
/// run wrote (the buckets outlive the examples).
pub fn fresh_key(name: &str) -> String {
    format!("{name}-{:08x}", rand::random::<u32>())
}

/// Fails the example with `message` unless `ok`: these programs are run against real
/// clusters by CI, which trusts their exit code.
pub fn check(ok: bool, message: impl Into<String>) -> Result {
    if ok { Ok(()) } else { Err(message.into().into()) }
}

/// Turns the example's outcome into its exit code, printing the error and its causes.
pub fn exit(outcome: Result) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut text = e.to_string();
            let mut cause = e.source();
            while let Some(c) = cause {
                text.push_str(": ");
                text.push_str(&c.to_string());
                cause = c.source();
            }
            eprintln!("FAILED: {text}");
            ExitCode::FAILURE
        }
    }
}
