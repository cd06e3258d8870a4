//! The session between transactions: waiting for the client's next request while holding no
//! server connection (and almost no memory), and answering a batch of Parse messages for
//! statements the pool already knows without taking one.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt as _;
use tokio::io::AsyncReadExt;

use super::{READ_CHUNK, Session, SessionError};
use crate::config::PoolMode;
use crate::frontend::sql::may_have_effects;
use crate::frontend::statements::StatementDef;
use crate::tls::PgStream;
use crate::wire::extended::{ParseMessage, TargetMessage, put_empty};
use crate::wire::frame::HEADER_LEN;
use crate::wire::messages::put_ready_for_query;
use crate::wire::tag::{client, server, status, target_kind};
use crate::wire::{FrameHeader, WireError};

/// What ended a wait between transactions.
enum Woke {
    /// The client's plain socket became readable.
    Readable,
    /// The client's (TLS) stream gave this many bytes.
    Read(usize),
    /// A notification arrived for the client.
    Notified(Bytes),
    /// The session was aborted (the reason), or nudged to look at the gate again (`None`).
    Interrupted(Option<&'static str>),
    /// The client stayed idle for its whole `client_idle_timeout`.
    IdleExpired,
}

/// The idle limit of one wait, armed only when configured.
type IdleLimit = Option<Pin<Box<tokio::time::Sleep>>>;

impl Session {
    /// Waits, holding no server connection, until the client has sent a whole message. Returns
    /// false when the client said Terminate or closed.
    pub(super) async fn wait_for_request(&mut self) -> Result<bool, SessionError> {
        // Boxed, and only when configured: an idle session without the limit carries no timer.
        let mut idle_limit: IdleLimit = self
            .timeouts
            .client_idle
            .map(|limit| Box::pin(tokio::time::sleep(limit)));
        loop {
            match FrameHeader::peek(&self.buf, self.config.max_message_size) {
                Ok(Some(header)) if header.tag == client::TERMINATE => return Ok(false),
                Ok(Some(_)) => return Ok(true),
                Ok(None) => {}
                Err(e) => return Err(SessionError::ClientProtocol(e)),
            }
            if self.ctx.gate.is_draining() {
                return Err(SessionError::Shutdown);
            }
            // A plain client with nothing buffered waits for readiness alone and holds no
            // buffer: thousands of idle connections stay cheap. TLS may hold decrypted bytes the
            // socket no longer shows as readable, so there the read itself is what waits.
            let readiness_only = matches!(self.client, PgStream::Plain(_)) && self.buf.is_empty();
            if readiness_only {
                self.buf = BytesMut::new();
            } else {
                self.buf.reserve(READ_CHUNK);
            }
            // In a block, so that nothing of the wake-up but a delivery is kept across the
            // delivery's await.
            let delivery = 'woke: {
                let woke = std::future::poll_fn(|cx| self.poll_wake(cx, &mut idle_limit)).await?;
                let read = match woke {
                    Woke::Readable => {
                        self.buf.reserve(READ_CHUNK);
                        // Readiness can be left over from the login's reads: a read that would
                        // block clears it and the wait starts again, with its timers. The read
                        // goes through the stream's own poll, which also clears readiness when it
                        // drained the socket, so that the transaction's first wait for the client
                        // costs no read.
                        match self.client.read_buf(&mut self.buf).now_or_never() {
                            Some(read) => read?,
                            None => break 'woke None,
                        }
                    }
                    Woke::Read(read) => read,
                    // Boxed: only a listening client pays for the delivery's state.
                    Woke::Notified(note) => {
                        break 'woke Some(Box::pin(self.deliver_notifications(note)));
                    }
                    Woke::Interrupted(Some(reason)) => {
                        return Err(SessionError::Terminated(reason));
                    }
                    // A nudge when draining starts: checked at the loop's top.
                    Woke::Interrupted(None) => break 'woke None,
                    Woke::IdleExpired => {
                        let limit = self.timeouts.client_idle.unwrap_or_default();
                        return Err(self.idle_timed_out(limit));
                    }
                };
                if read == 0 {
                    if self.buf.is_empty() {
                        return Ok(false);
                    }
                    return Err(SessionError::ClientProtocol(WireError::protocol(
                        "the client closed its connection in the middle of a message",
                    )));
                }
                None
            };
            if let Some(delivery) = delivery {
                delivery.await?;
            }
        }
    }

    /// One poll of everything an idle session waits for. It registers wakers only, with no
    /// future of its own, so the session's task stays small while it waits.
    fn poll_wake(
        &mut self,
        cx: &mut Context<'_>,
        idle_limit: &mut IdleLimit,
    ) -> Poll<std::io::Result<Woke>> {
        if let Poll::Ready(interrupted) = self.cancel.poll_interrupted(cx) {
            return Poll::Ready(Ok(Woke::Interrupted(interrupted)));
        }
        if let Some(sleep) = idle_limit
            && sleep.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Ok(Woke::IdleExpired));
        }
        if let Some((_, mailbox)) = self.notifications.as_deref_mut()
            && let Poll::Ready(Some(note)) = mailbox.incoming.poll_recv(cx)
        {
            return Poll::Ready(Ok(Woke::Notified(note)));
        }
        match &mut self.client {
            PgStream::Plain(tcp) if self.buf.is_empty() => {
                tcp.poll_read_ready(cx).map_ok(|()| Woke::Readable)
            }
            client => std::pin::pin!(client.read_buf(&mut self.buf))
                .poll(cx)
                .map_ok(Woke::Read),
        }
    }

    /// Whether the client has sent a whole message that starts a transaction (anything but
    /// Terminate).
    pub(super) fn has_request(&self) -> bool {
        matches!(
            FrameHeader::peek(&self.buf, self.config.max_message_size),
            Ok(Some(header)) if header.tag != client::TERMINATE
        )
    }

    /// Answers a batch of nothing but Parse (of statements the pool already knows to be valid),
    /// Close of named statements, and Sync without taking a server connection: the statements
    /// are recorded for (or forgotten by) the client and prepared on whichever connection later
    /// runs them. Drivers pipeline such Close batches ahead of the next transaction; answered
    /// here, they neither cost a checkout nor decide which host that transaction runs on.
    /// Returns the answers to send, or `None`, consuming nothing, when the batch needs a server.
    pub(super) fn answer_prepares_locally(&mut self) -> Result<Option<BytesMut>, SessionError> {
        if self.mode() != PoolMode::Transaction {
            return Ok(None);
        }
        let limit = self.config.max_message_size;
        let mut end = 0;
        let mut local = Vec::new();
        loop {
            let Some(header) =
                FrameHeader::peek(&self.buf[end..], limit).map_err(SessionError::ClientProtocol)?
            else {
                return Ok(None);
            };
            let body = &self.buf[end + HEADER_LEN..end + header.total_len];
            end += header.total_len;
            match header.tag {
                client::PARSE => {
                    let parse = ParseMessage::decode(body).map_err(SessionError::ClientProtocol)?;
                    if parse.name.is_empty() || may_have_effects(parse.query()) {
                        return Ok(None);
                    }
                    let def = StatementDef::new(Bytes::copy_from_slice(parse.tail));
                    if !self.pool.known_statements().contains(&def.server_name) {
                        return Ok(None);
                    }
                    local.push(Local::Parsed(parse.name.to_owned(), Arc::new(def)));
                }
                client::CLOSE => {
                    let close =
                        TargetMessage::decode(body).map_err(SessionError::ClientProtocol)?;
                    if close.kind != target_kind::STATEMENT || close.name.is_empty() {
                        return Ok(None);
                    }
                    local.push(Local::Closed(close.name.to_owned()));
                }
                client::FLUSH => {}
                client::SYNC if !local.is_empty() => break,
                _ => return Ok(None),
            }
        }
        let mut out = BytesMut::with_capacity(local.len() * 5 + 6);
        for done in local {
            match done {
                Local::Parsed(name, def) => {
                    self.statements.insert(&name, def);
                    put_empty(&mut out, server::PARSE_COMPLETE);
                }
                Local::Closed(name) => {
                    self.statements.remove(&name);
                    put_empty(&mut out, server::CLOSE_COMPLETE);
                }
            }
        }
        put_ready_for_query(&mut out, status::IDLE);
        self.buf.advance(end);
        Ok(Some(out))
    }
}

/// A client message answered without a server, in the order the answers go back.
enum Local {
    /// Parse of a named statement: ParseComplete.
    Parsed(String, Arc<StatementDef>),
    /// Close of a named statement: CloseComplete.
    Closed(String),
}
