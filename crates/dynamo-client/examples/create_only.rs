//! A create-only write: [`Client::put_if_absent`] (`If-None-Match: *`) stores a value
//! only if the key has none. The first call creates the key; the second is refused with
//! `412 precondition_failed` and changes nothing.
//!
//! The check runs against the R replicas the coordinator reads at write time; it is not
//! a lock (`docs/api.md`): during a partition two creates through different
//! coordinators can both succeed and become siblings.
//!
//! ```sh
//! DYNAMO_TOKEN=$(cat data/root-token) cargo run -p dynamo-client --example create_only
//! ```
//!
//! [`Client::put_if_absent`]: dynamo_client::Client::put_if_absent

mod common;

use std::process::ExitCode;

use dynamo_client::{BucketPropsPatch, ClientError, ConflictMode, ETag, ErrorCode, Sibling};

#[tokio::main]
async fn main() -> ExitCode {
    common::exit(run().await)
}

async fn run() -> common::Result {
    let client = common::client()?;
    let bucket = common::bucket("users");
    let key = common::fresh_key("alice");
    let siblings = BucketPropsPatch {
        conflict: Some(ConflictMode::Siblings),
        ..BucketPropsPatch::default()
    };
    client.set_bucket_props(&bucket, &siblings).await?;

    let created = client
        .put_if_absent(&bucket, &key, "alice@example.com", "text/plain")
        .await?;
    println!(
        "created {bucket}/{key} (etag {})",
        created.etag.as_ref().map_or("none", ETag::as_str)
    );

    match client
        .put_if_absent(&bucket, &key, "mallory@example.com", "text/plain")
        .await
    {
        Err(ClientError::Api {
            code: ErrorCode::PreconditionFailed,
            status,
            message,
            ..
        }) => println!("second create refused as expected: {status} precondition_failed: {message}"),
        Err(other) => return Err(other.into()),
        Ok(_) => return Err("the second create-only write was applied".into()),
    }

    let stored = client.get(&bucket, &key).await?.ok_or("the key is gone")?;
    let value = stored
        .single()
        .and_then(Sibling::text)
        .ok_or("expected one text value")?;
    println!("{bucket}/{key} still holds {value:?}");
    common::check(value == "alice@example.com", "the first value must be kept")?;
    println!("ok: created once, the second create changed nothing");
    Ok(())
}
