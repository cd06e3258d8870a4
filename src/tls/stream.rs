//! One connection, plain or encrypted, behind a single type so that the session and the server
//! connection code do not care which.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsStream;

/// The longest an orderly close may take before the socket is simply dropped.
pub const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// A PostgreSQL connection: TCP, or TLS over TCP once negotiated.
#[derive(Debug)]
pub enum PgStream {
    /// Unencrypted.
    Plain(TcpStream),
    /// Encrypted, as client or as server.
    Tls(Box<TlsStream<TcpStream>>),
}

/// What a non-blocking look at an idle connection found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Nothing to read and the peer has not closed.
    Quiet,
    /// The peer closed or the socket failed.
    Closed,
    /// Bytes arrived (appended to the caller's buffer).
    Data,
}

impl PgStream {
    /// The TCP socket underneath.
    #[must_use]
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(tcp) => tcp,
            Self::Tls(tls) => tls.get_ref().0,
        }
    }

    /// The negotiated protocol version and cipher suite (`TLSv1_3/TLS13_AES_256_GCM_SHA384`),
    /// for the admin console; `None` in plaintext.
    #[must_use]
    pub fn tls_description(&self) -> Option<String> {
        let Self::Tls(tls) = self else { return None };
        let state = tls.get_ref().1;
        let version = state.protocol_version()?;
        let suite = state.negotiated_cipher_suite()?;
        Some(format!("{version:?}/{:?}", suite.suite()))
    }

    /// Whether the connection is encrypted.
    #[must_use]
    pub fn is_tls(&self) -> bool {
        matches!(self, Self::Tls(_))
    }

    /// Writes all of `bytes` and pushes them onto the wire. TLS buffers records when the socket
    /// is full, so a write without a flush could leave a message sitting in memory while the proxy
    /// waits for its answer.
    ///
    /// # Errors
    /// The socket's error.
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_all(bytes).await?;
        if self.is_tls() {
            self.flush().await?;
        }
        Ok(())
    }

    /// Ends the connection in order: over TLS a close_notify alert is sent and flushed before the
    /// socket's write side closes, so that the peer sees a clean end instead of a truncated
    /// stream (libpq 17+ reports the latter as an error, even after a successful cancel). Bounded
    /// by [`CLOSE_TIMEOUT`] so that a peer that stopped reading cannot hold the task.
    pub async fn close(&mut self) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.shutdown()).await;
    }

    /// Sends a last message and closes the connection so that the peer can read it: the write
    /// side is shut down, then whatever the peer had already sent is read and dropped (for up to
    /// `linger`), because closing a socket with unread input resets the connection and the
    /// peer would lose the message.
    pub async fn send_and_close(mut self, last: &[u8], linger: std::time::Duration) {
        if self.send(last).await.is_err() {
            return;
        }
        if !matches!(
            tokio::time::timeout(CLOSE_TIMEOUT, self.shutdown()).await,
            Ok(Ok(()))
        ) {
            return;
        }
        let mut sink = [0_u8; 4096];
        let drain = async { while matches!(self.read(&mut sink).await, Ok(n) if n > 0) {} };
        let _ = tokio::time::timeout(linger, drain).await;
    }

    /// Reads whatever is available right now without waiting, so that a pooled connection can be
    /// vetted before reuse. For TLS this decrypts records already received (a close_notify
    /// shows up as [`Probe::Closed`]).
    pub fn probe(&mut self, buf: &mut BytesMut) -> Probe {
        let mut chunk = [0_u8; 512];
        let mut read = ReadBuf::new(&mut chunk);
        let mut cx = Context::from_waker(Waker::noop());
        match Pin::new(self).poll_read(&mut cx, &mut read) {
            Poll::Pending => Probe::Quiet,
            Poll::Ready(Ok(())) if read.filled().is_empty() => Probe::Closed,
            Poll::Ready(Ok(())) => {
                buf.extend_from_slice(read.filled());
                Probe::Data
            }
            Poll::Ready(Err(_)) => Probe::Closed,
        }
    }
}

/// Whether the peer has sent bytes that have not been read yet, without waiting or consuming
/// them. Used right after an SSLRequest (or the server's `S`): a legitimate peer waits for the
/// answer, so anything already there was injected in plaintext and must not be trusted.
#[must_use]
pub fn has_unread_bytes(tcp: &TcpStream) -> bool {
    let mut byte = [0_u8; 1];
    let mut read = ReadBuf::new(&mut byte);
    let mut cx = Context::from_waker(Waker::noop());
    matches!(tcp.poll_peek(&mut cx, &mut read), Poll::Ready(Ok(n)) if n > 0)
}

impl AsyncRead for PgStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PgStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(tcp) => tcp.is_write_vectored(),
            Self::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}
