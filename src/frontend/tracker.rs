//! What the response queue does not say about a conversation: whether the client has sent
//! extended-protocol messages it has not synced yet, and the transaction status of the last
//! ReadyForQuery. Together with an empty [`super::responses::ResponseQueue`] (every request
//! answered, no COPY in progress) they decide when a server connection may be handed back.

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
            status: b'I',
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
        b'Q' | b'P' | b'B' | b'E' | b'D' | b'C' | b'S' | b'H' | b'F' | b'd' | b'c' | b'f' | b'X'
    )
}

impl Tracker {
    /// Accounts for a message forwarded from the client.
    pub fn client_message(&mut self, tag: u8) {
        match tag {
            b'P' | b'B' | b'D' | b'C' | b'E' => self.open_batch = true,
            b'S' => self.open_batch = false,
            _ => {}
        }
    }

    /// Accounts for a message forwarded from the server.
    pub fn server_message(&mut self, tag: u8, body: &[u8]) {
        if tag == b'Z' {
            self.status = body.first().copied().unwrap_or(b'I');
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
        !self.open_batch && self.status == b'I'
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_sent_batch_is_not_idle() {
        let mut t = Tracker::default();
        for tag in b"PBE" {
            t.client_message(*tag);
        }
        assert!(!t.is_idle());
        t.client_message(b'S');
        assert!(t.is_idle());
    }

    #[test]
    fn transaction_block_is_not_idle() {
        let mut t = Tracker::default();
        t.client_message(b'Q');
        t.server_message(b'Z', b"T");
        assert!(t.is_synced() && !t.is_idle());
        t.server_message(b'Z', b"I");
        assert!(t.is_idle());
    }

    #[test]
    fn error_before_the_sync_waits_for_it() {
        let mut t = Tracker::default();
        t.client_message(b'H');
        t.await_sync();
        assert!(!t.is_idle());
        t.client_message(b'S');
        assert!(t.is_idle());
    }
}
