//! The responses a server connection owes the client, in order. Transaction pooling sometimes
//! sends the server a Parse or Close the client never sent (a statement missing on this
//! connection, an eviction) and sometimes answers a client message itself (a Parse the connection
//! already has, a Close of a shared statement); this queue says which server responses to
//! swallow and where the proxy's own responses go, so the client sees exactly what PostgreSQL
//! would have sent it.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::BytesMut;

use super::cycles::Cycle;

use crate::wire::extended::{put_command_complete, put_empty};
use crate::wire::messages::put_ready_for_query;
use crate::wire::tag::server;

/// Who a ParseComplete/CloseComplete is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The client sent the message; the response goes to it.
    Client,
    /// The proxy sent the message on its own; the response is swallowed.
    Injected,
    /// The proxy answers the client itself; the server is not involved.
    Synthetic,
}

/// One expected response.
#[derive(Debug)]
pub enum Expect {
    /// ParseComplete. `prepared` names the server-side statement this Parse creates.
    Parse {
        /// Whose response it is.
        origin: Origin,
        /// Server-side statement created by this Parse, if pgsidecar named it.
        prepared: Option<Arc<str>>,
    },
    /// BindComplete; the server-side statement bound, if pgsidecar named it.
    Bind(Option<Arc<str>>),
    /// ParameterDescription/RowDescription/NoData for a Describe; the server-side statement
    /// described, if pgsidecar named it.
    Describe(Option<Arc<str>>),
    /// The results of an Execute, up to CommandComplete/EmptyQuery/PortalSuspended.
    Execute,
    /// CloseComplete.
    Close {
        /// Whose response it is.
        origin: Origin,
    },
    /// ReadyForQuery for a Sync; the batch's query cycle.
    Sync(Option<Cycle>),
    /// Everything up to ReadyForQuery for a simple Query or FunctionCall; its query cycle.
    Query(Option<Cycle>),
    /// Where the client ended a COPY FROM STDIN (CopyDone/CopyFail); owes nothing, but marks
    /// which Syncs the server swallows while it is copying.
    CopyEnd,
    /// A simple Query the proxy answers itself with CommandComplete `tag` and ReadyForQuery.
    LocalCommand {
        /// Command tag, e.g. `DEALLOCATE`.
        tag: &'static str,
    },
}

impl Expect {
    fn is_synthetic(&self) -> bool {
        matches!(
            self,
            Self::Parse {
                origin: Origin::Synthetic,
                ..
            } | Self::Close {
                origin: Origin::Synthetic
            } | Self::LocalCommand { .. }
        )
    }
}

/// Server-side statements whose Parse the server answered.
#[derive(Debug, Default)]
pub struct PrepareOutcome {
    /// Created: the statement text is valid.
    pub created: Vec<Arc<str>>,
    /// Not created: the Parse failed or the server skipped it.
    pub failed: Vec<Arc<str>>,
}

/// What to do with one server message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it to the client.
    Forward,
    /// Drop it: it answers something the proxy sent on its own.
    Swallow,
    /// It answers nothing that was sent on this connection (a ParseComplete, BindComplete or
    /// CloseComplete with no such request owed): the connection is out of sync and must be
    /// discarded, never forwarded from.
    OutOfSync,
}

/// The queue of expected responses of one checkout.
#[derive(Debug, Default)]
pub struct ResponseQueue {
    entries: VecDeque<Expect>,
    /// The server is in COPY FROM STDIN and ignores Syncs until the client's CopyDone/CopyFail.
    copy_in: bool,
    /// The cycle the last ReadyForQuery ended.
    finished: Option<Cycle>,
}

impl ResponseQueue {
    /// Records that a message owing `expect` was sent (or is answered by the proxy).
    pub fn push(&mut self, expect: Expect) {
        match expect {
            Expect::Sync(_) if self.copy_in => {}
            Expect::CopyEnd if self.copy_in => self.copy_in = false,
            expect => self.entries.push_back(expect),
        }
    }

    /// The server started COPY FROM STDIN for the request at the front: the Syncs the client
    /// sent after that request and before ending the copy are ignored by the server.
    fn start_copy_in(&mut self) {
        let end = self
            .entries
            .iter()
            .skip(1)
            .position(|e| matches!(e, Expect::CopyEnd))
            .map(|i| i + 1);
        let stop = end.unwrap_or(self.entries.len());
        let mut index = 1;
        let mut remaining = stop;
        while index < remaining {
            if matches!(self.entries[index], Expect::Sync(_)) {
                self.entries.remove(index);
                remaining -= 1;
            } else {
                index += 1;
            }
        }
        match end {
            Some(_) => {
                self.entries.remove(remaining);
            }
            None => self.copy_in = true,
        }
    }

    /// The pgsidecar statement that the next response owed answers a Bind or Describe of: the
    /// statement an ErrorResponse now would be about.
    #[must_use]
    pub fn statement_in_question(&self) -> Option<&Arc<str>> {
        match self.entries.front() {
            Some(Expect::Bind(name) | Expect::Describe(name)) => name.as_ref(),
            _ => None,
        }
    }

    /// Whether an ErrorResponse now leaves the server discarding messages until a Sync the
    /// client has not sent yet (an error in an extended batch sent without Sync, e.g. after a
    /// Flush). Until that Sync is answered the connection must not serve anyone else.
    #[must_use]
    pub fn error_awaits_client_sync(&self) -> bool {
        !matches!(self.entries.front(), Some(Expect::Query(_)))
            && !self.entries.iter().any(|e| matches!(e, Expect::Sync(_)))
    }

    /// The query cycle the server is answering now: the one whose ReadyForQuery comes next.
    pub fn current_cycle(&mut self) -> Option<&mut Cycle> {
        self.entries.iter_mut().find_map(|e| match e {
            Expect::Sync(cycle) | Expect::Query(cycle) => Some(cycle.as_mut()),
            _ => None,
        })?
    }

    /// The cycle ended by the ReadyForQuery just accounted for.
    pub fn take_finished(&mut self) -> Option<Cycle> {
        self.finished.take()
    }

    /// Nothing is owed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the proxy's own responses that are now due (everything before them has been
    /// answered). `status` is the transaction status a local ReadyForQuery reports.
    pub fn emit_due(&mut self, out: &mut BytesMut, status: u8) {
        while self.entries.front().is_some_and(Expect::is_synthetic) {
            match self.entries.pop_front() {
                Some(Expect::Parse { .. }) => put_empty(out, server::PARSE_COMPLETE),
                Some(Expect::Close { .. }) => put_empty(out, server::CLOSE_COMPLETE),
                Some(Expect::LocalCommand { tag }) => {
                    put_command_complete(out, tag);
                    put_ready_for_query(out, status);
                }
                _ => {}
            }
        }
    }

    /// Accounts for one server message, noting in `outcome` which server-side statements were
    /// created and which were not (their Parse failed or was skipped after an error).
    pub fn on_server(&mut self, tag: u8, outcome: &mut PrepareOutcome) -> Verdict {
        if !self.owes(tag) {
            return Verdict::OutOfSync;
        }
        match tag {
            server::PARSE_COMPLETE => {
                if let Some(Expect::Parse { origin, prepared }) =
                    self.pop_matching(|e| matches!(e, Expect::Parse { .. }))
                {
                    outcome.created.extend(prepared);
                    if origin == Origin::Injected {
                        return Verdict::Swallow;
                    }
                }
            }
            server::BIND_COMPLETE => {
                self.pop_matching(|e| matches!(e, Expect::Bind(_)));
            }
            server::CLOSE_COMPLETE => {
                if let Some(Expect::Close { origin }) =
                    self.pop_matching(|e| matches!(e, Expect::Close { .. }))
                {
                    if origin == Origin::Injected {
                        return Verdict::Swallow;
                    }
                }
            }
            server::ROW_DESCRIPTION | server::NO_DATA => {
                if matches!(self.entries.front(), Some(Expect::Describe(_))) {
                    self.entries.pop_front();
                }
            }
            server::COMMAND_COMPLETE | server::EMPTY_QUERY_RESPONSE | server::PORTAL_SUSPENDED => {
                if matches!(self.entries.front(), Some(Expect::Execute)) {
                    self.entries.pop_front();
                }
            }
            server::ERROR_RESPONSE => self.on_error(&mut outcome.failed),
            server::COPY_IN_RESPONSE => self.start_copy_in(),
            server::READY_FOR_QUERY => {
                self.copy_in = false;
                while let Some(entry) = self.entries.pop_front() {
                    if let Expect::Sync(cycle) | Expect::Query(cycle) = entry {
                        self.finished = cycle;
                        break;
                    }
                }
            }
            _ => {}
        }
        Verdict::Forward
    }

    /// The server skips everything up to the next Sync after an error in an extended batch.
    fn on_error(&mut self, unprepared: &mut Vec<Arc<str>>) {
        if matches!(self.entries.front(), Some(Expect::Query(_))) {
            return;
        }
        while let Some(entry) = self.entries.front() {
            if matches!(entry, Expect::Sync(_) | Expect::Query(_)) {
                break;
            }
            if let Some(Expect::Parse {
                origin: Origin::Client | Origin::Injected,
                prepared: Some(name),
            }) = self.entries.pop_front()
            {
                unprepared.push(name);
            }
        }
    }

    /// Whether a ParseComplete, BindComplete or CloseComplete answers a request still owed
    /// (every other message is judged elsewhere or carries no such promise).
    fn owes(&self, tag: u8) -> bool {
        let answers = |e: &Expect| match tag {
            server::PARSE_COMPLETE => matches!(e, Expect::Parse { .. }),
            server::BIND_COMPLETE => matches!(e, Expect::Bind(_)),
            server::CLOSE_COMPLETE => matches!(e, Expect::Close { .. }),
            _ => true,
        };
        !matches!(
            tag,
            server::PARSE_COMPLETE | server::BIND_COMPLETE | server::CLOSE_COMPLETE
        ) || self.entries.iter().any(answers)
    }

    fn pop_matching(&mut self, wanted: impl Fn(&Expect) -> bool) -> Option<Expect> {
        if self.entries.front().is_some_and(&wanted) {
            self.entries.pop_front()
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tag::status;

    fn parse(origin: Origin) -> Expect {
        Expect::Parse {
            origin,
            prepared: Some("pgsc_a".into()),
        }
    }

    #[test]
    fn injected_parse_is_swallowed_and_synthetic_parse_emitted_in_place() {
        let mut queue = ResponseQueue::default();
        let mut gone = PrepareOutcome::default();
        queue.push(Expect::Bind(None));
        queue.push(Expect::Execute);
        queue.push(parse(Origin::Synthetic));
        queue.push(parse(Origin::Injected));
        queue.push(Expect::Bind(None));
        queue.push(Expect::Sync(None));
        let mut out = BytesMut::new();
        queue.emit_due(&mut out, status::IDLE);
        assert!(
            out.is_empty(),
            "the synthetic ParseComplete waits for the Execute"
        );
        assert_eq!(
            queue.on_server(server::BIND_COMPLETE, &mut gone),
            Verdict::Forward
        );
        assert_eq!(
            queue.on_server(server::DATA_ROW, &mut gone),
            Verdict::Forward
        );
        assert_eq!(
            queue.on_server(server::COMMAND_COMPLETE, &mut gone),
            Verdict::Forward
        );
        queue.emit_due(&mut out, status::IDLE);
        assert_eq!(&out[..], b"1\0\0\0\x04");
        assert_eq!(
            queue.on_server(server::PARSE_COMPLETE, &mut gone),
            Verdict::Swallow
        );
        assert_eq!(
            queue.on_server(server::BIND_COMPLETE, &mut gone),
            Verdict::Forward
        );
        assert_eq!(
            queue.on_server(server::READY_FOR_QUERY, &mut gone),
            Verdict::Forward
        );
        assert!(queue.is_empty() && gone.failed.is_empty());
        assert_eq!(gone.created.len(), 1);
    }

    #[test]
    fn a_completion_nobody_asked_for_means_the_connection_is_out_of_sync() {
        let mut queue = ResponseQueue::default();
        let mut gone = PrepareOutcome::default();
        queue.push(Expect::Execute);
        queue.push(Expect::Sync(None));
        for unasked in [
            server::PARSE_COMPLETE,
            server::BIND_COMPLETE,
            server::CLOSE_COMPLETE,
        ] {
            assert_eq!(queue.on_server(unasked, &mut gone), Verdict::OutOfSync);
        }
        assert_eq!(
            queue.on_server(server::COMMAND_COMPLETE, &mut gone),
            Verdict::Forward,
            "results are judged by what they complete, not here"
        );
    }

    #[test]
    fn error_skips_to_sync_and_reports_unprepared_statements() {
        let mut queue = ResponseQueue::default();
        let mut gone = PrepareOutcome::default();
        queue.push(Expect::Bind(None));
        queue.push(parse(Origin::Synthetic));
        queue.push(parse(Origin::Client));
        queue.push(Expect::Sync(None));
        queue.push(Expect::Bind(None));
        queue.push(Expect::Sync(None));
        assert_eq!(
            queue.on_server(server::ERROR_RESPONSE, &mut gone),
            Verdict::Forward
        );
        let mut out = BytesMut::new();
        queue.emit_due(&mut out, status::IDLE);
        assert!(out.is_empty(), "a skipped Parse gets no ParseComplete");
        assert_eq!(gone.failed, vec![Arc::<str>::from("pgsc_a")]);
        queue.on_server(server::READY_FOR_QUERY, &mut gone);
        queue.on_server(server::BIND_COMPLETE, &mut gone);
        queue.on_server(server::READY_FOR_QUERY, &mut gone);
        assert!(queue.is_empty());
    }

    #[test]
    fn syncs_sent_during_copy_in_are_not_answered() {
        let mut gone = PrepareOutcome::default();
        // B E S d c S, all sent before the server's CopyInResponse.
        let mut queue = ResponseQueue::default();
        for e in [
            Expect::Bind(None),
            Expect::Execute,
            Expect::Sync(None),
            Expect::CopyEnd,
            Expect::Sync(None),
        ] {
            queue.push(e);
        }
        for tag in b"2GCZ" {
            queue.on_server(*tag, &mut gone);
        }
        assert!(queue.is_empty());
        // B E S, CopyInResponse, then d S c S.
        let mut queue = ResponseQueue::default();
        for e in [Expect::Bind(None), Expect::Execute, Expect::Sync(None)] {
            queue.push(e);
        }
        queue.on_server(server::BIND_COMPLETE, &mut gone);
        queue.on_server(server::COPY_IN_RESPONSE, &mut gone);
        for e in [Expect::Sync(None), Expect::CopyEnd, Expect::Sync(None)] {
            queue.push(e);
        }
        queue.on_server(server::COMMAND_COMPLETE, &mut gone);
        assert!(!queue.is_empty());
        queue.on_server(server::READY_FOR_QUERY, &mut gone);
        assert!(queue.is_empty());
    }

    #[test]
    fn errors_inside_a_simple_query_wait_for_its_ready() {
        let mut queue = ResponseQueue::default();
        let mut gone = PrepareOutcome::default();
        queue.push(Expect::Query(None));
        queue.push(Expect::LocalCommand { tag: "DEALLOCATE" });
        queue.on_server(server::ROW_DESCRIPTION, &mut gone);
        queue.on_server(server::ERROR_RESPONSE, &mut gone);
        queue.on_server(server::READY_FOR_QUERY, &mut gone);
        let mut out = BytesMut::new();
        queue.emit_due(&mut out, status::IN_TRANSACTION);
        assert_eq!(&out[..], b"C\0\0\0\x0fDEALLOCATE\0Z\0\0\0\x05T");
    }
}
