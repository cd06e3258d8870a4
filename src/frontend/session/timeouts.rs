//! The limits on how long a client may hold or wait, with PgBouncer's meanings and PostgreSQL's
//! SQLSTATEs: which one applies depends on what the session is waiting for, and the transaction
//! limit applies on top of the others while a transaction is open.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::SessionTimeouts;
use crate::wire::sqlstate;

/// What a session is waiting for, which decides the timeout that applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Waiting {
    /// The client, between transactions (`client_idle_timeout`).
    ClientIdle,
    /// The client, inside a transaction that holds a server connection
    /// (`idle_transaction_timeout`).
    ClientInTransaction,
    /// The server, working on the client's requests (`query_timeout`).
    Server,
}

impl Waiting {
    /// What a session with `talk` in progress waits for.
    pub(super) fn of(talk: &super::Conversation) -> Self {
        if !talk.queue.is_empty() {
            Self::Server
        } else if talk.tracker.is_idle() {
            Self::ClientIdle
        } else {
            Self::ClientInTransaction
        }
    }
}

/// A timeout that fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// `client_idle_timeout`.
    ClientIdle(Duration),
    /// `idle_transaction_timeout`.
    IdleTransaction(Duration),
    /// `query_timeout`.
    Query(Duration),
    /// `transaction_timeout`.
    Transaction(Duration),
}

impl Timeout {
    /// The SQLSTATE PostgreSQL uses for the same limit of its own.
    #[must_use]
    pub fn sqlstate(self) -> &'static str {
        match self {
            Self::ClientIdle(_) => sqlstate::IDLE_SESSION_TIMEOUT,
            Self::IdleTransaction(_) => sqlstate::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
            Self::Query(_) => sqlstate::QUERY_CANCELED,
            Self::Transaction(_) => sqlstate::TRANSACTION_TIMEOUT,
        }
    }

    /// The configuration key, also the metric label.
    #[must_use]
    pub fn key(self) -> &'static str {
        match self {
            Self::ClientIdle(_) => "client_idle_timeout",
            Self::IdleTransaction(_) => "idle_transaction_timeout",
            Self::Query(_) => "query_timeout",
            Self::Transaction(_) => "transaction_timeout",
        }
    }

    /// What the client is told, naming the key and its value.
    #[must_use]
    pub fn message(self) -> String {
        let (what, limit) = match self {
            Self::ClientIdle(d) => ("idle-session timeout", d),
            Self::IdleTransaction(d) => ("idle-in-transaction timeout", d),
            Self::Query(d) => ("query timeout: the query was cancelled", d),
            Self::Transaction(d) => ("transaction timeout", d),
        };
        format!(
            "terminating connection due to {what} (pgsidecar {} {limit:?})",
            self.key()
        )
    }
}

/// When the next timeout fires for a session `waiting` since `since`, whose transaction (if
/// one is open) started at `transaction_started`; `None` when no limit applies.
pub(super) fn deadline(
    limits: &SessionTimeouts,
    waiting: Waiting,
    since: Instant,
    transaction_started: Option<Instant>,
) -> Option<(Instant, Timeout)> {
    let state = match waiting {
        Waiting::ClientIdle => limits.client_idle.map(|d| (d, Timeout::ClientIdle(d))),
        Waiting::ClientInTransaction => limits
            .idle_transaction
            .map(|d| (d, Timeout::IdleTransaction(d))),
        Waiting::Server => limits.query.map(|d| (d, Timeout::Query(d))),
    }
    .map(|(limit, timeout)| (since + limit, timeout));
    let transaction = limits
        .transaction
        .zip(transaction_started)
        .map(|(limit, started)| (started + limit, Timeout::Transaction(limit)));
    [state, transaction]
        .into_iter()
        .flatten()
        .min_by_key(|(at, _)| *at)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn limits() -> SessionTimeouts {
        SessionTimeouts {
            client_idle: Some(60 * S),
            idle_transaction: Some(10 * S),
            query: Some(30 * S),
            transaction: None,
        }
    }

    #[test]
    fn each_wait_has_its_own_limit() {
        let now = Instant::now();
        let limits = limits();
        assert_eq!(
            deadline(&limits, Waiting::ClientIdle, now, None),
            Some((now + 60 * S, Timeout::ClientIdle(60 * S)))
        );
        assert_eq!(
            deadline(&limits, Waiting::ClientInTransaction, now, Some(now)),
            Some((now + 10 * S, Timeout::IdleTransaction(10 * S)))
        );
        assert_eq!(
            deadline(&limits, Waiting::Server, now, Some(now)),
            Some((now + 30 * S, Timeout::Query(30 * S)))
        );
    }

    #[test]
    fn the_transaction_limit_counts_from_the_transactions_start_and_the_earlier_wins() {
        let now = Instant::now();
        let limits = SessionTimeouts {
            transaction: Some(20 * S),
            ..limits()
        };
        let began = now.checked_sub(15 * S).unwrap();
        assert_eq!(
            deadline(&limits, Waiting::Server, now, Some(began)),
            Some((began + 20 * S, Timeout::Transaction(20 * S)))
        );
        // Between transactions it does not apply.
        assert_eq!(
            deadline(&limits, Waiting::ClientIdle, now, None),
            Some((now + 60 * S, Timeout::ClientIdle(60 * S)))
        );
    }

    #[test]
    fn no_limit_no_deadline() {
        let now = Instant::now();
        let off = SessionTimeouts::default();
        assert_eq!(
            deadline(&off, Waiting::ClientInTransaction, now, Some(now)),
            None
        );
    }

    #[test]
    fn the_client_is_told_the_key_and_postgres_sqlstate() {
        let t = Timeout::IdleTransaction(5 * S);
        assert_eq!(t.sqlstate(), "25P03");
        assert!(
            t.message().contains("idle_transaction_timeout 5s"),
            "{}",
            t.message()
        );
        assert_eq!(Timeout::Query(S).sqlstate(), "57014");
        assert_eq!(Timeout::ClientIdle(S).sqlstate(), "57P05");
        assert_eq!(Timeout::Transaction(S).sqlstate(), "25P04");
    }
}
