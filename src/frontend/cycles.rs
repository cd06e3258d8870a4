//! Query cycles: a simple Query, or an extended batch up to its Sync, from the moment the
//! request reached the proxy to its ReadyForQuery. Each cycle rides in the response queue on the
//! entry its ReadyForQuery answers, so COPY-swallowed Syncs and stale-plan replays keep the
//! accounting straight; finished cycles wait in the log until the session reports them.
//!
//! A log lives for one checkout of a server connection (an idle session holds none). The SQL
//! text is kept only when spans are exported, in buffers recycled from cycle to cycle, so that a
//! session reporting only metrics allocates nothing per query.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::wire::messages::{command_rows, error_code};
use crate::wire::tag::{server, status};

/// Named statements remembered for span text in session mode, before the map is reset.
const MAX_NAMED: usize = 1024;

/// The largest query-text buffer a session keeps between transactions.
const KEPT_BUFFER_MAX: usize = 4096;

/// Where a cycle's SQL text is.
#[derive(Debug, Default)]
enum Text {
    #[default]
    Unknown,
    /// Copied from a Query or Parse into a recycled buffer.
    Owned(Vec<u8>),
    /// The text of a named statement, shared with its definition.
    Shared(Bytes),
}

/// One query cycle.
#[derive(Debug)]
pub struct Cycle {
    /// When the request reached the proxy.
    pub started: Instant,
    /// Of which waiting for a server connection.
    pub wait: Duration,
    /// When it was forwarded to the server.
    pub sent: Instant,
    /// When its ReadyForQuery arrived.
    pub finished: Instant,
    text: Text,
    /// A Query, or a batch with an Execute (not just Parse/Describe).
    pub runs_sql: bool,
    /// Rows from the command tags.
    pub rows: u64,
    /// The first error's SQLSTATE.
    pub sqlstate: Option<[u8; 5]>,
    /// The transaction status of its ReadyForQuery.
    pub status: u8,
}

impl Cycle {
    fn new(now: Instant) -> Self {
        Self {
            started: now,
            wait: Duration::ZERO,
            sent: now,
            finished: now,
            text: Text::Unknown,
            runs_sql: false,
            rows: 0,
            sqlstate: None,
            status: status::IDLE,
        }
    }

    /// The SQL, if it was kept.
    #[must_use]
    pub fn sql(&self) -> &[u8] {
        match &self.text {
            Text::Unknown => &[],
            Text::Owned(text) => text,
            Text::Shared(text) => text,
        }
    }

    /// The SQLSTATE as text.
    #[must_use]
    pub fn sqlstate(&self) -> Option<&str> {
        self.sqlstate
            .as_ref()
            .and_then(|code| std::str::from_utf8(code).ok())
    }

    /// Server time: forwarding to ReadyForQuery.
    #[must_use]
    pub fn server_time(&self) -> Duration {
        self.finished.saturating_duration_since(self.sent)
    }

    /// Accounts for a CommandComplete or ErrorResponse of this cycle.
    pub fn on_server(&mut self, tag: u8, body: &[u8]) {
        match tag {
            server::COMMAND_COMPLETE => self.rows += command_rows(body),
            server::ERROR_RESPONSE if self.sqlstate.is_none() => self.sqlstate = error_code(body),
            _ => {}
        }
    }
}

/// The cycles of one session.
#[derive(Debug)]
pub struct CycleLog {
    /// Keep SQL text (spans are exported).
    capture: bool,
    /// The extended batch being received, up to its Sync.
    building: Option<Cycle>,
    /// A cycle whose batch is being replayed after a hidden stale-plan error.
    carried: Option<Cycle>,
    replaying: bool,
    /// The pending request's arrival and pool wait, for the next cycle.
    request: Option<(Instant, Duration)>,
    /// The oldest finished cycle not yet reported: held inline, as a transaction usually
    /// finishes one cycle at a time, so that reporting allocates nothing.
    done: Option<Cycle>,
    /// Further finished cycles of a pipeline, after `done`.
    more_done: VecDeque<Cycle>,
    /// Text buffers free for the next cycles.
    spare: Vec<Vec<u8>>,
    /// Session mode: statement texts by client name.
    named: HashMap<Box<str>, Bytes>,
}

impl CycleLog {
    /// A log that keeps SQL text when `capture` is set.
    #[must_use]
    pub fn new(capture: bool) -> Self {
        Self {
            capture,
            building: None,
            carried: None,
            replaying: false,
            request: None,
            done: None,
            more_done: VecDeque::new(),
            spare: Vec::new(),
            named: HashMap::new(),
        }
    }

    /// Whether SQL text is kept.
    #[must_use]
    pub fn captures_text(&self) -> bool {
        self.capture
    }

    /// The client's next request arrived at `at` and waited `wait` for a server connection.
    pub fn note_request(&mut self, at: Instant, wait: Duration) {
        self.request = Some((at, wait));
    }

    fn fresh(&mut self, now: Instant) -> Cycle {
        let mut cycle = Cycle::new(now);
        if let Some((at, wait)) = self.request.take() {
            cycle.started = at;
            cycle.wait = wait;
        }
        cycle
    }

    fn copied(&mut self, text: &[u8]) -> Text {
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(text);
        Text::Owned(buf)
    }

    /// A simple Query was forwarded: its cycle, for the response queue.
    pub fn query(&mut self, sql: &[u8], now: Instant) -> Option<Cycle> {
        if self.replaying {
            return self.carried.take();
        }
        let mut cycle = self.fresh(now);
        cycle.runs_sql = true;
        if self.capture {
            cycle.text = self.copied(sql);
        }
        Some(cycle)
    }

    fn building(&mut self, now: Instant) -> Option<&mut Cycle> {
        if self.replaying {
            return None;
        }
        if self.building.is_none() {
            self.building = Some(self.fresh(now));
        }
        self.building.as_mut()
    }

    /// A Parse was forwarded (or answered locally); `name` is the client's statement name.
    pub fn parse(&mut self, name: &str, sql: &[u8], session_mode: bool, now: Instant) {
        if !self.capture {
            self.building(now);
            return;
        }
        if session_mode && !name.is_empty() {
            if self.named.len() >= MAX_NAMED {
                self.named.clear();
            }
            self.named.insert(name.into(), Bytes::copy_from_slice(sql));
        }
        if self
            .building(now)
            .is_some_and(|c| matches!(c.text, Text::Unknown))
        {
            let text = self.copied(sql);
            if let Some(cycle) = self.building.as_mut() {
                cycle.text = text;
            }
        }
    }

    /// A Bind was forwarded; `statement` is the named statement's text when the caller knows it.
    pub fn bind(&mut self, name: &str, statement: Option<Bytes>, now: Instant) {
        let capture = self.capture;
        let remembered = (capture && statement.is_none() && !name.is_empty())
            .then(|| self.named.get(name).cloned())
            .flatten();
        if let Some(cycle) = self.building(now)
            && capture
            && matches!(cycle.text, Text::Unknown)
            && let Some(text) = statement.or(remembered)
        {
            cycle.text = Text::Shared(text);
        }
    }

    /// An Execute was forwarded.
    pub fn execute(&mut self, now: Instant) {
        if let Some(cycle) = self.building(now) {
            cycle.runs_sql = true;
        }
    }

    /// Any other extended-protocol message was forwarded.
    pub fn other(&mut self, now: Instant) {
        self.building(now);
    }

    /// A Sync was forwarded: the batch's cycle, for the response queue.
    pub fn sync(&mut self, now: Instant) -> Option<Cycle> {
        if self.replaying {
            return self.carried.take();
        }
        Some(self.building.take().unwrap_or_else(|| self.fresh(now)))
    }

    /// A session-mode client closed a named statement.
    pub fn forget(&mut self, name: &str) {
        self.named.remove(name);
    }

    /// The ReadyForQuery of `cycle` arrived with transaction status `status`; `hidden` means
    /// the proxy hid it and replays the batch, so the cycle goes on.
    pub fn finish(&mut self, mut cycle: Cycle, status: u8, hidden: bool, now: Instant) {
        if hidden {
            self.carried = Some(cycle);
            return;
        }
        cycle.finished = now;
        cycle.status = status;
        if self.done.is_none() && self.more_done.is_empty() {
            self.done = Some(cycle);
        } else {
            self.more_done.push_back(cycle);
        }
    }

    /// Starts or ends the replay of a batch: its messages belong to the carried cycle.
    pub fn set_replaying(&mut self, replaying: bool) {
        self.replaying = replaying;
    }

    /// The next finished cycle to report.
    pub fn next_done(&mut self) -> Option<Cycle> {
        self.done.take().or_else(|| self.more_done.pop_front())
    }

    /// Gives the log text buffers kept from an earlier transaction.
    pub fn lend_buffers(&mut self, buffers: Vec<Vec<u8>>) {
        self.spare = buffers;
    }

    /// The text buffers free now, for the session to keep until its next transaction: a traced
    /// session then copies each query's text without allocating. A buffer grown past
    /// [`KEPT_BUFFER_MAX`] by a long statement is freed instead, so that an idle session never
    /// holds one.
    pub fn take_buffers(&mut self) -> Vec<Vec<u8>> {
        let mut buffers = std::mem::take(&mut self.spare);
        buffers.retain(|buf| buf.capacity() <= KEPT_BUFFER_MAX);
        buffers
    }

    /// Takes a reported cycle's buffer back for the next one.
    pub fn recycle(&mut self, cycle: Cycle) {
        if let Text::Owned(buf) = cycle.text
            && self.spare.len() < 4
        {
            self.spare.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extended_batch_takes_text_from_parse_and_counts_rows() {
        let mut log = CycleLog::new(true);
        let t0 = Instant::now();
        log.note_request(t0, Duration::from_millis(3));
        log.parse("", b"SELECT $1", false, t0);
        log.bind("", None, t0);
        log.execute(t0);
        let mut cycle = log.sync(t0).unwrap();
        assert_eq!(cycle.sql(), b"SELECT $1");
        assert!(cycle.runs_sql);
        assert_eq!(cycle.wait, Duration::from_millis(3));
        cycle.on_server(server::COMMAND_COMPLETE, b"SELECT 4\0");
        cycle.on_server(server::ERROR_RESPONSE, b"SERROR\0C42P01\0Mno\0\0");
        cycle.on_server(server::ERROR_RESPONSE, b"SERROR\0C25P02\0Mno\0\0");
        log.finish(cycle, status::IDLE, false, t0);
        let done = log.next_done().unwrap();
        assert_eq!(done.rows, 4);
        assert_eq!(done.sqlstate(), Some("42P01"));
        log.recycle(done);
        assert!(log.query(b"SELECT 1", t0).unwrap().sql() == b"SELECT 1");
    }

    #[test]
    fn a_transaction_hands_its_text_buffers_to_the_next() {
        let t0 = Instant::now();
        let mut first = CycleLog::new(true);
        let cycle = first
            .query(b"SELECT * FROM documents WHERE id = 1", t0)
            .unwrap();
        first.finish(cycle, status::IDLE, false, t0);
        let done = first.next_done().unwrap();
        let held = done.sql().as_ptr();
        first.recycle(done);
        let buffers = first.take_buffers();
        assert_eq!(buffers.len(), 1);
        let mut next = CycleLog::new(true);
        next.lend_buffers(buffers);
        let cycle = next.query(b"SELECT 2", t0).unwrap();
        assert_eq!(cycle.sql(), b"SELECT 2");
        assert_eq!(
            cycle.sql().as_ptr(),
            held,
            "the text went into the kept buffer"
        );
        let long = vec![b'x'; KEPT_BUFFER_MAX + 1];
        let cycle = next.query(&long, t0).unwrap();
        next.finish(cycle, status::IDLE, false, t0);
        let done = next.next_done().unwrap();
        next.recycle(done);
        assert!(
            next.take_buffers().is_empty(),
            "a long text's buffer is freed"
        );
    }

    #[test]
    fn pipelined_cycles_are_reported_in_the_order_they_finished() {
        let mut log = CycleLog::new(true);
        let t0 = Instant::now();
        let first = log.query(b"SELECT 1", t0).unwrap();
        let second = log.query(b"SELECT 2", t0).unwrap();
        let third = log.query(b"SELECT 3", t0).unwrap();
        log.finish(first, status::IDLE, false, t0);
        log.finish(second, status::IDLE, false, t0);
        assert_eq!(log.next_done().unwrap().sql(), b"SELECT 1");
        log.finish(third, status::IDLE, false, t0);
        assert_eq!(log.next_done().unwrap().sql(), b"SELECT 2");
        assert_eq!(log.next_done().unwrap().sql(), b"SELECT 3");
        assert!(log.next_done().is_none());
    }

    #[test]
    fn session_mode_remembers_named_statements_and_replays_keep_the_cycle() {
        let mut log = CycleLog::new(true);
        let t0 = Instant::now();
        log.parse("s1", b"SELECT 2", true, t0);
        let prepare = log.sync(t0).unwrap();
        assert!(!prepare.runs_sql);
        log.bind("s1", None, t0);
        log.execute(t0);
        let cycle = log.sync(t0).unwrap();
        assert_eq!(cycle.sql(), b"SELECT 2");
        log.finish(cycle, status::IDLE, true, t0);
        assert!(log.next_done().is_none());
        log.set_replaying(true);
        log.bind("s1", None, t0);
        let replayed = log.sync(t0).unwrap();
        log.set_replaying(false);
        assert_eq!(replayed.sql(), b"SELECT 2");
    }

    #[test]
    fn without_capture_no_text_is_kept() {
        let mut log = CycleLog::new(false);
        let t0 = Instant::now();
        assert!(log.query(b"SELECT 1", t0).unwrap().sql().is_empty());
    }
}
