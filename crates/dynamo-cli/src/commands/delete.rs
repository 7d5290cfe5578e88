//! `dynamo delete <bucket> <key>`: delete a key, optionally only if it is unchanged
//! (`--if-match ETAG`).

use clap::Args;
use dynamo_client::{Lookup, RequestOptions};

use crate::cli::GlobalArgs;
use crate::commands::{context_arg, precondition_arg};
use crate::error::CliError;

/// Arguments of `dynamo delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The bucket.
    pub bucket: String,
    /// The key.
    pub key: String,
    /// The context of the read this delete follows: exactly the siblings that read saw
    /// are deleted. Without it, the key is read first and what that read saw is deleted.
    #[arg(long, conflicts_with = "blind")]
    pub context: Option<String>,
    /// Send the delete without a context. A blind delete only adds a tombstone beside the
    /// stored values, which stay visible: useful only to test conflict handling.
    #[arg(long)]
    pub blind: bool,
    /// The write quorum for this request (1 ≤ w ≤ n).
    #[arg(long)]
    pub w: Option<u8>,
    /// Delete only while the key's version set has this ETag (`dynamo get` shows it);
    /// else exit with `precondition_failed` and change nothing.
    #[arg(long, value_name = "ETAG", conflicts_with_all = ["context", "blind", "if_absent"])]
    pub if_match: Option<String>,
    /// Delete only if the key has no live value (writes a tombstone over nothing or over
    /// a tombstone); else exit with `precondition_failed`.
    #[arg(long, conflicts_with_all = ["context", "blind"])]
    pub if_absent: bool,
}

/// Deletes the key; prints nothing on success.
///
/// Without `--context`, reads the key and deletes with that read's context, so the
/// siblings it saw are removed; a sibling written concurrently after the read survives,
/// as the API promises. A key with no live value is left as it is.
///
/// # Errors
/// The API's errors.
pub async fn run(global: &GlobalArgs, args: &DeleteArgs) -> Result<(), CliError> {
    let client = global.client()?;
    let opts = RequestOptions {
        w: args.w,
        ..RequestOptions::default()
    };
    if let Some(precondition) = precondition_arg(args.if_match.as_deref(), args.if_absent)? {
        client
            .delete_if(&args.bucket, &args.key, &precondition, &opts)
            .await?;
        return Ok(());
    }
    let context = match context_arg(args.context.as_deref())? {
        Some(context) => Some(context),
        None if args.blind => None,
        None => match client.lookup(&args.bucket, &args.key, &opts).await? {
            Lookup::Found(object) => Some(object.context),
            Lookup::NotFound { .. } => {
                eprintln!("{}/{} has no value: nothing to delete", args.bucket, args.key);
                return Ok(());
            }
        },
    };
    client
        .delete_with(&args.bucket, &args.key, context.as_ref(), &opts)
        .await?;
    Ok(())
}
