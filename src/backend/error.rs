//! Errors toward the server.

use thiserror::Error;

use crate::wire::WireError;
use crate::wire::messages::ErrorFields;

/// Why talking to the server failed.
#[derive(Debug, Error)]
pub enum BackendError {
    /// TCP connect or socket failure.
    #[error("server i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Connecting and logging in took longer than the configured limit.
    #[error("server did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The server answered with an ErrorResponse.
    #[error("server error {0}")]
    Server(ErrorFields),
    /// TLS toward the server could not be set up as configured.
    #[error("server TLS: {0}")]
    Tls(String),
    /// The server asked for an authentication the proxy cannot give.
    #[error("server authentication: {0}")]
    Auth(String),
    /// The server's bytes made no sense.
    #[error("server protocol: {0}")]
    Wire(#[from] WireError),
    /// `max_db_connections` or `max_user_connections` stayed full.
    #[error("{0}")]
    Capped(String),
}

impl BackendError {
    /// The SQLSTATE a client should see for this failure.
    #[must_use]
    pub fn sqlstate(&self) -> &str {
        match self {
            Self::Server(fields) => &fields.code,
            Self::Auth(_) => crate::wire::sqlstate::INVALID_AUTHORIZATION,
            Self::Capped(_) => crate::wire::sqlstate::TOO_MANY_CONNECTIONS,
            _ => crate::wire::sqlstate::CONNECTION_EXCEPTION,
        }
    }

    /// Whether the host itself is unavailable (refused, unreachable, shutting down or starting
    /// up, too slow to answer), as opposed to a login or setting it refused: routing then tries
    /// another host instead of failing the client.
    #[must_use]
    pub fn is_unreachable(&self) -> bool {
        match self {
            Self::Io(_) | Self::Timeout(_) | Self::Wire(WireError::Io(_) | WireError::Closed) => {
                true
            }
            // cannot_connect_now (starting up, shutting down, in recovery without hot standby)
            // and admin_shutdown.
            Self::Server(fields) => matches!(fields.code.as_str(), "57P03" | "57P01"),
            _ => false,
        }
    }
}
