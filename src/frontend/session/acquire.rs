//! Where a session meets the pool: the greeting that ends a login (from what the pool has
//! learned of its server, or from a server connection when nothing is known yet) and the
//! checkout of a server connection, with a notice to a client that waits long for one.

use std::sync::Arc;

use bytes::BytesMut;
use futures_util::FutureExt as _;

use super::{Session, SessionError};
use crate::backend::{AcquireError, Checkout};
use crate::config::PoolMode;
use crate::wire::messages::{
    put_backend_key, put_notice, put_parameter_status, put_ready_for_query,
};
use crate::wire::sqlstate;
use crate::wire::tag::status;

impl Session {
    /// Finishes the login. When the pool has learned what its server reports (any earlier
    /// server login did), the client is greeted from that at once and takes a server connection
    /// only for its first transaction; a database or role that stopped working then fails that
    /// query with the server's own error. Otherwise the login takes a server connection, which
    /// proves the database and the client's settings acceptable and reports the server's own
    /// errors (3D000, 28P01, ...) at login. In session mode a connection taken at login is kept
    /// for the session.
    ///
    /// # Errors
    /// As [`Session::acquire`]; the caller reports it with [`Session::fail`].
    pub(in crate::frontend) async fn greet(&mut self) -> Result<(), SessionError> {
        let mut out = BytesMut::new();
        let known = self
            .pool
            .greeting()
            .greet(self.params.wanted(), |name, value| {
                put_parameter_status(&mut out, name, value);
            });
        if known {
            self.finish_greeting(out).await?;
            return Ok(());
        }
        let ticket = self.admit().await?;
        let mut checkout = self.acquire().await?;
        self.end_transaction(Some(ticket));
        let reported = &checkout.conn().params.reported;
        // How the server spelled what the client asked for: later clients asking the same are
        // greeted without a server connection.
        let greeting = self.pool.greeting();
        for (name, asked) in self.params.wanted() {
            if let Some(spelled) = reported.get(name) {
                greeting.learn_spelling(name, asked, spelled);
            }
        }
        let mut out = BytesMut::new();
        for (name, value) in reported {
            put_parameter_status(&mut out, name, value);
        }
        self.finish_greeting(out).await?;
        if self.mode() == PoolMode::Transaction {
            self.release(checkout);
        } else {
            self.held = Some(Box::new(checkout));
        }
        Ok(())
    }

    /// Sends the end of a login: the ParameterStatus messages in `out`, then the client's cancel
    /// key and ReadyForQuery, in one write.
    async fn finish_greeting(&mut self, mut out: BytesMut) -> Result<(), SessionError> {
        put_backend_key(&mut out, self.cancel.pid, self.cancel.secret);
        put_ready_for_query(&mut out, status::IDLE);
        self.client.send(&out).await?;
        Ok(())
    }

    /// Takes a server connection from the pool and brings its settings to the client's. With
    /// several upstream hosts, a connection whose host went away between the checkout and the
    /// settings (a failover under way) is closed and the transaction routed again.
    pub(super) async fn acquire(&mut self) -> Result<Checkout, SessionError> {
        loop {
            self.cancel.set_waiting(true);
            let checkout = self.routed_checkout().await;
            self.cancel.set_waiting(false);
            let mut checkout = checkout?;
            let server = checkout.conn();
            match self.sync_settings(server).await {
                Ok(()) => {}
                Err(SessionError::Setup(e)) if e.is_unreachable() && self.ctx.pools.is_routed() => {
                    self.ctx
                        .pools
                        .topology()
                        .report_unreachable(self.pool.host(), &e.to_string());
                    checkout.discard(false).await;
                    continue;
                }
                Err(e) => return Err(e),
            }
            self.cancel.set(Some(checkout.conn().cancel_target()));
            return Ok(checkout);
        }
    }

    /// Waits for a server connection. A client still waiting after `query_wait_notify` is told
    /// once, with a NOTICE, that its query is queued (a timer is armed only when the pool
    /// has no connection to give at once).
    pub(super) async fn checkout_or_notify(&mut self) -> Result<Checkout, AcquireError> {
        let pool = Arc::clone(&self.pool);
        let mut waiting = std::pin::pin!(pool.checkout());
        if let Some(done) = (&mut waiting).now_or_never() {
            return done;
        }
        // Queued: keep only the request, not a whole read chunk, while thousands may wait.
        self.buf = BytesMut::from(&self.buf[..]);
        let Some(after) = pool.settings().query_wait_notify else {
            return waiting.await;
        };
        if let Ok(done) = tokio::time::timeout(after, &mut waiting).await {
            return done;
        }
        let mut notice = BytesMut::new();
        put_notice(
            &mut notice,
            sqlstate::SUCCESSFUL_COMPLETION,
            &format!(
                "pgsidecar: no server connection free in pool {} for {after:?}; the query is queued",
                pool.key()
            ),
        );
        // A client that cannot take the notice is found out at its next read or write.
        let _ = self.client.send(&notice).await;
        pool.metrics().wait_notified();
        waiting.await
    }
}
