//! TLS toward the OTLP collector: the CA that signs the collector's certificate and, for mutual
//! TLS, the client certificate and key, from the files the OpenTelemetry environment names
//! (`OTEL_EXPORTER_OTLP_CERTIFICATE`, `…_CLIENT_CERTIFICATE`, `…_CLIENT_KEY`). Read and checked
//! when the configuration is validated, so that a bad file fails the start.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject as _;

use super::{TlsError, load_certificates, pem_error, provider};

/// The collector's CA and the client identity, as PEM (for the gRPC channel) and as a rustls
/// client configuration (for the HTTP client).
#[derive(Clone)]
pub struct CollectorTls {
    ca_pem: Option<Vec<u8>>,
    identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    config: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for CollectorTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollectorTls")
            .field("ca", &self.ca_pem.is_some())
            .field("client_identity", &self.identity_pem.is_some())
            .finish_non_exhaustive()
    }
}

impl PartialEq for CollectorTls {
    fn eq(&self, other: &Self) -> bool {
        self.ca_pem == other.ca_pem && self.identity_pem == other.identity_pem
    }
}

impl CollectorTls {
    /// Loads the files; `None` when none is given.
    ///
    /// # Errors
    /// [`TlsError`] naming the file at fault, a client certificate without its key (or the
    /// reverse), or rustls's verdict on the pair.
    pub fn load(
        ca: Option<&Path>,
        client_certificate: Option<&Path>,
        client_key: Option<&Path>,
    ) -> Result<Option<Self>, TlsError> {
        let read = |path: &Path| std::fs::read(path).map_err(|e| pem_error(path, e));
        let identity = match (client_certificate, client_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((cert, key)),
            (Some(path), None) | (None, Some(path)) => {
                return Err(pem_error(
                    path,
                    "a client certificate needs its key, and a key its certificate",
                ));
            }
        };
        if ca.is_none() && identity.is_none() {
            return Ok(None);
        }
        let provider = provider();
        let mut roots = rustls::RootCertStore::empty();
        let ca_pem = match ca {
            Some(path) => {
                for cert in load_certificates(path)? {
                    roots.add(cert)?;
                }
                Some(read(path)?)
            }
            None => None,
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let (config, identity_pem) = match identity {
            Some((cert, key)) => {
                let chain = load_certificates(cert)?;
                let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error(key, e))?;
                (
                    builder.with_client_auth_cert(chain, key_der)?,
                    Some((read(cert)?, read(key)?)),
                )
            }
            None => (builder.with_no_client_auth(), None),
        };
        // Only a configuration that names the CA can verify the collector: without one the
        // HTTP client keeps the system's roots (and takes the client identity as PEM).
        let config = ca_pem.is_some().then(|| Arc::new(config));
        Ok(Some(Self {
            ca_pem,
            identity_pem,
            config,
        }))
    }

    /// The CA as PEM, for the gRPC channel.
    #[must_use]
    pub fn ca_pem(&self) -> Option<&[u8]> {
        self.ca_pem.as_deref()
    }

    /// The client certificate chain and key as PEM, for the gRPC channel.
    #[must_use]
    pub fn identity_pem(&self) -> Option<(&[u8], &[u8])> {
        self.identity_pem
            .as_ref()
            .map(|(cert, key)| (cert.as_slice(), key.as_slice()))
    }

    /// The rustls configuration for the HTTP client, when a CA is configured.
    #[must_use]
    pub fn http_config(&self) -> Option<rustls::ClientConfig> {
        self.config.as_deref().cloned()
    }
}
