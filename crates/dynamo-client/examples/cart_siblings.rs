//! The Dynamo paper's shopping cart (§4.4) on a siblings bucket: concurrent adds are
//! kept side by side as siblings, and the application merges them, so an add is never
//! lost.
//!
//! Two shoppers read the cart at the same time and each adds an item with the context of
//! that read. Neither write saw the other, so the store keeps both as siblings. A third
//! change, made with [`Client::update_merge`], decodes every sibling as a `Cart`, merges
//! them (the union of their items), adds its own item and writes the result back with
//! the read's context, which replaces exactly the siblings it merged. Last, an item is
//! removed by writing the cart without it, with the context of a read.
//!
//! **The caveat of merging by union:** a remove is only a write without the item. Had
//! another shopper, who read the cart before the remove, written concurrently with it
//! (a re-add of the item, or any add made from that older read, which still holds the
//! item), the next union would bring the removed item back. Adds are never lost; removes
//! can be. `cart_crdt.rs` keeps the cart in a CRDT set instead, whose remove takes away
//! exactly the adds it observed, so a removed item never comes back by itself.
//!
//! ```sh
//! DYNAMO_TOKEN=$(cat data/root-token) cargo run -p dynamo-client --example cart_siblings
//! ```

mod common;

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::sync::Arc;

use dynamo_client::{BucketPropsPatch, Client, ConflictMode, JsonObject, Merge};
use serde::{Deserialize, Serialize};
use tokio::sync::Barrier;
use tokio::task::JoinSet;

/// A cart, stored as JSON: `{"items": ["bread", "milk"]}`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Cart {
    items: BTreeSet<String>,
}

/// Two versions of a cart merge into the union of their items: every add survives.
impl Merge for Cart {
    fn merge(self, other: Cart) -> Cart {
        Cart {
            items: self.items.merge(other.items),
        }
    }
}

fn cart<const N: usize>(items: [&str; N]) -> Cart {
    Cart {
        items: items.into_iter().map(str::to_owned).collect(),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    common::exit(run().await)
}

async fn run() -> common::Result {
    let client = common::client()?;
    let bucket = common::bucket("carts");
    let key = common::fresh_key("alice");
    // Siblings (the default, set here for the reader): concurrent writes are all kept.
    let siblings = BucketPropsPatch {
        conflict: Some(ConflictMode::Siblings),
        ..BucketPropsPatch::default()
    };
    client.set_bucket_props(&bucket, &siblings).await?;

    client.put_json(&bucket, &key, &cart(["milk"]), None).await?;
    println!("{bucket}/{key} starts as {:?}", ["milk"]);

    // Two shoppers (a phone and a laptop) read the cart, then each adds an item.
    let both_read = Arc::new(Barrier::new(2));
    let mut shoppers = JoinSet::new();
    for item in ["eggs", "bread"] {
        let (client, bucket, key) = (client.clone(), bucket.clone(), key.clone());
        let both_read = both_read.clone();
        shoppers.spawn(async move { add_item(&client, &bucket, &key, item, &both_read).await });
    }
    while let Some(done) = shoppers.join_next().await {
        done??;
    }

    let read = client
        .get_json::<Cart>(&bucket, &key)
        .await?
        .ok_or("the cart is gone")?;
    println!("after two concurrent adds: {}", describe(&read));
    common::check(read.siblings.len() == 2, "expected one sibling per shopper")?;

    // A third change merges the siblings, adds coffee, and writes one cart back.
    let merged = client
        .update_merge(&bucket, &key, |current: Option<Cart>| {
            let mut cart = current.unwrap_or_default();
            cart.items.insert("coffee".to_owned());
            cart
        })
        .await?;
    println!("merged, with coffee added: {}", describe(&merged));
    let want = cart(["bread", "coffee", "eggs", "milk"]);
    common::check(
        merged.single() == Some(&want),
        format!("expected {:?}", want.items),
    )?;

    // A remove: write the cart without milk, with the context of the read it came from.
    let read = client
        .get_json::<Cart>(&bucket, &key)
        .await?
        .ok_or("the cart is gone")?;
    let context = read.context.clone();
    let mut cart_now = read.into_merged().ok_or("a read has a value")?;
    cart_now.items.remove("milk");
    client.put_json(&bucket, &key, &cart_now, Some(&context)).await?;

    let after = client
        .get_json::<Cart>(&bucket, &key)
        .await?
        .ok_or("the cart is gone")?;
    println!("after removing milk: {}", describe(&after));
    let want = cart(["bread", "coffee", "eggs"]);
    common::check(
        after.single() == Some(&want),
        format!("expected {:?}", want.items),
    )?;
    println!("ok: no add was lost");
    Ok(())
}

/// Shows a read's siblings, e.g. `2 siblings: ["eggs", "milk"] | ["bread", "milk"]`.
fn describe(read: &JsonObject<Cart>) -> String {
    let carts: Vec<String> = read.values().map(|c| format!("{:?}", c.items)).collect();
    format!("{} sibling(s): {}", carts.len(), carts.join(" | "))
}

/// One shopper: reads the cart, waits until the other shopper has read it too (so
/// neither sees the other's write), then adds `item` with the context of its read.
async fn add_item(
    client: &Client,
    bucket: &str,
    key: &str,
    item: &str,
    both_read: &Barrier,
) -> common::Result {
    let read = client
        .get_json::<Cart>(bucket, key)
        .await?
        .ok_or("the cart is gone")?;
    both_read.wait().await;
    let context = read.context.clone();
    let mut cart = read.into_merged().ok_or("a read has a value")?;
    cart.items.insert(item.to_owned());
    client.put_json(bucket, key, &cart, Some(&context)).await?;
    Ok(())
}
