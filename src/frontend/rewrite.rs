//! Turning a client's buffered messages into what the server connection is sent, and the
//! server's into what the client sees. In transaction mode, named statements are renamed to
//! their server-side names and prepared on demand on whichever connection the client holds;
//! [`ResponseQueue`] keeps the two streams matched.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::cycles::CycleLog;
use super::responses::{Expect, Origin, PrepareOutcome, ResponseQueue, Verdict};
use super::retry::{STALE_PLAN, StalePlanRetry};
use super::sql::{Effect, classify, may_have_effects};
use super::statements::{ClientStatements, StatementDef};
use super::tracker::{Tracker, is_frontend_tag};
use crate::backend::{KnownStatements, PreparedSet};
use crate::telemetry::PoolMetrics;
use crate::wire::extended::{BindMessage, ParseMessage, TargetMessage, put_parse, put_target};
use crate::wire::frame::HEADER_LEN;
use crate::wire::messages::{ErrorFields, take_cstr};
use crate::wire::splice::Splicer;
use crate::wire::tag::{client, server, status, target_kind};
use crate::wire::{FrameHeader, WireError};

/// The state one pass over buffered messages reads and updates.
pub struct Relay<'a> {
    /// The client's named statements.
    pub statements: &'a mut ClientStatements,
    /// What the server connection has prepared.
    pub prepared: &'a mut PreparedSet,
    /// Statements known to parse in this pool.
    pub known: &'a KnownStatements,
    /// Responses owed to the client.
    pub queue: &'a mut ResponseQueue,
    /// Protocol position, for releasing the connection.
    pub tracker: &'a mut Tracker,
    /// The current batch, kept to hide a stale-plan error.
    pub retry: &'a mut StalePlanRetry,
    /// Whether statement names are rewritten (transaction mode).
    pub rename: bool,
    /// The client keeps its server connection for good (session state that cannot move).
    pub pinned: bool,
    /// What the client's statements do to its session, for the session to apply.
    pub effects: &'a mut Vec<Effect>,
    /// Query cycles, for metrics and spans.
    pub cycles: &'a mut CycleLog,
    /// The pool's counters.
    pub metrics: &'a PoolMetrics,
}

/// What the client's buffered messages amount to.
pub struct ClientChunk {
    /// Bytes to send to the server (possibly empty).
    pub to_server: BytesMut,
    /// The client sent Terminate.
    pub terminate: bool,
}

impl Relay<'_> {
    /// Makes sure the server connection has `def` prepared, injecting Close messages for
    /// evicted statements and a Parse whose response the client never sees.
    fn ensure_prepared(&mut self, def: &StatementDef, out: &mut BytesMut) {
        if self.server_has(def, out) {
            return;
        }
        self.prepare(def, Origin::Injected, out);
    }

    /// Whether the server connection holds a usable copy of `def`. A copy older than a
    /// stale-plan report is closed (its CloseComplete swallowed) and counts as missing.
    fn server_has(&mut self, def: &StatementDef, out: &mut BytesMut) -> bool {
        match self.prepared.touch(&def.server_name) {
            Some(epoch) if !self.known.is_stale(&def.server_name, epoch) => {
                self.metrics.cache_hit();
                true
            }
            Some(_) => {
                self.prepared.remove(&def.server_name);
                put_target(out, client::CLOSE, target_kind::STATEMENT, &def.server_name);
                self.queue.push(Expect::Close {
                    origin: Origin::Injected,
                });
                false
            }
            None => false,
        }
    }

    fn prepare(&mut self, def: &StatementDef, origin: Origin, out: &mut BytesMut) {
        let epoch = self.known.epoch();
        self.metrics.cache_miss();
        for evicted in self.prepared.insert(Arc::clone(&def.server_name), epoch) {
            self.metrics.cache_eviction();
            put_target(out, client::CLOSE, target_kind::STATEMENT, &evicted);
            self.queue.push(Expect::Close {
                origin: Origin::Injected,
            });
        }
        put_parse(out, &def.server_name, &def.parse_tail);
        self.queue.push(Expect::Parse {
            origin,
            prepared: Some(Arc::clone(&def.server_name)),
        });
    }

    /// Rewrites one client message into `out`; returns false when it passes unchanged.
    fn rewrite_client(
        &mut self,
        tag: u8,
        body: &[u8],
        out: &mut BytesMut,
        now: Instant,
    ) -> Result<bool, WireError> {
        match tag {
            client::PARSE => {
                let parse = ParseMessage::decode(body)?;
                self.note_effects(parse.query());
                if parse.name.is_empty() {
                    self.queue.push(Expect::Parse {
                        origin: Origin::Client,
                        prepared: None,
                    });
                    return Ok(false);
                }
                let def = Arc::new(StatementDef::new(Bytes::copy_from_slice(parse.tail)));
                self.statements.insert(parse.name, Arc::clone(&def));
                if self.server_has(&def, out) {
                    self.queue.push(Expect::Parse {
                        origin: Origin::Synthetic,
                        prepared: None,
                    });
                } else {
                    self.prepare(&def, Origin::Client, out);
                }
                Ok(true)
            }
            client::BIND => {
                let bind = BindMessage::decode(body)?;
                let def = (!bind.statement.is_empty())
                    .then(|| self.statements.get(bind.statement).cloned())
                    .flatten();
                let statement = def.map(|def| {
                    self.ensure_prepared(&def, out);
                    bind.put_renamed(out, &def.server_name);
                    Arc::clone(&def.server_name)
                });
                let rewritten = statement.is_some();
                self.queue.push(Expect::Bind(statement));
                Ok(rewritten)
            }
            client::DESCRIBE => {
                let target = TargetMessage::decode(body)?;
                let def = (target.kind == target_kind::STATEMENT && !target.name.is_empty())
                    .then(|| self.statements.get(target.name).cloned())
                    .flatten();
                let statement = def.map(|def| {
                    self.ensure_prepared(&def, out);
                    put_target(
                        out,
                        client::DESCRIBE,
                        target_kind::STATEMENT,
                        &def.server_name,
                    );
                    Arc::clone(&def.server_name)
                });
                let rewritten = statement.is_some();
                self.queue.push(Expect::Describe(statement));
                Ok(rewritten)
            }
            client::CLOSE => {
                let target = TargetMessage::decode(body)?;
                if target.kind == target_kind::STATEMENT && !target.name.is_empty() {
                    // Server-side statements are shared; the client's name just goes away.
                    self.statements.remove(target.name);
                    self.queue.push(Expect::Close {
                        origin: Origin::Synthetic,
                    });
                    Ok(true)
                } else {
                    self.queue.push(Expect::Close {
                        origin: Origin::Client,
                    });
                    Ok(false)
                }
            }
            _ => {
                self.account_plain(tag, body, now);
                Ok(false)
            }
        }
    }

    /// Feeds one forwarded client message to the query-cycle log.
    fn observe_client(&mut self, tag: u8, body: &[u8], now: Instant) -> Result<(), WireError> {
        let capture = self.cycles.captures_text();
        match tag {
            client::PARSE if capture => {
                let parse = ParseMessage::decode(body)?;
                let sql = parse.query_bytes();
                self.cycles.parse(parse.name, sql, !self.rename, now);
            }
            client::BIND if capture => {
                let bind = BindMessage::decode(body)?;
                let text = (self.rename && !bind.statement.is_empty())
                    .then(|| self.statements.get(bind.statement).map(|d| d.query_text()))
                    .flatten();
                self.cycles.bind(bind.statement, text, now);
            }
            client::CLOSE if capture && !self.rename => {
                let target = TargetMessage::decode(body)?;
                if target.kind == target_kind::STATEMENT {
                    self.cycles.forget(target.name);
                }
                self.cycles.other(now);
            }
            client::EXECUTE => self.cycles.execute(now),
            client::PARSE | client::BIND | client::DESCRIBE | client::CLOSE => {
                self.cycles.other(now);
            }
            _ => {}
        }
        Ok(())
    }

    fn note_effects(&mut self, sql: &str) {
        if may_have_effects(sql) {
            self.effects.extend(classify(sql).effects);
        }
    }

    /// A client that owns its server session (session mode) still has its statements' effects
    /// noted, so that `RESET`, `RESET ALL` and `DISCARD ALL` bring it back to the settings of its
    /// own startup packet rather than to those the server connection was opened with.
    fn note_own_session_effects(&mut self, tag: u8, body: &[u8]) -> Result<(), WireError> {
        match tag {
            client::QUERY => self.note_effects(take_cstr(body)?.0),
            client::PARSE => self.note_effects(ParseMessage::decode(body)?.query()),
            _ => {}
        }
        Ok(())
    }

    /// Answers a lone `DEALLOCATE` / `DISCARD ALL` from the client's own view of its session:
    /// the server connection, shared with others, is left alone. Returns the command tag.
    fn answer_locally(&mut self, sql: &str) -> Option<&'static str> {
        if !may_have_effects(sql) {
            return None;
        }
        let classified = classify(sql);
        let lone = classified.statements == 1 && classified.effects.len() == 1;
        if !lone || self.pinned || self.tracker.status() == status::FAILED {
            self.effects.extend(classified.effects);
            return None;
        }
        let tag = match &classified.effects[0] {
            Effect::Deallocate(Some(name)) if self.statements.remove(name) => "DEALLOCATE",
            Effect::Deallocate(None) => {
                self.statements.clear();
                "DEALLOCATE ALL"
            }
            Effect::DiscardAll if self.tracker.status() == status::IDLE => {
                self.statements.clear();
                self.effects.push(Effect::ClientReset);
                "DISCARD ALL"
            }
            _ => {
                self.effects.extend(classified.effects);
                return None;
            }
        };
        Some(tag)
    }

    fn account_plain(&mut self, tag: u8, body: &[u8], now: Instant) {
        match tag {
            client::PARSE => self.queue.push(Expect::Parse {
                origin: Origin::Client,
                prepared: None,
            }),
            client::BIND => self.queue.push(Expect::Bind(None)),
            client::DESCRIBE => self.queue.push(Expect::Describe(None)),
            client::CLOSE => self.queue.push(Expect::Close {
                origin: Origin::Client,
            }),
            client::EXECUTE => self.queue.push(Expect::Execute),
            client::SYNC => {
                let cycle = self.cycles.sync(now);
                self.queue.push(Expect::Sync(cycle));
                self.prepared.start_batch();
            }
            client::QUERY | client::FUNCTION_CALL => {
                let sql = if tag == client::QUERY {
                    body.split(|b| *b == 0).next().unwrap_or_default()
                } else {
                    &[]
                };
                let cycle = self.cycles.query(sql, now);
                self.queue.push(Expect::Query(cycle));
                self.prepared.start_batch();
            }
            client::COPY_DONE | client::COPY_FAIL => self.queue.push(Expect::CopyEnd),
            _ => {}
        }
    }

    /// Takes every complete message off the front of the client's buffer.
    ///
    /// # Errors
    /// [`WireError`] for an oversized, malformed or unknown message.
    pub fn take_client_messages(
        &mut self,
        buf: &mut BytesMut,
        limit: usize,
    ) -> Result<ClientChunk, WireError> {
        let mut splicer = Splicer::default();
        let mut end = 0;
        let mut terminate = false;
        let mut scratch = BytesMut::new();
        let now = Instant::now();
        while let Some(header) = FrameHeader::peek(&buf[end..], limit)? {
            let next = end + header.total_len;
            if header.tag == client::TERMINATE {
                terminate = true;
                break;
            }
            if !is_frontend_tag(header.tag) {
                return Err(WireError::protocol(format!(
                    "invalid frontend message type {}",
                    header.tag
                )));
            }
            let body = &buf[end + HEADER_LEN..next];
            if self.rename && header.tag == client::QUERY {
                let (sql, _) = take_cstr(body)?;
                if let Some(tag) = self.answer_locally(sql) {
                    splicer.cut(buf, end, next);
                    self.queue.push(Expect::LocalCommand { tag });
                    end = next;
                    continue;
                }
            }
            self.observe_client(header.tag, body, now)?;
            let replaced = if self.rename
                && matches!(
                    header.tag,
                    client::PARSE | client::BIND | client::DESCRIBE | client::CLOSE
                ) {
                self.rewrite_client(header.tag, body, &mut scratch, now)?
            } else {
                if !self.rename {
                    self.note_own_session_effects(header.tag, body)?;
                }
                self.account_plain(header.tag, body, now);
                false
            };
            if replaced {
                splicer.cut(buf, end, next);
                splicer.insert(buf, next, &scratch);
                scratch.clear();
            }
            self.tracker.client_message(header.tag);
            end = next;
        }
        let to_server = splicer.finish(buf, end);
        if terminate {
            buf.clear();
        }
        Ok(ClientChunk {
            to_server,
            terminate,
        })
    }

    /// Takes every complete message off the front of the server's buffer, with the proxy's own
    /// responses spliced in and the responses to its injected messages cut out.
    ///
    /// # Errors
    /// [`WireError`] if the server's framing is broken.
    pub fn take_server_messages(
        &mut self,
        buf: &mut BytesMut,
        mut on_parameter: impl FnMut(&[u8]),
    ) -> Result<BytesMut, WireError> {
        let mut splicer = Splicer::default();
        let mut end = 0;
        let mut outcome = PrepareOutcome::default();
        let mut due = BytesMut::new();
        let now = Instant::now();
        while let Some(header) = FrameHeader::peek(&buf[end..], usize::MAX)? {
            let next = end + header.total_len;
            let body = &buf[end + HEADER_LEN..next];
            if header.tag == server::PARAMETER_STATUS {
                on_parameter(body);
            } else {
                self.tracker.server_message(header.tag, body);
            }
            if header.tag == server::ERROR_RESPONSE && self.queue.error_awaits_client_sync() {
                self.tracker.await_sync();
            }
            let hidden = self.watch_for_stale_plan(header.tag, body);
            if matches!(
                header.tag,
                server::COMMAND_COMPLETE | server::ERROR_RESPONSE
            ) && !hidden
                && let Some(cycle) = self.queue.current_cycle()
            {
                cycle.on_server(header.tag, body);
            }
            match self.queue.on_server(header.tag, &mut outcome) {
                Verdict::OutOfSync => {
                    tracing::error!(
                        tag = %char::from(header.tag),
                        "server response out of sync with the requests sent; discarding the connection"
                    );
                    return Err(WireError::protocol(
                        "server response out of sync with the requests sent",
                    ));
                }
                Verdict::Swallow => splicer.cut(buf, end, next),
                Verdict::Forward if hidden => splicer.cut(buf, end, next),
                Verdict::Forward => {}
            }
            if let Some(cycle) = self.queue.take_finished() {
                let status = body.first().copied().unwrap_or(status::IDLE);
                self.cycles.finish(cycle, status, hidden, now);
            }
            self.queue.emit_due(&mut due, self.tracker.status());
            if !due.is_empty() {
                splicer.insert(buf, next, &due);
                due.clear();
            }
            end = next;
        }
        for name in &outcome.failed {
            self.prepared.remove(name);
        }
        self.known.remember(outcome.created);
        Ok(splicer.finish(buf, end))
    }

    /// Looks at one server message for a stale-plan error about the statement in question;
    /// true when the message is hidden from the client (the batch will be replayed).
    fn watch_for_stale_plan(&mut self, tag: u8, body: &[u8]) -> bool {
        if tag == server::READY_FOR_QUERY {
            return self.retry.on_ready();
        }
        if tag != server::ERROR_RESPONSE {
            return self.retry.is_hiding();
        }
        let Some(statement) = self.queue.statement_in_question().cloned() else {
            return false;
        };

        if ErrorFields::parse(body).code != STALE_PLAN {
            return false;
        }
        // Every copy in the pool, this one included, is replaced before its next use.
        self.known.mark_stale(&statement);
        let replay_from = if self.retry.is_armed() {
            self.replay_start(&statement)
        } else {
            None
        };
        match replay_from {
            Some(offset) => {
                self.retry.hide_and_replay_from(offset);
                true
            }
            None => false,
        }
    }

    /// Where the kept batch can be sent again from: the first Bind of `statement`, if nothing
    /// before it was bound or executed and the batch describes the portal, so that the client
    /// learns the new row shape. `None` means the error goes to the client (as for a failing
    /// Describe of the statement: its ParameterDescription has already gone out).
    fn replay_start(&self, statement: &str) -> Option<usize> {
        let batch = self.retry.batch()?;
        let refers = |name: &str| {
            self.statements
                .get(name)
                .is_some_and(|d| &*d.server_name == statement)
        };
        let mut end = 0;
        let mut bind_at = None;
        while let Ok(Some(header)) = FrameHeader::peek(&batch[end..], usize::MAX) {
            let body = &batch[end + HEADER_LEN..end + header.total_len];
            match (header.tag, bind_at) {
                (client::EXECUTE, None) => return None,
                (client::BIND, None) => {
                    // A portal bound before the failing message would not survive the error.
                    if !BindMessage::decode(body).is_ok_and(|b| refers(b.statement)) {
                        return None;
                    }
                    bind_at = Some(end);
                }
                (client::DESCRIBE, Some(from)) if body.first() == Some(&target_kind::PORTAL) => {
                    return Some(from);
                }
                _ => {}
            }
            end += header.total_len;
        }
        None
    }

    /// Sends the rest of a batch again after a hidden stale-plan error; the statement, now
    /// stale, is closed and prepared afresh on the way.
    ///
    /// # Errors
    /// As [`Relay::take_client_messages`].
    pub fn replay(&mut self, mut batch: BytesMut) -> Result<BytesMut, WireError> {
        self.cycles.set_replaying(true);
        let replayed = self.take_client_messages(&mut batch, usize::MAX);
        self.cycles.set_replaying(false);
        Ok(replayed?.to_server)
    }

    /// The proxy's own responses that are due now, e.g. a ParseComplete for a statement the
    /// connection already had, when nothing else is outstanding.
    #[must_use]
    pub fn due_responses(&mut self) -> BytesMut {
        let mut due = BytesMut::new();
        self.queue.emit_due(&mut due, self.tracker.status());
        due
    }
}

#[cfg(test)]
#[path = "rewrite_tests.rs"]
mod tests;
