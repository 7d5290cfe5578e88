//! One module per subcommand, each with its clap arguments and an async `run`.

pub mod bench;
pub mod bucket;
pub mod cluster;
pub mod crdt;
pub mod delete;
pub mod dev;
pub mod get;
pub mod keygen;
pub mod list;
pub mod put;
pub mod ring;
pub mod token;
pub mod watch;

use dynamo_client::{Context, ETag, Precondition};

use crate::cli::{Cli, Command};
use crate::error::CliError;

/// Runs the parsed command line.
///
/// # Errors
/// The command's [`CliError`], which `main` prints and turns into the exit code.
pub async fn run(cli: &Cli) -> Result<(), CliError> {
    let global = &cli.global;
    match &cli.command {
        Command::Get(args) => get::run(global, args).await,
        Command::Put(args) => put::run(global, args).await,
        Command::Delete(args) => delete::run(global, args).await,
        Command::List(args) => list::run(global, args).await,
        Command::Watch(args) => watch::run(global, args).await,
        Command::Crdt(command) => crdt::run(global, command).await,
        Command::Bucket(command) => bucket::run(global, command).await,
        Command::Cluster(args) => cluster::run(global, args).await,
        Command::Ring(args) => ring::run(global, args).await,
        Command::Token(command) => token::run(global, command).await,
        Command::Dev(args) => dev::run(global, args).await,
        Command::Bench(args) => bench::run(global, args).await,
        Command::Keygen(args) => keygen::run(args),
    }
}

/// Resolves when the process is asked to stop: Ctrl-C (SIGINT) or SIGTERM. The handlers
/// are installed on the first poll; from then on a signal is kept until this resolves,
/// so it may be polled again and again (in a `tokio::select!` loop) without losing one.
///
/// # Errors
/// When a signal handler cannot be installed.
pub(crate) async fn interrupted() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        ctrl_c = tokio::signal::ctrl_c() => ctrl_c,
        _ = term.recv() => Ok(()),
    }
}

/// Turns a `--context` flag into the SDK's opaque context (refusing an empty one, which
/// is surely a script's empty variable rather than a blind write).
pub(crate) fn context_arg(arg: Option<&str>) -> Result<Option<Context>, CliError> {
    match arg {
        None => Ok(None),
        Some(token) if token.trim().is_empty() => Err(CliError::Usage(
            "--context is empty; omit it for a blind write".into(),
        )),
        Some(token) => Ok(Some(Context::new(token.trim()))),
    }
}

/// Turns `--if-match ETAG` / `--if-absent` into the SDK's precondition (clap keeps the
/// two apart). An ETag is taken as given, quotes included, and quoted when a shell ate
/// them (`--if-match 9f…` works as `--if-match '"9f…"'`).
pub(crate) fn precondition_arg(
    if_match: Option<&str>,
    if_absent: bool,
) -> Result<Option<Precondition>, CliError> {
    match (if_match.map(str::trim), if_absent) {
        (Some(""), _) => Err(CliError::Usage("--if-match is empty".into())),
        (Some(tag), _) if tag == "*" || tag.starts_with('"') || tag.starts_with("W/") => {
            Ok(Some(Precondition::IfMatch(ETag::new(tag))))
        }
        (Some(tag), _) => Ok(Some(Precondition::IfMatch(ETag::new(format!("\"{tag}\""))))),
        (None, true) => Ok(Some(Precondition::IfAbsent)),
        (None, false) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_are_quoted_once() {
        let tag = |s| match precondition_arg(Some(s), false).expect("valid") {
            Some(Precondition::IfMatch(t)) => t.as_str().to_owned(),
            other => panic!("{other:?}"),
        };
        assert_eq!(tag("abc"), "\"abc\"");
        assert_eq!(tag("\"abc\""), "\"abc\"");
        assert_eq!(tag("*"), "*");
        assert!(precondition_arg(Some(" "), false).is_err());
        assert_eq!(
            precondition_arg(None, true).expect("absent"),
            Some(Precondition::IfAbsent)
        );
        assert_eq!(precondition_arg(None, false).expect("none"), None);
    }
}
