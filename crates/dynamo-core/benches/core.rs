//! Hot core operations: DVV sync and put at several sibling counts, context tokens,
//! preference lists. Numbers go to `docs/benchmarks.md`, never into tests.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use dynamo_core::context;
use dynamo_core::ring::{Member, Ring};
use dynamo_core::version::{ConflictRule, NewWrite, VersionedObject};
use dynamo_core::{ActorId, DotSet, KeyHash, NodeId, Partitioning};

const RES: ConflictRule = ConflictRule::Siblings { max_siblings: 256 };

/// Builds two replicas that share `siblings` concurrent blind writes (1 KiB each) and
/// differ by one more write on each side, so sync has real work on both lists.
fn replicas(siblings: usize) -> (VersionedObject, VersionedObject) {
    let mut base = VersionedObject::new();
    for i in 0..siblings {
        let w = NewWrite::value(vec![b'x'; 1024], "application/octet-stream", i as u64);
        base.put(&DotSet::new(), ActorId(i as u64 % 3), w, RES)
            .expect("put");
    }
    let (mut a, mut b) = (base.clone(), base);
    let ctx = a.context().clone();
    a.put(
        &ctx,
        ActorId(1),
        NewWrite::value(vec![b'a'; 1024], "text/plain", 1),
        RES,
    )
    .expect("put");
    b.put(
        &DotSet::new(),
        ActorId(2),
        NewWrite::value(vec![b'b'; 1024], "text/plain", 2),
        RES,
    )
    .expect("put");
    (a, b)
}

fn dvv(c: &mut Criterion) {
    let mut g = c.benchmark_group("dvv_sync");
    for n in [1usize, 4, 32] {
        let (a, b) = replicas(n);
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |bench, _| {
            bench.iter_batched_ref(
                || a.clone(),
                |x| x.sync(black_box(&b), RES),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();

    // A blind put keeps every sibling; a put with the read context replaces them all.
    for (name, resolve) in [("dvv_put_blind", false), ("dvv_put_resolving", true)] {
        let mut g = c.benchmark_group(name);
        for n in [1usize, 4, 32] {
            let (a, _) = replicas(n);
            let ctx = if resolve {
                a.context().clone()
            } else {
                DotSet::new()
            };
            g.bench_with_input(BenchmarkId::from_parameter(n), &n, |bench, _| {
                bench.iter_batched_ref(
                    || (a.clone(), NewWrite::value(vec![b'z'; 1024], "text/plain", 9)),
                    |(x, w)| {
                        x.put(
                            black_box(&ctx),
                            ActorId(0),
                            std::mem::replace(w, NewWrite::tombstone(0)),
                            RES,
                        )
                    },
                    BatchSize::SmallInput,
                )
            });
        }
        g.finish();
    }

    let (a, _) = replicas(4);
    let keys = context::ContextKeys::new(vec![dynamo_core::keys::Key::new(1, &[7; 32]).expect("key")])
        .expect("keys");
    let token = keys.seal(a.context(), "bucket", "key");
    // Sealing and opening include the HMAC-SHA256 of the token (the names predate it).
    c.bench_function("context_encode", |bench| {
        bench.iter(|| keys.seal(black_box(a.context()), "bucket", "key"))
    });
    c.bench_function("context_decode", |bench| {
        bench.iter(|| keys.open(black_box(&token), "bucket", "key"))
    });
    c.bench_function("object_digest_4_siblings", |bench| {
        bench.iter(|| black_box(&a).digest())
    });
}

fn ring(c: &mut Criterion) {
    let members: BTreeMap<NodeId, Member> = (0..8)
        .map(|i| (NodeId::new(format!("node-{i}")).expect("id"), Member::default()))
        .collect();
    let r = Ring::new(Partitioning::with_count(1024).expect("q"), 3, members).expect("ring");
    let mut h = 0u64;
    c.bench_function("preference_list_q1024_s8_n3", |bench| {
        bench.iter(|| {
            h = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
            r.preference_list_for(KeyHash(h), 3)
        })
    });
}

/// What signing costs an internal request: the signer hashes the body and MACs the
/// parts; the receiver does the same and remembers the tag. Per batch, not per operation.
fn signature(c: &mut Criterion) {
    use dynamo_core::keys::{Key, KeyRing};
    use dynamo_core::signature::{Role, Signature, SignedParts, Verifier, body_digest};
    let ring = KeyRing::new(vec![Key::new(1, &[7; 32]).expect("key")]).expect("ring");
    let mut g = c.benchmark_group("signature");
    for body_bytes in [1 << 10, 64 << 10, 1 << 20] {
        let body = vec![b'x'; body_bytes];
        g.bench_with_input(BenchmarkId::new("sign", body_bytes), &body, |bench, body| {
            let mut nonce = 0u64;
            bench.iter(|| {
                nonce += 1;
                let parts = SignedParts {
                    method: "POST",
                    path_and_query: "/internal/v1/replicas",
                    body_digest: body_digest(black_box(body)),
                };
                Signature::sign(ring.signing(), Role::Member, "coordinator", 1, nonce, &parts).expect("sign")
            })
        });
        g.bench_with_input(BenchmarkId::new("verify", body_bytes), &body, |bench, body| {
            // A fresh verifier per batch of iterations: its replay guard grows with each.
            bench.iter_batched(
                || {
                    let parts = SignedParts {
                        method: "POST",
                        path_and_query: "/internal/v1/replicas",
                        body_digest: body_digest(body),
                    };
                    let sig = Signature::sign(ring.signing(), Role::Member, "coordinator", 1, 1, &parts)
                        .expect("sign");
                    (Verifier::new(ring.clone(), None, u64::MAX, 16), sig.to_header())
                },
                |(mut v, header)| {
                    let sig = v.precheck(Some(&header), 1).expect("precheck");
                    let parts = SignedParts {
                        method: "POST",
                        path_and_query: "/internal/v1/replicas",
                        body_digest: body_digest(black_box(body)),
                    };
                    v.verify(&sig, &parts, Role::Member, 1).expect("verify")
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, dvv, ring, signature);
criterion_main!(benches);
