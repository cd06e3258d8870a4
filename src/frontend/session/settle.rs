//! The session at rest: applying what the client's statements did to its session (settings,
//! deallocations, pinning) once the server is idle, and bringing a server connection's settings
//! to the client's.

use std::fmt::Write as _;

use super::{Conversation, Session, SessionError, Step};
use crate::backend::{BackendError, SESSION_AUTHORIZATION, ServerConn};
use crate::config::PoolMode;
use crate::frontend::sql::Effect;

impl Session {
    /// When the server owes nothing and no transaction is open: applies the session effects of
    /// what just ran, and says whether the connection can go back to the pool.
    pub(super) async fn at_rest(
        &mut self,
        server: &mut ServerConn,
        talk: &mut Conversation,
        transaction_mode: bool,
    ) -> Result<Option<Step>, SessionError> {
        if !talk.is_idle() || server.has_unread() {
            return Ok(None);
        }
        if !talk.new_defaults.is_empty() {
            let reported = std::mem::take(&mut talk.new_defaults);
            self.learn_new_defaults(server, reported).await?;
        }
        if !talk.effects.is_empty() {
            let effects = std::mem::take(&mut talk.effects);
            self.settle(server, effects).await?;
        }
        self.end_transaction(talk.ticket.take());
        if self.ctx.gate.is_draining() {
            return Ok(Some(Step::Drained));
        }
        Ok((transaction_mode && self.pinned.is_none()).then_some(Step::Released))
    }

    /// Brings the client's view of its session up to date with statements that changed it, and
    /// the server connection up to the client's view.
    async fn settle(
        &mut self,
        server: &mut ServerConn,
        effects: Vec<Effect>,
    ) -> Result<(), SessionError> {
        let mut changed: Vec<String> = Vec::new();
        let mut resync_prepared = false;
        let touched_authorization = effects
            .iter()
            .any(|e| matches!(e, Effect::Set(n) | Effect::Reset(n) if n == SESSION_AUTHORIZATION));
        for effect in effects {
            match effect {
                Effect::Pin(reason) => self.pin(reason),
                Effect::Set(name) => {
                    let name = server.params.canonical(&name);
                    if !changed.contains(&name) {
                        changed.push(name);
                    }
                }
                Effect::Reset(name) => {
                    let name = server.params.canonical(&name);
                    changed.retain(|n| *n != name);
                    self.params.reset(&name);
                    server.params.forget(&name);
                }
                Effect::ResetAll | Effect::DiscardAll => {
                    changed.clear();
                    self.params.reset_all();
                    server.params.reset();
                    resync_prepared = true;
                }
                Effect::ClientReset => {
                    changed.clear();
                    self.params.reset_all();
                    // DISCARD ALL includes UNLISTEN *.
                    self.unlisten_all();
                }
                Effect::Deallocate(None) => resync_prepared = true,
                Effect::Deallocate(Some(_)) => {}
            }
        }
        // SET/RESET SESSION AUTHORIZATION also resets the role: read both back.
        if touched_authorization && !changed.iter().any(|n| n == "role") {
            changed.push("role".to_owned());
        }
        if !changed.is_empty() {
            let mut sql = String::from("SELECT ");
            for (i, name) in changed.iter().enumerate() {
                if i > 0 {
                    sql.push_str(", ");
                }
                let _ = write!(sql, "current_setting('{}', true)", name.replace('\'', "''"));
            }
            let values = server.fetch_row(&sql).await.map_err(SessionError::Setup)?;
            for (name, value) in changed.iter().zip(values) {
                if let Some(value) = value {
                    server.params.observe(name, &value);
                    self.params.observe(name, &value);
                }
            }
        }
        if resync_prepared && self.mode() == PoolMode::Transaction {
            let epoch = self.pool.known_statements().epoch();
            resync_prepared_set(server, epoch)
                .await
                .map_err(SessionError::Setup)?;
        }
        self.sync_settings(server).await
    }

    /// Brings the server connection's settings to the client's, sending only what differs.
    ///
    /// When the server refuses the batch, each setting is applied on its own and the ones it
    /// still refuses are dropped from the client's settings with a warning: a value that cannot
    /// be re-applied never ends the session.
    pub(super) async fn sync_settings(
        &mut self,
        server: &mut ServerConn,
    ) -> Result<(), SessionError> {
        if server.params.in_step_with(self.params.settings()) {
            return Ok(());
        }
        // Parameters no session can change are skipped (is_superuser, in_hot_standby, ...).
        let Some(sql) = server.params.sync_sql(self.params.wanted()) else {
            server.params.mark_in_step(self.params.settings());
            return Ok(());
        };
        match server.run_quietly(&sql).await {
            Ok(()) => {}
            Err(BackendError::Server(_)) => {
                for (name, step) in server.params.sync_steps(self.params.wanted()) {
                    if let Err(e) = server.run_quietly(&step).await {
                        let BackendError::Server(fields) = &e else {
                            return Err(SessionError::Setup(e));
                        };
                        tracing::warn!(
                            pool = %self.pool.key(),
                            setting = %name,
                            error = %fields.message,
                            "a client setting could not be applied on a server connection; dropped"
                        );
                        self.params.drop_setting(&name);
                        self.pool.metrics().setting_dropped();
                    }
                }
            }
            Err(e) => return Err(SessionError::Setup(e)),
        }
        server.params.synced(self.params.wanted());
        server.params.mark_in_step(self.params.settings());
        Ok(())
    }

    /// Of the reported settings that changed while the client had no value of its own, learns
    /// as the pool's defaults those the server says come from no session (a reloaded
    /// configuration file, a promotion), so that clients logging in later are told them.
    async fn learn_new_defaults(
        &self,
        server: &mut ServerConn,
        names: Vec<String>,
    ) -> Result<(), SessionError> {
        let list = names.join(",");
        let row = match server
            .fetch_row_with(
                "SELECT ','||string_agg(name, ',')||',' FROM pg_settings \
                 WHERE name = ANY(string_to_array($1, ',')) AND source NOT IN ('session', 'client')",
                &[&list],
            )
            .await
        {
            Ok(row) => row,
            // Only a refinement of what later clients are told: a server that refuses the
            // question ends nothing.
            Err(BackendError::Server(e)) => {
                tracing::debug!(error = %e.message, "cannot check the server's defaults");
                return Ok(());
            }
            Err(e) => return Err(SessionError::Setup(e)),
        };
        let defaults = row.into_iter().flatten().next().unwrap_or_default();
        for name in names {
            // The value now in effect: a SET LOCAL reported during the transaction has been
            // reported back by its end.
            if let Some(value) = server.params.reported.get(&name)
                && defaults.contains(&format!(",{name},"))
            {
                tracing::info!(pool = %self.pool.key(), setting = %name, %value, "the server's default changed");
                self.pool.greeting().learn_default(&name, value);
            }
        }
        Ok(())
    }

    /// Keeps the client on its server connection for the rest of its session.
    fn pin(&mut self, reason: &'static str) {
        if self.pinned.is_none() && self.mode() == PoolMode::Transaction {
            self.pinned = Some(reason);
            self.pool.metrics().pinned();
            tracing::warn!(
                pool = %self.pool.key(),
                reason,
                "client pinned to its server connection for the rest of its session"
            );
        }
    }
}

/// Re-reads which pgsidecar statements a server connection holds, after the client ran something
/// that may have dropped them (`DISCARD ALL`, `DEALLOCATE ALL` on a pinned connection).
async fn resync_prepared_set(server: &mut ServerConn, epoch: u64) -> Result<(), BackendError> {
    let row = server
        .fetch_row(&format!(
            "SELECT string_agg(name, ',') FROM pg_prepared_statements WHERE name LIKE '{}%'",
            crate::frontend::statements::SERVER_NAME_PREFIX
        ))
        .await?;
    server.prepared.clear();
    if let Some(Some(names)) = row.into_iter().next() {
        for name in names.split(',') {
            let _ = server.prepared.insert(name.into(), epoch);
        }
    }
    Ok(())
}
