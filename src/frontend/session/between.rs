//! The session between transactions: waiting for the client's next request while holding no
//! server connection (and almost no memory), and answering a batch of Parse messages for
//! statements the pool already knows without taking one.

use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt as _;
use tokio::io::AsyncReadExt;

use super::{READ_CHUNK, Session, SessionError};
use crate::backend::{ChannelHub, Mailbox};
use crate::config::PoolMode;
use crate::frontend::sql::may_have_effects;
use crate::frontend::statements::StatementDef;
use crate::tls::PgStream;
use crate::wire::extended::{ParseMessage, TargetMessage, put_empty};
use crate::wire::frame::HEADER_LEN;
use crate::wire::messages::put_ready_for_query;
use crate::wire::tag::{client, server, status, target_kind};
use crate::wire::{FrameHeader, WireError};

/// Waits for the idle limit of [`Session::wait_for_request`]; its duration.
async fn idle_expired(
    limit: &mut Option<(std::time::Duration, std::pin::Pin<Box<tokio::time::Sleep>>)>,
) -> std::time::Duration {
    match limit {
        Some((duration, sleep)) => {
            sleep.as_mut().await;
            *duration
        }
        None => std::future::pending().await,
    }
}

/// The next notification for a client that listens; never, for one that does not.
async fn next_notification(
    notifications: &mut Option<Box<(Arc<ChannelHub>, Mailbox)>>,
) -> bytes::Bytes {
    match notifications.as_deref_mut() {
        Some((_, mailbox)) => match mailbox.incoming.recv().await {
            Some(note) => note,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// What ended a wait between transactions.
enum Woke {
    /// The client's socket gave this many bytes.
    Read(usize),
    /// A notification arrived for the client.
    Notified(bytes::Bytes),
}

impl Session {
    /// Waits, holding no server connection, until the client has sent a whole message. Returns
    /// false when the client said Terminate or closed.
    pub(super) async fn wait_for_request(&mut self) -> Result<bool, SessionError> {
        // Boxed, and only when configured: an idle session without the limit carries no timer.
        let mut idle_limit = self
            .timeouts
            .client_idle
            .map(|limit| (limit, Box::pin(tokio::time::sleep(limit))));
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
            let woke = if let (PgStream::Plain(tcp), true) = (&self.client, self.buf.is_empty()) {
                // An idle client holds no buffer: thousands of idle connections stay cheap.
                self.buf = BytesMut::new();
                tokio::select! {
                    readable = tcp.readable() => readable?,
                    // An abort, or a nudge when draining starts (checked at the loop's top).
                    interrupted = self.cancel.interrupted() => match interrupted {
                        Some(reason) => return Err(SessionError::Terminated(reason)),
                        None => continue,
                    },
                    limit = idle_expired(&mut idle_limit), if idle_limit.is_some() => {
                        return Err(self.idle_timed_out(limit));
                    }
                    note = next_notification(&mut self.notifications) => {
                        // Boxed: only a listening client pays for the delivery's state.
                        Box::pin(self.deliver_notifications(note)).await?;
                        continue;
                    }
                }
                self.buf.reserve(READ_CHUNK);
                // Readiness can be left over from the login's reads: a read that would block
                // clears it and the wait starts again, with its timers. The read goes through
                // the stream's own poll, which also clears readiness when it drained the socket,
                // so that the transaction's first wait for the client costs no read at all.
                match self.client.read_buf(&mut self.buf).now_or_never() {
                    Some(read) => Woke::Read(read?),
                    None => continue,
                }
            } else {
                // TLS may hold decrypted bytes the socket no longer shows as readable, so the
                // read itself is what waits.
                self.buf.reserve(READ_CHUNK);
                tokio::select! {
                    read = self.client.read_buf(&mut self.buf) => Woke::Read(read?),
                    interrupted = self.cancel.interrupted() => match interrupted {
                        Some(reason) => return Err(SessionError::Terminated(reason)),
                        None => continue,
                    },
                    limit = idle_expired(&mut idle_limit), if idle_limit.is_some() => {
                        return Err(self.idle_timed_out(limit));
                    }
                    note = next_notification(&mut self.notifications) => Woke::Notified(note),
                }
            };
            let read = match woke {
                Woke::Read(read) => read,
                Woke::Notified(note) => {
                    Box::pin(self.deliver_notifications(note)).await?;
                    continue;
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
    /// Returns false, consuming nothing, when the batch needs a server.
    pub(super) async fn answer_prepares_locally(&mut self) -> Result<bool, SessionError> {
        if self.mode() != PoolMode::Transaction {
            return Ok(false);
        }
        let limit = self.config.max_message_size;
        let mut end = 0;
        let mut local = Vec::new();
        loop {
            let Some(header) =
                FrameHeader::peek(&self.buf[end..], limit).map_err(SessionError::ClientProtocol)?
            else {
                return Ok(false);
            };
            let body = &self.buf[end + HEADER_LEN..end + header.total_len];
            end += header.total_len;
            match header.tag {
                client::PARSE => {
                    let parse = ParseMessage::decode(body).map_err(SessionError::ClientProtocol)?;
                    if parse.name.is_empty() || may_have_effects(parse.query()) {
                        return Ok(false);
                    }
                    let def = StatementDef::new(Bytes::copy_from_slice(parse.tail));
                    if !self.pool.known_statements().contains(&def.server_name) {
                        return Ok(false);
                    }
                    local.push(Local::Parsed(parse.name.to_owned(), Arc::new(def)));
                }
                client::CLOSE => {
                    let close =
                        TargetMessage::decode(body).map_err(SessionError::ClientProtocol)?;
                    if close.kind != target_kind::STATEMENT || close.name.is_empty() {
                        return Ok(false);
                    }
                    local.push(Local::Closed(close.name.to_owned()));
                }
                client::FLUSH => {}
                client::SYNC if !local.is_empty() => break,
                _ => return Ok(false),
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
        self.client.send(&out).await?;
        Ok(true)
    }
}

/// A client message answered without a server, in the order the answers go back.
enum Local {
    /// Parse of a named statement: ParseComplete.
    Parsed(String, Arc<StatementDef>),
    /// Close of a named statement: CloseComplete.
    Closed(String),
}
