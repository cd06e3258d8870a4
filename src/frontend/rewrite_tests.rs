//! The relay's rules, one test each, stated as what the client and the server see.

use bytes::{BufMut, Bytes, BytesMut};

use super::*;
use crate::frontend::statements::SERVER_NAME_PREFIX;
use crate::telemetry::Metrics;
use crate::wire::extended::{put_command_complete, put_message};
use crate::wire::messages::put_ready_for_query;

/// Everything a relay pass reads and updates for one client on one server connection.
struct Link {
    statements: ClientStatements,
    prepared: PreparedSet,
    known: KnownStatements,
    queue: ResponseQueue,
    tracker: Tracker,
    retry: StalePlanRetry,
    effects: Vec<Effect>,
    cycles: CycleLog,
    metrics: PoolMetrics,
    transaction_mode: bool,
}

impl Link {
    fn transaction_mode() -> Self {
        Self::new(true)
    }

    fn session_mode() -> Self {
        Self::new(false)
    }

    fn new(transaction_mode: bool) -> Self {
        Self {
            statements: ClientStatements::default(),
            prepared: PreparedSet::new(100),
            known: KnownStatements::default(),
            queue: ResponseQueue::default(),
            tracker: Tracker::default(),
            retry: StalePlanRetry::default(),
            effects: Vec::new(),
            cycles: CycleLog::new(false),
            metrics: Metrics::new().pool("app", "app", "db:5432"),
            transaction_mode,
        }
    }

    fn relay(&mut self) -> Relay<'_> {
        Relay {
            statements: &mut self.statements,
            prepared: &mut self.prepared,
            known: &self.known,
            queue: &mut self.queue,
            tracker: &mut self.tracker,
            retry: &mut self.retry,
            rename: self.transaction_mode,
            pinned: false,
            effects: &mut self.effects,
            cycles: &mut self.cycles,
            metrics: &self.metrics,
        }
    }

    /// The client sends `messages`: what goes to the server, and what the proxy answers itself.
    fn client_sends(&mut self, messages: &BytesMut) -> (Vec<Message>, Vec<Message>) {
        let mut buf = messages.clone();
        let chunk = self
            .relay()
            .take_client_messages(&mut buf, 1 << 20)
            .expect("well-formed client messages");
        assert!(buf.is_empty(), "every whole message is taken");
        let answered = self.relay().due_responses();
        (split(&chunk.to_server), split(&answered))
    }

    /// The server sends `messages`: what the client gets.
    fn server_sends(&mut self, messages: &BytesMut) -> Vec<Message> {
        let mut buf = messages.clone();
        let out = self
            .relay()
            .take_server_messages(&mut buf, |_| {})
            .expect("well-formed server messages");
        let mut out = split(&out);
        out.extend(split(&self.relay().due_responses()));
        out
    }

    /// Nothing is owed and no transaction is open: the connection could go back to the pool.
    fn is_releasable(&self) -> bool {
        self.tracker.is_idle() && self.queue.is_empty()
    }
}

/// One message: its type and body.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Message {
    tag: u8,
    body: Bytes,
}

impl Message {
    /// The statement a Parse defines or a Bind uses (the first name of a Parse, the second of a
    /// Bind).
    fn statement(&self) -> &str {
        let names = self
            .body
            .split(|b| *b == 0)
            .map(|n| std::str::from_utf8(n).unwrap());
        match self.tag {
            client::PARSE => names.take(1).last().unwrap(),
            client::BIND => names.take(2).last().unwrap(),
            other => panic!("{} names no statement", char::from(other)),
        }
    }
}

fn split(bytes: &[u8]) -> Vec<Message> {
    let mut messages = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        messages.push(Message {
            tag: rest[0],
            body: Bytes::copy_from_slice(&rest[5..=len]),
        });
        rest = &rest[len + 1..];
    }
    messages
}

fn tags(messages: &[Message]) -> String {
    messages.iter().map(|m| char::from(m.tag)).collect()
}

fn query(sql: &str) -> BytesMut {
    message(client::QUERY, format!("{sql}\0").as_bytes())
}

fn parse(name: &str, sql: &str) -> BytesMut {
    let mut tail = BytesMut::new();
    tail.put_slice(sql.as_bytes());
    tail.put_u8(0);
    tail.put_u16(0);
    let mut out = BytesMut::new();
    put_parse(&mut out, name, &tail);
    out
}

/// Bind of the unnamed portal to `statement`, no parameters, text results; Execute; Sync.
fn bind_execute_sync(statement: &str) -> BytesMut {
    let mut body = BytesMut::new();
    body.put_u8(0);
    body.put_slice(statement.as_bytes());
    body.put_u8(0);
    body.put_u16(0);
    body.put_u16(0);
    body.put_u16(0);
    let mut out = message(client::BIND, &body);
    out.extend_from_slice(&message(client::EXECUTE, &[0, 0, 0, 0, 0]));
    out.extend_from_slice(&message(client::SYNC, &[]));
    out
}

fn message(tag: u8, body: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    put_message(&mut out, tag, body);
    out
}

fn sync() -> BytesMut {
    message(client::SYNC, &[])
}

fn ready(status: u8) -> BytesMut {
    let mut out = BytesMut::new();
    put_ready_for_query(&mut out, status);
    out
}

fn complete(tag: &str) -> BytesMut {
    let mut out = BytesMut::new();
    put_command_complete(&mut out, tag);
    out
}

fn joined(parts: &[BytesMut]) -> BytesMut {
    parts.iter().fold(BytesMut::new(), |mut all, part| {
        all.extend_from_slice(part);
        all
    })
}

#[test]
fn a_simple_query_passes_unchanged_and_the_connection_is_free_after_ready_for_query_idle() {
    let mut link = Link::transaction_mode();
    let (to_server, answered) = link.client_sends(&query("SELECT 1"));
    assert_eq!(tags(&to_server), "Q");
    assert!(answered.is_empty());
    assert!(!link.is_releasable(), "the query is owed an answer");
    let row = message(server::DATA_ROW, b"\0\x01\0\0\0\x011");
    let to_client = link.server_sends(&joined(&[
        message(server::ROW_DESCRIPTION, b"\0\0"),
        row,
        complete("SELECT 1"),
        ready(status::IDLE),
    ]));
    assert_eq!(tags(&to_client), "TDCZ");
    assert!(link.is_releasable());
}

#[test]
fn a_transaction_block_keeps_the_connection_until_it_ends() {
    let mut link = Link::transaction_mode();
    link.client_sends(&query("BEGIN"));
    link.server_sends(&joined(&[complete("BEGIN"), ready(status::IN_TRANSACTION)]));
    assert!(!link.is_releasable(), "ReadyForQuery T: inside a block");
    link.client_sends(&query("COMMIT"));
    link.server_sends(&joined(&[complete("COMMIT"), ready(status::IDLE)]));
    assert!(link.is_releasable());
}

#[test]
fn a_named_statement_is_prepared_under_its_server_name() {
    let mut link = Link::transaction_mode();
    let (to_server, _) = link.client_sends(&joined(&[parse("s1", "SELECT 1"), sync()]));
    assert_eq!(tags(&to_server), "PS");
    assert!(
        to_server[0].statement().starts_with(SERVER_NAME_PREFIX),
        "the client's name never reaches a shared connection: {:?}",
        to_server[0].statement()
    );
    let to_client = link.server_sends(&joined(&[
        message(server::PARSE_COMPLETE, &[]),
        ready(status::IDLE),
    ]));
    assert_eq!(tags(&to_client), "1Z", "the client sees its ParseComplete");
}

#[test]
fn a_bind_on_a_connection_without_the_statement_prepares_it_first_unseen_by_the_client() {
    let mut first = Link::transaction_mode();
    first.client_sends(&joined(&[parse("s1", "SELECT 1"), sync()]));
    first.server_sends(&joined(&[
        message(server::PARSE_COMPLETE, &[]),
        ready(status::IDLE),
    ]));
    // The client's next transaction lands on another connection, which never saw s1.
    let mut other = Link::transaction_mode();
    other.statements = std::mem::take(&mut first.statements);
    let (to_server, _) = other.client_sends(&bind_execute_sync("s1"));
    assert_eq!(tags(&to_server), "PBES", "Parse injected ahead of the Bind");
    assert_eq!(to_server[0].statement(), to_server[1].statement());
    assert!(to_server[1].statement().starts_with(SERVER_NAME_PREFIX));
    let to_client = other.server_sends(&joined(&[
        message(server::PARSE_COMPLETE, &[]),
        message(server::BIND_COMPLETE, &[]),
        complete("SELECT 1"),
        ready(status::IDLE),
    ]));
    assert_eq!(
        tags(&to_client),
        "2CZ",
        "the injected Parse's ParseComplete is swallowed"
    );
    assert!(other.is_releasable());
}

#[test]
fn a_bind_on_a_connection_that_holds_the_statement_sends_no_parse() {
    let mut link = Link::transaction_mode();
    link.client_sends(&joined(&[parse("s1", "SELECT 1"), sync()]));
    link.server_sends(&joined(&[
        message(server::PARSE_COMPLETE, &[]),
        ready(status::IDLE),
    ]));
    let (to_server, _) = link.client_sends(&bind_execute_sync("s1"));
    assert_eq!(tags(&to_server), "BES");
}

#[test]
fn a_lone_deallocate_is_answered_by_the_proxy_and_never_reaches_the_server() {
    let mut link = Link::transaction_mode();
    link.client_sends(&joined(&[parse("s1", "SELECT 1"), sync()]));
    link.server_sends(&joined(&[
        message(server::PARSE_COMPLETE, &[]),
        ready(status::IDLE),
    ]));
    let (to_server, answered) = link.client_sends(&query("DEALLOCATE s1"));
    assert!(
        to_server.is_empty(),
        "the shared connection keeps its statements"
    );
    assert_eq!(tags(&answered), "CZ");
    assert_eq!(&answered[0].body[..], b"DEALLOCATE\0");
    assert!(
        link.statements.get("s1").is_none(),
        "the client's own name is gone"
    );
}

#[test]
fn in_session_mode_statement_names_pass_unchanged() {
    let mut link = Link::session_mode();
    let (to_server, _) = link.client_sends(&joined(&[parse("s1", "SELECT 1"), sync()]));
    assert_eq!(tags(&to_server), "PS");
    assert_eq!(to_server[0].statement(), "s1");
}

#[test]
fn a_completion_the_connection_does_not_owe_is_refused_not_forwarded() {
    let mut link = Link::transaction_mode();
    link.client_sends(&query("SELECT 1"));
    let mut buf = joined(&[message(server::BIND_COMPLETE, &[]), ready(status::IDLE)]);
    assert!(
        link.relay().take_server_messages(&mut buf, |_| {}).is_err(),
        "a BindComplete nobody asked for puts the connection out of sync"
    );
}

#[test]
fn a_set_is_noted_as_a_session_effect_for_the_session_to_apply() {
    let mut link = Link::transaction_mode();
    link.client_sends(&query("SET search_path TO app"));
    assert!(
        matches!(link.effects.as_slice(), [Effect::Set(name)] if name == "search_path"),
        "{:?}",
        link.effects
    );
}
