//! Errors of the framing layer.

use thiserror::Error;

/// Why a peer's bytes could not be framed or decoded.
#[derive(Debug, Error)]
pub enum WireError {
    /// The socket failed or closed mid-message.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection cleanly between messages.
    #[error("connection closed by peer")]
    Closed,
    /// A message declared a length above the configured limit.
    #[error("message of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Declared length, including the length word.
        len: usize,
        /// Configured maximum.
        limit: usize,
    },
    /// The bytes do not follow the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

impl WireError {
    /// Builds a protocol-violation error from anything printable.
    pub fn protocol(message: impl Into<String>) -> Self {
        Self::Protocol(message.into())
    }
}
