//! Stale plans: after a schema change, PostgreSQL answers the Bind of a statement prepared
//! before it with "cached plan must not change result type" (0A000). The server connection's
//! copy of the statement is dropped either way, so that the next Parse prepares it afresh.
//! Outside a transaction block, when the batch describes its portal (so the client learns the
//! new row shape, as libpq and psycopg do), the proxy hides the error: it swallows it and its
//! ReadyForQuery, re-prepares the statement and sends the batch again, once. A client that
//! relies on a row description cached at prepare time gets the error, as from PostgreSQL,
//! because rows of the new shape would not match what it expects.

use bytes::BytesMut;

use crate::wire::FrameHeader;
use crate::wire::messages::ErrorFields;

/// The SQLSTATE of "cached plan must not change result type".
const STALE_PLAN: &str = "0A000";
/// Batches larger than this are not kept for a retry.
const MAX_REPLAY: usize = 64 * 1024;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No batch is kept.
    #[default]
    Idle,
    /// The current batch is kept and may be retried.
    Armed,
    /// The stale-plan error was swallowed; waiting for its ReadyForQuery.
    Failed,
    /// Its ReadyForQuery was swallowed too; the batch goes out again.
    Replay,
    /// This batch was retried once already.
    Spent,
    /// The error reached the client; the statement still has to be dropped on the server.
    Reported,
}

/// One batch's retry state.
#[derive(Debug, Default)]
pub struct StalePlanRetry {
    batch: Option<BytesMut>,
    state: State,
    describes_portal: bool,
}

impl StalePlanRetry {
    /// Keeps a copy of the batch at the front of `buf` if it is one a retry can repeat safely:
    /// it starts with a Bind (so nothing of it has run when the Bind fails), ends with a Sync
    /// already received, and is small.
    pub fn arm(&mut self, buf: &[u8], limit: usize) {
        self.batch = None;
        self.state = State::Idle;
        self.describes_portal = false;
        if buf.first() != Some(&b'B') {
            return;
        }
        let mut end = 0;
        while let Ok(Some(header)) = FrameHeader::peek(&buf[end..], limit) {
            if header.tag == b'D' && buf.get(end + 5) == Some(&b'P') {
                self.describes_portal = true;
            }
            end += header.total_len;
            if end > MAX_REPLAY {
                return;
            }
            if header.tag == b'S' {
                self.batch = Some(BytesMut::from(&buf[..end]));
                self.state = State::Armed;
                return;
            }
        }
    }

    /// Looks at one server message; true when it must be swallowed. `bind_failed` says whether
    /// an ErrorResponse answers the batch's Bind.
    pub fn on_server(&mut self, tag: u8, body: &[u8], bind_failed: bool) -> bool {
        match (self.state, tag) {
            (State::Armed, b'E') if bind_failed && ErrorFields::parse(body).code == STALE_PLAN => {
                if self.describes_portal {
                    self.state = State::Failed;
                    true
                } else {
                    self.state = State::Reported;
                    false
                }
            }
            (State::Failed, b'Z') => {
                self.state = State::Replay;
                true
            }
            (State::Failed, _) => true,
            (State::Armed | State::Spent, b'Z') => {
                self.batch = None;
                self.state = State::Idle;
                false
            }
            _ => false,
        }
    }

    /// The batch whose statement went stale, and whether to send it again: after its error
    /// and ReadyForQuery were swallowed (`true`), or after the error was reported (`false`).
    pub fn take_stale(&mut self) -> Option<(BytesMut, bool)> {
        let replay = match self.state {
            State::Replay => true,
            State::Reported => false,
            _ => return None,
        };
        self.state = if replay { State::Spent } else { State::Idle };
        self.batch.take().map(|batch| (batch, replay))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::messages::{Severity, error};

    const BATCH: &[u8] = b"B\0\0\0\x0c\0s1\0\0\0\0\0D\0\0\0\x06P\0E\0\0\0\x09\0\0\0\0\0S\0\0\0\x04";
    const NO_DESCRIBE: &[u8] = b"B\0\0\0\x0c\0s1\0\0\0\0\0E\0\0\0\x09\0\0\0\0\0S\0\0\0\x04";

    #[test]
    fn stale_plan_error_is_swallowed_and_the_batch_replayed_once() {
        let mut retry = StalePlanRetry::default();
        retry.arm(BATCH, 1 << 20);
        let stale = error(
            Severity::Error,
            "0A000",
            "cached plan must not change result type",
        );
        assert!(retry.on_server(b'E', &stale[5..], true));
        assert!(retry.on_server(b'Z', b"I", false));
        assert_eq!(retry.take_stale(), Some((BytesMut::from(BATCH), true)));
        assert!(!retry.on_server(b'E', &stale[5..], true), "only one retry");
        assert!(!retry.on_server(b'Z', b"I", false));
        assert!(retry.take_stale().is_none());
    }

    #[test]
    fn without_a_portal_description_the_error_is_reported_and_the_statement_dropped() {
        let mut retry = StalePlanRetry::default();
        retry.arm(NO_DESCRIBE, 1 << 20);
        let stale = error(
            Severity::Error,
            "0A000",
            "cached plan must not change result type",
        );
        assert!(!retry.on_server(b'E', &stale[5..], true));
        assert_eq!(
            retry.take_stale(),
            Some((BytesMut::from(NO_DESCRIBE), false))
        );
    }

    #[test]
    fn other_errors_and_other_batches_pass() {
        let mut retry = StalePlanRetry::default();
        retry.arm(BATCH, 1 << 20);
        let other = error(Severity::Error, "22012", "division by zero");
        assert!(!retry.on_server(b'E', &other[5..], true));
        let mut retry = StalePlanRetry::default();
        retry.arm(b"P\0\0\0\x08\0x\0\0\0S\0\0\0\x04", 1 << 20);
        let stale = error(
            Severity::Error,
            "0A000",
            "cached plan must not change result type",
        );
        assert!(!retry.on_server(b'E', &stale[5..], true));
    }
}
