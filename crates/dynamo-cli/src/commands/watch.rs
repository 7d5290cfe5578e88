//! `dynamo watch <bucket> [--cursor C | --from-now] [--max-changes N]`: print a bucket's
//! changes as they happen, until interrupted.
//!
//! The changes stream through the SDK's change feed ([`dynamo_client::ChangeStream`]),
//! long-polling the coordinator. Each line is one change: `<key> put` or `<key> delete`,
//! or with `--json` an object carrying the key, `deleted`, the key's context and the
//! cursor to resume from once that change is handled. Ctrl-C (or SIGTERM) ends the watch
//! with exit code 0; on every exit the cursor that resumes after the last change printed
//! goes to stderr as `cursor: <C>`, for `--cursor`.
//!
//! The feed is at least once: a change may be printed again (in this run or after a
//! resume), and a change means "this key changed", not what it became: read the key.

use clap::Args;
use dynamo_client::{Change, ChangeStream, ErrorCode, FeedCursor, FeedOptions};
use serde::Serialize;

use crate::cli::GlobalArgs;
use crate::error::CliError;
use crate::output;

/// Arguments of `dynamo watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The bucket.
    pub bucket: String,
    /// Continue from this cursor: the one an earlier watch printed on exit (or, with
    /// `--json`, the `cursor` of the last change handled). Expires after the feed's
    /// retention (one hour by default).
    #[arg(long, value_name = "CURSOR")]
    pub cursor: Option<String>,
    /// Start from now: only changes made from here on (what happens without `--cursor`;
    /// the flag says so explicitly).
    #[arg(long, conflicts_with = "cursor")]
    pub from_now: bool,
    /// Exit (with code 0) once this many changes are printed, instead of running until
    /// interrupted: for scripts and tests.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_changes: Option<u64>,
}

/// What `--json` prints for a change, one object per line.
#[derive(Debug, Serialize)]
struct Shown<'a> {
    key: &'a str,
    deleted: bool,
    context: &'a str,
    cursor: &'a str,
}

/// Prints changes until Ctrl-C, SIGTERM, `--max-changes` or an error, then the cursor to
/// resume from on stderr (except after `cursor_expired`: that cursor is of no use, and
/// the hint says what to do instead).
///
/// # Errors
/// A usage error for an empty `--cursor`; the API's errors: `cursor_expired` (start again
/// without `--cursor`, and `dynamo list` the bucket to catch up), `invalid_parameter`
/// for a cursor that is malformed or of another bucket, `forbidden` without `read` on
/// the bucket; a failure to install the signal handlers.
pub async fn run(global: &GlobalArgs, args: &WatchArgs) -> Result<(), CliError> {
    let cursor = cursor_arg(args.cursor.as_deref())?;
    let client = global.client()?;
    let mut changes = client.feed(&args.bucket, FeedOptions::new().cursor(cursor));
    let result = follow(global, args, &mut changes).await;
    match (&result, changes.current_cursor()) {
        (Err(CliError::Client(e)), _) if e.code() == Some(ErrorCode::CursorExpired) => {
            eprintln!("the cursor expired: start again without --cursor, and list the bucket to catch up");
        }
        (_, Some(cursor)) => eprintln!("cursor: {cursor}"),
        // Stopped before the first page answered: there is no cursor yet.
        (_, None) => {}
    }
    result
}

/// Prints changes until a signal, `--max-changes` or an error.
async fn follow(global: &GlobalArgs, args: &WatchArgs, changes: &mut ChangeStream) -> Result<(), CliError> {
    let mut interrupted = std::pin::pin!(crate::commands::interrupted());
    let mut printed: u64 = 0;
    while args.max_changes.is_none_or(|max| printed < max) {
        let next = tokio::select! {
            // Polled first, so the signal handlers are in place before the first request
            // goes out.
            biased;
            signal = &mut interrupted => {
                return signal.map_err(|source| CliError::Io {
                    what: "cannot listen for Ctrl-C and SIGTERM".into(),
                    source,
                });
            }
            // Cancel-safe: a page being fetched stays in the stream, and a change is
            // printed as soon as it is taken, so the stream's cursor covers exactly the
            // changes printed.
            next = changes.try_next() => next?,
        };
        // The stream ends only after an error, which `?` returned above.
        let Some(change) = next else {
            return Ok(());
        };
        print(global, &change)?;
        printed += 1;
    }
    Ok(())
}

fn print(global: &GlobalArgs, change: &Change) -> Result<(), CliError> {
    if global.json {
        return output::json_line(&Shown {
            key: &change.key,
            deleted: change.deleted,
            context: change.context.as_str(),
            cursor: change.cursor.as_str(),
        });
    }
    output::line(&text_line(change))
}

/// A change as text: the key, then what happened to it.
fn text_line(change: &Change) -> String {
    let what = if change.deleted { "delete" } else { "put" };
    format!("{} {what}", change.key)
}

/// Turns `--cursor` into the SDK's cursor, refusing an empty one (surely a script's empty
/// variable, which would otherwise silently start from now).
fn cursor_arg(arg: Option<&str>) -> Result<Option<FeedCursor>, CliError> {
    match arg.map(str::trim) {
        None => Ok(None),
        Some("") => Err(CliError::Usage(
            "--cursor is empty; omit it (or pass --from-now) to start from now".into(),
        )),
        Some(token) => Ok(Some(FeedCursor::new(token))),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;
    use dynamo_client::Context;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<WatchArgs, clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("dynamo").chain(args.iter().copied()))?;
        match cli.command {
            Command::Watch(args) => Ok(args),
            other => panic!("not a watch command: {other:?}"),
        }
    }

    // Goal: the bucket is required; `--cursor` and `--from-now` exclude each other;
    // `--max-changes` is a positive count; an empty cursor is refused, not taken for
    // "from now".
    #[test]
    fn watch_takes_a_bucket_and_a_cursor_or_from_now() {
        let plain = parse(&["watch", "orders"]).expect("parses");
        assert_eq!(
            (
                plain.bucket.as_str(),
                plain.cursor.as_deref(),
                plain.from_now,
                plain.max_changes
            ),
            ("orders", None, false, None)
        );
        let resumed =
            parse(&["watch", "orders", "--cursor", "eyJ2IjoxfQ", "--max-changes", "3"]).expect("parses");
        assert_eq!(resumed.cursor.as_deref(), Some("eyJ2IjoxfQ"));
        assert_eq!(resumed.max_changes, Some(3));
        assert_eq!(
            cursor_arg(resumed.cursor.as_deref()).expect("valid"),
            Some(FeedCursor::new("eyJ2IjoxfQ"))
        );
        assert!(
            parse(&["watch", "orders", "--from-now"])
                .expect("parses")
                .from_now
        );

        assert!(parse(&["watch"]).is_err(), "the bucket is required");
        assert!(parse(&["watch", "orders", "--cursor", "c", "--from-now"]).is_err());
        assert!(parse(&["watch", "orders", "--max-changes", "0"]).is_err());
        assert!(matches!(cursor_arg(Some(" ")), Err(CliError::Usage(_))));
        assert_eq!(cursor_arg(None).expect("none"), None);
    }

    #[test]
    fn text_lines_say_put_or_delete() {
        let change = |deleted| Change {
            key: "2026-12/0001".into(),
            context: Context::new("ctx"),
            deleted,
            cursor: FeedCursor::new("c"),
        };
        assert_eq!(text_line(&change(false)), "2026-12/0001 put");
        assert_eq!(text_line(&change(true)), "2026-12/0001 delete");
    }
}
