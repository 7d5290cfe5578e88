//! `dynamo crdt get|incr|add|remove|assign|apply <bucket> <key> ...`: the keys of CRDT
//! buckets (counters, sets, registers, maps).
//!
//! Every subcommand prints the key's value as JSON on stdout (after an operation: as the
//! replica that applied it holds it) and its context and ETag on stderr, as `dynamo get`
//! does; `--json` prints all of it as one object on stdout instead.

use clap::{Args, Subcommand};
use dynamo_client::{Context, CrdtBucket, CrdtOp, CrdtType, CrdtValue, ErrorCode, RequestOptions};
use serde::Serialize;

use crate::cli::GlobalArgs;
use crate::commands::{context_arg, precondition_arg};
use crate::error::CliError;
use crate::output;

/// The `crdt` subcommands.
#[derive(Debug, Subcommand)]
pub enum CrdtCommand {
    /// Read a key: print its value as JSON.
    Get(GetArgs),
    /// Add to a counter (1 by default; a negative number subtracts).
    Incr(IncrArgs),
    /// Add elements to a set.
    Add(ElementsArgs),
    /// Remove elements from a set: reads the key and removes what that read saw.
    Remove(ElementsArgs),
    /// Write a register.
    Assign(AssignArgs),
    /// Apply any operation, given as its JSON (`{"update": {"hits": {"increment": 1}}}`).
    Apply(ApplyArgs),
}

/// Arguments of `dynamo crdt get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The bucket (a CRDT bucket).
    pub bucket: String,
    /// The key.
    pub key: String,
    /// Print only the context token on stdout (for `crdt apply --context`).
    #[arg(long, conflicts_with = "etag")]
    pub context: bool,
    /// Print only the ETag on stdout (for `--if-match`).
    #[arg(long)]
    pub etag: bool,
    /// The read quorum for this request (1 ≤ r ≤ n).
    #[arg(long)]
    pub r: Option<u8>,
}

/// Flags of every operation.
#[derive(Debug, Args)]
pub struct WriteArgs {
    /// The write quorum for this request (1 ≤ w ≤ n).
    #[arg(long)]
    pub w: Option<u8>,
    /// Apply only while the key's version set has this ETag (`dynamo crdt get` shows
    /// it); else exit with `precondition_failed` and change nothing.
    #[arg(long, value_name = "ETAG", conflicts_with = "if_absent")]
    pub if_match: Option<String>,
    /// Apply only if the key has no value; else exit with `precondition_failed`.
    #[arg(long)]
    pub if_absent: bool,
}

/// Arguments of `dynamo crdt incr`.
#[derive(Debug, Args)]
pub struct IncrArgs {
    /// The bucket (a counter bucket).
    pub bucket: String,
    /// The key.
    pub key: String,
    /// How much to add; negative subtracts.
    #[arg(default_value_t = 1, allow_negative_numbers = true)]
    pub by: i64,
    /// Flags of every operation.
    #[command(flatten)]
    pub write: WriteArgs,
}

/// Arguments of `dynamo crdt add` and `dynamo crdt remove`.
#[derive(Debug, Args)]
pub struct ElementsArgs {
    /// The bucket (a set bucket).
    pub bucket: String,
    /// The key.
    pub key: String,
    /// The elements (put `--` before one that starts with `-`).
    #[arg(required = true, value_name = "ELEMENT")]
    pub elements: Vec<String>,
    /// Flags of every operation.
    #[command(flatten)]
    pub write: WriteArgs,
}

/// Arguments of `dynamo crdt assign`.
#[derive(Debug, Args)]
pub struct AssignArgs {
    /// The bucket (a register bucket).
    pub bucket: String,
    /// The key.
    pub key: String,
    /// The value, as JSON (a string is quoted: '"ann"').
    #[arg(value_name = "JSON")]
    pub value: String,
    /// Flags of every operation.
    #[command(flatten)]
    pub write: WriteArgs,
}

/// Arguments of `dynamo crdt apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The bucket (a CRDT bucket).
    pub bucket: String,
    /// The key.
    pub key: String,
    /// One operation as JSON: `{"increment": 5}`, `{"add": ["a"]}`, `{"remove": ["a"]}`,
    /// `{"assign": <JSON>}`, `{"update": {"field": <operation>}}`,
    /// `{"remove_fields": ["f"]}`.
    #[arg(value_name = "OP_JSON")]
    pub op: String,
    /// The context of an earlier read (`dynamo crdt get --context`): a remove then
    /// removes exactly what that read saw. Without it, a remove reads the key first.
    #[arg(long, conflicts_with_all = ["if_match", "if_absent"])]
    pub context: Option<String>,
    /// Flags of every operation.
    #[command(flatten)]
    pub write: WriteArgs,
}

/// What `--json` prints.
#[derive(Serialize)]
struct Shown<'a> {
    crdt_type: CrdtType,
    value: &'a serde_json::Value,
    context: &'a str,
    etag: &'a str,
}

/// Runs a `crdt` subcommand and prints the key's value.
///
/// # Errors
/// A usage error for JSON that does not parse; `not_found` (exit 1) when `get` finds no
/// value; the API's errors (`wrong_bucket_type`, `invalid_crdt_operation`,
/// `context_not_seen`, `precondition_failed`).
pub async fn run(global: &GlobalArgs, command: &CrdtCommand) -> Result<(), CliError> {
    let answer = match command {
        CrdtCommand::Get(args) => return get(global, args).await,
        CrdtCommand::Incr(args) => {
            let op = CrdtOp::Increment(args.by);
            apply(global, &args.bucket, &args.key, &op, None, &args.write).await?
        }
        CrdtCommand::Add(args) => {
            let op = CrdtOp::Add(args.elements.clone());
            apply(global, &args.bucket, &args.key, &op, None, &args.write).await?
        }
        CrdtCommand::Remove(args) => {
            let op = CrdtOp::Remove(args.elements.clone());
            apply(global, &args.bucket, &args.key, &op, None, &args.write).await?
        }
        CrdtCommand::Assign(args) => {
            let value = serde_json::from_str(&args.value).map_err(|e| {
                CliError::Usage(format!(
                    "the value is not JSON ({e}); quote a string, e.g. '\"{}\"'",
                    args.value
                ))
            })?;
            let op = CrdtOp::Assign(value);
            apply(global, &args.bucket, &args.key, &op, None, &args.write).await?
        }
        CrdtCommand::Apply(args) => {
            let op = CrdtOp::from_json(args.op.as_bytes())
                .map_err(|e| CliError::Usage(format!("OP_JSON is not a CRDT operation: {e}")))?;
            let context = context_arg(args.context.as_deref())?;
            apply(global, &args.bucket, &args.key, &op, context, &args.write).await?
        }
    };
    show(global, &answer)
}

async fn get(global: &GlobalArgs, args: &GetArgs) -> Result<(), CliError> {
    let opts = RequestOptions {
        r: args.r,
        ..RequestOptions::default()
    };
    let bucket = global.client()?.crdt(&args.bucket).with_options(opts);
    let Some(answer) = bucket.get(&args.key).await? else {
        return Err(CliError::Failed {
            code: ErrorCode::NotFound,
            message: format!("no value under {}/{}", args.bucket, args.key),
        });
    };
    if args.context {
        return output::line(answer.context.as_str());
    }
    if args.etag {
        return output::line(answer.etag.as_str());
    }
    show(global, &answer)
}

/// Applies `op`: with `context`, exactly as given; otherwise through the SDK, which
/// reads first for a remove.
async fn apply(
    global: &GlobalArgs,
    bucket: &str,
    key: &str,
    op: &CrdtOp,
    context: Option<Context>,
    write: &WriteArgs,
) -> Result<CrdtValue, CliError> {
    let opts = RequestOptions {
        w: write.w,
        ..RequestOptions::default()
    };
    let bucket: CrdtBucket = global.client()?.crdt(bucket).with_options(opts);
    let precondition = precondition_arg(write.if_match.as_deref(), write.if_absent)?;
    let answer = match (context, precondition) {
        (Some(context), _) => bucket.apply_with_context(key, op, &context).await?,
        (None, Some(precondition)) => bucket.apply_if(key, op, &precondition).await?,
        (None, None) => bucket.apply(key, op).await?,
    };
    Ok(answer)
}

/// Prints the value on stdout and its context and ETag on stderr, or all of it as JSON
/// on stdout with `--json`.
fn show(global: &GlobalArgs, answer: &CrdtValue) -> Result<(), CliError> {
    if global.json {
        return output::json(&Shown {
            crdt_type: answer.crdt_type,
            value: &answer.value,
            context: answer.context.as_str(),
            etag: answer.etag.as_str(),
        });
    }
    output::json(&answer.value)?;
    eprintln!("context: {}", answer.context);
    eprintln!("etag: {}", answer.etag);
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<CrdtCommand, clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("dynamo").chain(args.iter().copied()))?;
        match cli.command {
            Command::Crdt(command) => Ok(command),
            other => panic!("not a crdt command: {other:?}"),
        }
    }

    // Goal: `incr` takes an optional amount, negative numbers included (not taken for
    // flags), and the operation flags after it.
    #[test]
    fn incr_takes_an_optional_possibly_negative_amount() {
        let by = |args: &[&str]| match parse(args).expect("parses") {
            CrdtCommand::Incr(a) => (a.by, a.write.w),
            other => panic!("{other:?}"),
        };
        assert_eq!(by(&["crdt", "incr", "b", "k"]), (1, None));
        assert_eq!(by(&["crdt", "incr", "b", "k", "-3"]), (-3, None));
        assert_eq!(by(&["crdt", "incr", "b", "k", "5", "--w", "2"]), (5, Some(2)));
        assert!(parse(&["crdt", "incr", "b", "k", "x"]).is_err());
    }

    // Goal: `add` and `remove` need at least one element; `--` lets one start with `-`.
    #[test]
    fn element_commands_need_elements() {
        assert!(parse(&["crdt", "add", "b", "k"]).is_err());
        match parse(&["crdt", "remove", "b", "k", "x", "--json", "--", "-y"]).expect("parses") {
            CrdtCommand::Remove(a) => assert_eq!(a.elements, ["x", "-y"]),
            other => panic!("{other:?}"),
        }
    }

    // Goal: `apply --context` sends the caller's context as is, so it cannot be combined
    // with a precondition (the SDK's explicit-context call takes none); a precondition
    // alone is fine.
    #[test]
    fn apply_context_excludes_preconditions() {
        let op = r#"{"remove":["a"]}"#;
        assert!(parse(&["crdt", "apply", "b", "k", op, "--context", "c"]).is_ok());
        assert!(parse(&["crdt", "apply", "b", "k", op, "--context", "c", "--if-absent"]).is_err());
        assert!(parse(&["crdt", "apply", "b", "k", op, "--context", "c", "--if-match", "t"]).is_err());
        assert!(parse(&["crdt", "apply", "b", "k", op, "--if-match", "t"]).is_ok());
        assert!(parse(&["crdt", "assign", "b", "k", "1", "--if-match", "t", "--if-absent"]).is_err());
        assert!(parse(&["crdt", "get", "b", "k", "--context", "--etag"]).is_err());
    }
}
