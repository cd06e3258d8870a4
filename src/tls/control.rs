//! TLS for the control plane's tokio-postgres connections (migrations, fleet channel, health
//! checks, backups). tokio-postgres's own `sslmode` decides whether TLS is used (`prefer` by
//! default, `require`, `disable`); the certificate is verified, host name included, against
//! the CA file named by `PGSSLROOTCERT` (libpq's variable) when it is set, and otherwise only
//! encrypts, as libpq does without a root certificate.

use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::verifier::{CertCheck, PartialVerifier, webpki_from_file};
use super::{ALPN_POSTGRESQL, TlsError, provider};

/// The environment variable naming the CA file control connections verify against.
pub const ROOT_CERT_ENV: &str = "PGSSLROOTCERT";

fn verifier() -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
    let provider = provider();
    let Some(path) = std::env::var_os(ROOT_CERT_ENV).filter(|p| !p.is_empty()) else {
        return Ok(PartialVerifier::new(provider, CertCheck::Nothing));
    };
    Ok(webpki_from_file(std::path::Path::new(&path), &provider)?)
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
        PartialVerifier::new(
            provider(),
            CertCheck::Refuse(format!("{ROOT_CERT_ENV}: {e}")),
        )
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
