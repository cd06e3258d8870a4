//! TLS for both sides of the proxy, with rustls (ring provider): the acceptor that terminates
//! clients' TLS, the connector toward the upstream with libpq's `sslmode` levels, the stream type
//! that hides which one a connection uses, and the channel-binding hash SCRAM-PLUS needs.

mod acceptor;
mod collector;
mod connector;
mod control;
mod end_point;
mod stream;
mod verifier;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use acceptor::{ClientTls, ClientTlsMode};
pub use collector::CollectorTls;
pub use connector::{ServerTlsMode, UpstreamTls, UpstreamTlsError};
pub use control::{ROOT_CERT_ENV, control_connector};
pub use end_point::tls_server_end_point;
pub use stream::{CLOSE_TIMEOUT, PgStream, Probe, has_unread_bytes};

/// The ALPN protocol name PostgreSQL 17 uses, required for direct TLS connections.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// Why certificates or keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds no usable item.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// rustls refused the certificate/key pair or the CA.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// rustls's ring provider, passed explicitly so that a second provider compiled in by another
/// crate cannot make the choice ambiguous.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pem_error(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::Pem {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// Every certificate in a PEM file, in order; at least one.
fn load_certificates(
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(pem_error(path, "no CERTIFICATE block found"));
    }
    Ok(certs)
}
