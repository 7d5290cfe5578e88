//! The committed CRD, the Helm chart's copy and the example against the Rust types.

use dynamo_operator::crd::{DynamoCluster, crd_yaml};

const REGENERATE: &str = "cargo run -p dynamo-operator -- crd > deploy/crds/dynamo.io_dynamoclusters.yaml && cp deploy/crds/dynamo.io_dynamoclusters.yaml helm/dynamo/files/crds/";

fn read(relative: &str) -> String {
    let path = format!("{}/../../{relative}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

#[test]
fn the_committed_crd_matches_the_types() {
    // Goal: deploy/crds/ never drifts from crd.rs; the message says how to regenerate.
    assert!(
        read("deploy/crds/dynamo.io_dynamoclusters.yaml") == crd_yaml(),
        "deploy/crds/dynamo.io_dynamoclusters.yaml differs from the types; run `{REGENERATE}`"
    );
}

#[test]
fn the_helm_chart_ships_the_same_crd() {
    assert!(
        read("helm/dynamo/files/crds/dynamo.io_dynamoclusters.yaml") == crd_yaml(),
        "helm/dynamo/files/crds/dynamo.io_dynamoclusters.yaml differs from the types; run `{REGENERATE}`"
    );
}

#[test]
fn the_example_is_a_dynamo_cluster() {
    // The schema check proper (openAPIV3Schema, with jsonschema) is in tests/k8s/chart.py;
    // this one holds the example to the Rust types.
    let dc: DynamoCluster =
        serde_saphyr::from_str(&read("deploy/examples/dynamocluster.yaml")).expect("the example parses");
    assert_eq!(dc.spec.storage.replicas, 3);
    assert_eq!(dc.spec.partitions, 256);
    assert_eq!(dc.spec.ring.replicas, 3);
}
