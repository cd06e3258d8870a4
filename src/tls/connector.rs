//! TLS toward the upstream, with libpq's `sslmode` levels: `prefer` encrypts when the server
//! can, `require` insists but trusts any certificate, `verify-ca` checks the chain against the
//! configured CA, `verify-full` also checks that the certificate names the host.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::verifier::{CertCheck, PartialVerifier, webpki_from_file};
use super::{ALPN_POSTGRESQL, PgStream, TlsError, has_unread_bytes, provider};
use crate::wire::startup::SSL_REQUEST_PACKET;
use crate::wire::tag::encryption_answer;

/// How the proxy secures its connections to the upstream (libpq's `sslmode` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ServerTlsMode {
    /// Plaintext only.
    Disable,
    /// TLS when the server offers it, without verification; plaintext otherwise.
    Prefer,
    /// TLS or no connection, without verification.
    Require,
    /// TLS with a certificate chain that leads to the configured CA.
    VerifyCa,
    /// As `verify-ca`, and the certificate must name the upstream host.
    VerifyFull,
}

impl FromStr for ServerTlsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "disable" => Ok(Self::Disable),
            "prefer" => Ok(Self::Prefer),
            "require" => Ok(Self::Require),
            "verify-ca" => Ok(Self::VerifyCa),
            "verify-full" => Ok(Self::VerifyFull),
            other => Err(format!(
                "expected disable, prefer, require, verify-ca or verify-full, got `{other}`"
            )),
        }
    }
}

impl std::fmt::Display for ServerTlsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        })
    }
}

/// Why a TLS connection to the upstream could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamTlsError {
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The server answered the SSLRequest with `N` and the mode does not allow plaintext.
    #[error("the server does not support TLS (server_tls_mode is {0})")]
    NotOffered(ServerTlsMode),
    /// The server answered the SSLRequest with something other than `S` or `N`.
    #[error("the server answered the SSLRequest with byte {0:#04x}")]
    UnexpectedAnswer(u8),
    /// The server sent bytes before the handshake: they could only be injected plaintext.
    #[error("the server sent unencrypted data after accepting TLS")]
    Injected,
    /// The upstream host is not a valid TLS server name.
    #[error("`{0}` is not a valid TLS server name")]
    ServerName(String),
    /// The handshake failed (certificate rejected, protocol error).
    #[error("TLS handshake: {0}")]
    Handshake(std::io::Error),
}

/// The configured upstream TLS, ready to wrap new server connections.
#[derive(Clone)]
pub struct UpstreamTls {
    mode: ServerTlsMode,
    connector: Option<TlsConnector>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UpstreamTls({})", self.mode)
    }
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.mode == other.mode && self.connector.is_some() == other.connector.is_some()
    }
}

impl Eq for UpstreamTls {}

impl UpstreamTls {
    /// Plaintext connections.
    #[must_use]
    pub fn disabled() -> Self {
        Self {
            mode: ServerTlsMode::Disable,
            connector: None,
        }
    }

    /// Builds the connector for `mode`; the verifying modes need `ca`.
    ///
    /// # Errors
    /// [`TlsError`] for an unreadable or invalid CA file, or a verifying mode without one.
    pub fn new(mode: ServerTlsMode, ca: Option<&Path>) -> Result<Self, TlsError> {
        let provider = provider();
        let verifier: Arc<dyn ServerCertVerifier> = match (mode, ca) {
            (ServerTlsMode::Disable, _) => return Ok(Self::disabled()),
            (ServerTlsMode::Prefer | ServerTlsMode::Require, _) => {
                PartialVerifier::new(Arc::clone(&provider), CertCheck::Nothing)
            }
            (ServerTlsMode::VerifyCa | ServerTlsMode::VerifyFull, None) => {
                return Err(TlsError::Pem {
                    path: "server_ca".into(),
                    message: format!("server_tls_mode {mode} needs a CA file (server_ca)"),
                });
            }
            (ServerTlsMode::VerifyCa | ServerTlsMode::VerifyFull, Some(ca)) => {
                let webpki = webpki_from_file(ca, &provider)?;
                if mode == ServerTlsMode::VerifyFull {
                    webpki
                } else {
                    PartialVerifier::new(Arc::clone(&provider), CertCheck::ChainOnly(webpki))
                }
            }
        };
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        Ok(Self {
            mode,
            connector: Some(TlsConnector::from(Arc::new(config))),
        })
    }

    /// The configured mode.
    #[must_use]
    pub fn mode(&self) -> ServerTlsMode {
        self.mode
    }

    /// Negotiates TLS on a fresh connection to `host` as the mode says. Returns the stream and,
    /// when encrypted, the server certificate's channel-binding data for SCRAM-SHA-256-PLUS.
    ///
    /// # Errors
    /// [`UpstreamTlsError`].
    pub async fn connect(
        &self,
        mut tcp: TcpStream,
        host: &str,
    ) -> Result<(PgStream, Option<Vec<u8>>), UpstreamTlsError> {
        let Some(connector) = &self.connector else {
            return Ok((PgStream::Plain(tcp), None));
        };
        tcp.write_all(&SSL_REQUEST_PACKET).await?;
        let answer = tcp.read_u8().await?;
        match answer {
            encryption_answer::ACCEPTED => {}
            encryption_answer::REFUSED if self.mode == ServerTlsMode::Prefer => {
                return Ok((PgStream::Plain(tcp), None));
            }
            encryption_answer::REFUSED => return Err(UpstreamTlsError::NotOffered(self.mode)),
            other => return Err(UpstreamTlsError::UnexpectedAnswer(other)),
        }
        if has_unread_bytes(&tcp) {
            return Err(UpstreamTlsError::Injected);
        }
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| UpstreamTlsError::ServerName(host.to_owned()))?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(UpstreamTlsError::Handshake)?;
        let binding = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| super::tls_server_end_point(leaf));
        Ok((PgStream::Tls(Box::new(tls.into())), binding))
    }
}
