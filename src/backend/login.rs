//! Logging in to PostgreSQL as a client: startup, then whichever of SCRAM-SHA-256, md5, cleartext
//! or trust the server asks for.

use std::collections::BTreeMap;

use super::BackendError;
use crate::auth::{KeyedScramClient, SCRAM_SHA_256_PLUS, ScramKeys};
use crate::tls::{PgStream, UpstreamTls};
use crate::wire::messages::{ErrorFields, take_cstr};
use crate::wire::read_frame;
use crate::wire::startup::encode_startup;
use crate::wire::tag::{client, server};
use bytes::{BufMut, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};

/// Largest message the proxy accepts from a server during login.
const LOGIN_FRAME_LIMIT: usize = 1 << 20;

/// Where and as whom the proxy logs in.
#[derive(Clone, PartialEq, Eq)]
pub struct LoginTarget {
    /// `host:port` of the server.
    pub address: String,
    /// The host alone: the name a verify-full certificate must carry.
    pub host: String,
    /// TLS toward the server.
    pub tls: UpstreamTls,
    /// Server-side user.
    pub user: String,
    /// Server-side database.
    pub database: String,
    /// Password, if the server asks for one.
    pub password: Option<String>,
    /// Keys a client proved with SCRAM, used when no password is configured (pass-through).
    pub scram_keys: Option<ScramKeys>,
}

impl std::fmt::Debug for LoginTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}/{}", self.user, self.address, self.database)
    }
}

fn password_message(out: &mut BytesMut, payload: &[u8]) {
    out.put_u8(client::PASSWORD);
    out.put_u32(u32::try_from(payload.len() + 4).expect("auth payloads are small"));
    out.put_slice(payload);
}

impl LoginTarget {
    /// The SCRAM client for this login: the password when configured, else a client's keys.
    fn scram_client(
        &self,
        binding: Option<Vec<u8>>,
        plus: bool,
    ) -> Result<ScramClient, BackendError> {
        if let Some(password) = &self.password {
            let (binding, mechanism) = match binding {
                Some(data) if plus => (
                    ChannelBinding::tls_server_end_point(data),
                    SCRAM_SHA_256_PLUS,
                ),
                Some(_) => (ChannelBinding::unrequested(), SCRAM_SHA_256),
                None => (ChannelBinding::unsupported(), SCRAM_SHA_256),
            };
            Ok(ScramClient::Password(
                ScramSha256::new(password.as_bytes(), binding),
                mechanism,
            ))
        } else if let Some(keys) = &self.scram_keys {
            Ok(ScramClient::Keys(KeyedScramClient::new(
                keys.clone(),
                binding,
                plus,
            )))
        } else {
            Err(self.no_password())
        }
    }

    fn no_password(&self) -> BackendError {
        BackendError::Auth(format!(
            "the server asks for a password for user \"{}\" and none is configured \
             (and no client of this pool has logged in with SCRAM yet)",
            self.user
        ))
    }

    fn password(&self) -> Result<&str, BackendError> {
        self.password.as_deref().ok_or_else(|| self.no_password())
    }

    /// Sends the startup packet and answers authentication requests until AuthenticationOk.
    /// The stream is then ready for the server's ParameterStatus / BackendKeyData / ReadyForQuery.
    pub(super) async fn authenticate(
        &self,
        stream: &mut PgStream,
        buf: &mut BytesMut,
        channel_binding: Option<Vec<u8>>,
    ) -> Result<(), BackendError> {
        let mut params = BTreeMap::new();
        params.insert("user".to_owned(), self.user.clone());
        params.insert("database".to_owned(), self.database.clone());
        stream.send(&encode_startup(&params)).await?;
        let mut scram: Option<ScramClient> = None;
        loop {
            let frame = read_frame(stream, buf, LOGIN_FRAME_LIMIT).await?;
            match frame.tag {
                server::ERROR_RESPONSE => {
                    return Err(BackendError::Server(ErrorFields::parse(&frame.body)));
                }
                server::AUTHENTICATION => {}
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
                    let plus = offered.iter().any(|m| m == SCRAM_SHA_256_PLUS);
                    let client = self.scram_client(channel_binding.clone(), plus)?;
                    let mut payload = Vec::new();
                    payload.extend_from_slice(client.mechanism().as_bytes());
                    payload.push(0);
                    let first = client.first_message();
                    payload.extend_from_slice(
                        &i32::try_from(first.len()).expect("small").to_be_bytes(),
                    );
                    payload.extend_from_slice(&first);
                    password_message(&mut out, &payload);
                    scram = Some(client);
                }
                11 => {
                    let client = scram.as_mut().ok_or_else(|| {
                        BackendError::Auth("SASL continue before SASL start".into())
                    })?;
                    let reply = client.answer(data)?;
                    password_message(&mut out, &reply);
                }
                12 => {
                    let client = scram
                        .take()
                        .ok_or_else(|| BackendError::Auth("SASL final before SASL start".into()))?;
                    client.verify(data)?;
                    continue;
                }
                other => {
                    return Err(BackendError::Auth(format!(
                        "authentication method {other} is not supported"
                    )));
                }
            }
            stream.send(&out).await?;
        }
    }
}

/// The proxy's side of a SCRAM login to the server: with a configured password, or with keys a
/// client proved (pass-through).
enum ScramClient {
    Password(ScramSha256, &'static str),
    Keys(KeyedScramClient),
}

impl ScramClient {
    fn mechanism(&self) -> &'static str {
        match self {
            Self::Password(_, mechanism) => mechanism,
            Self::Keys(client) => client.mechanism(),
        }
    }

    fn first_message(&self) -> Vec<u8> {
        match self {
            Self::Password(client, _) => client.message().to_vec(),
            Self::Keys(client) => client.client_first().into_bytes(),
        }
    }

    fn answer(&mut self, server_first: &[u8]) -> Result<Vec<u8>, BackendError> {
        let scram = |e: &dyn std::fmt::Display| BackendError::Auth(format!("SCRAM: {e}"));
        match self {
            Self::Password(client, _) => {
                client.update(server_first).map_err(|e| scram(&e))?;
                Ok(client.message().to_vec())
            }
            Self::Keys(client) => {
                let text = std::str::from_utf8(server_first).map_err(|e| scram(&e))?;
                Ok(client
                    .client_final(text)
                    .map_err(|e| scram(&e))?
                    .into_bytes())
            }
        }
    }

    fn verify(self, server_final: &[u8]) -> Result<(), BackendError> {
        let signature =
            |e: &dyn std::fmt::Display| BackendError::Auth(format!("server SCRAM signature: {e}"));
        match self {
            Self::Password(mut client, _) => client.finish(server_final).map_err(|e| signature(&e)),
            Self::Keys(client) => {
                let text = std::str::from_utf8(server_final).map_err(|e| signature(&e))?;
                client.verify_server_final(text).map_err(|e| signature(&e))
            }
        }
    }
}
