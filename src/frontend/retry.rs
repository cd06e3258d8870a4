//! Stale plans: after a schema change, PostgreSQL answers a Bind or Describe of a statement
//! prepared before it with "cached plan must not change result type" (0A000). The pool then
//! counts every copy of that statement as stale and replaces it before its next use, so the
//! error comes at most once. When it is safe, that once is hidden too: outside a transaction
//! block, if the failing message is the batch's first Bind and the batch describes its portal
//! (as libpq and psycopg do), so that the client learns the new row shape, the proxy swallows
//! the error and its ReadyForQuery and sends the batch again from that Bind. A client relying on a row
//! description cached at prepare time gets the error, as from PostgreSQL, because rows of the
//! new shape would not match what it expects.

use bytes::BytesMut;

use crate::wire::FrameHeader;
use crate::wire::tag::client;

/// The SQLSTATE of "cached plan must not change result type".
pub const STALE_PLAN: &str = "0A000";
/// Batches larger than this are not kept for a retry.
const MAX_REPLAY: usize = 64 * 1024;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No batch is kept.
    #[default]
    Idle,
    /// The start of the batch is kept; its Sync has not arrived yet.
    Collecting,
    /// The whole batch is kept and may be replayed.
    Armed,
    /// The stale-plan error was swallowed; everything up to ReadyForQuery is hidden.
    Hiding,
    /// ReadyForQuery came and was hidden: the batch goes out again.
    Due,
}

/// One batch's stale-plan state.
#[derive(Debug, Default)]
pub struct StalePlanRetry {
    batch: Option<BytesMut>,
    state: State,
    replay_from: usize,
}

impl StalePlanRetry {
    /// Starts keeping a copy of the batch at the front of `buf` so that it can be replayed.
    /// Called when a batch starts outside a transaction; only a batch that starts with a Bind
    /// can be replayed, so nothing else is copied.
    pub fn arm(&mut self, buf: &[u8], limit: usize) {
        if buf.first() != Some(&client::BIND) {
            *self = Self::default();
            return;
        }
        *self = Self {
            batch: Some(BytesMut::new()),
            state: State::Collecting,
            replay_from: 0,
        };
        self.collect(buf, limit);
    }

    /// Adds the complete messages at the front of `buf` to the kept batch, up to its Sync.
    /// Batches that grow large are given up.
    pub fn collect(&mut self, buf: &[u8], limit: usize) {
        if self.state != State::Collecting {
            return;
        }
        let Some(batch) = self.batch.as_mut() else {
            return;
        };
        let mut end = 0;
        while let Ok(Some(header)) = FrameHeader::peek(&buf[end..], limit) {
            end += header.total_len;
            if batch.len() + end > MAX_REPLAY {
                *self = Self::default();
                return;
            }
            if header.tag == client::SYNC {
                batch.extend_from_slice(&buf[..end]);
                self.state = State::Armed;
                return;
            }
        }
        batch.extend_from_slice(&buf[..end]);
    }

    /// Whether a whole batch is kept and no stale plan was met yet.
    #[must_use]
    pub fn is_armed(&self) -> bool {
        self.state == State::Armed
    }

    /// The kept batch.
    #[must_use]
    pub fn batch(&self) -> Option<&[u8]> {
        self.batch.as_deref()
    }

    /// Hides the stale-plan error: the batch is replayed from `offset` after ReadyForQuery.
    pub fn hide_and_replay_from(&mut self, offset: usize) {
        self.replay_from = offset;
        self.state = State::Hiding;
    }

    /// Whether server messages are being hidden now.
    #[must_use]
    pub fn is_hiding(&self) -> bool {
        self.state == State::Hiding
    }

    /// At ReadyForQuery: true when it must be hidden (the batch will be replayed).
    pub fn on_ready(&mut self) -> bool {
        if self.state == State::Hiding {
            self.state = State::Due;
            return true;
        }
        if self.state != State::Collecting {
            *self = Self::default();
        }
        false
    }

    /// The messages to send again, once the error and its ReadyForQuery were hidden.
    pub fn take_replay(&mut self) -> Option<BytesMut> {
        if self.state != State::Due {
            return None;
        }
        let from = self.replay_from;
        let replay = self.batch.take().map(|mut batch| batch.split_off(from));
        *self = Self::default();
        replay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BATCH: &[u8] = b"B\0\0\0\x0c\0s1\0\0\0\0\0E\0\0\0\x09\0\0\0\0\0S\0\0\0\x04";

    #[test]
    fn hidden_error_replays_from_the_failing_message() {
        let mut retry = StalePlanRetry::default();
        retry.arm(BATCH, 1 << 20);
        assert!(retry.is_armed());
        retry.hide_and_replay_from(0);
        assert!(retry.is_hiding());
        assert!(retry.take_replay().is_none(), "not before ReadyForQuery");
        assert!(retry.on_ready());
        assert_eq!(retry.take_replay().as_deref(), Some(BATCH));
        assert!(!retry.is_armed() && retry.take_replay().is_none());
    }

    #[test]
    fn ready_without_error_forgets_the_batch() {
        let mut retry = StalePlanRetry::default();
        retry.arm(BATCH, 1 << 20);
        assert!(!retry.on_ready());
        assert!(!retry.is_armed() && retry.batch().is_none());
    }

    #[test]
    fn batches_arriving_in_pieces_are_kept_whole() {
        let mut retry = StalePlanRetry::default();
        retry.arm(&BATCH[..13], 1 << 20);
        assert!(!retry.is_armed());
        retry.collect(&BATCH[13..], 1 << 20);
        assert!(retry.is_armed());
        assert_eq!(retry.batch(), Some(BATCH));
    }
}
