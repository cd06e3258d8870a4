//! Concurrent index builds (`CREATE INDEX CONCURRENTLY`, `REINDEX … CONCURRENTLY`) wait for every
//! transaction older than themselves, and those waits count against `lock_timeout`: on a busy
//! database a build under the migration's short lock timeout fails, leaves an INVALID index and
//! starts from zero on every retry. So a build gets a wait budget of its own, and while it runs a
//! watcher on a second connection reports its phase, its progress and the sessions it waits for.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Whether `sql` builds an index concurrently.
#[must_use]
pub fn is_concurrent_build(sql: &str) -> bool {
    let Ok(parsed) = pg_query::parse(sql, pg_query::ParserOptions::default()) else {
        return false;
    };
    parsed.protobuf.stmts.iter().any(
        |raw| match raw.stmt.as_ref().and_then(|s| s.node.as_ref()) {
            Some(pg_query::NodeEnum::IndexStmt(index)) => index.concurrent,
            Some(pg_query::NodeEnum::ReindexStmt(reindex)) => reindex.params.iter().any(|o| {
                matches!(&o.node, Some(pg_query::NodeEnum::DefElem(d))
                    if d.defname.eq_ignore_ascii_case("concurrently"))
            }),
            _ => false,
        },
    )
}

/// How often the watcher looks.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// Most sessions a report names.
const MAX_BLOCKERS: usize = 20;

/// Watches the build running in backend `pid` until stopped; what it saw.
pub struct BuildWatch {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Vec<String>>,
}

impl BuildWatch {
    /// Starts watching backend `pid` of the database at `url` (best effort: without a second
    /// connection there is nothing to report).
    #[must_use]
    pub fn start(url: String, pid: i32, label: String) -> Self {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut waited_for: Vec<String> = Vec::new();
            let Ok((client, connection)) =
                tokio_postgres::connect(&url, crate::tls::control_connector()).await
            else {
                return waited_for;
            };
            tokio::spawn(connection);
            let mut tick = tokio::time::interval(WATCH_INTERVAL);
            loop {
                tokio::select! {
                    _ = &mut stopped => return waited_for,
                    _ = tick.tick() => {}
                }
                let Ok(rows) = client.query(WATCH_SQL, &[&pid]).await else {
                    continue;
                };
                for row in &rows {
                    let phase: Option<String> = row.get("phase");
                    let done: Option<i64> = row.get("blocks_done");
                    let total: Option<i64> = row.get("blocks_total");
                    let blocker: Option<String> = row.get("blocker");
                    if let Some(blocker) = &blocker
                        && !waited_for.contains(blocker)
                        && waited_for.len() < MAX_BLOCKERS
                    {
                        waited_for.push(blocker.clone());
                    }
                    tracing::info!(
                        migration = %label,
                        phase = phase.as_deref().unwrap_or("starting"),
                        blocks_done = done.unwrap_or(0),
                        blocks_total = total.unwrap_or(0),
                        waiting_for = blocker.as_deref().unwrap_or("nobody"),
                        "concurrent index build"
                    );
                }
            }
        });
        Self { stop, task }
    }

    /// Stops watching; the sessions the build waited for, as `pid N (state, in transaction
    /// for S s): query`.
    pub async fn finish(self) -> Vec<String> {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

/// The build's progress and, one row each, the sessions blocking it (`blocker` NULL when none
/// does: `format` would otherwise turn the missing session into a blank description).
const WATCH_SQL: &str = "
SELECT p.phase, p.blocks_done, p.blocks_total,
       CASE WHEN a.pid IS NOT NULL THEN
           format('pid %s (%s, in transaction for %s s): %s', a.pid, a.state,
                  round(extract(epoch FROM now() - a.xact_start)::numeric, 1),
                  left(a.query, 200))
       END AS blocker
  FROM pg_stat_progress_create_index p
  LEFT JOIN LATERAL unnest(pg_blocking_pids(p.pid)) AS b(pid) ON true
  LEFT JOIN pg_stat_activity a ON a.pid = b.pid
 WHERE p.pid = $1";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_builds_are_recognised_by_the_parser() {
        assert!(is_concurrent_build("CREATE INDEX CONCURRENTLY i ON t (a)"));
        assert!(is_concurrent_build(
            "create unique index concurrently if not exists i on t (a)"
        ));
        assert!(is_concurrent_build("REINDEX (CONCURRENTLY) INDEX i"));
        assert!(is_concurrent_build("REINDEX INDEX CONCURRENTLY i"));
        assert!(!is_concurrent_build("CREATE INDEX i ON t (a)"));
        assert!(!is_concurrent_build("DROP INDEX CONCURRENTLY i"));
        assert!(!is_concurrent_build("SELECT 'CREATE INDEX CONCURRENTLY'"));
    }
}
