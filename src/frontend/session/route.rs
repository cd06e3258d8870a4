//! Which upstream host a transaction runs on, when there are several: the read alias and
//! declared read-only transactions go to a replica, everything else to the primary, and a host
//! found unreachable is reported and routed around within the acquire timeout.

use std::time::Instant;

use super::Session;
use crate::backend::{AcquireError, Checkout, Intent};
use crate::config::PoolMode;
use crate::frontend::sql::declares_read_only;
use crate::wire::FrameHeader;
use crate::wire::extended::ParseMessage;
use crate::wire::frame::HEADER_LEN;
use crate::wire::tag::client;

/// The SQL that starts the client's next transaction: the first simple Query or Parse among
/// its pending messages, past the Close, Sync and Flush messages that drivers pipeline ahead of
/// it (they start nothing); `None` when something else comes first.
fn first_statement(mut buf: &[u8], limit: usize) -> Option<&str> {
    loop {
        let header = FrameHeader::peek(buf, limit).ok()??;
        let body = &buf[HEADER_LEN..header.total_len];
        match header.tag {
            client::QUERY => {
                return crate::wire::messages::take_cstr(body)
                    .ok()
                    .map(|(sql, _)| sql);
            }
            client::PARSE => return ParseMessage::decode(body).ok().map(|parse| parse.query()),
            client::CLOSE | client::SYNC | client::FLUSH => buf = &buf[header.total_len..],
            _ => return None,
        }
    }
}

impl Session {
    /// What the client's next transaction needs: the read alias always reads; with
    /// `routing.read_only_transactions`, so does a transaction-mode transaction that declares
    /// itself read-only or starts under `default_transaction_read_only`.
    fn intent(&self) -> Intent {
        if self.reads_only {
            return Intent::Read;
        }
        if !self.config.routing.read_only_transactions || self.mode() != PoolMode::Transaction {
            return Intent::Write;
        }
        let by_default = self
            .params
            .wanted()
            .get("default_transaction_read_only")
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "on" | "true" | "1"));
        let declared = first_statement(&self.buf, self.config.max_message_size)
            .is_some_and(declares_read_only);
        if by_default || declared {
            Intent::Read
        } else {
            Intent::Write
        }
    }

    /// Picks the host for the next transaction and checks a connection out of its pool. A host
    /// that cannot be reached is reported to the topology (which takes it out at once and has
    /// it checked again) and the choice is made again, until the acquire timeout.
    pub(super) async fn routed_checkout(&mut self) -> Result<Checkout, AcquireError> {
        if !self.ctx.pools.is_routed() {
            return self.checkout_or_notify().await;
        }
        let intent = self.intent();
        let started = Instant::now();
        let limit = self.pool.settings().acquire_timeout;
        loop {
            let left = limit.saturating_sub(started.elapsed());
            self.pool = self.ctx.pools.pick(self.pool.key(), intent, left).await?;
            match self.checkout_or_notify().await {
                Err(AcquireError::Backend(e)) if e.is_unreachable() && !left.is_zero() => {
                    self.ctx
                        .pools
                        .topology()
                        .report_unreachable(self.pool.host(), &e.to_string());
                }
                done => return done,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn message(tag: u8, body: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        crate::wire::extended::put_message(&mut out, tag, body);
        out
    }

    #[test]
    fn the_first_statement_is_read_from_a_query_or_a_parse() {
        let query = message(client::QUERY, b"BEGIN READ ONLY\0");
        assert_eq!(first_statement(&query, 1 << 20), Some("BEGIN READ ONLY"));
        let parse = message(client::PARSE, b"s1\0SELECT 1\0\0\0");
        assert_eq!(first_statement(&parse, 1 << 20), Some("SELECT 1"));
        let mut pipelined = message(client::CLOSE, b"Ss2\0");
        pipelined.extend_from_slice(&message(client::SYNC, b""));
        pipelined.extend_from_slice(&query);
        assert_eq!(
            first_statement(&pipelined, 1 << 20),
            Some("BEGIN READ ONLY"),
            "a Close and Sync ahead of the transaction start nothing"
        );
        let bind = message(client::BIND, b"\0s2\0\0\0\0\0\0\0");
        assert_eq!(first_statement(&bind, 1 << 20), None);
    }
}
