//! Where one client/server conversation stands, from the message tags alone: the proxy may hand
//! the server connection back only when every Query and Sync has its ReadyForQuery, the server
//! is idle (`I`), no COPY is in progress and no extended-protocol batch is half sent.

/// Protocol position of one checkout. The flags are independent facts of the protocol, not a
/// state enum in disguise.
#[derive(Debug, Clone)]
#[allow(clippy::struct_excessive_bools)]
pub struct Tracker {
    /// Query, Sync and FunctionCall messages sent and not yet answered by ReadyForQuery.
    pending: usize,
    /// Syncs sent since the last Execute/Query and before any CopyDone/CopyFail: if that
    /// Execute turns out to be `COPY FROM STDIN`, the server swallows them.
    swallowable_syncs: usize,
    copy_end_sent: bool,
    /// Extended-protocol messages sent since the last Sync.
    open_batch: bool,
    status: u8,
    copy_in: bool,
    copy_out: bool,
}

impl Default for Tracker {
    fn default() -> Self {
        Self {
            pending: 0,
            swallowable_syncs: 0,
            copy_end_sent: false,
            open_batch: false,
            status: b'I',
            copy_in: false,
            copy_out: false,
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
            b'Q' | b'F' => {
                self.pending += 1;
                self.swallowable_syncs = 0;
                self.copy_end_sent = false;
            }
            b'E' => {
                self.open_batch = true;
                self.swallowable_syncs = 0;
                self.copy_end_sent = false;
            }
            b'P' | b'B' | b'D' | b'C' => self.open_batch = true,
            b'S' if !self.copy_in => {
                self.pending += 1;
                self.open_batch = false;
                if !self.copy_end_sent {
                    self.swallowable_syncs += 1;
                }
            }
            b'c' | b'f' => {
                self.copy_in = false;
                self.copy_end_sent = true;
            }
            _ => {}
        }
    }

    /// Accounts for a message forwarded from the server.
    pub fn server_message(&mut self, tag: u8, body: &[u8]) {
        match tag {
            b'Z' => {
                self.pending = self.pending.saturating_sub(1);
                self.status = body.first().copied().unwrap_or(b'I');
                self.copy_in = false;
                self.copy_out = false;
            }
            b'G' => {
                if !self.copy_end_sent {
                    self.copy_in = true;
                }
                self.pending = self.pending.saturating_sub(self.swallowable_syncs);
                self.swallowable_syncs = 0;
            }
            b'H' => self.copy_out = true,
            b'W' => {
                self.copy_in = true;
                self.copy_out = true;
            }
            b'c' => self.copy_out = false,
            _ => {}
        }
    }

    /// Nothing is in flight: every request answered, no COPY, no half-sent batch.
    #[must_use]
    pub fn is_quiet(&self) -> bool {
        self.pending == 0 && !self.open_batch && !self.copy_in && !self.copy_out
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

    /// Quiet and outside any transaction block: the connection may serve someone else.
    #[must_use]
    pub fn is_idle(&self) -> bool {
        self.is_quiet() && self.status == b'I'
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(t: &mut Tracker, tags: &[u8]) {
        for tag in tags {
            t.client_message(*tag);
        }
    }

    #[test]
    fn pipelined_syncs_release_after_the_last_ready() {
        let mut t = Tracker::default();
        client(&mut t, b"PBESPBES");
        t.server_message(b'Z', b"I");
        assert!(!t.is_idle());
        t.server_message(b'Z', b"I");
        assert!(t.is_idle());
    }

    #[test]
    fn half_sent_batch_holds_the_connection() {
        let mut t = Tracker::default();
        client(&mut t, b"PBESPBE");
        t.server_message(b'Z', b"I");
        assert!(!t.is_idle());
        client(&mut t, b"S");
        t.server_message(b'Z', b"I");
        assert!(t.is_idle());
    }

    #[test]
    fn transaction_block_holds_the_connection() {
        let mut t = Tracker::default();
        client(&mut t, b"Q");
        t.server_message(b'Z', b"T");
        assert!(t.is_quiet() && !t.is_idle());
        client(&mut t, b"Q");
        t.server_message(b'Z', b"I");
        assert!(t.is_idle());
    }

    #[test]
    fn extended_copy_in_swallows_the_early_sync() {
        let mut t = Tracker::default();
        client(&mut t, b"BES");
        t.server_message(b'G', b"");
        assert!(!t.is_quiet());
        client(&mut t, b"ddS");
        client(&mut t, b"cS");
        t.server_message(b'C', b"");
        t.server_message(b'Z', b"I");
        assert!(t.is_idle());
    }

    #[test]
    fn fully_pipelined_copy_counts_only_the_late_sync() {
        let mut t = Tracker::default();
        client(&mut t, b"BESdcS");
        t.server_message(b'G', b"");
        t.server_message(b'C', b"");
        assert!(!t.is_idle());
        t.server_message(b'Z', b"I");
        assert!(t.is_idle());
    }

    #[test]
    fn simple_copy_out() {
        let mut t = Tracker::default();
        client(&mut t, b"Q");
        t.server_message(b'H', b"");
        t.server_message(b'd', b"");
        assert!(!t.is_quiet());
        t.server_message(b'c', b"");
        t.server_message(b'C', b"");
        t.server_message(b'Z', b"I");
        assert!(t.is_idle());
    }
}
