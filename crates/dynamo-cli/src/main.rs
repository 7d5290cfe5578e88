//! `dynamo`: the command line of a Dynamo cluster.
//!
//! Talks to a coordinator through `dynamo-client` (the SDK):
//! - keys: `get`, `put`, `delete`; `list` prints a bucket's keys one per line, streamed
//!   page by page; `watch` prints a bucket's changes as they happen (the change feed,
//!   long-polled until Ctrl-C, or `--max-changes N` for scripts and tests) and on exit
//!   the cursor to resume from with `--cursor`;
//! - `crdt get|incr|add|remove|assign|apply`: the keys of CRDT buckets (counters, sets,
//!   registers, maps), printing the value after each operation;
//! - `bucket`: show and change bucket properties;
//! - `cluster`, `ring`: show the cluster and the ring; join, decommission and replace
//!   nodes, retry or abort a failed change (following it with `--wait`);
//! - `token`: manage scoped tokens;
//! - `dev` runs a whole local cluster, `bench` measures one, `keygen` makes secret keys.
//!
//! # Layout
//! - [`cli`]: the clap definitions: the global flags ([`cli::GlobalArgs`]: endpoint,
//!   token, data directory, timeout, `--json`) and the [`cli::Command`] enum.
//! - [`commands`]: one module per subcommand (`commands/get.rs`, ...), each with its clap
//!   `Args` and an async `run`; [`commands::run`] dispatches.
//! - [`output`]: how values, tables and JSON reach stdout.
//! - [`error`]: [`error::CliError`] and the exit codes.
//!
//! # Adding a subcommand
//! Write `commands/<name>.rs` with a `<Name>Args` (clap `Args`) and
//! `pub async fn run(global: &GlobalArgs, args: &<Name>Args) -> Result<(), CliError>`,
//! declare it in `commands/mod.rs`, add a variant to [`cli::Command`] and an arm to
//! [`commands::run`]. A command that needs a coordinator calls
//! [`cli::GlobalArgs::client`]; the token is resolved only then, so a command that
//! starts a cluster (`dynamo dev`) needs none.
//!
//! # Exit codes and output
//! 0 on success (also when Ctrl-C or SIGTERM ends `watch` or `dev`); 1 when the
//! operation failed (an API error, an unreachable coordinator, an unreadable file),
//! printed as `error: <code>: <message>`; 2 for usage errors (bad flags, no token to be
//! found). Results go to stdout, diagnostics, contexts of reads and `watch`'s resume
//! cursor to stderr, so `dynamo get b k > file` stores exactly the value.

mod cli;
mod commands;
mod error;
mod output;

use std::process::ExitCode;

use clap::Parser as _;

// mimalloc, not glibc's malloc: under load glibc's took about a quarter of the
// coordinator's CPU, consolidating and splitting value-sized buffers; every binary of the
// workspace uses the same allocator (docs/benchmarks.md, profile).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Usage errors exit with 2 here, inside clap.
    let cli = cli::Cli::parse();
    // Every HTTP client here is built with a configuration of dynamo-tls; this covers
    // any that is not.
    dynamo_tls::install_default_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(commands::run(&cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.report(),
    }
}
