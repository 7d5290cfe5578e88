//! `dynamo list <bucket> [--prefix P] [--start-after KEY] [--limit N]`: print a bucket's
//! keys, one per line, in byte order.
//!
//! The keys stream through the SDK ([`dynamo_client::KeyStream`]): a page is fetched when
//! the previous one is printed, so the first keys show at once and memory holds one page
//! whatever the bucket's size. A listing asks every storage node for each page: it is
//! for administration and exports, not for a request path.

use clap::Args;
use dynamo_client::ListOptions;
use dynamo_client::list::MAX_PAGE_SIZE;

use crate::cli::GlobalArgs;
use crate::error::CliError;
use crate::output;

/// Arguments of `dynamo list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// The bucket.
    pub bucket: String,
    /// Only keys that start with this.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Only keys after this one, in byte order (the last key printed, to resume a
    /// listing).
    #[arg(long, value_name = "KEY")]
    pub start_after: Option<String>,
    /// Print at most this many keys (default: all of them).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
}

/// Prints the keys, one per line; with `--json`, each as a JSON string on its own line
/// (JSON Lines), which keeps a key holding a newline on one line.
///
/// # Errors
/// The API's errors (`forbidden` without `read` on the bucket, `quorum_unavailable`
/// when some partition has no answering replica); keys printed before the error stay
/// printed, and the last one is where `--start-after` resumes.
pub async fn run(global: &GlobalArgs, args: &ListArgs) -> Result<(), CliError> {
    let client = global.client()?;
    let mut keys = client.list_keys_with(&args.bucket, options(args));
    let mut printed: u64 = 0;
    while args.limit.is_none_or(|limit| printed < limit) {
        let Some(key) = keys.try_next().await? else {
            break;
        };
        if global.json {
            output::json_line(&key)?;
        } else {
            output::line(&key)?;
        }
        printed += 1;
    }
    Ok(())
}

/// The SDK's options for `args`. With `--limit` below the largest page, the page is
/// that size, so `--limit 10` costs one page of 10 rather than the default 100.
fn options(args: &ListArgs) -> ListOptions {
    let mut opts = ListOptions::new().prefix(args.prefix.clone());
    if let Some(after) = &args.start_after {
        opts = opts.start_after(after.clone());
    }
    if let Some(limit) = args.limit {
        let page = u32::try_from(limit).unwrap_or(MAX_PAGE_SIZE).min(MAX_PAGE_SIZE);
        opts = opts.page_size(page);
    }
    opts
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<ListArgs, clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("dynamo").chain(args.iter().copied()))?;
        match cli.command {
            Command::List(args) => Ok(args),
            other => panic!("not a list command: {other:?}"),
        }
    }

    // Goal: the bucket is required, the flags are optional, `--limit` is a positive
    // count, and the page asked for is never larger than the limit or the server's cap.
    #[test]
    fn list_takes_a_bucket_and_optional_prefix_start_and_limit() {
        let all = parse(&["list", "orders"]).expect("parses");
        assert_eq!(
            (all.bucket.as_str(), all.prefix.as_str(), all.limit),
            ("orders", "", None)
        );
        assert_eq!(options(&all), ListOptions::new());

        let some = parse(&[
            "list",
            "orders",
            "--prefix",
            "2026-12/",
            "--limit",
            "10",
            "--start-after",
            "2026-12/0001",
        ])
        .expect("parses");
        assert_eq!(
            options(&some),
            ListOptions::new()
                .prefix("2026-12/")
                .start_after("2026-12/0001")
                .page_size(10)
        );
        let many = parse(&["list", "orders", "--limit", "5000000000"]).expect("parses");
        assert_eq!(options(&many).page_size, Some(MAX_PAGE_SIZE));

        assert!(parse(&["list"]).is_err(), "the bucket is required");
        assert!(parse(&["list", "orders", "--limit", "0"]).is_err());
        assert!(parse(&["list", "orders", "--limit", "-1"]).is_err());
    }
}
