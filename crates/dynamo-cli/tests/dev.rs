//! `dynamo dev` end to end: the real binaries as processes, from an empty data directory.
//!
//! Needs the service binaries beside `dynamo` (`cargo build --workspace --bins`, which
//! `make test` runs first).

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(90);

/// Starts `dynamo dev` and waits for its "ready" line; returns the child.
fn start_dev(data: &Path, port: u16, ring: u16, storage: u16) -> Child {
    start_dev_with(data, port, ring, storage, &[])
}

/// As [`start_dev`], with more flags of `dev`.
fn start_dev_with(data: &Path, port: u16, ring: u16, storage: u16, extra: &[&str]) -> Child {
    let bin = env!("CARGO_BIN_EXE_dynamo");
    let dir = Path::new(bin).parent().expect("bin dir");
    for b in ["dynamo-ring", "dynamo-storage", "dynamo-coordinator"] {
        assert!(
            dir.join(b).exists(),
            "{b} missing beside dynamo: run `cargo build --workspace --bins` first"
        );
    }
    let mut child = Command::new(bin)
        .args(["--data-dir", data.to_str().expect("utf-8")])
        .args([
            "dev",
            "--port",
            &port.to_string(),
            "--ring-port",
            &ring.to_string(),
        ])
        .args([
            "--storage-port",
            &storage.to_string(),
            "--partitions",
            "64",
            "--durability",
            "buffered",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dynamo dev");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("ready") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(WAIT).expect("dynamo dev printed its ready line");
    child
}

async fn stop_dev(mut child: Child) {
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let status = dynamo_testkit::wait_exit(&mut child, "dynamo dev stops after Ctrl-C").await;
    assert!(status.success(), "dynamo dev exit status {status:?}");
}

async fn put_get(port: u16, token: &str, put: Option<&str>) -> String {
    let http = dynamo_testkit::http_builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let url = format!("http://127.0.0.1:{port}/v1/kv/demo/greeting");
    if let Some(v) = put {
        let r = http
            .put(&url)
            .bearer_auth(token)
            .body(v.to_owned())
            .send()
            .await
            .expect("put");
        assert_eq!(r.status().as_u16(), 204);
    }
    let r = http.get(&url).bearer_auth(token).send().await.expect("get");
    assert_eq!(r.status().as_u16(), 200);
    r.text().await.expect("body")
}

/// Ports for one `dynamo dev`: the coordinator's, the first ring replica's and the first
/// storage node's (each of those three takes base, base+1, base+2), from one run of free
/// ports below the ephemeral range, so none collides with another or with a connection's
/// port while the cluster restarts.
fn dev_ports() -> (u16, u16, u16) {
    let base = dynamo_testkit::stable_port_run(7);
    (base, base + 1, base + 4)
}

// Goal: `dynamo dev --tls` runs every hop over TLS with a throw-away CA: the CLI (which
// finds the CA in the data directory) and the SDK (given the CA file) write and read
// over https; the storage nodes advertise https addresses; plain HTTP to the coordinator
// or a storage node gets no HTTP answer, and a client that trusts only the system's roots
// refuses the cluster's certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_tls_runs_every_hop_over_tls_with_a_throw_away_ca() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let (port, ring, storage) = dev_ports();
    let dev = start_dev_with(&data, port, ring, storage, &["--tls"]);
    let ca = data.join("tls").join("ca.pem");
    assert!(ca.is_file(), "the CA certificate is written for clients");
    let endpoint = format!("https://127.0.0.1:{port}");

    // The CLI: a write through the coordinator, which replicates it to the storage nodes
    // over https; the CA is found in the data directory.
    let out = Command::new(env!("CARGO_BIN_EXE_dynamo"))
        .args([
            "--data-dir",
            data.to_str().expect("utf-8"),
            "--endpoint",
            &endpoint,
        ])
        .args(["put", "demo", "greeting", "hello over tls"])
        .output()
        .expect("dynamo put");
    assert!(
        out.status.success(),
        "dynamo put over https: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let token = std::fs::read_to_string(data.join("root-token")).expect("token");
    let client = dynamo_client::Client::builder(&endpoint)
        .token(token.trim())
        .ca_file(&ca)
        .build()
        .expect("sdk client");
    let got = client
        .get("demo", "greeting")
        .await
        .expect("get over https")
        .expect("found");
    assert_eq!(
        got.single().map(|s| s.value.as_slice()),
        Some(&b"hello over tls"[..])
    );
    let view = client.cluster().await.expect("cluster view");
    assert_eq!(view.nodes.len(), 3);
    for node in &view.nodes {
        assert!(node.address.starts_with("https://"), "{node:?}");
    }

    // Plain HTTP to TLS listeners: no HTTP answer at all.
    for p in [port, storage] {
        let r = dynamo_testkit::unsigned_http()
            .get(format!("http://127.0.0.1:{p}/healthz"))
            .send()
            .await;
        assert!(r.is_err(), "plain HTTP to port {p} must not be answered: {r:?}");
    }
    // Without the CA, the cluster's certificate is not trusted.
    let stranger = dynamo_client::Client::builder(&endpoint)
        .token(token.trim())
        .build()
        .expect("sdk client");
    let e = stranger
        .get("demo", "greeting")
        .await
        .expect_err("unknown issuer");
    assert!(matches!(e, dynamo_client::ClientError::Transport { .. }), "{e:?}");
    stop_dev(dev).await;
}

// Goal: from an empty directory, `dynamo dev` answers a put and a get, writes the root
// token (mode 0600), stops cleanly on Ctrl-C (every service gone), and started again on
// the same directory has the same data and token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_runs_a_cluster_that_keeps_its_data_across_restarts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let (port, ring, storage) = dev_ports();

    let dev = start_dev(&data, port, ring, storage);
    let token = std::fs::read_to_string(data.join("root-token")).expect("root token written");
    let token = token.trim().to_owned();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(data.join("root-token"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert_eq!(put_get(port, &token, Some("hello")).await, "hello");
    stop_dev(dev).await;
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "the coordinator is gone"
    );
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", storage)).is_ok(),
        "node-0 is gone"
    );

    let dev = start_dev(&data, port, ring, storage);
    let again = std::fs::read_to_string(data.join("root-token")).expect("token");
    assert_eq!(again.trim(), token, "the same root token");
    assert_eq!(put_get(port, &token, None).await, "hello", "the same data");
    stop_dev(dev).await;
}
