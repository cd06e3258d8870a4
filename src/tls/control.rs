//! TLS for the control plane's tokio-postgres connections (migrations, fleet channel, health
//! checks, backups). tokio-postgres's own `sslmode` decides whether TLS is used (`prefer` by
//! default, `require`, `disable`); the certificate is verified, host name included, against
//! the CA file named by `PGSSLROOTCERT` (libpq's variable) when it is set, and otherwise only
//! encrypts, as libpq does without a root certificate.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::connector::EncryptOnly;
use super::{ALPN_POSTGRESQL, TlsError, load_certificates, provider};

/// The environment variable naming the CA file control connections verify against.
pub const ROOT_CERT_ENV: &str = "PGSSLROOTCERT";

fn verifier() -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
    let provider = provider();
    let Some(path) = std::env::var_os(ROOT_CERT_ENV).filter(|p| !p.is_empty()) else {
        return Ok(Arc::new(EncryptOnly(provider)));
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certificates(std::path::Path::new(&path))? {
        roots.add(cert)?;
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map(|v| v as Arc<dyn ServerCertVerifier>)
        .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))
}

/// The connector to pass to `tokio_postgres::connect` wherever pgsidecar opens a connection of
/// its own. When `PGSSLROOTCERT` names a file that cannot be used, every TLS handshake fails
/// with that reason (a plaintext `sslmode=disable` connection still works).
///
/// # Panics
/// Never: the ring provider supports rustls's default protocol versions.
#[must_use]
pub fn control_connector() -> MakeRustlsConnect {
    let verifier = verifier().unwrap_or_else(|e| {
        Arc::new(Unusable(format!("{ROOT_CERT_ENV}: {e}"))) as Arc<dyn ServerCertVerifier>
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    MakeRustlsConnect::new(config)
}

/// A verifier that refuses every certificate, carrying why verification is impossible.
#[derive(Debug)]
struct Unusable(String);

impl ServerCertVerifier for Unusable {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Err(rustls::Error::General(self.0.clone()))
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(self.0.clone()))
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(self.0.clone()))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
