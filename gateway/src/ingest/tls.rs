//! Certificates and rustls configurations for ingest.
//!
//! Only rustls' `ring` provider is used (no aws-lc-rs: it needs cmake and is
//! slow to build); [`install_crypto_provider`] makes it the process default.
//!
//! HTTP/3 always needs a certificate. Without `--tls-cert/--tls-key`, a
//! self-signed one for `localhost`, `127.0.0.1` and `::1` is generated and
//! written to `<data-dir>/quic-cert.pem` (and its key, mode 0600, to
//! `quic-key.pem`) so clients can pin it; a pair already there is reused, so a
//! pin survives restarts. Delete both files to rotate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// File name of the generated QUIC certificate in the data dir.
pub const QUIC_CERT_FILE: &str = "quic-cert.pem";
/// File name of the generated QUIC key in the data dir.
pub const QUIC_KEY_FILE: &str = "quic-key.pem";

/// A certificate problem, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        what: String,
    },
    /// Generating or writing the self-signed certificate failed.
    #[error("self-signed QUIC certificate in {dir}: {what}")]
    SelfSigned {
        /// The data dir.
        dir: PathBuf,
        /// What went wrong.
        what: String,
    },
    /// rustls or quinn refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// A certificate chain and its key.
#[derive(Debug)]
pub struct CertPair {
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for CertPair {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// Installs rustls' `ring` provider as the process default (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM chain and key.
pub fn load_pem(cert: &Path, key: &Path) -> Result<CertPair, TlsError> {
    let pem_err = |path: &Path, what: String| TlsError::Pem {
        path: path.to_owned(),
        what,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem_err(cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(pem_err(cert, "no CERTIFICATE block".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err(key, e.to_string()))?;
    Ok(CertPair { chain, key })
}

/// Loads the QUIC certificate of `data_dir`, generating one if absent.
/// Returns the pair and the certificate's path.
pub fn self_signed(data_dir: &Path) -> Result<(CertPair, PathBuf), TlsError> {
    let cert_path = data_dir.join(QUIC_CERT_FILE);
    let key_path = data_dir.join(QUIC_KEY_FILE);
    if cert_path.exists() && key_path.exists() {
        if let Ok(pair) = load_pem(&cert_path, &key_path) {
            return Ok((pair, cert_path));
        }
        tracing::warn!(path = %cert_path.display(), "unreadable QUIC certificate, generating a new one");
    }
    let err = |what: String| TlsError::SelfSigned {
        dir: data_dir.to_owned(),
        what,
    };
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let generated = rcgen::generate_simple_self_signed(names).map_err(|e| err(e.to_string()))?;
    std::fs::create_dir_all(data_dir).map_err(|e| err(e.to_string()))?;
    write_private(&key_path, generated.signing_key.serialize_pem().as_bytes())
        .map_err(|e| err(format!("{}: {e}", key_path.display())))?;
    std::fs::write(&cert_path, generated.cert.pem())
        .map_err(|e| err(format!("{}: {e}", cert_path.display())))?;
    let key = PrivateKeyDer::try_from(generated.signing_key.serialize_der())
        .map_err(|e| err(e.to_string()))?;
    let pair = CertPair {
        chain: vec![generated.cert.der().clone()],
        key,
    };
    tracing::info!(path = %cert_path.display(), "generated a self-signed QUIC certificate");
    Ok((pair, cert_path))
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(data)
}

/// rustls server config for TLS over TCP (ALPN h2, http/1.1).
pub fn tcp_server_config(pair: &CertPair) -> Result<rustls::ServerConfig, TlsError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(pair.chain.clone(), pair.key.clone_key())
        .map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// quinn server config for HTTP/3 (ALPN h3).
pub fn quic_server_config(
    pair: &CertPair,
    idle_timeout: std::time::Duration,
) -> Result<quinn::ServerConfig, TlsError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(pair.chain.clone(), pair.key.clone_key())
        .map_err(|e| TlsError::Config(e.to_string()))?;
    tls.alpn_protocols = vec![b"h3".to_vec()];
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(idle_timeout.try_into().ok());
    transport.max_concurrent_bidi_streams(256u32.into());
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// quinn client config trusting exactly `roots` (for tests, benches and the
/// load generator pinning the gateway's certificate).
pub fn quic_client_config(
    roots: &[CertificateDer<'static>],
) -> Result<quinn::ClientConfig, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    for c in roots {
        store
            .add(c.clone())
            .map_err(|e| TlsError::Config(e.to_string()))?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(store)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(quinn::ClientConfig::new(Arc::new(crypto)))
}
