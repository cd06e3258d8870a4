//! One client's session after login: waits for the client's next transaction, lends it a server
//! connection, forwards bytes both ways, and gives the connection back at the first safe point.

mod acquire;
mod between;
mod listen;
mod route;
mod settle;
mod timeouts;

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;

use super::cycles::CycleLog;
use super::params::ClientParams;
use super::passthrough::remaining_of_large_message;
use super::responses::ResponseQueue;
use super::retry::StalePlanRetry;
use super::rewrite::Relay;
use super::sql::Effect;
use super::statements::ClientStatements;
use super::tracker::Tracker;
use crate::backend::{
    AcquireError, BackendError, ChannelHub, Checkout, MAILBOX_SIZE, Mailbox, ServerConn, ServerPool,
};
use crate::config::{Config, PoolMode, SessionTimeouts};
use crate::context::ProxyContext;
use crate::context::{CancelSlot, ClientCount};
use crate::gate::{DatabaseGate, Ticket};
use crate::telemetry::{EncodedAttributes, FinishedQuery, LastStatement, SessionFacts};
use crate::tls::PgStream;
use crate::wire::messages::{Severity, error, parse_parameter_status};
use crate::wire::tag::status;
use crate::wire::{WireError, sqlstate};
pub use timeouts::Timeout;
use timeouts::Waiting;

/// Bytes reserved per socket read.
const READ_CHUNK: usize = 16 * 1024;

/// Why a session ended early; each variant knows what, if anything, the client is told.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The client's socket failed; there is nobody to tell.
    #[error("client i/o: {0}")]
    ClientIo(#[from] std::io::Error),
    /// The client broke the protocol or exceeded a limit.
    #[error("client {0}")]
    ClientProtocol(WireError),
    /// The server connection failed mid-conversation.
    #[error("server connection lost: {0}")]
    ServerLost(String),
    /// No server connection could be had.
    #[error(transparent)]
    Acquire(#[from] AcquireError),
    /// Preparing a server connection for this client failed.
    #[error("server refused the client's settings: {0}")]
    Setup(BackendError),
    /// The sidecar is draining; the session ended at a transaction boundary.
    #[error("pgsidecar is draining")]
    Shutdown,
    /// The session was ended from outside (pause stragglers, drain deadline).
    #[error("terminated: {0}")]
    Terminated(&'static str),
    /// A limit on holding or waiting fired.
    #[error("{}", .0.message())]
    TimedOut(Timeout),
    /// The client did not read its notifications and its mailbox overflowed.
    #[error(
        "the client's notification mailbox overflowed ({} waiting)",
        MAILBOX_SIZE
    )]
    MailboxOverflow,
}

impl SessionError {
    /// The FATAL message the client gets before the proxy closes its connection.
    #[must_use]
    pub fn to_client(&self) -> Option<bytes::Bytes> {
        let (code, message) = match self {
            Self::ClientIo(_) => return None,
            Self::ClientProtocol(WireError::TooLarge { len, limit }) => (
                sqlstate::PROGRAM_LIMIT_EXCEEDED,
                format!("message of {len} bytes exceeds max_message_size ({limit} bytes)"),
            ),
            Self::ClientProtocol(e) => (sqlstate::PROTOCOL_VIOLATION, e.to_string()),
            Self::ServerLost(e) => (
                sqlstate::CONNECTION_FAILURE,
                format!("server connection lost: {e}"),
            ),
            Self::Acquire(AcquireError::Timeout(..)) => {
                (sqlstate::TOO_MANY_CONNECTIONS, format!("pgsidecar: {self}"))
            }
            Self::Acquire(AcquireError::Backend(BackendError::Server(fields)))
            | Self::Setup(BackendError::Server(fields)) => {
                (fields.code.as_str(), fields.message.clone())
            }
            Self::Acquire(AcquireError::Backend(e)) | Self::Setup(e) => (
                e.sqlstate(),
                format!("pgsidecar: cannot use the server: {e}"),
            ),
            Self::Acquire(e) => (sqlstate::CANNOT_CONNECT_NOW, format!("pgsidecar: {e}")),
            Self::Shutdown => (
                sqlstate::ADMIN_SHUTDOWN,
                "terminating connection due to administrator command: pgsidecar is draining"
                    .to_owned(),
            ),
            Self::Terminated(reason) => (
                sqlstate::ADMIN_SHUTDOWN,
                format!("terminating connection due to administrator command: {reason}"),
            ),
            Self::TimedOut(timeout) => (timeout.sqlstate(), timeout.message()),
            Self::MailboxOverflow => (
                sqlstate::PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "pgsidecar: {MAILBOX_SIZE} notifications were waiting for this client and more arrived; it is closed so that none is lost without its knowing (read notifications promptly, then reconnect and LISTEN again)"
                ),
            ),
        };
        Some(error(Severity::Fatal, code, &message))
    }
}

/// How a stretch of forwarding ended.
enum Step {
    /// Transaction mode: the transaction is over and the server connection is free.
    Released,
    /// The client said Terminate or closed its socket.
    ClientEnded,
    /// The sidecar is draining and the client is between transactions.
    Drained,
    /// A timeout fired; the connection is cleaned up like a client that left.
    TimedOut(Timeout),
}

/// How a transaction ended for the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Served {
    /// The server connection went back; the session waits for the next transaction.
    Released,
    /// The client left; its connection was cleaned up.
    ClientEnded,
}

/// The protocol position of one checkout: what the server still owes. It lives only while the
/// session holds a server connection, so an idle session carries none of it.
struct Conversation {
    tracker: Tracker,
    queue: ResponseQueue,
    /// Session-level effects of statements sent, applied once the server is idle again.
    effects: Vec<Effect>,
    /// The batch in flight, kept to hide a stale-plan error.
    retry: StalePlanRetry,
    /// Reported settings that changed although the client never set them (a configuration
    /// reload on the server): checked at rest and learned as the pool's new defaults.
    new_defaults: Vec<String>,
    /// Bytes of a large DataRow or CopyData still to come, forwarded as they arrive.
    streaming: usize,
    /// The query cycles of this checkout, for metrics and spans.
    cycles: CycleLog,
    /// The gate's admission of the client's current transaction, while it has one.
    ticket: Option<Ticket>,
}

impl Conversation {
    fn new(capture_text: bool) -> Self {
        Self {
            tracker: Tracker::default(),
            queue: ResponseQueue::default(),
            effects: Vec::new(),
            retry: StalePlanRetry::default(),
            new_defaults: Vec::new(),
            streaming: 0,
            cycles: CycleLog::new(capture_text),
            ticket: None,
        }
    }

    /// Whether a statement of this conversation sets or resets `name` for the session.
    fn sets(&self, name: &str) -> bool {
        self.effects
            .iter()
            .any(|e| matches!(e, Effect::Set(n) | Effect::Reset(n) if n.eq_ignore_ascii_case(name)))
    }

    /// Nothing is owed and no transaction is open: the connection may go back.
    fn is_idle(&self) -> bool {
        self.tracker.is_idle() && self.queue.is_empty()
    }
}

/// The span attributes every query of a session shares, built once, and the buffers its query
/// texts are copied into; boxed in the session, as only sessions whose queries are traced have
/// them.
struct SpanAttributes {
    /// The `application_name` they were built for.
    application_name: String,
    /// The upstream host and its state epoch they were built for.
    host: (usize, u64),
    attributes: EncodedAttributes,
    /// Query text buffers kept from one transaction to the next.
    text_buffers: Vec<Vec<u8>>,
    /// The last literal-laden statement, which describes the next text with other literals.
    last_statement: LastStatement,
}

/// A logged-in client.
pub struct Session {
    ctx: Arc<ProxyContext>,
    /// The configuration when the session started.
    config: Arc<Config>,
    client: PgStream,
    buf: BytesMut,
    pool: Arc<ServerPool>,
    params: ClientParams,
    statements: ClientStatements,
    /// Why the client keeps its server connection for the rest of its session, if it does.
    pinned: Option<&'static str>,
    cancel: Arc<CancelSlot>,
    /// The gate of the client's database.
    gate: DatabaseGate,
    /// Span attributes shared by this session's queries, once one was traced.
    span_attributes: Option<Box<SpanAttributes>>,
    /// The client logged in through a read alias: every transaction goes to a replica.
    reads_only: bool,
    /// Where its LISTEN subscriptions live and its notifications wait, once it listens.
    notifications: Option<Box<(Arc<ChannelHub>, Mailbox)>>,
    /// The pool's limits on holding and waiting (with its user's own), when the session
    /// started.
    timeouts: Arc<SessionTimeouts>,
    /// In session mode, the connection the login took, until the session runs. Boxed: most
    /// sessions never have one.
    held: Option<Box<Checkout>>,
    /// Keeps the client counted for `max_client_conn` until the session is gone.
    _counted: ClientCount,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.pool.metrics().client_disconnected();
    }
}

impl Session {
    /// A session for an authenticated client, counted in its pool's metrics while it lives.
    pub(super) fn new(
        ctx: Arc<ProxyContext>,
        client: PgStream,
        pool: Arc<ServerPool>,
        mut params: ClientParams,
        cancel: Arc<CancelSlot>,
        reads_only: bool,
        counted: ClientCount,
    ) -> Self {
        pool.metrics().client_connected();
        params.share_startup(|settings| pool.share_settings(settings));
        let config = ctx.config();
        let timeouts = pool.settings().timeouts;
        Self {
            timeouts,
            config,
            gate: ctx.gate.database(&pool.key().database),
            client,
            buf: BytesMut::new(),
            pool,
            params,
            statements: ClientStatements::default(),
            pinned: None,
            span_attributes: None,
            reads_only,
            notifications: None,
            held: None,
            _counted: counted,
            cancel,
            ctx,
        }
    }

    /// Tells the client why its session ends and forgets its cancel key.
    pub(super) async fn fail(&mut self, e: &SessionError) {
        if let Some(message) = e.to_client() {
            let _ = self.client.send(&message).await;
        }
        self.ctx.cancels.remove(self.cancel.pid);
    }

    fn mode(&self) -> PoolMode {
        self.pool.mode()
    }

    /// Waits at the gate until the client's next transaction may start; the admission lasts
    /// as long as the ticket.
    async fn admit(&self) -> Result<Ticket, SessionError> {
        let ticket = self
            .ctx
            .gate
            .admit(&self.gate)
            .await
            .map_err(|_| SessionError::Shutdown)?;
        self.cancel.set_in_transaction(true);
        Ok(ticket)
    }

    /// The client's transaction, if it had one, is over: the gate may pause its database.
    fn end_transaction(&self, ticket: Option<Ticket>) {
        if let Some(admission) = ticket {
            drop(admission);
            self.cancel.set_in_transaction(false);
        }
    }

    fn release(&self, checkout: Checkout) {
        self.cancel.set(None);
        checkout.release();
    }

    /// Serves the client until it leaves; why it ended early, if it did, is logged and the
    /// client told where it can be.
    pub async fn run(mut self: Box<Self>) {
        let result = self.serve_all().await;
        // Boxed: the ending's writes are not part of an idle session's state.
        Box::pin(self.end(result)).await;
    }

    /// Tells the client why its session ended early, if it did, and closes its connection.
    async fn end(&mut self, result: Result<(), SessionError>) {
        self.unlisten_all();
        match &result {
            Err(e) => {
                tracing::info!(peer = %self.cancel.info.peer, error = %e, "session ended with an error");
                self.fail(e).await;
            }
            Ok(()) => self.ctx.cancels.remove(self.cancel.pid),
        }
        self.close().await;
    }

    /// Ends the client's connection in order (close_notify over TLS).
    pub async fn close(&mut self) {
        self.client.close().await;
    }

    async fn serve_all(&mut self) -> Result<(), SessionError> {
        loop {
            let held = self.held.take();
            if held.is_none() {
                if !self.wait_for_request().await? {
                    return Ok(());
                }
                // Boxed with the answers, as below: an idle session carries no write's state.
                if let Some(answering) = self.answer_prepares_locally()?.map(|answers| {
                    let client = &mut self.client;
                    Box::pin(async move { client.send(&answers).await })
                }) {
                    answering.await?;
                    continue;
                }
                if self.subscriptions_pending() {
                    // Boxed, as the transaction below: an idle session carries none of its state.
                    Box::pin(self.answer_subscriptions()).await?;
                    continue;
                }
            }
            // One box per transaction for everything it needs (admission, checkout, relay):
            // an idle session's task then only holds the small waiting state, which keeps
            // thousands of idle clients cheap.
            if Box::pin(self.serve_transaction(held)).await? == Served::ClientEnded {
                return Ok(());
            }
        }
    }

    /// Runs one transaction (in session mode, the whole session) on a server connection:
    /// `held` when login kept one, otherwise one checked out once the gate admits it.
    async fn serve_transaction(
        &mut self,
        held: Option<Box<Checkout>>,
    ) -> Result<Served, SessionError> {
        let mut talk = Conversation::new(self.ctx.telemetry.tracer.is_some());
        if let Some(traced) = self.span_attributes.as_mut() {
            talk.cycles
                .lend_buffers(std::mem::take(&mut traced.text_buffers));
        }
        let mut checkout = if let Some(checkout) = held {
            *checkout
        } else {
            let requested = Instant::now();
            talk.ticket = Some(self.admit().await?);
            let checkout = self.acquire().await?;
            talk.cycles.note_request(requested, requested.elapsed());
            checkout
        };
        match self.forward(checkout.conn(), &mut talk).await {
            Ok(Step::Released) => {
                self.release(checkout);
                if let Some(traced) = self.span_attributes.as_mut() {
                    traced.text_buffers = talk.cycles.take_buffers();
                }
                Ok(Served::Released)
            }
            Ok(Step::ClientEnded) => {
                Box::pin(self.finish(checkout, &talk)).await;
                Ok(Served::ClientEnded)
            }
            Ok(Step::Drained) => {
                Box::pin(self.finish(checkout, &talk)).await;
                Err(SessionError::Shutdown)
            }
            Ok(Step::TimedOut(timeout)) => {
                self.timed_out(timeout);
                self.end_transaction(talk.ticket.take());
                Box::pin(self.finish(checkout, &talk)).await;
                Err(SessionError::TimedOut(timeout))
            }
            Err(e) => {
                self.end_transaction(talk.ticket.take());
                self.cancel.set(None);
                let running = !matches!(e, SessionError::ServerLost(_));
                Box::pin(checkout.discard(running)).await;
                Err(e)
            }
        }
    }

    /// Forwards both ways until the connection can be released or the client leaves.
    async fn forward(
        &mut self,
        server: &mut ServerConn,
        talk: &mut Conversation,
    ) -> Result<Step, SessionError> {
        let transaction_mode = self.mode() == PoolMode::Transaction;
        // One timer for the whole stretch, re-armed only when what the session waits for
        // changes; it is not polled at all when no limit applies.
        let timer = tokio::time::sleep(std::time::Duration::ZERO);
        tokio::pin!(timer);
        let mut waiting: Option<Waiting> = None;
        let mut fires: Option<Timeout> = None;
        let cancel = Arc::clone(&self.cancel);
        let mut aborted = std::future::poll_fn(|cx| cancel.poll_aborted(cx));
        loop {
            if talk.ticket.is_none() && self.has_request() {
                talk.ticket = Some(self.admit().await?);
            }
            if self.forward_client_messages(server, talk).await? {
                return Ok(Step::ClientEnded);
            }
            if let Some(step) = self.at_rest(server, talk, transaction_mode).await? {
                return Ok(step);
            }
            let now_waiting = Waiting::of(talk);
            if waiting != Some(now_waiting) && *self.timeouts != SessionTimeouts::default() {
                waiting = Some(now_waiting);
                fires = self.arm(&mut timer, now_waiting);
            }
            self.buf.reserve(READ_CHUNK);
            tokio::select! {
                () = &mut timer, if fires.is_some() => {
                    return Ok(Step::TimedOut(fires.expect("the branch runs only when armed")));
                }
                read = self.client.read_buf(&mut self.buf) => {
                    if read.unwrap_or(0) == 0 {
                        return Ok(Step::ClientEnded);
                    }
                }
                reason = &mut aborted => return Err(SessionError::Terminated(reason)),
                read = server.read_more(READ_CHUNK) => {
                    match read {
                        Ok(0) => return Err(SessionError::ServerLost("server closed the connection".into())),
                        Err(e) => return Err(SessionError::ServerLost(e.to_string())),
                        Ok(_) => {}
                    }
                    if !self.forward_server_messages(server, talk).await? {
                        return Ok(Step::ClientEnded);
                    }
                    if let Some(step) = self.at_rest(server, talk, transaction_mode).await? {
                        return Ok(step);
                    }
                }
            }
        }
    }

    fn relay<'a>(
        &'a mut self,
        server: &'a mut ServerConn,
        talk: &'a mut Conversation,
    ) -> Relay<'a> {
        Relay {
            statements: &mut self.statements,
            prepared: &mut server.prepared,
            known: self.pool.known_statements(),
            queue: &mut talk.queue,
            retry: &mut talk.retry,
            tracker: &mut talk.tracker,
            rename: self.pool.mode() == PoolMode::Transaction,
            pinned: self.pinned.is_some(),
            effects: &mut talk.effects,
            cycles: &mut talk.cycles,
            metrics: self.pool.metrics(),
        }
    }

    /// Reports the query cycles that have finished: metrics always, a span if sampled.
    fn report_cycles(&mut self, cycles: &mut CycleLog) {
        while let Some(cycle) = cycles.next_done() {
            if cycle.runs_sql {
                let metrics = self.pool.metrics();
                let server = cycle.server_time();
                metrics.query(server, cycle.sqlstate());
                if cycle.status == status::IDLE {
                    metrics.transaction();
                }
                if let Some(tracer) = &self.ctx.telemetry.tracer {
                    let app = self
                        .params
                        .wanted()
                        .get("application_name")
                        .map_or("", String::as_str);
                    // The host and its state epoch: the role is looked up again only when one
                    // of them changed.
                    let host = (self.pool.host(), self.pool.host_epoch());
                    if self
                        .span_attributes
                        .as_ref()
                        .is_none_or(|cached| cached.application_name != app || cached.host != host)
                    {
                        let key = self.pool.key();
                        let attributes = tracer.session_attributes(&SessionFacts {
                            database: &key.database,
                            user: &key.user,
                            application_name: app,
                            schema_version: self.ctx.config().schema_version,
                            server: self.pool.address(),
                            role: self.pool.host_state().name(),
                        });
                        self.span_attributes = Some(Box::new(SpanAttributes {
                            application_name: app.to_owned(),
                            host,
                            attributes,
                            // Lent to the transaction under way, given back at its end.
                            text_buffers: Vec::new(),
                            last_statement: LastStatement::default(),
                        }));
                    }
                    if let Some(cached) = self.span_attributes.as_deref_mut() {
                        tracer.record(
                            &FinishedQuery {
                                sql: cycle.sql(),
                                session: &cached.attributes,
                                started: cycle.started,
                                wait: cycle.wait,
                                server,
                                sqlstate: cycle.sqlstate(),
                                rows: cycle.rows,
                            },
                            &mut cached.last_statement,
                        );
                    }
                }
            }
            cycles.recycle(cycle);
        }
    }

    /// Sends every complete client message to the server in one write, and the proxy's own
    /// answers to the client. Returns true when the client said Terminate.
    async fn forward_client_messages(
        &mut self,
        server: &mut ServerConn,
        talk: &mut Conversation,
    ) -> Result<bool, SessionError> {
        let limit = self.config.max_message_size;
        if talk.is_idle() && self.mode() == PoolMode::Transaction {
            talk.retry.arm(&self.buf, limit);
        } else {
            talk.retry.collect(&self.buf, limit);
        }
        let mut buf = std::mem::take(&mut self.buf);
        let taken = self
            .relay(server, talk)
            .take_client_messages(&mut buf, limit);
        self.buf = buf;
        let chunk = taken.map_err(SessionError::ClientProtocol)?;
        if !chunk.to_server.is_empty() {
            server
                .send(&chunk.to_server)
                .await
                .map_err(|e| SessionError::ServerLost(e.to_string()))?;
            self.pool.metrics().received(chunk.to_server.len());
        }
        let due = self.relay(server, talk).due_responses();
        if !due.is_empty() {
            self.client.send(&due).await?;
        }
        Ok(chunk.terminate)
    }

    /// Sends every complete server message to the client in one write, noting state changes.
    /// Returns false when the client can no longer be written to.
    async fn forward_server_messages(
        &mut self,
        server: &mut ServerConn,
        talk: &mut Conversation,
    ) -> Result<bool, SessionError> {
        if talk.streaming > 0 {
            let part = server.take_unread(talk.streaming);
            talk.streaming -= part.len();
            if !self.pass_on(&part).await {
                return Ok(false);
            }
            if !server.has_unread() {
                return Ok(true);
            }
        }
        let mut buf = server.take_buffer();
        let mut reported = Vec::new();
        let taken = self
            .relay(server, talk)
            .take_server_messages(&mut buf, |body| {
                reported.extend(parse_parameter_status(body));
            });
        server.restore_buffer(buf);
        for (name, value) in reported {
            if !self.params.wanted().contains_key(&name) && !talk.sets(&name) {
                talk.new_defaults.push(name.clone());
            }
            server.params.observe(&name, &value);
            self.params.observe(&name, &value);
        }
        let mut chunk = taken.map_err(|e| SessionError::ServerLost(e.to_string()))?;
        // A large DataRow or CopyData still arriving goes out as it comes (not while a
        // stale-plan replay hides the server's output).
        if !talk.retry.is_hiding()
            && let Some(left) = remaining_of_large_message(server.unread())
        {
            chunk.unsplit(server.take_unread(usize::MAX));
            talk.streaming = left;
        }
        if !self.pass_on(&chunk).await {
            return Ok(false);
        }
        self.report_cycles(&mut talk.cycles);
        if let Some(batch) = talk.retry.take_replay() {
            tracing::debug!(pool = %self.pool.key(), "stale plan: replaying the batch once");
            let again = self
                .relay(server, talk)
                .replay(batch)
                .map_err(SessionError::ClientProtocol)?;
            server
                .send(&again)
                .await
                .map_err(|e| SessionError::ServerLost(e.to_string()))?;
        }
        Ok(true)
    }

    /// Sends server bytes to the client; false when the client can no longer be written to.
    async fn pass_on(&mut self, bytes: &[u8]) -> bool {
        if bytes.is_empty() {
            return true;
        }
        if self.client.send(bytes).await.is_err() {
            return false;
        }
        self.pool.metrics().sent(bytes.len());
        true
    }

    /// Sets `timer` to the next limit for a session now `waiting`; the limit, if any.
    fn arm(
        &self,
        timer: &mut std::pin::Pin<&mut tokio::time::Sleep>,
        waiting: Waiting,
    ) -> Option<Timeout> {
        let now = tokio::time::Instant::now();
        let transaction_started = self
            .timeouts
            .transaction
            .and_then(|_| self.cancel.transaction_age())
            .and_then(|age| now.checked_sub(age));
        let (at, timeout) = timeouts::deadline(&self.timeouts, waiting, now, transaction_started)?;
        timer.as_mut().reset(at);
        Some(timeout)
    }

    /// Logs and counts a timeout that fired.
    fn timed_out(&self, timeout: Timeout) {
        tracing::info!(pool = %self.pool.key(), timeout = timeout.key(), "closing a client: {}", timeout.message());
        self.ctx.telemetry.metrics.client_timed_out(timeout.key());
    }

    fn idle_timed_out(&self, limit: std::time::Duration) -> SessionError {
        let timeout = Timeout::ClientIdle(limit);
        self.timed_out(timeout);
        SessionError::TimedOut(timeout)
    }

    /// The client has left: return its server connection clean, or close it.
    async fn finish(&mut self, mut checkout: Checkout, talk: &Conversation) {
        self.cancel.set(None);
        let server = checkout.conn();
        if !talk.tracker.is_synced() || !talk.queue.is_empty() || server.has_unread() {
            checkout.discard(true).await;
            return;
        }
        let mut cleanup = Vec::with_capacity(2);
        if !talk.tracker.is_idle() {
            cleanup.push("ROLLBACK");
        }
        // A pinned client leaves session state behind (locks, LISTEN, temp tables, SQL
        // prepared statements): the connection is reset as in session mode.
        let reset_session = self.mode() == PoolMode::Session || self.pinned.is_some();
        if reset_session {
            // Not in the same Query as ROLLBACK: DISCARD ALL refuses to run inside a
            // multi-statement string.
            cleanup.push("DISCARD ALL");
        }
        for sql in cleanup {
            if let Err(e) = server.run_quietly(sql).await {
                tracing::debug!(error = %e, "server reset failed; closing the connection");
                checkout.discard(false).await;
                return;
            }
        }
        if reset_session {
            server.params.reset();
            server.prepared.clear();
        }
        checkout.release();
    }
}
