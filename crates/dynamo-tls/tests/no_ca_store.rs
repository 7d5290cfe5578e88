//! A process on a platform without a CA store (a minimal container image): plain-HTTP
//! clients must still be made, and only a TLS handshake fails, naming the missing store.
//! The platform's verifier is made once per process from the environment, so the test
//! runs itself again as a child whose environment hides the store.

use std::sync::Arc;
use std::time::Duration;

use dynamo_tls::throwaway::Ca;
use dynamo_tls::{ClientTls, ServerTls};
use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};

const CHILD: &str = "DYNAMO_TLS_TEST_NO_CA_STORE";
const NAME: &str = "without_a_ca_store_clients_are_made_and_tls_fails_saying_why";

#[tokio::test]
async fn without_a_ca_store_clients_are_made_and_tls_fails_saying_why() {
    if std::env::var_os(CHILD).is_none() {
        let empty = tempfile::tempdir().expect("tempdir");
        let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", NAME, "--nocapture"])
            .env(CHILD, "1")
            .env("SSL_CERT_FILE", empty.path().join("none.pem"))
            .env("SSL_CERT_DIR", empty.path())
            .output()
            .expect("run the child");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success() && text.contains("1 passed"), "{text}");
        return;
    }

    let client = ClientTls::platform().expect("a client without a CA store");

    let files = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("test-ca").expect("ca");
    let (cert, key) = ca.leaf().expect("leaf");
    let (cert_path, key_path) = (files.path().join("cert.pem"), files.path().join("key.pem"));
    std::fs::write(&cert_path, cert).expect("write");
    std::fs::write(&key_path, key).expect("write");
    let server = ServerTls::load(&cert_path, &key_path, Duration::from_secs(10)).expect("server tls");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor = server.acceptor();
    tokio::spawn(async move {
        if let Ok((tcp, _)) = listener.accept().await {
            let _ = acceptor.accept(tcp).await;
        }
    });

    let connector = tokio_rustls::TlsConnector::from(Arc::new(client.config()));
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let err = connector.connect(name, tcp).await.expect_err("no CA, no trust");
    let text = err.to_string();
    assert!(
        text.contains("no CA certificate") && text.contains("--tls-ca-file"),
        "{text}"
    );
}
