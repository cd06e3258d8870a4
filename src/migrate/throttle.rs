//! Backfills yield to the database: before a batch, the runner looks at each streaming
//! replica's replay lag and at the load-related health checks, and waits while any is over its
//! limit, so that a long backfill never leaves the replicas (or the primary's capacity)
//! behind. The checks run at most once per [`CHECK_EVERY`] while all is well.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::health::{self, Status, Thresholds};

/// How often the limits are looked at while they hold.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How often they are looked at again while a backfill waits.
const RECHECK_WHILE_PAUSED: Duration = Duration::from_millis(500);

/// When a backfill waits.
#[derive(Debug, Clone, PartialEq)]
pub struct ThrottleLimits {
    /// Most WAL bytes a streaming replica may have left to replay.
    pub max_replica_lag_bytes: Option<u64>,
    /// Longest replay lag a streaming replica may have.
    pub max_replica_lag: Option<Duration>,
    /// Wait while a load-related health check (connections, lock waits, replication lag,
    /// wraparound) is critical.
    pub health: bool,
}

impl Default for ThrottleLimits {
    fn default() -> Self {
        Self {
            max_replica_lag_bytes: Some(64 * 1024 * 1024),
            max_replica_lag: Some(Duration::from_secs(30)),
            health: true,
        }
    }
}

/// A backfill's view of the database's limits.
pub(super) struct Throttle<'a> {
    limits: &'a ThrottleLimits,
    thresholds: Thresholds,
    checked: Option<Instant>,
    /// Time spent waiting.
    pub(super) waited: Duration,
    /// Why it waited, each reason once, in order.
    pub(super) reasons: Vec<String>,
}

impl<'a> Throttle<'a> {
    pub(super) fn new(limits: &'a ThrottleLimits) -> Self {
        Self {
            limits,
            thresholds: Thresholds::default(),
            checked: None,
            waited: Duration::ZERO,
            reasons: Vec::new(),
        }
    }

    /// Returns once every limit holds (at once when they were looked at less than
    /// [`CHECK_EVERY`] ago).
    ///
    /// # Errors
    /// The database's error.
    pub(super) async fn wait(&mut self, client: &Client) -> Result<(), tokio_postgres::Error> {
        if self.checked.is_some_and(|at| at.elapsed() < CHECK_EVERY) {
            return Ok(());
        }
        let started = Instant::now();
        let mut paused_for: Option<String> = None;
        loop {
            self.checked = Some(Instant::now());
            match self.over_limit(client).await? {
                None => break,
                Some(reason) => {
                    if paused_for.as_ref() != Some(&reason) {
                        tracing::warn!(%reason, "backfill paused");
                        if !self.reasons.contains(&reason) {
                            self.reasons.push(reason.clone());
                        }
                        paused_for = Some(reason);
                    }
                    tokio::time::sleep(RECHECK_WHILE_PAUSED).await;
                }
            }
        }
        if paused_for.is_some() {
            let waited = started.elapsed();
            self.waited += waited;
            tracing::info!(waited_seconds = waited.as_secs_f64(), "backfill resumed");
        }
        Ok(())
    }

    /// The first limit that does not hold now.
    async fn over_limit(&self, client: &Client) -> Result<Option<String>, tokio_postgres::Error> {
        let limits = self.limits;
        if limits.max_replica_lag_bytes.is_some() || limits.max_replica_lag.is_some() {
            let rows = client
                .query(
                    "SELECT coalesce(application_name, ''), coalesce(client_addr::text, 'local'),
                            pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::float8,
                            extract(epoch FROM replay_lag)::float8
                       FROM pg_stat_replication WHERE replay_lsn IS NOT NULL",
                    &[],
                )
                .await?;
            for row in rows {
                let name = format!("{} ({})", row.get::<_, String>(0), row.get::<_, String>(1));
                let bytes: Option<f64> = row.get(2);
                let seconds: Option<f64> = row.get(3);
                if let (Some(max), Some(bytes)) = (limits.max_replica_lag_bytes, bytes)
                    && bytes > precision_loss_free(max)
                {
                    return Ok(Some(format!(
                        "replica {name} has {bytes:.0} bytes of WAL to replay (limit {max})"
                    )));
                }
                if let (Some(max), Some(seconds)) = (limits.max_replica_lag, seconds)
                    && seconds > max.as_secs_f64()
                {
                    return Ok(Some(format!(
                        "replica {name} replays {seconds:.1} s behind (limit {max:?})"
                    )));
                }
            }
        }
        if limits.health {
            let checks = health::load_checks(client, &self.thresholds).await;
            if let Some(check) = checks.iter().find(|c| c.status == Status::Critical) {
                return Ok(Some(format!(
                    "health check {} is critical: {}",
                    check.name, check.summary
                )));
            }
        }
        Ok(None)
    }
}

/// `bytes` as a float for comparison with the server's `float8` (exact below 2^53 bytes).
#[allow(clippy::cast_precision_loss)]
fn precision_loss_free(bytes: u64) -> f64 {
    bytes as f64
}

/// How far a backfill that started at key `start` and walks to `last` (inclusive) is when its
/// next batch starts at `next`.
#[must_use]
pub fn key_fraction(start: i64, next: i64, last: i64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let fraction = (next - start) as f64 / (last - start + 1).max(1) as f64;
    fraction.clamp(0.0, 1.0)
}

/// A backfill's progress line: rows done, rate and the time left, from how far through its key
/// range it is ([`key_fraction`]).
#[must_use]
pub fn progress(rows: u64, elapsed: Duration, done_fraction: f64) -> String {
    let seconds = elapsed.as_secs_f64().max(f64::EPSILON);
    #[allow(clippy::cast_precision_loss)]
    let rate = rows as f64 / seconds;
    let eta = if done_fraction > 0.0 {
        format!("{:.0} s", seconds * (1.0 - done_fraction) / done_fraction)
    } else {
        "unknown".to_owned()
    };
    format!(
        "{rows} rows, {rate:.0} rows/s, {:.1} % of the key range, about {eta} left",
        done_fraction * 100.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_names_rate_and_time_left() {
        let line = progress(5000, Duration::from_secs(10), 0.25);
        assert_eq!(
            line,
            "5000 rows, 500 rows/s, 25.0 % of the key range, about 30 s left"
        );
        assert!(progress(0, Duration::ZERO, 0.0).ends_with("unknown left"));
        assert!((key_fraction(1, 26, 100) - 0.25).abs() < 1e-9);
        assert!((key_fraction(5, 5, 5)).abs() < 1e-9);
    }
}
