//! Terminating clients' TLS: after an SSLRequest, or directly (PostgreSQL 17's `sslnegotiation=
//! direct`, recognised by its first byte and required to name ALPN `postgresql`).

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::{ALPN_POSTGRESQL, PgStream, TlsError, load_certificates, pem_error, provider};

/// Whether clients may, must or cannot use TLS on the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTlsMode {
    /// TLS is not offered: SSLRequest is answered `N`.
    Disable,
    /// TLS is offered, plaintext is accepted too.
    Allow,
    /// Clients that do not negotiate TLS are refused before they log in.
    Require,
}

impl FromStr for ClientTlsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "disable" => Ok(Self::Disable),
            "allow" => Ok(Self::Allow),
            "require" => Ok(Self::Require),
            other => Err(format!(
                "expected `disable`, `allow` or `require`, got `{other}`"
            )),
        }
    }
}

impl std::fmt::Display for ClientTlsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Disable => "disable",
            Self::Allow => "allow",
            Self::Require => "require",
        })
    }
}

/// The listener's certificate, ready to accept handshakes.
pub struct ClientTls {
    acceptor: TlsAcceptor,
    channel_binding: Vec<u8>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls(..)")
    }
}

impl ClientTls {
    /// Loads a PEM certificate chain (leaf first) and its private key.
    ///
    /// # Errors
    /// [`TlsError`] naming the file at fault, or rustls's verdict on the pair.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let chain = load_certificates(cert)?;
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error(key, e))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key_der)?;
        config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            channel_binding: super::tls_server_end_point(&chain[0]),
        })
    }

    /// The `tls-server-end-point` data of this certificate, for SCRAM-SHA-256-PLUS.
    #[must_use]
    pub fn channel_binding(&self) -> &[u8] {
        &self.channel_binding
    }

    /// Runs the server side of the handshake. With `direct`, the client skipped SSLRequest and
    /// must have negotiated ALPN `postgresql`, as PostgreSQL 17 requires.
    ///
    /// # Errors
    /// The handshake's error, or a direct connection without the ALPN protocol.
    pub async fn accept(&self, tcp: TcpStream, direct: bool) -> std::io::Result<PgStream> {
        let tls = self.acceptor.accept(tcp).await?;
        if direct && tls.get_ref().1.alpn_protocol() != Some(ALPN_POSTGRESQL) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "direct TLS connection without ALPN protocol \"postgresql\"",
            ));
        }
        Ok(PgStream::Tls(Box::new(tls.into())))
    }
}
