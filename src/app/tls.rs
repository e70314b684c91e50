//! TLS for the client listener (`--tls-cert`, `--tls-key`): the certificate
//! every new handshake is answered with, loaded from PEM files at start and
//! again on [`CertStore::reload`] (SIGHUP). A reload changes what new
//! handshakes get; connections already open keep the session they have. A
//! reload that fails (a missing file, a key that does not match) keeps the
//! certificate in use.
//!
//! rustls with ring as its provider, the crypto crate the server already
//! uses for tokens and signatures.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: no PEM certificate in it", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: not a PEM certificate chain: {source}", path.display())]
    BadCertificate { path: PathBuf, source: rustls::pki_types::pem::Error },
    #[error("{}: not a PEM private key (PKCS#8, PKCS#1 or SEC1): {source}", path.display())]
    BadKey { path: PathBuf, source: rustls::pki_types::pem::Error },
    #[error("{} and {} do not go together: {source}", cert.display(), key.display())]
    Mismatch { cert: PathBuf, key: PathBuf, source: rustls::Error },
    #[error("TLS setup: {0}")]
    Setup(rustls::Error),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

/// Reads a chain (leaf first, as in a full-chain PEM file) and its key.
fn load(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let cert_pem = read(&files.cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::BadCertificate { path: files.cert.clone(), source })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: files.cert.clone() });
    }
    let key_pem = read(&files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|source| TlsError::BadKey { path: files.key.clone(), source })?;
    let mismatch = |source| TlsError::Mismatch { cert: files.cert.clone(), key: files.key.clone(), source };
    let signing = provider.key_provider.load_private_key(key).map_err(mismatch)?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(mismatch)?;
    Ok(certified)
}

/// The certificate new handshakes get, and where it is reloaded from.
pub struct CertStore {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore").field("files", &self.files).finish_non_exhaustive()
    }
}

impl CertStore {
    /// Loads the certificate and key; fails when either is unusable.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = load(&files, &provider)?;
        Ok(Arc::new(Self { files, provider, current: RwLock::new(Arc::new(key)) }))
    }

    /// Reads the files again. On success new handshakes get the new
    /// certificate; on failure nothing changes.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = load(&self.files, &self.provider)?;
        *self.current.write().expect("certificate lock") = Arc::new(key);
        Ok(())
    }

    /// The certificate file, for log lines.
    pub fn cert_path(&self) -> &Path {
        &self.files.cert
    }

    /// An acceptor whose handshakes ask this store for the certificate.
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, TlsError> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Setup)?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        // The server speaks HTTP/1.1 (and WebSocket over it) only.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("certificate lock").clone())
    }
}
