//! LISTEN and UNLISTEN in transaction mode, served through the sidecar's listening connection
//! of the client's pool instead of pinning the client to a server connection, and the
//! notifications that arrive for it, delivered between its transactions as PostgreSQL does.

use std::sync::{Arc, Weak};

use bytes::{Buf, BytesMut};

use super::{Session, SessionError};
use crate::backend::{ListenerTarget, Mailbox, NotifyError};
use crate::config::PoolMode;
use crate::frontend::sql::{Subscription, may_subscribe, subscriptions};
use crate::wire::FrameHeader;
use crate::wire::extended::{ParseMessage, TargetMessage, put_command_complete, put_empty};
use crate::wire::frame::HEADER_LEN;
use crate::wire::messages::{Severity, put_error, put_ready_for_query, take_cstr};
use crate::wire::sqlstate;
use crate::wire::tag::{client, server, status, target_kind};

/// A batch made of nothing but subscriptions, in one of the two shapes drivers send them.
#[derive(Debug, PartialEq, Eq)]
struct SubscriptionBatch {
    statements: Vec<Subscription>,
    /// Sent as Parse, Bind, (Describe portal,) Execute, Sync: whether a Describe was in it.
    extended: Option<bool>,
    /// Bytes of the client buffer the batch takes.
    len: usize,
}

/// Reads a subscription batch off the front of `buf`: a simple Query holding only LISTEN and
/// UNLISTEN, or one unnamed Parse/Bind/(Describe)/Execute/Sync of a single one. `None` for
/// anything else, which is then handled as usual.
fn subscription_batch(buf: &[u8], limit: usize) -> Option<SubscriptionBatch> {
    let mut at = 0;
    let mut next = || {
        let header = FrameHeader::peek(&buf[at..], limit).ok()??;
        let body = &buf[at + HEADER_LEN..at + header.total_len];
        at += header.total_len;
        Some((header.tag, body))
    };
    let (tag, body) = next()?;
    // Screened on the raw bytes first: every other query costs a few comparisons.
    let text = match tag {
        client::QUERY => body,
        client::PARSE => body.strip_prefix(&[0])?,
        _ => return None,
    };
    if !may_subscribe(text) {
        return None;
    }
    if tag == client::QUERY {
        let statements = subscriptions(take_cstr(body).ok()?.0)?;
        return Some(SubscriptionBatch {
            statements,
            extended: None,
            len: at,
        });
    }
    let parse = ParseMessage::decode(body).ok()?;
    let statements = subscriptions(parse.query())?;
    if !parse.name.is_empty() || statements.len() != 1 {
        return None;
    }
    let (tag, body) = next()?;
    // Bind of the unnamed portal to the unnamed statement.
    if tag != client::BIND || !body.starts_with(&[0, 0]) {
        return None;
    }
    let (mut tag, mut body) = next()?;
    let described = tag == client::DESCRIBE;
    if described {
        let describe = TargetMessage::decode(body).ok()?;
        if describe.kind != target_kind::PORTAL || !describe.name.is_empty() {
            return None;
        }
        (tag, body) = next()?;
    }
    if tag != client::EXECUTE || body.first() != Some(&0) {
        return None;
    }
    let (tag, _) = next()?;
    (tag == client::SYNC).then_some(SubscriptionBatch {
        statements,
        extended: Some(described),
        len: at,
    })
}

impl Session {
    /// Whether the client's next batch is nothing but LISTEN and UNLISTEN, which transaction
    /// mode serves without a server connection ([`Session::answer_subscriptions`]).
    pub(super) fn subscriptions_pending(&self) -> bool {
        self.mode() == PoolMode::Transaction
            && self.pinned.is_none()
            && subscription_batch(&self.buf, self.config.max_message_size).is_some()
    }

    /// Serves a batch of nothing but LISTEN and UNLISTEN between transactions in transaction
    /// mode: the client's pool's listening connection listens (the answer waits until it
    /// does, so that every notification committed afterwards reaches the client) and the client
    /// keeps no server connection.
    pub(super) async fn answer_subscriptions(&mut self) -> Result<(), SessionError> {
        let Some(batch) = subscription_batch(&self.buf, self.config.max_message_size) else {
            return Ok(());
        };
        let mut out = BytesMut::new();
        if batch.extended.is_some() {
            put_empty(&mut out, server::PARSE_COMPLETE);
            put_empty(&mut out, server::BIND_COMPLETE);
        }
        if batch.extended == Some(true) {
            put_empty(&mut out, server::NO_DATA);
        }
        for statement in &batch.statements {
            match self.subscribe(statement).await {
                Ok(()) => put_command_complete(&mut out, statement.tag()),
                Err(e) => {
                    let (code, message) = match &e {
                        NotifyError::Refused(fields) => (fields.code.clone(), e.to_string()),
                        NotifyError::Unavailable(_) => (
                            sqlstate::CANNOT_CONNECT_NOW.to_owned(),
                            format!("pgsidecar: {e}"),
                        ),
                    };
                    put_error(&mut out, Severity::Error, &code, &message);
                    break;
                }
            }
        }
        put_ready_for_query(&mut out, status::IDLE);
        self.buf.advance(batch.len);
        self.client.send(&out).await?;
        Ok(())
    }

    async fn subscribe(&mut self, statement: &Subscription) -> Result<(), NotifyError> {
        let client = self.cancel.pid;
        if self.notifications.is_none() {
            if matches!(statement, Subscription::Listen(_)) {
                let context: Weak<super::ProxyContext> = Arc::downgrade(&self.ctx);
                let target: Weak<dyn ListenerTarget> = context;
                let hub = self.ctx.notify.hub(self.pool.key(), target);
                self.notifications = Some(Box::new((hub, Mailbox::new())));
            } else {
                // UNLISTEN of nothing: PostgreSQL answers it all the same.
                return Ok(());
            }
        }
        let (hub, mailbox) = self.notifications.as_deref().expect("set above");
        match statement {
            Subscription::Listen(channel) => hub.listen(client, channel, mailbox).await,
            Subscription::Unlisten(channel) => {
                hub.unlisten(client, Some(channel));
                Ok(())
            }
            Subscription::UnlistenAll => {
                hub.unlisten(client, None);
                Ok(())
            }
        }
    }

    /// Ends every subscription of the client (it left, or said DISCARD ALL).
    pub(super) fn unlisten_all(&mut self) {
        if let Some((hub, _)) = self.notifications.as_deref() {
            hub.unlisten(self.cancel.pid, None);
        }
    }

    /// Forwards the notifications waiting in the client's mailbox (the first one is `first`),
    /// in one write. A client that let its mailbox overflow is closed with 54000 once it has
    /// what the mailbox held, so that no notification is lost without its knowing.
    pub(super) async fn deliver_notifications(
        &mut self,
        first: bytes::Bytes,
    ) -> Result<(), SessionError> {
        let mut out = BytesMut::from(&first[..]);
        if let Some((_, mailbox)) = self.notifications.as_deref_mut() {
            while let Ok(more) = mailbox.incoming.try_recv() {
                out.extend_from_slice(&more);
            }
        }
        self.client.send(&out).await?;
        self.check_mailbox()
    }

    /// Fails the session when its mailbox overflowed.
    pub(super) fn check_mailbox(&self) -> Result<(), SessionError> {
        match self.notifications.as_deref() {
            Some((_, mailbox)) if mailbox.overflowed() && mailbox.incoming.is_empty() => {
                Err(SessionError::MailboxOverflow)
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::wire::extended::put_message as message;

    #[test]
    fn a_simple_query_of_subscriptions_is_served_by_the_sidecar() {
        let mut buf = BytesMut::new();
        message(&mut buf, client::QUERY, b"LISTEN a; UNLISTEN b\0");
        let batch = subscription_batch(&buf, 1 << 20).unwrap();
        assert_eq!(batch.statements.len(), 2);
        assert_eq!(batch.extended, None);
        assert_eq!(batch.len, buf.len());
    }

    #[test]
    fn an_unnamed_extended_listen_is_served_by_the_sidecar() {
        let mut buf = BytesMut::new();
        message(&mut buf, client::PARSE, b"\0LISTEN a\0\0\0");
        message(&mut buf, client::BIND, b"\0\0\0\0\0\0\0\0");
        message(&mut buf, client::DESCRIBE, b"P\0");
        message(&mut buf, client::EXECUTE, b"\0\0\0\0\0");
        message(&mut buf, client::SYNC, b"");
        let batch = subscription_batch(&buf, 1 << 20).unwrap();
        assert_eq!(batch.statements, [Subscription::Listen("a".into())]);
        assert_eq!(batch.extended, Some(true));
    }

    #[test]
    fn anything_else_goes_its_usual_way() {
        let mut named = BytesMut::new();
        message(&mut named, client::PARSE, b"s1\0LISTEN a\0\0\0");
        message(&mut named, client::SYNC, b"");
        assert_eq!(subscription_batch(&named, 1 << 20), None);
        let mut mixed = BytesMut::new();
        message(&mut mixed, client::QUERY, b"LISTEN a; SELECT 1\0");
        assert_eq!(subscription_batch(&mixed, 1 << 20), None);
        let mut unfinished = BytesMut::new();
        message(&mut unfinished, client::PARSE, b"\0LISTEN a\0\0\0");
        message(&mut unfinished, client::BIND, b"\0\0\0\0\0\0\0\0");
        assert_eq!(subscription_batch(&unfinished, 1 << 20), None);
    }
}
