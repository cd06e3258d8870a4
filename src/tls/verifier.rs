//! The server-certificate checks below full WebPKI verification that libpq's levels need:
//! none (`prefer`/`require` without a root certificate), the chain without the host name
//! (`verify-ca`), and a refusal that carries why no check is possible (an unusable CA file).
//! Handshake signatures are verified in every case.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

use super::{TlsError, load_certificates};

/// Full WebPKI verification (chain and host name) against the CA certificates in `ca`.
///
/// # Errors
/// [`TlsError`] for an unreadable file or certificates rustls refuses as roots.
pub(super) fn webpki_from_file(
    ca: &Path,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certificates(ca)? {
        roots.add(cert)?;
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
        .build()
        .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))
}

/// What to check of the server's certificate.
#[derive(Debug)]
pub(super) enum CertCheck {
    /// Nothing: the session is encrypted, the peer is not authenticated.
    Nothing,
    /// The chain to the trusted roots, not the name. webpki checks the chain before the name,
    /// so a name mismatch can only be reported for a certificate whose chain is good.
    ChainOnly(Arc<WebPkiServerVerifier>),
    /// Refuse every certificate, with this reason.
    Refuse(String),
}

/// A [`ServerCertVerifier`] applying a [`CertCheck`].
#[derive(Debug)]
pub(super) struct PartialVerifier {
    provider: Arc<CryptoProvider>,
    check: CertCheck,
}

impl PartialVerifier {
    /// A verifier for `check`, verifying handshake signatures with `provider`'s algorithms.
    pub(super) fn new(provider: Arc<CryptoProvider>, check: CertCheck) -> Arc<Self> {
        Arc::new(Self { provider, check })
    }
}

impl ServerCertVerifier for PartialVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.check {
            CertCheck::Nothing => Ok(ServerCertVerified::assertion()),
            CertCheck::Refuse(reason) => Err(rustls::Error::General(reason.clone())),
            CertCheck::ChainOnly(webpki) => match webpki.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ) {
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )) => Ok(ServerCertVerified::assertion()),
                other => other,
            },
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
