//! The client's side of connection start after negotiation: the startup packet's parameters,
//! and authentication with the configured method against the user's stored secret.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use pgwire::messages::startup::Authentication;
use rand::RngExt;

use super::params::ClientParams;
use super::secrets::lookup_secret;
use crate::auth::{
    ChannelOffer, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramError, ScramKeys, ScramServer,
    ScramVerifier, Secret,
};
use crate::config::AuthMethod;
use crate::context::ProxyContext;
use crate::tls::{ClientTlsMode, PgStream};
use crate::wire::messages::{
    Severity, error, put_authentication, put_negotiate_protocol, take_cstr,
};
use crate::wire::startup::{MAX_STARTUP_LEN, StartupRequest};
use crate::wire::tag::client;
use crate::wire::{Frame, WireError, read_frame, sqlstate};

/// What the first packets of a connection asked for.
pub enum Admission {
    /// Cancel the query of the session holding this key.
    Cancel {
        /// Key pid.
        pid: i32,
        /// Key secret.
        secret: i32,
    },
    /// A client that wants a session.
    Startup {
        /// Client-facing user.
        user: String,
        /// Client-facing database.
        database: String,
        /// Settings to apply on every server connection.
        params: ClientParams,
    },
}

/// Why a login failed: the SQLSTATE and message the client gets.
#[derive(Debug, thiserror::Error)]
#[error("{message} (SQLSTATE {code})")]
pub struct LoginError {
    /// SQLSTATE.
    pub code: &'static str,
    /// Message for the client.
    pub message: String,
}

impl LoginError {
    /// A login failure with this SQLSTATE and message.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The FATAL ErrorResponse for this failure.
    #[must_use]
    pub fn to_client(&self) -> Bytes {
        error(Severity::Fatal, self.code, &self.message)
    }

    /// Whether the client failed to prove who it is (as opposed to breaking the protocol or
    /// hitting a limit): these are delayed and counted per source address.
    #[must_use]
    pub fn is_auth_failure(&self) -> bool {
        self.code == sqlstate::INVALID_PASSWORD || self.code == sqlstate::INVALID_AUTHORIZATION
    }
}

impl From<WireError> for LoginError {
    fn from(e: WireError) -> Self {
        Self::new(sqlstate::PROTOCOL_VIOLATION, e.to_string())
    }
}

impl From<std::io::Error> for LoginError {
    fn from(e: std::io::Error) -> Self {
        Self::new(sqlstate::PROTOCOL_VIOLATION, e.to_string())
    }
}

/// Turns the negotiated first packet into an admission: a cancel, or a startup whose protocol
/// version and options are answered (NegotiateProtocolVersion for 3.1+ or `_pq_` options: the
/// proxy speaks 3.0) and whose user, database and settings are checked.
///
/// # Errors
/// [`LoginError`] for a replication connection, a missing user, bad settings, or a plaintext
/// connection when TLS is required.
pub async fn admission(
    stream: &mut PgStream,
    request: StartupRequest,
    policy: ClientTlsMode,
) -> Result<Admission, LoginError> {
    let (minor_version, params) = match request {
        StartupRequest::Cancel { pid, secret } => return Ok(Admission::Cancel { pid, secret }),
        StartupRequest::Ssl | StartupRequest::GssEnc => {
            return Err(LoginError::new(
                sqlstate::PROTOCOL_VIOLATION,
                "unexpected encryption negotiation request",
            ));
        }
        StartupRequest::Startup {
            minor_version,
            params,
        } => (minor_version, params),
    };
    let protocol_options: Vec<String> = params
        .keys()
        .filter(|k| k.starts_with("_pq_."))
        .cloned()
        .collect();
    if minor_version > 0 || !protocol_options.is_empty() {
        let mut out = BytesMut::new();
        put_negotiate_protocol(&mut out, protocol_options);
        stream.send(&out).await?;
    }
    if policy == ClientTlsMode::Require && !stream.is_tls() {
        return Err(LoginError::new(
            sqlstate::INVALID_AUTHORIZATION,
            "pgsidecar accepts only TLS connections (client_tls = require)",
        ));
    }
    startup(&params)
}

fn startup(params: &BTreeMap<String, String>) -> Result<Admission, LoginError> {
    if params.contains_key("replication") {
        return Err(LoginError::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "replication connections are not supported through pgsidecar",
        ));
    }
    let user = params
        .get("user")
        .filter(|u| !u.is_empty())
        .cloned()
        .ok_or_else(|| {
            LoginError::new(
                sqlstate::INVALID_AUTHORIZATION,
                "no PostgreSQL user name specified in startup packet",
            )
        })?;
    let database = params
        .get("database")
        .filter(|d| !d.is_empty())
        .cloned()
        .unwrap_or_else(|| user.clone());
    let settings = ClientParams::from_startup(params)
        .map_err(|m| LoginError::new(sqlstate::PROTOCOL_VIOLATION, m))?;
    Ok(Admission::Startup {
        user,
        database,
        params: settings,
    })
}

fn wrong_password(user: &str) -> LoginError {
    LoginError::new(
        sqlstate::INVALID_PASSWORD,
        format!("password authentication failed for user \"{user}\""),
    )
}

/// Authenticates `user` (logging in to `database`) as the configuration says. Returns the
/// SCRAM keys the client proved, when it logged in with SCRAM, for pass-through to the server.
///
/// # Errors
/// [`LoginError`] with 28P01 for a failed password, 28000 for a method the connection does
/// not allow, 08P01 for a broken exchange.
pub async fn authenticate(
    ctx: &ProxyContext,
    stream: &mut PgStream,
    user: &str,
    database: &str,
) -> Result<Option<ScramKeys>, LoginError> {
    let method = ctx.config().auth;
    let keys = if method == AuthMethod::Trust {
        None
    } else {
        let secret = lookup_secret(ctx, user, database).await?;
        match (method, secret) {
            (AuthMethod::Password, secret) => {
                cleartext(stream, user, secret).await?;
                None
            }
            (AuthMethod::Md5, Some(Secret::Md5(secret))) => {
                md5(stream, user, &secret).await?;
                None
            }
            (_, Some(Secret::Scram(verifier))) => Some(scram(ctx, stream, user, verifier).await?),
            // Unknown users and secrets the method cannot use fail at the same step as a
            // wrong password, so that the answer does not tell which it was.
            (_, _) => Some(scram(ctx, stream, user, ScramVerifier::impossible()).await?),
        }
    };
    let mut out = BytesMut::new();
    put_authentication(&mut out, &Authentication::Ok);
    stream.send(&out).await?;
    Ok(keys)
}

async fn read_password_message(
    stream: &mut PgStream,
    buf: &mut BytesMut,
) -> Result<Frame, LoginError> {
    let frame = read_frame(stream, buf, MAX_STARTUP_LEN).await?;
    if frame.tag == client::PASSWORD {
        Ok(frame)
    } else {
        Err(LoginError::new(
            sqlstate::PROTOCOL_VIOLATION,
            format!(
                "expected a password message, got message type '{}'",
                char::from(frame.tag).escape_default()
            ),
        ))
    }
}

/// Sends an authentication request and reads the client's PasswordMessage as one string.
async fn ask_password(
    stream: &mut PgStream,
    request: &Authentication,
) -> Result<String, LoginError> {
    let mut out = BytesMut::new();
    put_authentication(&mut out, request);
    stream.send(&out).await?;
    let mut buf = BytesMut::new();
    let frame = read_password_message(stream, &mut buf).await?;
    let (text, _) = take_cstr(&frame.body)?;
    Ok(text.to_owned())
}

async fn cleartext(
    stream: &mut PgStream,
    user: &str,
    secret: Option<Secret>,
) -> Result<(), LoginError> {
    if !stream.is_tls() {
        return Err(LoginError::new(
            sqlstate::INVALID_AUTHORIZATION,
            "cleartext password authentication is refused without TLS",
        ));
    }
    let password = ask_password(stream, &Authentication::CleartextPassword).await?;
    let valid = match secret {
        Some(Secret::Scram(verifier)) => verifier.check_password(&password),
        Some(Secret::Md5(secret)) => secret.check_password(user, &password),
        None => false,
    };
    if valid {
        Ok(())
    } else {
        Err(wrong_password(user))
    }
}

async fn md5(
    stream: &mut PgStream,
    user: &str,
    secret: &crate::auth::Md5Secret,
) -> Result<(), LoginError> {
    let salt: [u8; 4] = rand::rng().random();
    let response = ask_password(stream, &Authentication::MD5Password(salt.to_vec())).await?;
    if secret.check_response(salt, &response) {
        Ok(())
    } else {
        Err(wrong_password(user))
    }
}

async fn scram(
    ctx: &ProxyContext,
    stream: &mut PgStream,
    user: &str,
    verifier: ScramVerifier,
) -> Result<ScramKeys, LoginError> {
    let config = ctx.config();
    let binding = match stream {
        PgStream::Tls(_) => config.tls.client.as_ref().map(|tls| tls.channel_binding()),
        PgStream::Plain(_) => None,
    };
    let (offer, mechanisms) = match binding {
        Some(data) => (
            ChannelOffer::Tls(data),
            vec![SCRAM_SHA_256_PLUS.to_owned(), SCRAM_SHA_256.to_owned()],
        ),
        None => (ChannelOffer::None, vec![SCRAM_SHA_256.to_owned()]),
    };
    let mut out = BytesMut::new();
    put_authentication(&mut out, &Authentication::SASL(mechanisms));
    stream.send(&out).await?;
    let mut buf = BytesMut::new();
    let initial = read_password_message(stream, &mut buf).await?;
    let (mechanism, rest) = take_cstr(&initial.body)?;
    if mechanism != SCRAM_SHA_256 && !(mechanism == SCRAM_SHA_256_PLUS && binding.is_some()) {
        return Err(LoginError::new(
            sqlstate::PROTOCOL_VIOLATION,
            format!("client selected an invalid SASL authentication mechanism {mechanism}"),
        ));
    }
    let data = rest
        .get(4..)
        .ok_or(WireError::protocol("short SASLInitialResponse"))?;
    let client_first =
        std::str::from_utf8(data).map_err(|_| WireError::protocol("SCRAM message is not UTF-8"))?;
    let failed = |e: ScramError| match e {
        ScramError::WrongPassword => wrong_password(user),
        ScramError::ChannelBinding => {
            LoginError::new(sqlstate::INVALID_AUTHORIZATION, e.to_string())
        }
        ScramError::Malformed(_) => LoginError::new(sqlstate::PROTOCOL_VIOLATION, e.to_string()),
    };
    let (exchange, server_first) =
        ScramServer::start(verifier, mechanism, offer, client_first).map_err(failed)?;
    out.clear();
    put_authentication(
        &mut out,
        &Authentication::SASLContinue(Bytes::from(server_first)),
    );
    stream.send(&out).await?;
    let response = read_password_message(stream, &mut buf).await?;
    let client_final = std::str::from_utf8(&response.body)
        .map_err(|_| WireError::protocol("SCRAM message is not UTF-8"))?;
    let (server_final, keys) = exchange.finish(client_final).map_err(failed)?;
    out.clear();
    put_authentication(
        &mut out,
        &Authentication::SASLFinal(Bytes::from(server_final)),
    );
    stream.send(&out).await?;
    Ok(keys)
}
