//! TLS on a listener (issue 12), against `serve` on a real socket with certificates from
//! a throw-away CA: https answered, plain HTTP not, a stalled hello bounded like stalled
//! headers, a renewed certificate served without a restart, a bad one refused at start.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use common::{Server, until_closed};
use dynamo_server::config::{ServeArgs, TlsArgs};
use dynamo_server::metrics::HttpMetrics;
use dynamo_server::serve::{self, Limits, Readiness};
use dynamo_tls::throwaway::{Ca, TlsFiles};
use prometheus::Registry;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

fn app() -> Router {
    let registry = Arc::new(Registry::new());
    let ready = Readiness::new();
    ready.set(true);
    serve::with_common_layers(
        Router::new(),
        serve::health_routes(ready, registry.clone()),
        Limits {
            max_body_bytes: 1 << 20,
            max_concurrent_requests: 64,
        },
        HttpMetrics::new(&registry, "test").expect("metrics"),
    )
}

fn tls_args(files: &TlsFiles) -> TlsArgs {
    TlsArgs {
        tls_cert_file: Some(files.cert.clone()),
        tls_key_file: Some(files.key.clone()),
        tls_ca_file: Some(files.ca.clone()),
        // Every handshake looks at the files: the tests change them.
        tls_reload_ms: 0,
    }
}

/// Serves [`app`] with `args` on a free loopback port; its `/healthz` URL by name (the
/// certificates are for `localhost`).
async fn start(args: ServeArgs) -> (Server, String) {
    let server = Server::start(app(), args).await;
    let url = format!("https://localhost:{}/healthz", server.addr.port());
    (server, url)
}

/// A throw-away CA named `name` and a certificate it signed, written into a new
/// directory (kept while the returned guard lives).
fn ca_files(name: &str) -> (tempfile::TempDir, TlsFiles) {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = Ca::new(name).expect("ca").write_files(dir.path()).expect("files");
    (dir, files)
}

/// A fresh client (no pooled connection, no session to resume) trusting `ca`.
fn client(ca: &Path) -> reqwest::Client {
    TlsArgs {
        tls_ca_file: Some(ca.to_owned()),
        ..TlsArgs::default()
    }
    .http_client()
    .expect("client tls")
    .timeout(Duration::from_secs(10))
    .build()
    .expect("client")
}

async fn healthz(client: &reqwest::Client, url: &str) -> Result<String, reqwest::Error> {
    let r = client.get(url).send().await?.error_for_status()?;
    r.text().await
}

// Goal: with a certificate the listener answers https to a client trusting its CA, and
// a plain-HTTP request on the same port gets no HTTP answer.
#[tokio::test]
async fn https_is_served_and_plain_http_is_not() {
    let (_dir, files) = ca_files("test");
    let (server, url) = start(ServeArgs {
        tls: tls_args(&files),
        ..ServeArgs::default()
    })
    .await;
    assert_eq!(healthz(&client(&files.ca), &url).await.expect("https"), "ok");

    let mut plain = TcpStream::connect(server.addr).await.expect("connect");
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let answer = until_closed(&mut plain).await;
    assert!(
        !String::from_utf8_lossy(&answer).contains("HTTP/1.1"),
        "plain HTTP got an HTTP answer: {answer:?}"
    );
    server.stop().await;
}

// Goal: a client that opens a connection and stalls in its TLS hello is disconnected
// after the header read timeout, and its connection slot is free again afterwards.
#[tokio::test]
async fn a_stalled_tls_hello_is_disconnected_and_frees_its_slot() {
    let (_dir, files) = ca_files("test");
    let (server, url) = start(ServeArgs {
        tls: tls_args(&files),
        header_read_timeout_ms: 200,
        max_connections: 1,
        ..ServeArgs::default()
    })
    .await;
    let mut stalled = TcpStream::connect(server.addr).await.expect("connect");
    // The first bytes of a TLS record header (a handshake, TLS 1.0 framing), then nothing.
    stalled.write_all(&[0x16, 0x03, 0x01]).await.expect("write");
    let answer = until_closed(&mut stalled).await;
    assert!(answer.is_empty(), "the stalled client got {answer:?}");
    // The only slot was the stalled connection's; a real client is served now.
    assert_eq!(healthz(&client(&files.ca), &url).await.expect("https"), "ok");
    server.stop().await;
}

// Goal: certificates rotate without a restart: after the files are replaced by a
// certificate of another CA, new connections are served with it (a client trusting only
// the new CA is refused before and served after), and a broken replacement is not taken.
#[tokio::test]
async fn a_replaced_certificate_is_served_without_a_restart() {
    let (_dir, files) = ca_files("old");
    let (server, url) = start(ServeArgs {
        tls: tls_args(&files),
        ..ServeArgs::default()
    })
    .await;
    let (_new_dir, new) = ca_files("new");
    healthz(&client(&new.ca), &url)
        .await
        .expect_err("the new CA's clients do not trust the old certificate");

    std::fs::copy(&new.cert, &files.cert).expect("copy");
    std::fs::copy(&new.key, &files.key).expect("copy");
    assert_eq!(healthz(&client(&new.ca), &url).await.expect("renewed"), "ok");
    healthz(&client(&files.ca), &url)
        .await
        .expect_err("the old CA's clients no longer match");

    std::fs::write(&files.cert, "-----BEGIN CERTIFICATE-----\ngarbage\n").expect("write");
    assert_eq!(
        healthz(&client(&new.ca), &url)
            .await
            .expect("the pair in force stays"),
        "ok"
    );
    server.stop().await;
}

// Goal: a listener whose key is not its certificate's does not start, and says which
// file is wrong.
#[tokio::test]
async fn a_key_of_another_certificate_stops_the_listener_at_start() {
    let (_dir, files) = ca_files("test");
    let (_other_dir, other) = ca_files("test");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let args = ServeArgs {
        tls: TlsArgs {
            tls_key_file: Some(other.key.clone()),
            ..tls_args(&files)
        },
        ..ServeArgs::default()
    };
    let e = serve::serve(listener, app(), CancellationToken::new(), Readiness::new(), args)
        .await
        .expect_err("refused");
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("tls-cert-file"), "{e}");
}
