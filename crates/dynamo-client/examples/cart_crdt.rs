//! The shopping cart of `cart_siblings.rs` as a CRDT set bucket
//! (`{"conflict": "crdt", "crdt_type": "set"}`): the replicas merge concurrent adds
//! themselves, so the application never sees a sibling.
//!
//! Four shoppers add items at the same time, without reading first (adds need no
//! context). Then one item is removed: the SDK reads the cart and sends that read's
//! context with the remove, which takes away exactly the adds the read saw. An add it
//! did not see (made concurrently, through another coordinator) survives the remove (add
//! wins), and a removed item never comes back by itself, which a merge by union on a
//! siblings bucket cannot promise.
//!
//! ```sh
//! DYNAMO_TOKEN=$(cat data/root-token) cargo run -p dynamo-client --example cart_crdt
//! ```

mod common;

use std::process::ExitCode;

use dynamo_client::{BucketPropsPatch, ConflictMode, CrdtType};
use tokio::task::JoinSet;

#[tokio::main]
async fn main() -> ExitCode {
    common::exit(run().await)
}

async fn run() -> common::Result {
    let client = common::client()?;
    let bucket = common::bucket("crdt-carts");
    let key = common::fresh_key("alice");
    let set_bucket = BucketPropsPatch {
        conflict: Some(ConflictMode::Crdt),
        crdt_type: Some(CrdtType::Set),
        ..BucketPropsPatch::default()
    };
    client.set_bucket_props(&bucket, &set_bucket).await?;
    let carts = client.crdt(&bucket);

    let mut shoppers = JoinSet::new();
    for items in [
        ["milk", "eggs"],
        ["bread", "eggs"],
        ["coffee", "tea"],
        ["apples", "milk"],
    ] {
        let (carts, key) = (carts.clone(), key.clone());
        shoppers.spawn(async move { carts.add(&key, items).await });
    }
    while let Some(done) = shoppers.join_next().await {
        done??;
    }
    let cart = carts.get(&key).await?.ok_or("the cart is gone")?;
    println!("{bucket}/{key} after four concurrent adds: {}", cart.value);
    let want = ["apples", "bread", "coffee", "eggs", "milk", "tea"];
    common::check(cart.as_set() == Some(want.to_vec()), format!("expected {want:?}"))?;

    // Read-then-remove, in one call: the remove carries the context of the SDK's read.
    let after = carts.remove(&key, ["milk"]).await?;
    println!("after removing milk: {}", after.value);

    let cart = carts.get(&key).await?.ok_or("the cart is gone")?;
    let want = ["apples", "bread", "coffee", "eggs", "tea"];
    println!("read back: {}", cart.value);
    common::check(cart.as_set() == Some(want.to_vec()), format!("expected {want:?}"))?;
    println!("ok: every add kept, the remove applied, no sibling to merge");
    Ok(())
}
