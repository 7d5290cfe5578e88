//! `dynamo bucket get|set <bucket>`: bucket properties.

use clap::{Args, Subcommand, ValueEnum};
use dynamo_client::{BucketProps, BucketPropsPatch, ConflictMode, CrdtType};

use crate::cli::GlobalArgs;
use crate::error::CliError;
use crate::output;

/// The `bucket` subcommands.
#[derive(Debug, Subcommand)]
pub enum BucketCommand {
    /// Show a bucket's effective properties, defaults included.
    Get {
        /// The bucket.
        bucket: String,
    },
    /// Change some of a bucket's properties (needs `admin`); shows the result.
    Set(SetArgs),
}

/// Arguments of `dynamo bucket set`: at least one property.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("props").required(true).multiple(true)))]
pub struct SetArgs {
    /// The bucket.
    pub bucket: String,
    /// Replicas per key (cannot change once the bucket holds data).
    #[arg(long, group = "props")]
    pub n: Option<u8>,
    /// The default read quorum.
    #[arg(long, group = "props")]
    pub r: Option<u8>,
    /// The default write quorum.
    #[arg(long, group = "props")]
    pub w: Option<u8>,
    /// How concurrent writes are resolved.
    #[arg(long, value_enum, group = "props")]
    pub conflict: Option<Conflict>,
    /// The CRDT type (with `--conflict crdt`).
    #[arg(long, value_enum, group = "props")]
    pub crdt_type: Option<Crdt>,
    /// The most siblings a write may leave.
    #[arg(long, group = "props")]
    pub max_siblings: Option<u32>,
}

/// `--conflict` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Conflict {
    /// Keep concurrent writes as siblings for the application.
    Siblings,
    /// The last writer by timestamp wins.
    Lww,
    /// Values are CRDTs that merge on their own.
    Crdt,
}

/// `--crdt-type` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Crdt {
    /// A counter.
    Counter,
    /// An add-wins set.
    Set,
    /// A map of nested CRDTs.
    Map,
    /// A last-writer-wins register.
    Register,
}

impl From<Conflict> for ConflictMode {
    fn from(c: Conflict) -> ConflictMode {
        match c {
            Conflict::Siblings => ConflictMode::Siblings,
            Conflict::Lww => ConflictMode::Lww,
            Conflict::Crdt => ConflictMode::Crdt,
        }
    }
}

impl From<Crdt> for CrdtType {
    fn from(c: Crdt) -> CrdtType {
        match c {
            Crdt::Counter => CrdtType::Counter,
            Crdt::Set => CrdtType::Set,
            Crdt::Map => CrdtType::Map,
            Crdt::Register => CrdtType::Register,
        }
    }
}

/// Runs a `bucket` subcommand and prints the effective properties.
///
/// # Errors
/// The API's errors (`invalid_bucket_properties`, `bucket_n_immutable`, `forbidden`).
pub async fn run(global: &GlobalArgs, command: &BucketCommand) -> Result<(), CliError> {
    let client = global.client()?;
    let props = match command {
        BucketCommand::Get { bucket } => client.bucket_props(bucket).await?,
        BucketCommand::Set(args) => {
            let patch = BucketPropsPatch {
                n: args.n,
                r: args.r,
                w: args.w,
                conflict: args.conflict.map(Into::into),
                crdt_type: args.crdt_type.map(Into::into),
                max_siblings: args.max_siblings,
            };
            client.set_bucket_props(&args.bucket, &patch).await?
        }
    };
    if global.json {
        return output::json(&props);
    }
    output::stdout(props_text(&props).as_bytes())
}

fn props_text(props: &BucketProps) -> String {
    let conflict = match props.conflict {
        ConflictMode::Siblings => "siblings",
        ConflictMode::Lww => "lww",
        ConflictMode::Crdt => "crdt",
    };
    let mut rows = vec![
        vec!["n".into(), props.n.to_string()],
        vec!["r".into(), props.r.to_string()],
        vec!["w".into(), props.w.to_string()],
        vec!["conflict".into(), conflict.into()],
    ];
    if let Some(t) = props.crdt_type {
        let name = match t {
            CrdtType::Counter => "counter",
            CrdtType::Set => "set",
            CrdtType::Map => "map",
            CrdtType::Register => "register",
        };
        rows.push(vec!["crdt_type".into(), name.into()]);
    }
    rows.push(vec!["max_siblings".into(), props.max_siblings.to_string()]);
    output::table(&["PROPERTY", "VALUE"], &rows)
}
