//! TLS for every Dynamo listener and client: rustls configurations built from PEM files,
//! with ring as the one crypto provider.
//!
//! Certificates rotate without a restart. Both sides keep the files' paths and look at
//! them again at most once per reload interval, on the next handshake that needs them
//! (`Reloading`): the server's certificate and key ([`ServerTls`]) when a client says
//! hello, the trusted CA ([`ClientTls`]) when a server's certificate is checked. A new
//! pair is taken only when it loads and its key matches its certificate; files that
//! cannot be read or parsed leave the old ones in force (and say so in the log), so a
//! half-written Secret never takes a listener down. Handshakes already done keep their
//! session; connections opened later see the new files.
//!
//! Checking lazily, on the handshake path, rather than in a background task means there
//! is no task to start or stop and nothing runs on an idle process; the cost is one read
//! of two small files per interval, on one handshake.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

#[cfg(feature = "throwaway")]
pub mod throwaway;

pub use tokio_rustls::TlsAcceptor;
pub use tokio_rustls::server::TlsStream;

/// How often, by default, the files are looked at again.
pub const DEFAULT_RELOAD: Duration = Duration::from_secs(10);

/// Largest PEM file read (a certificate chain or a CA bundle); a larger one is refused
/// rather than read into memory.
pub const MAX_PEM_BYTES: u64 = 1 << 20;

/// ALPN protocols, offered and asked for: HTTP/1.1 only. Every hop in the cluster keeps
/// a pool of HTTP/1.1 connections per peer, over TLS as over plain TCP, so the two
/// behave (and measure) alike.
const ALPN: &[&[u8]] = &[b"http/1.1"];

/// Why a certificate, key or CA could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A file is larger than [`MAX_PEM_BYTES`].
    #[error("{path}: larger than {MAX_PEM_BYTES} bytes")]
    TooLarge {
        /// The file.
        path: String,
    },
    /// A file is not PEM of the kind expected, or holds none.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The key does not belong to the certificate, or rustls refused the key or a CA.
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    /// The CA file's certificates could not make a verifier.
    #[error("the CA certificates cannot verify servers: {0}")]
    Verifier(String),
}

/// The crypto provider of every configuration here.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Makes ring the process's default rustls provider, for HTTP clients built without a
/// configuration from here (an exporter's, a library's); a no-op when one is installed.
/// Binaries call it first thing: reqwest, built without a provider of its own, panics
/// when it finds none.
pub fn install_default_provider() {
    // An error only says that a default is installed already, which is what is wanted.
    let _ = CryptoProvider::install_default(rustls::crypto::ring::default_provider());
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    let shown = || path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|source| TlsError::Read {
        path: shown(),
        source,
    })?;
    if meta.len() > MAX_PEM_BYTES {
        return Err(TlsError::TooLarge { path: shown() });
    }
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: shown(),
        source,
    })
}

fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |reason: String| TlsError::Pem {
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not a PEM certificate list: {e}")))?;
    if certs.is_empty() {
        return Err(bad("holds no certificate".into()));
    }
    Ok(certs)
}

/// Makes what is in force from the files' paths and bytes (in the same order).
type Build<T> = fn(&[PathBuf], &[Vec<u8>]) -> Result<T, TlsError>;

/// Files looked at again at most once per interval, and what was made of them.
///
/// `current` is on every handshake's path: between checks it is an atomic load and a
/// read lock. The check itself is taken by one caller at a time; the others go on with
/// what is in force.
struct Reloading<T> {
    paths: Vec<PathBuf>,
    every: Duration,
    origin: Instant,
    /// When the next look is due, in milliseconds since `origin`.
    due_ms: AtomicU64,
    checking: Mutex<()>,
    /// The files' bytes as last taken, and what was built from them.
    state: RwLock<(Vec<Vec<u8>>, Arc<T>)>,
    build: Build<T>,
    what: &'static str,
}

impl<T> Reloading<T> {
    fn load(
        what: &'static str,
        paths: Vec<PathBuf>,
        every: Duration,
        build: Build<T>,
    ) -> Result<Reloading<T>, TlsError> {
        let bytes = paths.iter().map(|p| read_pem(p)).collect::<Result<Vec<_>, _>>()?;
        let built = build(&paths, &bytes)?;
        Ok(Reloading {
            paths,
            every,
            origin: Instant::now(),
            due_ms: AtomicU64::new(every.as_millis() as u64),
            checking: Mutex::new(()),
            state: RwLock::new((bytes, Arc::new(built))),
            build,
            what,
        })
    }

    fn elapsed_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn current(&self) -> Arc<T> {
        if self.elapsed_ms() >= self.due_ms.load(Ordering::Relaxed) {
            self.check();
        }
        // Every writer leaves the pair whole, so a poisoned lock still holds a good one.
        self.state.read().unwrap_or_else(|p| p.into_inner()).1.clone()
    }

    /// Reads the files and, when they changed and build, puts the result in force.
    fn check(&self) {
        let Ok(_one) = self.checking.try_lock() else {
            return;
        };
        self.due_ms.store(
            self.elapsed_ms() + self.every.as_millis() as u64,
            Ordering::Relaxed,
        );
        let bytes = match self
            .paths
            .iter()
            .map(|p| read_pem(p))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(what = self.what, error = %e, "cannot read the TLS files again; keeping the ones in force");
                return;
            }
        };
        if self.state.read().unwrap_or_else(|p| p.into_inner()).0 == bytes {
            return;
        }
        match (self.build)(&self.paths, &bytes) {
            Ok(built) => {
                *self.state.write().unwrap_or_else(|p| p.into_inner()) = (bytes, Arc::new(built));
                tracing::info!(target: "audit", what = self.what, "TLS files changed: new handshakes use them");
            }
            Err(e) => {
                tracing::warn!(what = self.what, error = %e, "the changed TLS files do not load; keeping the ones in force");
            }
        }
    }
}

/// A listener's certificate chain and key, from PEM files, reloaded when they change.
#[derive(Clone)]
pub struct ServerTls {
    resolver: Arc<Resolver>,
    config: Arc<ServerConfig>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.resolver.0.paths)
            .finish()
    }
}

struct Resolver(Reloading<CertifiedKey>);

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Resolver").field(&self.0.paths).finish()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }
}

fn certified_key(paths: &[PathBuf], bytes: &[Vec<u8>]) -> Result<CertifiedKey, TlsError> {
    let (cert_path, key_path) = (&paths[0], &paths[1]);
    let chain = certificates(cert_path, &bytes[0])?;
    let key = PrivateKeyDer::from_pem_slice(&bytes[1]).map_err(|e| TlsError::Pem {
        path: key_path.display().to_string(),
        reason: format!("not a PEM private key (PKCS#8, SEC1 or PKCS#1): {e}"),
    })?;
    // Checks that the key is the certificate's, so a renewal caught between writing the
    // two files is refused rather than served.
    Ok(CertifiedKey::from_der(chain, key, &provider())?)
}

impl ServerTls {
    /// Loads the certificate chain (leaf first) from `cert` and its private key from
    /// `key`; both are looked at again at most once per `reload`.
    ///
    /// # Errors
    /// [`TlsError`] when a file cannot be read or parsed or the key is not the
    /// certificate's.
    pub fn load(cert: &Path, key: &Path, reload: Duration) -> Result<ServerTls, TlsError> {
        let resolver = Arc::new(Resolver(Reloading::load(
            "server certificate",
            vec![cert.to_owned(), key.to_owned()],
            reload,
            certified_key,
        )?));
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(ServerTls {
            resolver,
            config: Arc::new(config),
        })
    }

    /// Returns an acceptor for connections; each handshake uses the files in force.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.clone())
    }

    /// Returns the leaf certificate in force, after looking at the files if due.
    pub fn leaf(&self) -> CertificateDer<'static> {
        let key = self.resolver.0.current();
        key.cert
            .first()
            .cloned()
            .unwrap_or_else(|| CertificateDer::from(Vec::new()))
    }
}

/// What a client trusts: the CA certificates of a file (reloaded when it changes), or the
/// platform's roots.
#[derive(Clone)]
pub struct ClientTls {
    config: ClientConfig,
    ca_file: Option<PathBuf>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

struct CaVerifier(Reloading<Arc<WebPkiServerVerifier>>);

impl fmt::Debug for CaVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CaVerifier").field(&self.0.paths).finish()
    }
}

fn ca_verifier(paths: &[PathBuf], bytes: &[Vec<u8>]) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(&paths[0], &bytes[0])? {
        roots.add(cert)?;
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))
}

impl ServerCertVerifier for CaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0
            .current()
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.current().supported_verify_schemes()
    }
}

/// The verifier of a process whose platform has no CA store: every server certificate is
/// refused, naming the missing store and the flag that gives a CA instead.
#[derive(Debug)]
struct NoRoots(String);

impl ServerCertVerifier for NoRoots {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Err(rustls::Error::General(format!(
            "no CA certificate to verify {} with: the system has none ({}); give the CA file \
             (--tls-ca-file, DYNAMO_TLS_CA_FILE)",
            server_name.to_str(),
            self.0
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider().signature_verification_algorithms.supported_schemes()
    }
}

impl ClientTls {
    /// Trusts exactly the CA certificates in `ca_file` (PEM, one or more: put the old and
    /// the new CA in it while rotating), looked at again at most once per `reload`.
    ///
    /// # Errors
    /// [`TlsError`] when the file cannot be read or holds no usable CA certificate.
    pub fn from_ca_file(ca_file: &Path, reload: Duration) -> Result<ClientTls, TlsError> {
        let verifier = Arc::new(CaVerifier(Reloading::load(
            "CA certificates",
            vec![ca_file.to_owned()],
            reload,
            ca_verifier,
        )?));
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            // Not dangerous: the custom verifier is webpki's, over the CA file's roots;
            // it is custom only so the roots can change without a new client.
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(ClientTls {
            config,
            ca_file: Some(ca_file.to_owned()),
        })
    }

    /// Trusts the platform's roots (the system's CA store), for endpoints with publicly
    /// issued certificates.
    ///
    /// # Errors
    /// [`TlsError::Verifier`] when the platform's verifier cannot be set up.
    pub fn platform() -> Result<ClientTls, TlsError> {
        // Made once per process: the platform's verifier reads the system's CA store,
        // milliseconds that every short-lived client would otherwise pay again.
        static PLATFORM: OnceLock<Result<ClientConfig, String>> = OnceLock::new();
        let config = PLATFORM.get_or_init(|| {
            use rustls_platform_verifier::BuilderVerifierExt as _;
            let builder = ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?;
            let mut config = match builder.clone().with_platform_verifier() {
                Ok(b) => b.with_no_client_auth(),
                // A minimal image has no CA store, and plain-HTTP clients never need one:
                // only an `https://` endpoint fails, at its handshake, saying why.
                Err(e) => builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(NoRoots(e.to_string())))
                    .with_no_client_auth(),
            };
            config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
            Ok(config)
        });
        match config {
            Ok(config) => Ok(ClientTls {
                config: config.clone(),
                ca_file: None,
            }),
            Err(e) => Err(TlsError::Verifier(e.clone())),
        }
    }

    /// Trusts `ca_file` when given, else the platform's roots.
    ///
    /// # Errors
    /// As [`ClientTls::from_ca_file`] and [`ClientTls::platform`].
    pub fn new(ca_file: Option<&Path>, reload: Duration) -> Result<ClientTls, TlsError> {
        match ca_file {
            Some(path) => ClientTls::from_ca_file(path, reload),
            None => ClientTls::platform(),
        }
    }

    /// Returns the rustls configuration, for `reqwest::ClientBuilder::tls_backend_preconfigured`.
    pub fn config(&self) -> ClientConfig {
        self.config.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::throwaway::Ca;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Files {
            Files {
                dir: tempfile::tempdir().expect("tempdir"),
            }
        }
        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }
        fn write(&self, name: &str, text: &str) -> PathBuf {
            let p = self.path(name);
            std::fs::write(&p, text).expect("write");
            p
        }
    }

    /// Serves one echo exchange per connection over TLS; returns the address.
    async fn echo_server(tls: ServerTls) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = tls.acceptor();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut s) = acceptor.accept(tcp).await {
                        let mut b = [0u8; 4];
                        if s.read_exact(&mut b).await.is_ok() {
                            let _ = s.write_all(&b).await;
                            let _ = s.shutdown().await;
                        }
                    }
                });
            }
        });
        addr
    }

    /// An echo server with a new leaf of `ca` (its files in `files`); its address.
    async fn serving_a_leaf_of(ca: &Ca, files: &Files) -> std::net::SocketAddr {
        let (cert, key) = ca.leaf().expect("leaf");
        let tls = ServerTls::load(
            &files.write("cert.pem", &cert),
            &files.write("key.pem", &key),
            DEFAULT_RELOAD,
        )
        .expect("load");
        echo_server(tls).await
    }

    /// Connects and echoes; returns the leaf certificate the server showed.
    async fn exchange(
        client: &ClientTls,
        addr: std::net::SocketAddr,
    ) -> Result<CertificateDer<'static>, std::io::Error> {
        let mut config = client.config();
        // A resumed session shows the certificate of the session it resumes; these tests
        // look at what a full handshake is served.
        config.resumption = rustls::client::Resumption::disabled();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").expect("name");
        let mut s = connector.connect(name, tcp).await?;
        s.write_all(b"ping").await?;
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await?;
        assert_eq!(&b, b"ping");
        let leaf = s
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first().cloned())
            .expect("a peer certificate");
        Ok(leaf.into_owned())
    }

    #[tokio::test]
    async fn a_client_trusting_the_ca_talks_and_one_trusting_another_ca_refuses() {
        let files = Files::new();
        let ca = Ca::new("test-ca").expect("ca");
        let addr = serving_a_leaf_of(&ca, &files).await;
        let trusting =
            ClientTls::from_ca_file(&files.write("ca.pem", &ca.pem()), DEFAULT_RELOAD).expect("ca");
        exchange(&trusting, addr).await.expect("trusted");
        let other = Ca::new("other-ca").expect("ca");
        let stranger =
            ClientTls::from_ca_file(&files.write("other.pem", &other.pem()), DEFAULT_RELOAD).expect("ca");
        let e = exchange(&stranger, addr)
            .await
            .expect_err("an unknown issuer is refused");
        assert!(e.to_string().contains("UnknownIssuer"), "{e}");
    }

    #[tokio::test]
    async fn a_renewed_certificate_is_served_without_a_restart_and_a_broken_one_is_not() {
        let files = Files::new();
        let ca = Ca::new("test-ca").expect("ca");
        let (cert, key) = ca.leaf().expect("leaf");
        let (cert_path, key_path) = (files.write("cert.pem", &cert), files.write("key.pem", &key));
        // A zero interval looks at the files on every handshake.
        let tls = ServerTls::load(&cert_path, &key_path, Duration::ZERO).expect("load");
        let addr = echo_server(tls.clone()).await;
        let client = ClientTls::from_ca_file(&files.write("ca.pem", &ca.pem()), Duration::ZERO).expect("ca");
        let first = exchange(&client, addr).await.expect("first");

        let (renewed, renewed_key) = ca.leaf().expect("leaf");
        std::fs::write(&cert_path, &renewed).expect("write");
        std::fs::write(&key_path, &renewed_key).expect("write");
        let second = exchange(&client, addr).await.expect("renewed");
        assert_ne!(first, second, "the renewed certificate is served");
        assert_eq!(second, tls.leaf());

        // Half a renewal (a new certificate beside the old key) and garbage are refused;
        // the pair in force stays.
        let (third, _) = ca.leaf().expect("leaf");
        std::fs::write(&cert_path, &third).expect("write");
        assert_eq!(exchange(&client, addr).await.expect("still served"), second);
        std::fs::write(&cert_path, "not pem").expect("write");
        assert_eq!(exchange(&client, addr).await.expect("still served"), second);
        std::fs::remove_file(&cert_path).expect("remove");
        assert_eq!(exchange(&client, addr).await.expect("still served"), second);
    }

    #[tokio::test]
    async fn a_new_ca_in_the_ca_file_is_trusted_without_a_new_client() {
        let files = Files::new();
        let old = Ca::new("old-ca").expect("ca");
        let new = Ca::new("new-ca").expect("ca");
        let addr = serving_a_leaf_of(&new, &files).await;
        let ca_path = files.write("ca.pem", &old.pem());
        let client = ClientTls::from_ca_file(&ca_path, Duration::ZERO).expect("ca");
        exchange(&client, addr).await.expect_err("not yet trusted");
        // Rotation: the bundle holds both CAs for a while.
        std::fs::write(&ca_path, format!("{}{}", old.pem(), new.pem())).expect("write");
        exchange(&client, addr)
            .await
            .expect("trusted after the file changed");
    }

    #[test]
    fn files_that_cannot_serve_are_refused_at_load_with_the_file_named() {
        let files = Files::new();
        let ca = Ca::new("test-ca").expect("ca");
        let (cert, key) = ca.leaf().expect("leaf");
        let (_, other_key) = ca.leaf().expect("leaf");
        let cert_path = files.write("cert.pem", &cert);
        let missing = files.path("missing.pem");
        let e =
            ServerTls::load(&missing, &files.write("key.pem", &key), DEFAULT_RELOAD).expect_err("missing");
        assert!(e.to_string().contains("missing.pem"), "{e}");
        let e = ServerTls::load(&cert_path, &files.write("k2.pem", &other_key), DEFAULT_RELOAD)
            .expect_err("a key of another certificate");
        assert!(matches!(e, TlsError::Rustls(_)), "{e}");
        let e = ServerTls::load(
            &files.write("empty.pem", ""),
            &files.write("k3.pem", &key),
            DEFAULT_RELOAD,
        )
        .expect_err("no certificate");
        assert!(e.to_string().contains("holds no certificate"), "{e}");
        let e =
            ServerTls::load(&cert_path, &cert_path, DEFAULT_RELOAD).expect_err("a certificate is not a key");
        assert!(e.to_string().contains("not a PEM private key"), "{e}");
        let e =
            ClientTls::from_ca_file(&files.write("notca.pem", "hello"), DEFAULT_RELOAD).expect_err("no CA");
        assert!(e.to_string().contains("notca.pem"), "{e}");
        let big = files.path("big.pem");
        std::fs::write(&big, vec![b'a'; MAX_PEM_BYTES as usize + 1]).expect("write");
        assert!(matches!(
            ClientTls::from_ca_file(&big, DEFAULT_RELOAD),
            Err(TlsError::TooLarge { .. })
        ));
    }

    #[test]
    fn the_platform_roots_make_a_client() {
        let tls = ClientTls::platform().expect("platform verifier");
        assert_eq!(tls.config().alpn_protocols, vec![b"http/1.1".to_vec()]);
    }
}
