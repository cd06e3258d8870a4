//! Logging in to PostgreSQL as a client: startup, then whichever of SCRAM-SHA-256, md5, cleartext
//! or trust the server asks for.

use std::collections::BTreeMap;

use bytes::{BufMut, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::BackendError;
use crate::wire::messages::{ErrorFields, take_cstr};
use crate::wire::read_frame;
use crate::wire::startup::encode_startup;

/// Largest message the proxy accepts from a server during login.
const LOGIN_FRAME_LIMIT: usize = 1 << 20;

/// Where and as whom the proxy logs in.
#[derive(Clone, PartialEq, Eq)]
pub struct LoginTarget {
    /// `host:port` of the server.
    pub address: String,
    /// Server-side user.
    pub user: String,
    /// Server-side database.
    pub database: String,
    /// Password, if the server asks for one.
    pub password: Option<String>,
}

impl std::fmt::Debug for LoginTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}/{}", self.user, self.address, self.database)
    }
}

fn password_message(out: &mut BytesMut, payload: &[u8]) {
    out.put_u8(b'p');
    out.put_u32(u32::try_from(payload.len() + 4).expect("auth payloads are small"));
    out.put_slice(payload);
}

impl LoginTarget {
    fn password(&self) -> Result<&str, BackendError> {
        self.password.as_deref().ok_or_else(|| {
            BackendError::Auth(format!(
                "the server asks for a password for user \"{}\" and none is configured",
                self.user
            ))
        })
    }

    /// Sends the startup packet and answers authentication requests until AuthenticationOk.
    /// The stream is then ready for the server's ParameterStatus / BackendKeyData / ReadyForQuery.
    pub(super) async fn authenticate(
        &self,
        stream: &mut TcpStream,
        buf: &mut BytesMut,
    ) -> Result<(), BackendError> {
        let mut params = BTreeMap::new();
        params.insert("user".to_owned(), self.user.clone());
        params.insert("database".to_owned(), self.database.clone());
        stream.write_all(&encode_startup(&params)).await?;
        let mut scram: Option<ScramSha256> = None;
        loop {
            let frame = read_frame(stream, buf, LOGIN_FRAME_LIMIT).await?;
            match frame.tag {
                b'E' => return Err(BackendError::Server(ErrorFields::parse(&frame.body))),
                b'R' => {}
                other => {
                    return Err(BackendError::Auth(format!(
                        "unexpected message '{}' during login",
                        char::from(other)
                    )));
                }
            }
            let body = &frame.body[..];
            if body.len() < 4 {
                return Err(BackendError::Auth("short authentication message".into()));
            }
            let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
            let data = &body[4..];
            let mut out = BytesMut::new();
            match code {
                0 => return Ok(()),
                3 => {
                    let mut payload = self.password()?.as_bytes().to_vec();
                    payload.push(0);
                    password_message(&mut out, &payload);
                }
                5 => {
                    let salt: [u8; 4] = data
                        .try_into()
                        .map_err(|_| BackendError::Auth("md5 salt is not 4 bytes".into()))?;
                    let hashed = md5_hash(self.user.as_bytes(), self.password()?.as_bytes(), salt);
                    let mut payload = hashed.into_bytes();
                    payload.push(0);
                    password_message(&mut out, &payload);
                }
                10 => {
                    let mut offered = Vec::new();
                    let mut rest = data;
                    while let Ok((name, tail)) = take_cstr(rest) {
                        if name.is_empty() {
                            break;
                        }
                        offered.push(name.to_owned());
                        rest = tail;
                    }
                    if !offered.iter().any(|m| m == SCRAM_SHA_256) {
                        return Err(BackendError::Auth(format!(
                            "server offers only {offered:?}; pgsidecar speaks SCRAM-SHA-256"
                        )));
                    }
                    let client = ScramSha256::new(
                        self.password()?.as_bytes(),
                        ChannelBinding::unsupported(),
                    );
                    let mut payload = Vec::new();
                    payload.extend_from_slice(SCRAM_SHA_256.as_bytes());
                    payload.push(0);
                    let first = client.message();
                    payload.extend_from_slice(
                        &i32::try_from(first.len()).expect("small").to_be_bytes(),
                    );
                    payload.extend_from_slice(first);
                    password_message(&mut out, &payload);
                    scram = Some(client);
                }
                11 => {
                    let client = scram.as_mut().ok_or_else(|| {
                        BackendError::Auth("SASL continue before SASL start".into())
                    })?;
                    client
                        .update(data)
                        .map_err(|e| BackendError::Auth(format!("SCRAM: {e}")))?;
                    password_message(&mut out, client.message());
                }
                12 => {
                    let mut client = scram
                        .take()
                        .ok_or_else(|| BackendError::Auth("SASL final before SASL start".into()))?;
                    client
                        .finish(data)
                        .map_err(|e| BackendError::Auth(format!("server SCRAM signature: {e}")))?;
                    continue;
                }
                other => {
                    return Err(BackendError::Auth(format!(
                        "authentication method {other} is not supported"
                    )));
                }
            }
            stream.write_all(&out).await?;
        }
    }
}
