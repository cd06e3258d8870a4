//! The client's side of connection start: negotiation requests, the startup packet, and
//! authentication against the configured users.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use pgwire::messages::startup::Authentication;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::ProxyContext;
use super::params::ClientParams;
use crate::auth::{ScramServer, ScramVerifier};
use crate::config::AuthMethod;
use crate::wire::messages::{
    Severity, error, put_authentication, put_negotiate_protocol, take_cstr,
};
use crate::wire::startup::{MAX_STARTUP_LEN, StartupRequest, read_startup};
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
    fn new(code: &'static str, message: impl Into<String>) -> Self {
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

/// Reads the startup packet, answering one SSLRequest or GSSENCRequest with `N` first.
///
/// # Errors
/// [`LoginError`] for malformed packets or a second negotiation request.
pub async fn read_admission(stream: &mut TcpStream) -> Result<Admission, LoginError> {
    let mut request = read_startup(stream).await?;
    if matches!(request, StartupRequest::Ssl | StartupRequest::GssEnc) {
        stream.write_all(b"N").await?;
        request = read_startup(stream).await?;
    }
    match request {
        StartupRequest::Ssl | StartupRequest::GssEnc => Err(LoginError::new(
            sqlstate::PROTOCOL_VIOLATION,
            "encryption negotiation requested twice",
        )),
        StartupRequest::Cancel { pid, secret } => Ok(Admission::Cancel { pid, secret }),
        StartupRequest::Startup {
            minor_version,
            params,
        } => startup(stream, minor_version, params).await,
    }
}

async fn startup(
    stream: &mut TcpStream,
    minor_version: u16,
    params: BTreeMap<String, String>,
) -> Result<Admission, LoginError> {
    let protocol_options: Vec<String> = params
        .keys()
        .filter(|k| k.starts_with("_pq_."))
        .cloned()
        .collect();
    if minor_version > 0 || !protocol_options.is_empty() {
        let mut out = BytesMut::new();
        put_negotiate_protocol(&mut out, protocol_options);
        stream.write_all(&out).await?;
    }
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
    let settings = ClientParams::from_startup(&params)
        .map_err(|m| LoginError::new(sqlstate::PROTOCOL_VIOLATION, m))?;
    Ok(Admission::Startup {
        user,
        database,
        params: settings,
    })
}

/// Authenticates `user` as the configuration says.
///
/// # Errors
/// [`LoginError`] with 28P01 for a failed password, 08P01 for a broken exchange.
pub async fn authenticate(
    ctx: &ProxyContext,
    stream: &mut TcpStream,
    user: &str,
) -> Result<(), LoginError> {
    if ctx.config().auth == AuthMethod::ScramSha256 {
        let verifier = ctx
            .config()
            .users
            .get(user)
            .and_then(|u| u.verifier.clone())
            .unwrap_or_else(ScramVerifier::impossible);
        scram(stream, verifier).await.map_err(|e| match e {
            ScramFailure::Wrong => LoginError::new(
                sqlstate::INVALID_PASSWORD,
                format!("password authentication failed for user \"{user}\""),
            ),
            ScramFailure::Login(e) => e,
        })?;
    }
    let mut out = BytesMut::new();
    put_authentication(&mut out, &Authentication::Ok);
    stream.write_all(&out).await?;
    Ok(())
}

enum ScramFailure {
    Wrong,
    Login(LoginError),
}

impl<E: Into<LoginError>> From<E> for ScramFailure {
    fn from(e: E) -> Self {
        Self::Login(e.into())
    }
}

async fn read_password_message(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
) -> Result<Frame, LoginError> {
    let frame = read_frame(stream, buf, MAX_STARTUP_LEN).await?;
    if frame.tag == b'p' {
        Ok(frame)
    } else {
        Err(LoginError::new(
            sqlstate::PROTOCOL_VIOLATION,
            format!("expected a SASL response, got message type {}", frame.tag),
        ))
    }
}

async fn scram(stream: &mut TcpStream, verifier: ScramVerifier) -> Result<(), ScramFailure> {
    let mut out = BytesMut::new();
    put_authentication(
        &mut out,
        &Authentication::SASL(vec!["SCRAM-SHA-256".to_owned()]),
    );
    stream.write_all(&out).await?;
    let mut buf = BytesMut::new();
    let initial = read_password_message(stream, &mut buf).await?;
    let (mechanism, rest) = take_cstr(&initial.body)?;
    if mechanism != "SCRAM-SHA-256" {
        return Err(LoginError::new(
            sqlstate::INVALID_AUTHORIZATION,
            format!("SASL mechanism {mechanism} is not supported"),
        )
        .into());
    }
    let data = rest
        .get(4..)
        .ok_or(WireError::protocol("short SASLInitialResponse"))?;
    let malformed = |e: crate::auth::ScramError| {
        ScramFailure::Login(LoginError::new(sqlstate::PROTOCOL_VIOLATION, e.to_string()))
    };
    let client_first =
        std::str::from_utf8(data).map_err(|_| WireError::protocol("SCRAM message is not UTF-8"))?;
    let (exchange, server_first) = ScramServer::start(verifier, client_first).map_err(malformed)?;
    out.clear();
    put_authentication(
        &mut out,
        &Authentication::SASLContinue(Bytes::from(server_first)),
    );
    stream.write_all(&out).await?;
    let response = read_password_message(stream, &mut buf).await?;
    let client_final = std::str::from_utf8(&response.body)
        .map_err(|_| WireError::protocol("SCRAM message is not UTF-8"))?;
    let server_final = match exchange.finish(client_final) {
        Ok(v) => v,
        Err(crate::auth::ScramError::WrongPassword) => return Err(ScramFailure::Wrong),
        Err(e) => return Err(malformed(e)),
    };
    out.clear();
    put_authentication(
        &mut out,
        &Authentication::SASLFinal(Bytes::from(server_final)),
    );
    stream.write_all(&out).await?;
    Ok(())
}
