//! The first bytes of a client connection: TLS (after an SSLRequest, or direct with ALPN as
//! PostgreSQL 17 clients may do), a declined GSSAPI-encryption request, and then the startup
//! packet or cancel request, read over whichever stream resulted.

use tokio::net::TcpStream;

use super::login::LoginError;
use crate::config::Config;
use crate::tls::{ClientTls, ClientTlsMode, PgStream, has_unread_bytes};
use crate::wire::sqlstate;
use crate::wire::startup::{StartupRequest, read_startup};
use crate::wire::tag::encryption_answer;

/// The first byte of a TLS handshake record: a client starting TLS without SSLRequest.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// A connection refused during negotiation, with the stream to tell the client on, if one
/// can still carry an ErrorResponse.
pub struct Refusal {
    /// The stream in the state the client expects (plaintext or TLS).
    pub stream: Option<PgStream>,
    /// What went wrong.
    pub error: LoginError,
}

fn refuse(stream: Option<PgStream>, code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        stream,
        error: LoginError::new(code, message),
    }
}

/// Negotiates encryption as the listener's `policy` allows and reads the startup packet (or
/// cancel request).
///
/// # Errors
/// [`Refusal`] for malformed packets, bytes injected after SSLRequest, a failed handshake,
/// or a repeated negotiation request.
pub async fn negotiate(
    config: &Config,
    policy: ClientTlsMode,
    tcp: TcpStream,
) -> Result<(PgStream, StartupRequest), Refusal> {
    let tls = match policy {
        ClientTlsMode::Disable => None,
        ClientTlsMode::Allow | ClientTlsMode::Require => config.tls.client.clone(),
    };
    let mut first = [0_u8; 1];
    let peeked = tcp.peek(&mut first).await;
    if matches!(peeked, Ok(1)) && first[0] == TLS_HANDSHAKE_RECORD {
        return match tls {
            Some(tls) => direct_tls(&tls, tcp).await,
            None => Err(refuse(
                None,
                sqlstate::PROTOCOL_VIOLATION,
                "direct TLS connection but TLS is not configured",
            )),
        };
    }
    let mut stream = PgStream::Plain(tcp);
    let mut gss_declined = false;
    loop {
        let request = match read_startup(&mut stream).await {
            Ok(request) => request,
            Err(e) => {
                return Err(Refusal {
                    stream: Some(stream),
                    error: e.into(),
                });
            }
        };
        match request {
            StartupRequest::GssEnc if !gss_declined && !stream.is_tls() => {
                gss_declined = true;
                if let Err(e) = stream.send(&[encryption_answer::REFUSED]).await {
                    return Err(Refusal {
                        stream: None,
                        error: e.into(),
                    });
                }
            }
            StartupRequest::Ssl if !stream.is_tls() => {
                if has_unread_bytes(stream.tcp()) {
                    return Err(refuse(
                        Some(stream),
                        sqlstate::PROTOCOL_VIOLATION,
                        "received unencrypted data after SSL request",
                    ));
                }
                let mut tcp = match stream {
                    PgStream::Plain(tcp) => tcp,
                    tls @ PgStream::Tls(_) => {
                        return Err(refuse(
                            Some(tls),
                            sqlstate::PROTOCOL_VIOLATION,
                            "encryption negotiation requested twice",
                        ));
                    }
                };
                let Some(tls) = &tls else {
                    stream = PgStream::Plain(tcp);
                    if let Err(e) = stream.send(&[encryption_answer::REFUSED]).await {
                        return Err(Refusal {
                            stream: None,
                            error: e.into(),
                        });
                    }
                    // Only one SSLRequest: the next one is a protocol violation.
                    return read_final_request(stream).await;
                };
                if let Err(e) =
                    tokio::io::AsyncWriteExt::write_all(&mut tcp, &[encryption_answer::ACCEPTED])
                        .await
                {
                    return Err(Refusal {
                        stream: None,
                        error: e.into(),
                    });
                }
                stream = tls.accept(tcp, false).await.map_err(|e| {
                    refuse(
                        None,
                        sqlstate::PROTOCOL_VIOLATION,
                        format!("TLS handshake: {e}"),
                    )
                })?;
            }
            StartupRequest::Ssl | StartupRequest::GssEnc => {
                return Err(refuse(
                    Some(stream),
                    sqlstate::PROTOCOL_VIOLATION,
                    "encryption negotiation requested twice",
                ));
            }
            request => return Ok((stream, request)),
        }
    }
}

/// Reads the packet that must follow a finished negotiation (after an `N`, or inside TLS): a
/// startup packet or a cancel request, nothing else.
async fn read_final_request(mut stream: PgStream) -> Result<(PgStream, StartupRequest), Refusal> {
    match read_startup(&mut stream).await {
        Ok(StartupRequest::Ssl | StartupRequest::GssEnc) => Err(refuse(
            Some(stream),
            sqlstate::PROTOCOL_VIOLATION,
            "encryption negotiation requested twice",
        )),
        Ok(request) => Ok((stream, request)),
        Err(e) => Err(Refusal {
            stream: Some(stream),
            error: e.into(),
        }),
    }
}

/// A client that started TLS without SSLRequest: the handshake (ALPN required), then the
/// startup packet inside it.
async fn direct_tls(
    tls: &ClientTls,
    tcp: TcpStream,
) -> Result<(PgStream, StartupRequest), Refusal> {
    let stream = tls.accept(tcp, true).await.map_err(|e| {
        refuse(
            None,
            sqlstate::PROTOCOL_VIOLATION,
            format!("TLS handshake: {e}"),
        )
    })?;
    read_final_request(stream).await
}
