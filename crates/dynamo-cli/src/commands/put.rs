//! `dynamo put <bucket> <key> [VALUE | --file F | stdin]`: write a value, optionally
//! only if the key is unchanged (`--if-match ETAG`) or absent (`--if-absent`).

use std::io::{IsTerminal as _, Read};
use std::path::PathBuf;

use clap::Args;
use dynamo_client::{ErrorCode, RequestOptions};
use dynamo_core::limits::MAX_VALUE_BYTES;

use crate::cli::GlobalArgs;
use crate::commands::{context_arg, precondition_arg};
use crate::error::CliError;
use crate::output;

/// The media type of a value given on the command line.
const TEXT: &str = "text/plain; charset=utf-8";
/// The media type of a value read from a file or stdin.
const BYTES: &str = "application/octet-stream";

/// Arguments of `dynamo put`.
#[derive(Debug, Args)]
pub struct PutArgs {
    /// The bucket.
    pub bucket: String,
    /// The key.
    pub key: String,
    /// The value. Without it (and without --file) the value is read from stdin.
    #[arg(conflicts_with = "file")]
    pub value: Option<String>,
    /// Read the value from this file.
    #[arg(long, short = 'f')]
    pub file: Option<PathBuf>,
    /// The value's media type [default: text/plain; charset=utf-8 for VALUE,
    /// application/octet-stream for --file and stdin].
    #[arg(long)]
    pub content_type: Option<String>,
    /// The context of the read this write follows: the write replaces exactly the
    /// siblings that read saw. Without it the write is blind and becomes a sibling.
    #[arg(long)]
    pub context: Option<String>,
    /// The write quorum for this request (1 ≤ w ≤ n).
    #[arg(long)]
    pub w: Option<u8>,
    /// Write only while the key's version set has this ETag (`dynamo get` shows it);
    /// else exit with `precondition_failed` and change nothing. The write replaces
    /// exactly the version set it matched.
    #[arg(long, value_name = "ETAG", conflicts_with = "if_absent")]
    pub if_match: Option<String>,
    /// Write only if the key has no live value (a create-only write; a deleted key
    /// counts as absent); else exit with `precondition_failed`.
    #[arg(long)]
    pub if_absent: bool,
}

/// Writes the value and prints the new context on stdout (and, for a conditional
/// write, the new ETag on stderr).
///
/// # Errors
/// A usage error when stdin is a terminal and no value was given; `value_too_large`
/// before sending anything when the value is over 1 MiB; the API's errors.
pub async fn run(global: &GlobalArgs, args: &PutArgs) -> Result<(), CliError> {
    let context = context_arg(args.context.as_deref())?;
    let (value, default_type) = match (&args.value, &args.file) {
        (Some(v), _) => (v.clone().into_bytes(), TEXT),
        (None, Some(path)) => {
            let file = std::fs::File::open(path).map_err(|source| CliError::Io {
                what: format!("cannot open {}", path.display()),
                source,
            })?;
            (read_bounded(file, &path.display().to_string())?, BYTES)
        }
        (None, None) => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                return Err(CliError::Usage(
                    "no value: give VALUE, --file F, or pipe the value into stdin".into(),
                ));
            }
            (read_bounded(stdin.lock(), "stdin")?, BYTES)
        }
    };
    let content_type = args.content_type.as_deref().unwrap_or(default_type);
    let opts = RequestOptions {
        w: args.w,
        ..RequestOptions::default()
    };
    let client = global.client()?;
    if let Some(precondition) = precondition_arg(args.if_match.as_deref(), args.if_absent)? {
        let written = client
            .put_if(
                &args.bucket,
                &args.key,
                value,
                content_type,
                context.as_ref(),
                &precondition,
                &opts,
            )
            .await?;
        if let Some(etag) = &written.etag {
            eprintln!("etag: {etag}");
        }
        return output::line(written.context.as_str());
    }
    let new_context = client
        .put_with(
            &args.bucket,
            &args.key,
            value,
            content_type,
            context.as_ref(),
            &opts,
        )
        .await?;
    output::line(new_context.as_str())
}

/// Reads at most one byte more than a value may hold, so an oversized input is refused
/// without reading it all.
fn read_bounded(reader: impl Read, source: &str) -> Result<Vec<u8>, CliError> {
    let mut buf = Vec::new();
    reader
        .take(MAX_VALUE_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| CliError::Io {
            what: format!("cannot read {source}"),
            source: e,
        })?;
    if buf.len() > MAX_VALUE_BYTES {
        return Err(CliError::Failed {
            code: ErrorCode::ValueTooLarge,
            message: format!("the value from {source} is over {MAX_VALUE_BYTES} bytes, the limit"),
        });
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_over_the_value_limit_are_refused() {
        let ok = vec![7u8; MAX_VALUE_BYTES];
        assert_eq!(
            read_bounded(ok.as_slice(), "t").map(|v| v.len()).ok(),
            Some(MAX_VALUE_BYTES)
        );
        let big = vec![7u8; MAX_VALUE_BYTES + 10];
        let e = read_bounded(big.as_slice(), "t").expect_err("too large");
        assert!(matches!(
            e,
            CliError::Failed {
                code: ErrorCode::ValueTooLarge,
                ..
            }
        ));
    }
}
