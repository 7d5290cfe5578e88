//! What the listener tests share: `serve` on a real loopback socket, and reading from a
//! raw connection until the server closes it.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use dynamo_server::config::ServeArgs;
use dynamo_server::serve::{self, Readiness};
use dynamo_testkit::WAIT;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// `app` served by [`serve::serve`] with `args` on a free loopback port.
pub struct Server {
    pub addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    pub async fn start(app: Router, args: ServeArgs) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve::serve(listener, app, stop.clone(), Readiness::new(), args));
        Server { addr, stop, task }
    }

    /// Shuts the server down and waits until `serve` returned without an error.
    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("serve returns")
            .expect("join")
            .expect("io");
    }
}

/// Reads until the server closes the connection; what it sent. Bounded well below
/// hyper's own 30 s default, so only the configured timeout can pass it.
pub async fn until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the server closed the connection")
        .ok();
    out
}
