//! Typed JSON reads and writes and the built-in sibling resolvers, against the mock
//! coordinator (`tests/mock`), whose siblings follow the core's real version rules.

mod mock;

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use dynamo_client::{Client, ClientError, JsonObject, Merge, RetryPolicy, Value, resolve};
use mock::{Mock, TOKEN};
use serde::{Deserialize, Serialize};

/// Every test finishes within this, whatever the client does.
const WAIT: Duration = Duration::from_secs(30);

async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(WAIT, f)
        .await
        .expect("the test finished in time")
}

fn client(mock: &Mock) -> Client {
    Client::builder(mock.url())
        .token(TOKEN)
        .timeout(Duration::from_secs(5))
        .retry(RetryPolicy {
            max_retries: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
        })
        .build()
        .expect("client")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Cart {
    items: BTreeSet<String>,
}

impl Merge for Cart {
    fn merge(self, other: Cart) -> Cart {
        Cart {
            items: self.items.merge(other.items),
        }
    }
}

fn cart(items: &[&str]) -> Cart {
    Cart {
        items: items.iter().map(|s| (*s).to_owned()).collect(),
    }
}

fn cart_json(items: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&cart(items)).expect("json")
}

/// Adds `item` to the cart, as a shopper's click does (the same result when applied
/// twice, as `update_merge` requires).
fn add(item: &'static str) -> impl FnMut(Option<Cart>) -> Cart {
    move |current| {
        let mut cart = current.unwrap_or_else(|| cart(&[]));
        cart.items.insert(item.to_owned());
        cart
    }
}

// Goal: put_json writes application/json, and get_json decodes every sibling with the
// read's context and ETag.
#[tokio::test]
async fn json_values_round_trip_with_every_sibling() {
    within(async {
        let mock = Mock::start().await;
        let c = client(&mock);
        let context = c
            .put_json("carts", "alice", &cart(&["milk"]), None)
            .await
            .expect("put");
        assert_eq!(mock.state.last().header("content-type"), Some("application/json"));
        let read = c
            .get_json::<Cart>("carts", "alice")
            .await
            .expect("get")
            .expect("found");
        assert_eq!(read.single(), Some(&cart(&["milk"])));
        assert_eq!(read.context, context);
        assert!(read.etag.is_some());

        mock.state
            .seed("carts", "alice", &cart_json(&["eggs"]), "application/json");
        let read: JsonObject<Cart> = c.get_json("carts", "alice").await.expect("get").expect("found");
        let mut values: Vec<&Cart> = read.values().collect();
        values.sort_by_key(|c| c.items.iter().next().cloned());
        assert_eq!(values, [&cart(&["eggs"]), &cart(&["milk"])]);
        assert_eq!(read.into_merged(), Some(cart(&["eggs", "milk"])));

        assert_eq!(c.get_json::<Cart>("carts", "nobody").await.expect("get"), None);
    })
    .await;
}

// Goal: a sibling that is not JSON of the asked type is a typed error naming it, not
// a shorter list of values.
#[tokio::test]
async fn a_sibling_of_another_shape_is_a_typed_error() {
    within(async {
        let mock = Mock::start().await;
        mock.state
            .seed("carts", "bob", &cart_json(&["milk"]), "application/json");
        mock.state.seed("carts", "bob", b"not json", "text/plain");
        let e = client(&mock)
            .get_json::<Cart>("carts", "bob")
            .await
            .expect_err("refused");
        assert!(
            matches!(&e, ClientError::ValueDecode { content_type, .. } if content_type == "text/plain"),
            "{e:?}"
        );
    })
    .await;
}

// Goal: update_merge folds every sibling with Merge, applies the change, and writes the
// result with the read's context, leaving one value holding every add.
#[tokio::test]
async fn update_merge_folds_siblings_and_applies_the_change() {
    within(async {
        let mock = Mock::start().await;
        let c = client(&mock);
        mock.state
            .seed("carts", "alice", &cart_json(&["milk"]), "application/json");
        mock.state
            .seed("carts", "alice", &cart_json(&["eggs"]), "application/json");
        let read = c.get("carts", "alice").await.expect("get").expect("found");

        let stored = c
            .update_merge("carts", "alice", add("coffee"))
            .await
            .expect("merged");
        assert_eq!(stored.single(), Some(&cart(&["coffee", "eggs", "milk"])));
        let put = mock.state.last();
        assert_eq!(put.method, "PUT");
        assert_eq!(put.header("x-dynamo-context"), Some(read.context.as_str()));
        assert_eq!(
            mock.state.values("carts", "alice"),
            [cart_json(&["coffee", "eggs", "milk"])]
        );

        // A key without a value starts from None.
        let fresh = c
            .update_merge("carts", "carol", add("tea"))
            .await
            .expect("created");
        assert_eq!(fresh.into_merged(), Some(cart(&["tea"])));
    })
    .await;
}

// Goal: an add made concurrently with update_merge is never lost: its write comes back as
// a sibling of the merge's write, and the next round merges it in.
#[tokio::test]
async fn update_merge_keeps_a_concurrent_add() {
    within(async {
        let mock = Mock::start().await;
        let c = client(&mock);
        c.put_json("carts", "alice", &cart(&["milk"]), None)
            .await
            .expect("put");
        mock.state
            .write_concurrently_before_next_put(&cart_json(&["bread"]));
        let stored = c
            .update_merge("carts", "alice", add("coffee"))
            .await
            .expect("merged");
        assert_eq!(stored.single(), Some(&cart(&["bread", "coffee", "milk"])));
        let puts = mock.state.requests().iter().filter(|r| r.method == "PUT").count();
        assert_eq!(puts, 3, "the first write, then the merge, then its retry");
    })
    .await;
}

// Goal: a sibling that does not decode stops update_merge before it writes: merging
// without it would delete it.
#[tokio::test]
async fn update_merge_writes_nothing_over_a_sibling_it_cannot_read() {
    within(async {
        let mock = Mock::start().await;
        mock.state
            .seed("carts", "alice", &cart_json(&["milk"]), "application/json");
        mock.state.seed("carts", "alice", b"[1, 2]", "application/json");
        let c = client(&mock);
        let e = c
            .update_merge("carts", "alice", add("coffee"))
            .await
            .expect_err("refused");
        assert!(matches!(e, ClientError::ValueDecode { .. }), "{e:?}");
        assert!(mock.state.requests().iter().all(|r| r.method == "GET"));
        assert_eq!(mock.state.values("carts", "alice").len(), 2);
    })
    .await;
}

// Goal: the built-in resolvers work inside `update`: lww keeps the newest sibling (the
// mock's clock gives each write a later time), union merges JSON sets.
#[tokio::test]
async fn lww_and_union_resolve_inside_update() {
    within(async {
        let mock = Mock::start().await;
        let c = client(&mock);
        mock.state.seed("s", "k", b"older", "text/plain");
        mock.state.seed("s", "k", b"newer", "text/plain");
        let stored = c
            .update("s", "k", |current| {
                match current.and_then(|o| resolve::lww(&o.siblings)) {
                    Some(newest) => newest.to_value(),
                    None => Value::text("none"),
                }
            })
            .await
            .expect("resolved");
        assert_eq!(stored.single().map(|s| s.value.as_slice()), Some(&b"newer"[..]));

        mock.state.seed("tags", "p", br#"["b","a"]"#, "application/json");
        mock.state.seed("tags", "p", br#"["c","a"]"#, "application/json");
        let stored = c
            .update("tags", "p", |current| {
                let tags = current.map(|o| resolve::union(&o.siblings)).transpose();
                // The test's siblings are sets; an app would handle the error.
                let tags = tags.expect("sets").unwrap_or_default();
                Value::json(&tags).expect("json")
            })
            .await
            .expect("resolved");
        assert_eq!(mock.state.values("tags", "p"), [br#"["a","b","c"]"#.to_vec()]);
        assert!(!stored.has_siblings());
        assert_eq!(
            c.update_merge("tags", "p", |t: Option<BTreeSet<String>>| t.unwrap_or_default())
                .await
                .expect("a set")
                .single()
                .map(BTreeSet::len),
            Some(3)
        );
    })
    .await;
}
