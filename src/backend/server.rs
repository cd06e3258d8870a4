//! One logged-in server connection: a raw protocol stream the proxy forwards bytes over.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::tls::{PgStream, Probe};

use super::{BackendError, LoginTarget, PreparedSet, ServerParams};
use crate::wire::frame::Frame;
use crate::wire::messages::{ErrorFields, parse_parameter_status};
use crate::wire::tag::{client, server};
use crate::wire::{WireError, read_frame};

/// Largest message the proxy reads from a server when it converses itself (login, reset).
const CONTROL_FRAME_LIMIT: usize = 64 << 20;

/// The columns of a DataRow body as text.
fn parse_data_row(body: &[u8]) -> Result<Vec<Option<String>>, WireError> {
    let short = || WireError::protocol("truncated DataRow");
    let count = u16::from_be_bytes(
        body.get(..2)
            .ok_or_else(short)?
            .try_into()
            .map_err(|_| short())?,
    );
    let mut rest = &body[2..];
    let mut values = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let len = i32::from_be_bytes(
            rest.get(..4)
                .ok_or_else(short)?
                .try_into()
                .map_err(|_| short())?,
        );
        rest = &rest[4..];
        if len < 0 {
            values.push(None);
            continue;
        }
        let len = usize::try_from(len).map_err(|_| short())?;
        let value = rest.get(..len).ok_or_else(short)?;
        values.push(Some(String::from_utf8_lossy(value).into_owned()));
        rest = &rest[len..];
    }
    Ok(values)
}

/// Where to send a CancelRequest for whatever this server connection is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancelTarget {
    /// The server's address.
    pub addr: SocketAddr,
    /// The server backend's process id.
    pub pid: i32,
    /// The server backend's cancel secret.
    pub secret: i32,
}

impl CancelTarget {
    /// Sends a CancelRequest to the server. Failures only mean the query goes on; they are
    /// returned for logging.
    ///
    /// # Errors
    /// The socket's error.
    pub async fn send(self) -> std::io::Result<()> {
        let mut packet = BytesMut::with_capacity(16);
        packet.put_u32(16);
        packet.put_u32(80_877_102);
        packet.put_i32(self.pid);
        packet.put_i32(self.secret);
        let mut stream = TcpStream::connect(self.addr).await?;
        stream.write_all(&packet).await?;
        stream.shutdown().await
    }
}

/// A server connection owned by a pool. It owns its socket and read buffer: a session sends
/// through [`ServerConn::send`], reads through [`ServerConn::read_more`] and takes what was read
/// with [`ServerConn::take_unread`] or [`ServerConn::take_buffer`], so that nothing else holds
/// the socket and every byte read is accounted for here.
#[derive(Debug)]
pub struct ServerConn {
    /// The socket, TLS-wrapped when negotiated.
    stream: PgStream,
    /// Bytes read from the server and not yet forwarded.
    buf: BytesMut,
    /// Session settings in effect.
    pub params: ServerParams,
    /// Statements pgsidecar has prepared on this connection for transaction-mode clients.
    pub prepared: PreparedSet,
    cancel: CancelTarget,
    /// Permits of the connection caps it counts against, released when it closes.
    pub(super) permits: Vec<tokio::sync::OwnedSemaphorePermit>,
    /// The state epoch of its host when it was opened (see `Topology::epoch`).
    pub(super) epoch: u64,
}

impl ServerConn {
    /// Opens a connection and logs in, within `timeout`. Traced as a span of its own (exported
    /// with the query spans when tracing is on), so connection churn shows up next to the queries
    /// that waited for it.
    ///
    /// # Errors
    /// [`BackendError`] for an unreachable server, a refused login or a timeout.
    #[tracing::instrument(
        name = "pgsidecar.server.connect",
        skip_all,
        fields(server.address = %target.address, db.namespace = %target.database, db.user = %target.user),
    )]
    pub async fn connect(
        target: &LoginTarget,
        timeout: Duration,
        max_prepared: usize,
    ) -> Result<Self, BackendError> {
        tokio::time::timeout(timeout, Self::connect_inner(target, max_prepared))
            .await
            .map_err(|_| BackendError::Timeout(timeout))?
    }

    async fn connect_inner(
        target: &LoginTarget,
        max_prepared: usize,
    ) -> Result<Self, BackendError> {
        let tcp = TcpStream::connect(&target.address).await?;
        tcp.set_nodelay(true)?;
        let addr = tcp.peer_addr()?;
        let (mut stream, channel_binding) = target
            .tls
            .connect(tcp, &target.host)
            .await
            .map_err(|e| BackendError::Tls(e.to_string()))?;
        let mut buf = BytesMut::with_capacity(4096);
        target
            .authenticate(&mut stream, &mut buf, channel_binding)
            .await?;
        let mut params = ServerParams::default();
        let mut key = None;
        loop {
            let frame = read_frame(&mut stream, &mut buf, CONTROL_FRAME_LIMIT).await?;
            match frame.tag {
                server::PARAMETER_STATUS => {
                    let (name, value) = parse_parameter_status(&frame.body)?;
                    params.reported.insert(name, value);
                }
                server::BACKEND_KEY_DATA if frame.body.len() >= 8 => {
                    let b = &frame.body;
                    key = Some((
                        i32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                        i32::from_be_bytes([b[4], b[5], b[6], b[7]]),
                    ));
                }
                server::ERROR_RESPONSE => {
                    return Err(BackendError::Server(ErrorFields::parse(&frame.body)));
                }
                server::READY_FOR_QUERY => break,
                _ => {}
            }
        }
        params.finish_login();
        let (pid, secret) =
            key.ok_or_else(|| BackendError::Auth("server sent no BackendKeyData".into()))?;
        Ok(Self {
            stream,
            buf,
            params,
            prepared: PreparedSet::new(max_prepared),
            cancel: CancelTarget { addr, pid, secret },
            permits: Vec::new(),
            epoch: 0,
        })
    }

    /// Sends bytes to the server, all of them, with one write where the socket allows.
    ///
    /// # Errors
    /// The socket's error.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.send(bytes).await
    }

    /// Waits for the server to send more and appends it to the unread bytes, with room for at
    /// least `chunk` bytes; returns how many arrived (0: the server closed). Cancel-safe, so it
    /// can wait beside the client's socket.
    ///
    /// # Errors
    /// The socket's error.
    pub async fn read_more(&mut self, chunk: usize) -> std::io::Result<usize> {
        self.buf.reserve(chunk);
        self.stream.read_buf(&mut self.buf).await
    }

    /// Whether bytes read from the server wait to be forwarded.
    #[must_use]
    pub fn has_unread(&self) -> bool {
        !self.buf.is_empty()
    }

    /// The bytes read and not yet forwarded.
    #[must_use]
    pub fn unread(&self) -> &[u8] {
        &self.buf
    }

    /// Takes up to `at_most` of the unread bytes, in order, to forward them as they are.
    pub fn take_unread(&mut self, at_most: usize) -> BytesMut {
        let len = self.buf.len().min(at_most);
        self.buf.split_to(len)
    }

    /// Takes the whole read buffer, for the relay to split whole messages off it; what it
    /// leaves goes back with [`ServerConn::restore_buffer`].
    pub fn take_buffer(&mut self) -> BytesMut {
        std::mem::take(&mut self.buf)
    }

    /// Puts back what the relay left of [`ServerConn::take_buffer`]'s bytes (a partial
    /// message), ahead of anything read later.
    pub fn restore_buffer(&mut self, rest: BytesMut) {
        debug_assert!(
            self.buf.is_empty(),
            "the buffer was taken before reading on"
        );
        self.buf = rest;
    }

    /// The key to cancel this connection's running query.
    #[must_use]
    pub fn cancel_target(&self) -> CancelTarget {
        self.cancel
    }

    /// The server backend's process id, as `pg_stat_activity.pid` shows it.
    #[must_use]
    pub fn backend_pid(&self) -> i32 {
        self.cancel.pid
    }

    /// Closes the connection in order: Terminate, then (over TLS) close_notify, bounded in time.
    pub async fn close(&mut self) {
        let mut terminate = BytesMut::with_capacity(5);
        crate::wire::messages::put_terminate(&mut terminate);
        let sent =
            tokio::time::timeout(crate::tls::CLOSE_TIMEOUT, self.stream.send(&terminate)).await;
        if matches!(sent, Ok(Ok(()))) {
            self.stream.close().await;
        }
    }

    /// True when the connection is idle and intact: nothing unread is buffered and the socket is
    /// neither closed nor carrying unexpected bytes (such as a termination notice).
    #[must_use]
    pub fn is_idle_and_open(&mut self) -> bool {
        self.buf.is_empty() && self.stream.probe(&mut self.buf) == Probe::Quiet
    }

    /// Runs a simple query and returns its first row as text (NULL as `None`), for the proxy's
    /// own bookkeeping queries.
    ///
    /// # Errors
    /// As [`ServerConn::run_quietly`].
    ///
    /// # Panics
    /// If `sql` is longer than 4 GiB.
    pub async fn fetch_row(&mut self, sql: &str) -> Result<Vec<Option<String>>, BackendError> {
        self.send_query(sql).await?;
        self.read_first_row().await
    }

    /// Runs `sql` with text parameters (`$1`, ...) through the extended protocol, so that
    /// values never need quoting, and returns its first row as [`ServerConn::fetch_row`] does.
    ///
    /// # Errors
    /// As [`ServerConn::run_quietly`].
    ///
    /// # Panics
    /// If `sql` or a parameter is longer than 1 GiB.
    pub async fn fetch_row_with(
        &mut self,
        sql: &str,
        params: &[&str],
    ) -> Result<Vec<Option<String>>, BackendError> {
        use crate::wire::extended::put_message as message;
        let mut body = BytesMut::new();
        body.put_u8(0);
        body.put_slice(sql.as_bytes());
        body.put_u8(0);
        body.put_u16(0);
        let mut out = BytesMut::new();
        message(&mut out, client::PARSE, &body);
        body.clear();
        // Unnamed portal, unnamed statement, all parameters as text.
        body.put_u8(0);
        body.put_u8(0);
        body.put_u16(0);
        body.put_u16(u16::try_from(params.len()).expect("few parameters"));
        for value in params {
            body.put_i32(i32::try_from(value.len()).expect("parameter below 1 GiB"));
            body.put_slice(value.as_bytes());
        }
        body.put_u16(0);
        message(&mut out, client::BIND, &body);
        message(&mut out, client::EXECUTE, &[0, 0, 0, 0, 1]);
        message(&mut out, client::SYNC, &[]);
        self.stream.send(&out).await?;
        self.read_first_row().await
    }

    /// Reads a statement's results up to ReadyForQuery, keeping the first row.
    async fn read_first_row(&mut self) -> Result<Vec<Option<String>>, BackendError> {
        let mut row = None;
        let mut failure = None;
        loop {
            let frame = read_frame(&mut self.stream, &mut self.buf, CONTROL_FRAME_LIMIT).await?;
            match frame.tag {
                server::DATA_ROW if row.is_none() => row = Some(parse_data_row(&frame.body)?),
                server::PARAMETER_STATUS => {
                    let (name, value) = parse_parameter_status(&frame.body)?;
                    self.params.observe(&name, &value);
                }
                server::ERROR_RESPONSE => failure = Some(ErrorFields::parse(&frame.body)),
                server::READY_FOR_QUERY => break,
                _ => {}
            }
        }
        match failure {
            Some(e) => Err(BackendError::Server(e)),
            None => Ok(row.unwrap_or_default()),
        }
    }

    /// Reads the next whole message (for a connection that only listens, the notifications
    /// and the answers to its own LISTEN and UNLISTEN). Cancel-safe: a partial message stays in
    /// the buffer for the next call.
    pub(super) async fn next_message(&mut self) -> Result<Frame, BackendError> {
        Ok(read_frame(&mut self.stream, &mut self.buf, CONTROL_FRAME_LIMIT).await?)
    }

    /// Sends `sql` as a simple Query without reading the answer.
    pub(super) async fn send_query(&mut self, sql: &str) -> Result<(), BackendError> {
        let mut out = BytesMut::with_capacity(sql.len() + 6);
        out.put_u8(client::QUERY);
        out.put_u32(u32::try_from(sql.len() + 5).expect("proxy-built SQL is small"));
        out.put_slice(sql.as_bytes());
        out.put_u8(0);
        self.stream.send(&out).await?;
        Ok(())
    }

    /// Runs `sql` as a simple query whose results nobody sees, reading up to ReadyForQuery.
    /// ParameterStatus changes are recorded. Used to apply settings and to reset a connection.
    ///
    /// # Errors
    /// The first ErrorResponse, an unexpected COPY, or a socket failure.
    ///
    /// # Panics
    /// If `sql` is longer than 4 GiB.
    pub async fn run_quietly(&mut self, sql: &str) -> Result<(), BackendError> {
        self.send_query(sql).await?;
        let mut failure = None;
        loop {
            let frame = read_frame(&mut self.stream, &mut self.buf, CONTROL_FRAME_LIMIT).await?;
            match frame.tag {
                server::PARAMETER_STATUS => {
                    let (name, value) = parse_parameter_status(&frame.body)?;
                    self.params.observe(&name, &value);
                }
                server::ERROR_RESPONSE => failure = Some(ErrorFields::parse(&frame.body)),
                server::COPY_IN_RESPONSE
                | server::COPY_OUT_RESPONSE
                | server::COPY_BOTH_RESPONSE => {
                    return Err(WireError::protocol("unexpected COPY in a proxy statement").into());
                }
                server::READY_FOR_QUERY => break,
                _ => {}
            }
        }
        failure.map_or(Ok(()), |e| Err(BackendError::Server(e)))
    }
}
