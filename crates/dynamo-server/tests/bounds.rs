//! The bounds every listener keeps (issue 12), against `serve` on a real socket: a client
//! must send its headers and its body in time, and connections past the cap wait for a
//! free slot instead of being served.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use common::{Server, until_closed};
use dynamo_server::config::ServeArgs;
use dynamo_server::extract::Body;
use dynamo_server::metrics::HttpMetrics;
use dynamo_server::serve::{self, Limits, Readiness};
use dynamo_testkit::WAIT;
use prometheus::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A service with one route, `POST /echo`, answering its body.
fn echo() -> Router {
    let registry = Arc::new(Registry::new());
    let routes = Router::new().route("/echo", post(|Body(b): Body| async move { b }));
    serve::with_common_layers(
        routes,
        serve::health_routes(Readiness::new(), registry.clone()),
        Limits {
            max_body_bytes: 1 << 20,
            max_concurrent_requests: 64,
        },
        HttpMetrics::new(&registry, "test").expect("metrics"),
    )
}

/// What the server sent before it closed the connection, as text.
async fn text_until_closed(s: &mut TcpStream) -> String {
    String::from_utf8_lossy(&until_closed(s).await).into_owned()
}

/// Reads one response head and its body of `Content-Length` bytes.
async fn response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(WAIT, async {
        loop {
            let n = s.read(&mut chunk).await.expect("read");
            assert!(
                n > 0,
                "closed before a whole response: {}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(str::to_owned)
                    })
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if body.len() >= len {
                    return text;
                }
            }
        }
    })
    .await
    .expect("a response")
}

fn args(f: impl FnOnce(&mut ServeArgs)) -> ServeArgs {
    let mut a = ServeArgs::default();
    f(&mut a);
    a
}

// Goal: a client that sends part of its headers and then nothing is disconnected after
// the header read timeout, instead of holding a connection for ever.
#[tokio::test]
async fn a_client_that_stalls_its_headers_is_disconnected() {
    let server = Server::start(echo(), args(|a| a.header_read_timeout_ms = 200)).await;
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Le")
        .await
        .expect("write");
    let answered = text_until_closed(&mut s).await;
    assert!(!answered.contains(" 200 "), "{answered}");
    server.stop().await;
}

// Goal: a body that stops arriving is answered 400 request_timeout after the body read
// timeout, and the handler never sees a partial body.
#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_is_refused() {
    let server = Server::start(echo(), args(|a| a.body_read_timeout_ms = 200)).await;
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly ten b")
        .await
        .expect("write");
    let answer = response(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("\"request_timeout\""), "{answer}");
    server.stop().await;
}

// Goal: past --max-connections the listener stops accepting: a third client is not
// served while two connections are open, and is served as soon as one closes.
#[tokio::test]
async fn connections_past_the_cap_wait_for_a_free_slot() {
    let server = Server::start(echo(), args(|a| a.max_connections = 2)).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(server.addr).await.expect("connect");
        // A whole request, answered, and the connection kept alive: it holds its slot.
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
            .await
            .expect("write");
        assert!(response(&mut s).await.starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    let mut third = TcpStream::connect(server.addr)
        .await
        .expect("the kernel queues it");
    third
        .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok")
        .await
        .expect("write");
    // Nothing may happen here: a correct server leaves the third client queued.
    let mut probe = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(300), third.peek(&mut probe)).await;
    assert!(early.is_err(), "the third connection was served past the cap");
    drop(held.pop());
    let answer = response(&mut third).await;
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"),
        "{answer}"
    );
    server.stop().await;
}

// Goal: a kept-alive connection that goes quiet after a response is closed too, by the
// same header timeout (its clock runs while the server waits for the next request).
#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed() {
    let server = Server::start(echo(), args(|a| a.header_read_timeout_ms = 200)).await;
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
        .await
        .expect("write");
    assert!(response(&mut s).await.starts_with("HTTP/1.1 200"));
    assert_eq!(text_until_closed(&mut s).await, "", "closed without another word");
    server.stop().await;
}
