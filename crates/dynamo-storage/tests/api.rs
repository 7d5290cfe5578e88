//! Storage-node behaviour through its real HTTP API on loopback, in-process.

mod common;

use common::*;
use dynamo_core::version::{ConflictRule, NewWrite, VersionedObject};
use dynamo_core::wire::internal::{HintFor, ReplicaOp, ReplicaResult};
use dynamo_core::{ActorId, DotSet, NodeId};
use serde_json::json;

fn values(o: &VersionedObject) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = o.live_siblings().map(|s| s.value.clone()).collect();
    v.sort();
    v
}

// Goal: the replica operations behave as the DVV rules say, end to end through fjall.
#[tokio::test]
async fn coordinate_put_replicate_get_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = start_in_process(dir.path(), "node-a").await;

    let r = batch(&a.url(), vec![put_op("b", "k", b"one", DotSet::new())]).await;
    let ReplicaResult::Put { object, context, .. } = &r.results[0] else {
        panic!("{r:?}")
    };
    assert_eq!(values(object), vec![b"one".to_vec()]);

    // A blind write becomes a sibling; a write with the context replaces both.
    batch(&a.url(), vec![put_op("b", "k", b"two", DotSet::new())]).await;
    let got = get(&a.url(), "b", "k").await.expect("stored");
    assert_eq!(values(&got), vec![b"one".to_vec(), b"two".to_vec()]);
    let r = batch(&a.url(), vec![put_op("b", "k", b"three", got.context().clone())]).await;
    let ReplicaResult::Put { object, .. } = &r.results[0] else {
        panic!("{r:?}")
    };
    assert_eq!(values(object), vec![b"three".to_vec()]);
    assert!(!context.is_empty());

    // Replicating a copy into a second node gives the same versions there.
    let dir_b = tempfile::tempdir().expect("tempdir");
    let b = start_in_process(dir_b.path(), "node-b").await;
    let r = batch(
        &b.url(),
        vec![ReplicaOp::Replicate {
            bucket: bucket("b"),
            key: "k".into(),
            object: object.clone(),
            conflict: SIB,
            hint: None,
            idempotency: None,
        }],
    )
    .await;
    assert_eq!(r.results, vec![ReplicaResult::Replicated]);
    assert_eq!(get(&b.url(), "b", "k").await.as_ref(), Some(object));
    assert_eq!(get(&b.url(), "b", "missing").await, None);
    a.shutdown().await;
    b.shutdown().await;
}

// Goal: the write-time sibling bound answers per operation and stores nothing.
#[tokio::test]
async fn too_many_siblings_is_refused_per_operation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = start_in_process(dir.path(), "node-a").await;
    let op = |v: &[u8]| ReplicaOp::CoordinatePut {
        bucket: bucket("b"),
        key: "k".into(),
        context: DotSet::new(),
        value: v.to_vec(),
        content_type: String::new(),
        tombstone: false,
        conflict: ConflictRule::Siblings { max_siblings: 2 },
        hint: None,
        deadline_ms: None,
        idempotency: None,
    };
    let r = batch(
        &a.url(),
        vec![
            op(b"1"),
            op(b"2"),
            op(b"3"),
            ReplicaOp::Get {
                bucket: bucket("b"),
                key: "k".into(),
            },
        ],
    )
    .await;
    assert!(matches!(r.results[0], ReplicaResult::Put { .. }));
    assert!(matches!(r.results[1], ReplicaResult::Put { .. }));
    assert!(
        matches!(&r.results[2], ReplicaResult::Error { code, .. } if code.as_str() == "too_many_siblings"),
        "{:?}",
        r.results[2]
    );
    let ReplicaResult::Got { object: Some(o) } = &r.results[3] else {
        panic!()
    };
    assert_eq!(o.siblings().len(), 2);
    a.shutdown().await;
}

// Goal: every malformed internal request gets a 4xx with a JSON error code, and the
// node's data (values and Merkle roots) is exactly as before.
#[tokio::test]
async fn bad_internal_requests_get_4xx_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = start_in_process(dir.path(), "node-a").await;
    batch(&a.url(), vec![put_op("b", "k", b"v", DotSet::new())]).await;
    let before = get(&a.url(), "b", "k").await;
    let roots_before = roots(&a.url()).await;

    let c = client();
    let url = format!("{}/internal/v1/replicas", a.url());
    let big = "x".repeat(1_048_577);
    let b64 = |s: &str| base64_std(s.as_bytes());
    let good_put = json!({"op": "coordinate_put", "bucket": "b", "key": "k", "value": b64("new"), "conflict": {"mode": "siblings", "max_siblings": 32}});
    let cases: Vec<(serde_json::Value, u16, &str)> = vec![
        (json!({"ops": []}), 400, "invalid_request"),
        (
            json!({"ops": [good_put, {"op": "get", "bucket": "BAD", "key": "k"}]}),
            400,
            "invalid_json",
        ),
        (
            json!({"ops": [good_put, {"op": "get", "bucket": "b", "key": ""}]}),
            400,
            "invalid_key",
        ),
        (
            json!({"ops": [good_put, {"op": "get", "bucket": "b", "key": "x".repeat(1025)}]}),
            400,
            "invalid_key",
        ),
        (
            json!({"ops": [good_put, {"op": "explode", "bucket": "b", "key": "k"}]}),
            400,
            "invalid_json",
        ),
        (
            json!({"ops": [{"op": "coordinate_put", "bucket": "b", "key": "k", "value": b64(&big), "conflict": {"mode": "lww"}}]}),
            413,
            "value_too_large",
        ),
        (
            json!({"ops": [{"op": "coordinate_put", "bucket": "b", "key": "k", "value": "!!notbase64", "conflict": {"mode": "lww"}}]}),
            400,
            "invalid_json",
        ),
        (
            json!({"ops": [{"op": "coordinate_put", "bucket": "b", "key": "k", "tombstone": true, "value": b64("x"), "conflict": {"mode": "lww"}}]}),
            400,
            "invalid_request",
        ),
        (
            json!({"ops": [{"op": "coordinate_put", "bucket": "b", "key": "k", "value": b64("x"), "conflict": {"mode": "lww"}, "hint": {"node": "n1", "address": "file:///etc"}}]}),
            400,
            "invalid_request",
        ),
        (
            json!({"ops": [{"op": "replicate", "bucket": "b", "key": "k", "object": {"history": {"vv": []}, "siblings": [{"dot": {"actor": 1, "counter": 1}, "value": "", "content_type": "", "last_modified_ms": 0}]}, "conflict": {"mode": "lww"}}]}),
            400,
            "invalid_json",
        ),
        (
            json!({"ops": [{"op": "coordinate_put", "bucket": "b", "key": "k", "context": {"vv": [[1, 0]]}, "conflict": {"mode": "lww"}}]}),
            400,
            "invalid_json",
        ),
        (
            json!({"ops": [good_put, {"op": "tombstone_status", "bucket": "b", "key": "k", "digest": "12"}]}),
            400,
            "invalid_json",
        ),
        (
            json!({"ops": [good_put, {"op": "tombstone_status", "bucket": "b", "key": "k", "digest": 12}]}),
            400,
            "invalid_json",
        ),
        (
            json!({"ops": [good_put, {"op": "tombstone_status", "bucket": "b", "key": "", "digest": "0".repeat(32)}]}),
            400,
            "invalid_key",
        ),
        (json!({"unexpected": 1}), 400, "invalid_json"),
    ];
    for (body, status, code) in cases {
        let resp = c.post(&url).json(&body).send().await.expect("send");
        assert_eq!(resp.status().as_u16(), status, "body {body}");
        let err: serde_json::Value = resp.json().await.expect("json error");
        assert_eq!(err["error"]["code"], code, "body {body}");
    }
    let resp = c
        .post(&url)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 415);
    let resp = c
        .post(&url)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 400);
    let resp = c
        .get(format!("{}/internal/v1/merkle/999999", a.url()))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 400);
    let resp = c
        .get(format!("{}/internal/v1/partitions/1/objects?limit=0", a.url()))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 400);
    let resp = c
        .get(format!(
            "{}/internal/v1/partitions/1/objects?after=%21%21",
            a.url()
        ))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 400);
    let resp = c
        .get(format!("{}/internal/v1/nothing", a.url()))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 404);

    assert_eq!(get(&a.url(), "b", "k").await, before);
    assert_eq!(roots(&a.url()).await, roots_before);
    a.shutdown().await;
}

fn base64_std(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

async fn roots(url: &str) -> Vec<u128> {
    let mut out = Vec::new();
    for p in 0..256u32 {
        out.push(summary(url, p).await.root);
    }
    out
}

// Goal: a partition pulled by a fresh node arrives whole: the same objects and the same
// Merkle roots, across several pages.
#[tokio::test]
async fn a_partition_streamed_to_a_fresh_node_arrives_whole() {
    let dir_a = tempfile::tempdir().expect("tempdir");
    let dir_b = tempfile::tempdir().expect("tempdir");
    let a = start_in_process(dir_a.path(), "node-a").await;
    let b = start_in_process(dir_b.path(), "node-b").await;
    // Enough keys that several partitions hold more than one page (256 objects).
    let mut ops = Vec::new();
    for i in 0..3000 {
        ops.push(put_op(
            "stream",
            &format!("key-{i}"),
            format!("value-{i}").as_bytes(),
            DotSet::new(),
        ));
        if ops.len() == 200 {
            batch(&a.url(), std::mem::take(&mut ops)).await;
        }
    }
    if !ops.is_empty() {
        batch(&a.url(), ops).await;
    }
    let c = client();
    // 3000 keys over 256 partitions is about 12 per partition: a page size of 256 would
    // hide paging bugs, so the pull's own paging is tested in the next test and here the
    // whole set of partitions is pulled.
    for p in 0..256u32 {
        let progress: serde_json::Value = c
            .post(format!("{}/internal/v1/partitions/{p}/pull", b.url()))
            .json(&json!({"source": a.url()}))
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json");
        assert_eq!(progress["done"], true, "{progress}");
        let (ra, rb) = (summary(&a.url(), p).await, summary(&b.url(), p).await);
        assert_eq!(ra.root, rb.root, "partition {p}");
        assert_ne!(ra.root, 0, "partition {p} holds data");
    }
    a.shutdown().await;
    b.shutdown().await;
}

// Goal: paging is resumable: pages of a small size, followed by cursor, cover every object
// of a partition exactly once.
#[tokio::test]
async fn partition_pages_resume_from_their_cursor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = start_in_process(dir.path(), "node-a").await;
    let mut ops = Vec::new();
    for i in 0..2000 {
        ops.push(put_op("page", &format!("k{i}"), b"v", DotSet::new()));
        if ops.len() == 250 {
            batch(&a.url(), std::mem::take(&mut ops)).await;
        }
    }
    let c = client();
    let mut total = 0;
    for p in 0..256u32 {
        let mut seen = std::collections::BTreeSet::new();
        let mut after: Option<String> = None;
        loop {
            let mut req = c
                .get(format!("{}/internal/v1/partitions/{p}/objects", a.url()))
                .query(&[("limit", "3")]);
            if let Some(a) = &after {
                req = req.query(&[("after", a)]);
            }
            let page: serde_json::Value = req.send().await.expect("send").json().await.expect("json");
            for o in page["objects"].as_array().expect("objects") {
                assert!(
                    seen.insert(o["key"].as_str().expect("key").to_owned()),
                    "no object twice"
                );
            }
            match page["next"].as_str() {
                Some(n) => after = Some(n.to_owned()),
                None => break,
            }
        }
        total += seen.len();
    }
    assert_eq!(total, 2000);
    a.shutdown().await;
}

// Goal: the order in which replicas' copies arrive does not matter: two nodes fed the
// same copies in different orders end with identical versions and Merkle roots.
#[tokio::test]
async fn replica_merge_in_any_order_converges() {
    // Three divergent copies of one key, made with the core rules.
    let sib = SIB;
    let mut base = VersionedObject::new();
    base.put(
        &DotSet::new(),
        ActorId(1),
        NewWrite::value(b"base".to_vec(), "t", 1),
        sib,
    )
    .expect("put");
    let mut copies = [base.clone(), base.clone(), base.clone()];
    let ctx = base.context().clone();
    copies[0]
        .put(&ctx, ActorId(1), NewWrite::value(b"x".to_vec(), "t", 2), sib)
        .expect("put");
    copies[1]
        .put(
            &DotSet::new(),
            ActorId(2),
            NewWrite::value(b"y".to_vec(), "t", 3),
            sib,
        )
        .expect("put");
    copies[2]
        .put(&ctx, ActorId(3), NewWrite::tombstone(4), sib)
        .expect("put");

    let orders = [[0usize, 1, 2], [2, 1, 0], [1, 2, 0], [0, 2, 1]];
    let mut results = Vec::new();
    for (i, order) in orders.iter().enumerate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let n = start_in_process(dir.path(), &format!("node-{i}")).await;
        for &c in order {
            let op = ReplicaOp::Replicate {
                bucket: bucket("b"),
                key: "k".into(),
                object: copies[c].clone(),
                conflict: sib,
                hint: None,
                idempotency: None,
            };
            // Deliver twice: replication is idempotent.
            batch(&n.url(), vec![op.clone(), op]).await;
        }
        results.push((
            get(&n.url(), "b", "k").await.expect("stored"),
            roots(&n.url()).await,
        ));
        n.shutdown().await;
    }
    for r in &results[1..] {
        assert_eq!(r, &results[0]);
    }
    assert_eq!(values(&results[0].0), vec![b"x".to_vec(), b"y".to_vec()]);
}

// Goal: a hinted write is stored apart (no Merkle change), served by reads on the
// fallback, and counted as pending.
#[tokio::test]
async fn hinted_writes_are_kept_apart_and_readable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = start_in_process(dir.path(), "node-a").await;
    let roots_before = roots(&a.url()).await;
    let op = ReplicaOp::CoordinatePut {
        bucket: bucket("b"),
        key: "k".into(),
        context: DotSet::new(),
        value: b"held".to_vec(),
        content_type: String::new(),
        tombstone: false,
        conflict: SIB,
        // Nobody listens on port 1: the hint stays pending.
        hint: Some(HintFor {
            node: NodeId::new("node-z").expect("id"),
            address: "http://127.0.0.1:1".into(),
        }),
        deadline_ms: None,
        idempotency: None,
    };
    batch(&a.url(), vec![op]).await;
    assert_eq!(
        roots(&a.url()).await,
        roots_before,
        "hints are not the node's own data"
    );
    assert_eq!(metric(&a.url(), "dynamo_storage_hints_pending").await, 1.0);
    let got = get(&a.url(), "b", "k").await.expect("readable on the fallback");
    assert_eq!(values(&got), vec![b"held".to_vec()]);
    a.shutdown().await;
}

// Goal: a pull bounded by its budget answers `done: false` with a cursor, and calls that
// resume from the cursor copy the partition whole (a large partition over many calls).
#[tokio::test]
async fn a_budgeted_pull_resumes_from_its_cursor_until_done() {
    let dir_a = tempfile::tempdir().expect("tempdir");
    let dir_b = tempfile::tempdir().expect("tempdir");
    // Two partitions, so 700 keys put several pages (256 objects) in each.
    let config = |dir: &std::path::Path, id: &str| {
        let mut c = dynamo_storage::Config::for_dir(dir);
        c.node_id = Some(id.into());
        c.partitions = 2;
        c
    };
    let a = start_with(config(dir_a.path(), "node-a")).await;
    let b = start_with(config(dir_b.path(), "node-b")).await;
    let mut ops = Vec::new();
    for i in 0..700 {
        ops.push(put_op("big", &format!("k{i}"), b"v", DotSet::new()));
        if ops.len() == 200 {
            batch(&a.url(), std::mem::take(&mut ops)).await;
        }
    }
    batch(&a.url(), ops).await;
    let c = client();
    let mut cursor: Option<String> = None;
    let mut calls = 0;
    loop {
        calls += 1;
        assert!(calls < 100, "the pull never finished");
        let progress: serde_json::Value = c
            .post(format!("{}/internal/v1/partitions/0/pull", b.url()))
            .json(&json!({"source": a.url(), "cursor": cursor, "budget_ms": 0}))
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json");
        if progress["done"] == true {
            break;
        }
        cursor = Some(
            progress["cursor"]
                .as_str()
                .expect("a cursor to resume from")
                .to_owned(),
        );
    }
    assert!(calls >= 2, "budget 0 copies one page per call");
    assert_eq!(summary(&a.url(), 0).await.root, summary(&b.url(), 0).await.root);
    a.shutdown().await;
    b.shutdown().await;
}

// Goal: a storage node's internal routes admit only fresh requests signed with the
// cluster's member key. Unsigned, foreign-keyed, control-keyed (a storage node holds no
// control key), stale, altered and replayed requests are each `401 unauthorized`, reads
// and partition dumps included, and the stored data is unchanged afterwards; health and
// metrics stay open.
#[tokio::test]
async fn internal_routes_admit_only_fresh_requests_signed_with_the_member_key() {
    use dynamo_server::internal::testing::{TEST_CONTROL_KEY, TEST_MEMBER_KEY};
    use dynamo_testkit::{Role, now_ms, signature_header};

    let dir = tempfile::tempdir().expect("tempdir");
    let a = start_in_process(dir.path(), "node-a").await;
    batch(&a.url(), vec![put_op("b", "k", b"kept", DotSet::new())]).await;

    let path = "/internal/v1/replicas";
    let evil = serde_json::to_vec(&dynamo_core::wire::internal::ReplicaBatch {
        ops: vec![put_op("b", "k", b"evil", DotSet::new())],
        ring_epoch: None,
    })
    .expect("json");
    let harmless = serde_json::to_vec(&dynamo_core::wire::internal::ReplicaBatch {
        ops: vec![ReplicaOp::Get {
            bucket: bucket("b"),
            key: "k".into(),
        }],
        ring_epoch: None,
    })
    .expect("json");
    let foreign = "1:Zm9yZWlnbi1jbHVzdGVyLW1lbWJlci1rZXktb2YtMzItYnl0ZXM";
    let sign = |keys: &str, role, ts, body: &[u8]| signature_header(keys, role, ts, "POST", path, body);
    let now = now_ms();
    let cases: Vec<(&str, Option<String>, Vec<u8>)> = vec![
        ("unsigned", None, evil.clone()),
        ("garbage", Some("v1 role=member".into()), evil.clone()),
        (
            "foreign key",
            Some(sign(foreign, Role::Member, now, &evil)),
            evil.clone(),
        ),
        (
            "control key, which a storage node does not hold",
            Some(sign(TEST_CONTROL_KEY, Role::Control, now, &evil)),
            evil.clone(),
        ),
        (
            "signed a minute ago",
            Some(sign(TEST_MEMBER_KEY, Role::Member, now - 60_000, &evil)),
            evil.clone(),
        ),
        (
            "signed for another body",
            Some(sign(TEST_MEMBER_KEY, Role::Member, now, &harmless)),
            evil.clone(),
        ),
        (
            "signed for another path",
            Some(signature_header(
                TEST_MEMBER_KEY,
                Role::Member,
                now,
                "POST",
                "/internal/v1/node",
                &evil,
            )),
            evil.clone(),
        ),
    ];
    let http = dynamo_testkit::unsigned_http();
    let send = |header: Option<String>, body: Vec<u8>| {
        let mut req = http
            .post(format!("{}{path}", a.url()))
            .header("content-type", "application/json")
            .body(body);
        if let Some(h) = header {
            req = req.header(dynamo_core::signature::SIGNATURE_HEADER, h);
        }
        req.send()
    };
    for (what, header, body) in cases {
        let r = send(header, body).await.expect("send");
        assert_eq!(r.status(), 401, "{what}");
        let e: serde_json::Value = r.json().await.expect("json");
        assert_eq!(e["error"]["code"], "unauthorized", "{what}: {e}");
    }
    // A captured request, even a read, works once.
    let once = sign(TEST_MEMBER_KEY, Role::Member, now_ms(), &harmless);
    let first = send(Some(once.clone()), harmless.clone()).await.expect("send");
    assert_eq!(first.status(), 200);
    let again = send(Some(once), harmless.clone()).await.expect("send");
    assert_eq!(again.status(), 401, "a replay");
    let e: serde_json::Value = again.json().await.expect("json");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("replay"),
        "{e}"
    );

    for route in [
        "/internal/v1/partitions/0/objects",
        "/internal/v1/node",
        "/internal/v1/merkle/0",
    ] {
        let r = http
            .get(format!("{}{route}", a.url()))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 401, "{route} unsigned");
    }
    for open in ["/healthz", "/metrics"] {
        let r = http.get(format!("{}{open}", a.url())).send().await.expect("send");
        assert_eq!(r.status(), 200, "{open} needs no signature");
    }
    let got = get(&a.url(), "b", "k").await.expect("stored");
    assert_eq!(
        values(&got),
        vec![b"kept".to_vec()],
        "nothing refused was applied"
    );
    a.shutdown().await;
}
