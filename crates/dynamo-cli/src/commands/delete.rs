//! `dynamo delete <bucket> <key>`: delete a key.

use clap::Args;
use dynamo_client::{Lookup, RequestOptions};

use crate::cli::GlobalArgs;
use crate::commands::context_arg;
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
