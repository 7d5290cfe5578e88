//! Throw-away certificates for `dynamo dev --tls` and tests: a CA made on the spot and
//! leaf certificates it signs, for `localhost` and loopback addresses. Never for a real
//! cluster: the CA's key lives only in this process and the files it writes.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// Why a throw-away certificate could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum ThrowawayError {
    /// rcgen refused.
    #[error("cannot make a certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A file could not be written.
    #[error("{path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A certificate authority made on the spot.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

/// The names a throw-away leaf is valid for.
pub const LOOPBACK_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

impl Ca {
    /// Makes a CA named `name` (its common name).
    ///
    /// # Errors
    /// [`ThrowawayError::Rcgen`].
    pub fn new(name: &str) -> Result<Ca, ThrowawayError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate()?;
        Ok(Ca {
            issuer: CertifiedIssuer::self_signed(params, key)?,
        })
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A new leaf for [`LOOPBACK_NAMES`]: (certificate PEM, private key PEM).
    ///
    /// # Errors
    /// [`ThrowawayError::Rcgen`].
    pub fn leaf(&self) -> Result<(String, String), ThrowawayError> {
        let names: Vec<String> = LOOPBACK_NAMES.iter().map(|n| (*n).to_owned()).collect();
        let params = CertificateParams::new(names)?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Writes `ca.pem`, `cert.pem` and `key.pem` (a new leaf; the key readable by its
    /// owner only) into `dir`, which must exist.
    ///
    /// # Errors
    /// [`ThrowawayError`] when a certificate cannot be made or a file written.
    pub fn write_files(&self, dir: &Path) -> Result<TlsFiles, ThrowawayError> {
        let (cert, key) = self.leaf()?;
        let files = TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        write(&files.ca, &self.pem(), 0o644)?;
        write(&files.cert, &cert, 0o644)?;
        write(&files.key, &key, 0o600)?;
        Ok(files)
    }
}

/// Where [`Ca::write_files`] put the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA certificate (what clients trust).
    pub ca: PathBuf,
    /// The leaf certificate (what listeners serve).
    pub cert: PathBuf,
    /// The leaf's private key.
    pub key: PathBuf,
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), ThrowawayError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let err = |source| ThrowawayError::Write {
        path: path.display().to_string(),
        source,
    };
    // A key from an earlier run is replaced, never appended to or left readable.
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)
}
