//! The first message of a connection: startup, SSL/GSS negotiation or a cancel request.

use std::collections::BTreeMap;

use bytes::{Buf, BytesMut};
use pgwire::messages::startup::Startup;
use pgwire::messages::{DecodeContext, Message, ProtocolVersion};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::WireError;

/// PostgreSQL's own cap on an untyped (startup-phase) packet.
pub const MAX_STARTUP_LEN: usize = 10_000;
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;

/// An SSLRequest, as the proxy sends it to the upstream before a TLS handshake.
pub const SSL_REQUEST_PACKET: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// What a client asked for in its first packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupRequest {
    /// SSLRequest: the client wants to negotiate TLS.
    Ssl,
    /// GSSENCRequest: the client wants GSSAPI encryption.
    GssEnc,
    /// CancelRequest for the session identified by the key.
    Cancel {
        /// Process id from BackendKeyData.
        pid: i32,
        /// Secret from BackendKeyData.
        secret: i32,
    },
    /// A v3 StartupMessage.
    Startup {
        /// Minor protocol version the client asked for.
        minor_version: u16,
        /// Parameters (user, database, options, GUCs, `_pq_` options).
        params: BTreeMap<String, String>,
    },
}

/// Reads one startup-phase packet.
///
/// # Errors
/// [`WireError::Closed`] when the client hangs up first; [`WireError::Protocol`] for a length
/// outside PostgreSQL's limits, an unknown request code or an unsupported major version.
pub async fn read_startup<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<StartupRequest, WireError> {
    let mut len_word = [0_u8; 4];
    match reader.read_exact(&mut len_word).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(WireError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len_word) as usize;
    if !(8..=MAX_STARTUP_LEN).contains(&len) {
        return Err(WireError::protocol(format!(
            "invalid startup packet length {len}"
        )));
    }
    let mut packet = BytesMut::zeroed(len);
    packet[..4].copy_from_slice(&len_word);
    reader.read_exact(&mut packet[4..]).await?;
    parse_startup(packet)
}

/// Decodes a whole startup-phase packet, length word included.
///
/// # Errors
/// As [`read_startup`].
pub fn parse_startup(mut packet: BytesMut) -> Result<StartupRequest, WireError> {
    let len = packet.len();
    if len < 8 {
        return Err(WireError::protocol(format!(
            "invalid startup packet length {len}"
        )));
    }
    let code = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    match code {
        SSL_REQUEST if len == 8 => Ok(StartupRequest::Ssl),
        GSSENC_REQUEST if len == 8 => Ok(StartupRequest::GssEnc),
        CANCEL_REQUEST if len == 16 => {
            packet.advance(8);
            Ok(StartupRequest::Cancel {
                pid: packet.get_i32(),
                secret: packet.get_i32(),
            })
        }
        _ if code >> 16 == 3 => {
            let ctx = DecodeContext::new(ProtocolVersion::PROTOCOL3_0);
            packet.advance(4);
            let startup = Startup::decode_body(&mut packet, len, &ctx)
                .map_err(|e| WireError::protocol(format!("invalid startup packet: {e}")))?;
            Ok(StartupRequest::Startup {
                minor_version: startup.protocol_number_minor,
                params: startup.parameters,
            })
        }
        _ => Err(WireError::protocol(format!(
            "unsupported frontend protocol {}.{}",
            code >> 16,
            code & 0xffff
        ))),
    }
}

/// Encodes a v3.0 StartupMessage, for the proxy's own logins to the server.
///
/// # Panics
/// If the parameters exceed the 10,000-byte startup limit.
#[must_use]
pub fn encode_startup(params: &BTreeMap<String, String>) -> BytesMut {
    let mut startup = Startup::new();
    startup.parameters.clone_from(params);
    let mut out = BytesMut::new();
    startup
        .encode(&mut out)
        .expect("a startup packet of configured names is within limits");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: u32, tail: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        let len = u32::try_from(8 + tail.len()).unwrap();
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&code.to_be_bytes());
        out.extend_from_slice(tail);
        out
    }

    #[test]
    fn recognises_negotiation_and_cancel() {
        assert_eq!(
            parse_startup(packet(SSL_REQUEST, b"")).unwrap(),
            StartupRequest::Ssl
        );
        assert_eq!(
            parse_startup(packet(GSSENC_REQUEST, b"")).unwrap(),
            StartupRequest::GssEnc
        );
        let mut key = Vec::new();
        key.extend_from_slice(&7_i32.to_be_bytes());
        key.extend_from_slice(&(-9_i32).to_be_bytes());
        assert_eq!(
            parse_startup(packet(CANCEL_REQUEST, &key)).unwrap(),
            StartupRequest::Cancel { pid: 7, secret: -9 }
        );
    }

    #[test]
    fn startup_round_trips() {
        let mut params = BTreeMap::new();
        params.insert("user".to_owned(), "app".to_owned());
        params.insert("database".to_owned(), "docs".to_owned());
        let parsed = parse_startup(encode_startup(&params)).unwrap();
        assert_eq!(
            parsed,
            StartupRequest::Startup {
                minor_version: 0,
                params
            }
        );
    }

    #[test]
    fn ssl_request_packet_is_the_request_code() {
        assert_eq!(
            parse_startup(BytesMut::from(&SSL_REQUEST_PACKET[..])).unwrap(),
            StartupRequest::Ssl
        );
    }

    #[test]
    fn unknown_versions_are_refused() {
        assert!(parse_startup(packet(2 << 16, b"user\0x\0\0")).is_err());
    }
}
