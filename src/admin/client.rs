//! A minimal HTTP/1.1 client for one sidecar's admin endpoints, for the `pgsidecar gate`
//! command: one request per connection, JSON in and out.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why an admin request failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    /// The sidecar could not be reached.
    #[error("cannot reach the admin endpoint {addr}: {source}")]
    Io {
        /// The address.
        addr: SocketAddr,
        /// The socket error.
        source: std::io::Error,
    },
    /// The answer was not HTTP.
    #[error("the admin endpoint {0} answered something that is not HTTP")]
    NotHttp(SocketAddr),
}

/// Sends `method path` with a JSON `body` (and the admin `token`, which the endpoints that
/// change traffic require) and returns the status code and response body.
///
/// # Errors
/// [`AdminClientError`].
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> Result<(u16, String), AdminClientError> {
    let io = |source| AdminClientError::Io { addr, source };
    let mut stream = TcpStream::connect(addr).await.map_err(io)?;
    let authorization = token.map_or_else(String::new, |t| {
        format!("Authorization: Bearer {}\r\n", t.trim())
    });
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         {authorization}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.map_err(io)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or(AdminClientError::NotHttp(addr))?;
    let status = head
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .ok_or(AdminClientError::NotHttp(addr))?;
    Ok((status, body.to_owned()))
}
