//! What the response queue does not say about a conversation: whether the client has sent
//! extended-protocol messages it has not synced yet, and the transaction status of the last
//! ReadyForQuery. Together with an empty [`super::responses::ResponseQueue`] (every request
//! answered, no COPY in progress) they decide when a server connection may be handed back.

use crate::wire::tag::{client, server, status};

/// Batch and transaction position of one checkout.
#[derive(Debug, Clone)]
pub struct Tracker {
    /// Extended-protocol messages were sent since the last Sync, or an error made the server
    /// wait for a Sync the client has not sent yet.
    open_batch: bool,
    status: u8,
}

impl Default for Tracker {
    fn default() -> Self {
        Self {
            open_batch: false,
            status: status::IDLE,
        }
    }
}

/// Whether a byte is a message type a client may send after startup. A PasswordMessage (`p`) is
/// not: after login the server would answer it with FATAL and close, which must not happen on a
/// connection the proxy is about to hand to someone else.
#[must_use]
pub fn is_frontend_tag(tag: u8) -> bool {
    matches!(
        tag,
        client::QUERY
            | client::PARSE
            | client::BIND
            | client::EXECUTE
            | client::DESCRIBE
            | client::CLOSE
            | client::SYNC
            | client::FLUSH
            | client::FUNCTION_CALL
            | client::COPY_DATA
            | client::COPY_DONE
            | client::COPY_FAIL
            | client::TERMINATE
    )
}

impl Tracker {
    /// Accounts for a message forwarded from the client.
    pub fn client_message(&mut self, tag: u8) {
        match tag {
            client::PARSE | client::BIND | client::DESCRIBE | client::CLOSE | client::EXECUTE => {
                self.open_batch = true;
            }
            client::SYNC => self.open_batch = false,
            _ => {}
        }
    }

    /// Accounts for a message forwarded from the server.
    pub fn server_message(&mut self, tag: u8, body: &[u8]) {
        if tag == server::READY_FOR_QUERY {
            self.status = body.first().copied().unwrap_or(status::IDLE);
        }
    }

    /// The server discards messages until the client's next Sync (after an error in an
    /// extended batch the client has not synced yet).
    pub fn await_sync(&mut self) {
        self.open_batch = true;
    }

    /// The transaction status of the last ReadyForQuery (`I`, `T` or `E`).
    #[must_use]
    pub fn status(&self) -> u8 {
        self.status
    }

    /// No extended batch is waiting for its Sync.
    #[must_use]
    pub fn is_synced(&self) -> bool {
        !self.open_batch
    }

    /// Synced and outside any transaction block.
    #[must_use]
    pub fn is_idle(&self) -> bool {
        !self.open_batch && self.status == status::IDLE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_sent_batch_is_not_idle() {
        let mut t = Tracker::default();
        for tag in [client::PARSE, client::BIND, client::EXECUTE] {
            t.client_message(tag);
        }
        assert!(!t.is_idle());
        t.client_message(client::SYNC);
        assert!(t.is_idle());
    }

    #[test]
    fn transaction_block_is_not_idle() {
        let mut t = Tracker::default();
        t.client_message(client::QUERY);
        t.server_message(server::READY_FOR_QUERY, &[status::IN_TRANSACTION]);
        assert!(t.is_synced() && !t.is_idle());
        t.server_message(server::READY_FOR_QUERY, &[status::IDLE]);
        assert!(t.is_idle());
    }

    #[test]
    fn error_before_the_sync_waits_for_it() {
        let mut t = Tracker::default();
        t.client_message(client::FLUSH);
        t.await_sync();
        assert!(!t.is_idle());
        t.client_message(client::SYNC);
        assert!(t.is_idle());
    }
}
