//! `dynamo-testkit`: the harness pieces every test suite of the workspace needs, written
//! once: clients that sign as a cluster member or as control with the public test keys
//! ([`http`], [`control_http`]), an outsider's ([`unsigned_http`]) and hand-made
//! signatures ([`signature_header`]); waiting on a condition instead of sleeping
//! ([`eventually`]), reading a service's Prometheus metrics ([`scrape`], [`sample`],
//! [`metric`]), and serving a fake service on loopback ([`serve`], [`closed_address`]).
//!
//! A dev-dependency only; nothing here runs in a service.

use std::future::Future;
use std::time::Duration;

pub use dynamo_core::signature::Role;

/// Every wait of a test is bounded by this.
pub const WAIT: Duration = Duration::from_secs(60);

/// How often [`eventually`] checks.
const POLL: Duration = Duration::from_millis(20);

/// The HTTP client of tests: short connect timeout, bounded calls, and every request
/// signed as a cluster member with the public test key, so it reaches the internal routes
/// of test clusters (the public API ignores the signature).
pub type Http = dynamo_server::internal::InternalClient;

/// A test client signing as a member ([`Http`]), calls bounded by 30 s.
pub fn http() -> Http {
    client(Role::Member, Duration::from_secs(30))
}

/// A test client signing as control: membership, tokens and bucket properties on the
/// ring service (which also admits it wherever a member is admitted).
pub fn control_http() -> Http {
    client(Role::Control, Duration::from_secs(30))
}

/// A test client signing as `role`, each call bounded by `timeout`.
pub fn client(role: Role, timeout: Duration) -> Http {
    dynamo_server::internal::client(plain(timeout), dynamo_server::internal::testing::signer(role))
}

/// A test client that signs nothing: an outsider to the cluster.
pub fn unsigned_http() -> reqwest::Client {
    plain(Duration::from_secs(30))
}

/// A signature header for a request, made by hand so a test can choose what a signing
/// client never would: another key ring (`key_file`, e.g. a foreign cluster's), a stale
/// clock (`ts_ms`), or a signature for another body or path than the one it sends.
pub fn signature_header(
    key_file: &str,
    role: Role,
    ts_ms: u64,
    method: &str,
    path: &str,
    body: &[u8],
) -> String {
    let keys = dynamo_core::keys::KeyRing::parse(key_file).unwrap_or_else(|e| panic!("the test key: {e}"));
    let parts = dynamo_core::signature::SignedParts {
        method,
        path_and_query: path,
        body_digest: dynamo_core::signature::body_digest(body),
    };
    dynamo_core::signature::Signature::sign(keys.signing(), role, "test", ts_ms, rand_nonce(), &parts)
        .unwrap_or_else(|e| panic!("signing: {e}"))
        .to_header()
}

pub use dynamo_server::clock::now_ms;

fn rand_nonce() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    // Unique within the test process is all a nonce needs here.
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed) ^ now_ms().rotate_left(20)
}

/// A reqwest builder as the services start theirs: TLS through the workspace's rustls
/// configuration (system roots), which `https://` URLs need and `http://` ones ignore.
pub fn http_builder() -> reqwest::ClientBuilder {
    dynamo_server::config::TlsArgs::default()
        .http_client()
        .unwrap_or_else(|e| panic!("the test HTTP client's TLS: {e}"))
}

fn plain(timeout: Duration) -> reqwest::Client {
    http_builder()
        .connect_timeout(Duration::from_secs(2))
        .timeout(timeout)
        .build()
        .unwrap_or_else(|e| panic!("building the test HTTP client: {e}"))
}

/// Polls `check` until it returns true.
///
/// # Panics
/// With `what` when [`WAIT`] passes first.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Serves `app` on a free loopback port until the test's runtime ends; returns its base
/// URL (`http://127.0.0.1:port`).
///
/// # Panics
/// When no port can be bound.
pub async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("binding a loopback port: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("reading the bound address: {e}"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

/// Returns a loopback port that is free right now (bound and released).
///
/// # Panics
/// When no port can be bound.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("finding a free port: {e}"))
}

/// Returns a loopback port below the kernel's ephemeral range that is free right now.
///
/// For a service started some time after its port was chosen (a group whose members
/// must all know each other's ports first): a free port inside the ephemeral range may be
/// handed to any outgoing connection in between, one below it only to a deliberate bind.
/// Random within the range, so concurrent tests rarely pick the same one.
///
/// # Panics
/// When no port can be bound after a bounded search.
pub fn stable_port() -> u16 {
    stable_port_run(1)
}

/// Returns the first of `n` consecutive loopback ports below the kernel's ephemeral range
/// that are all free right now: for a program given a base port that takes the next ones
/// too (`dynamo dev`'s ring replicas and storage nodes). As [`stable_port`], a port an
/// outgoing connection cannot take meanwhile.
///
/// # Panics
/// When no such run is found after a bounded search, or `n` is 0.
pub fn stable_port_run(n: u16) -> u16 {
    assert!(n > 0, "a run of no ports");
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse::<u16>().ok()))
        .unwrap_or(32_768);
    let (from, to) = (10_000u16, low.saturating_sub(n).max(10_001));
    for _ in 0..1000 {
        let base = rand::random_range(from..to);
        if (0..n).all(|d| std::net::TcpListener::bind(("127.0.0.1", base + d)).is_ok()) {
            return base;
        }
    }
    panic!("no run of {n} free ports below the ephemeral range");
}

/// Returns an address where nothing listens (a killed node: connection refused).
///
/// # Panics
/// When no port can be bound.
pub fn closed_address() -> String {
    let l =
        std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("binding a loopback port: {e}"));
    format!(
        "http://{}",
        l.local_addr()
            .unwrap_or_else(|e| panic!("reading the bound address: {e}"))
    )
}

/// Waits until the service at `url` answers `/readyz` with a success.
///
/// # Panics
/// When [`WAIT`] passes first.
pub async fn wait_ready(url: &str) {
    let http = http();
    let readyz = format!("{}/readyz", url.trim_end_matches('/'));
    eventually(&format!("{url} is ready"), || async {
        http.get(&readyz)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
}

/// Waits until the child process exits; returns its status.
///
/// # Panics
/// With `what` when [`WAIT`] passes first (the child is killed), or when its status
/// cannot be read.
pub async fn wait_exit(child: &mut std::process::Child, what: &str) -> std::process::ExitStatus {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status,
            Ok(None) => {}
            Err(e) => panic!("reading the exit status ({what}): {e}"),
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.kill();
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Returns a service's `/metrics` text, `None` when it cannot be read.
pub async fn scrape(http: &Http, url: &str) -> Option<String> {
    http.get(format!("{}/metrics", url.trim_end_matches('/')))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// Returns the value of the sample `series` (a name with its labels as exported, e.g.
/// `dynamo_storage_ops_total{op="get"}`, or a bare name) in an exposition text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Reads the sample `series` from the service at `url`: `None` when the series does not
/// exist (yet) or the service does not answer.
pub async fn metric(url: &str, series: &str) -> Option<f64> {
    sample(&scrape(&http(), url).await?, series)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_found_by_their_whole_series_name() {
        let text = "# HELP x y\nops_total{op=\"get\"} 3\nops_total{op=\"getx\"} 9\nops 7\nops_total 2.5\n";
        assert_eq!(sample(text, "ops_total{op=\"get\"}"), Some(3.0));
        assert_eq!(
            sample(text, "ops"),
            Some(7.0),
            "a prefix of another name is not a match"
        );
        assert_eq!(sample(text, "ops_total"), Some(2.5));
        assert_eq!(sample(text, "missing"), None);
    }

    #[tokio::test]
    async fn eventually_returns_once_the_condition_holds() {
        let mut n = 0;
        eventually("three polls", || {
            n += 1;
            let done = n >= 3;
            async move { done }
        })
        .await;
        assert_eq!(n, 3);
    }
}
