//! The task that keeps the [`Topology`] current: every `routing.check_interval` (every 100 ms
//! while no primary is known, and at once when a session reports a host unreachable) it asks
//! each host for its role, WAL position and replay lag over a connection of its own, and applies
//! the round.

use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use futures_util::future::join_all;

use super::topology::{LagLimits, Probe, Topology};
use super::{BackendError, LoginTarget, ServerConn};
use crate::telemetry::{HostFigures, Metrics};

/// One row: recovery, the WAL position (current on a primary, replayed on a replica), WAL
/// received and not replayed, seconds since the last replayed commit, a primary's timeline
/// (from its current WAL file's name, which changes when a replica is promoted), and whether
/// transactions are read-only by default (how some failover tools fence an old primary).
const PROBE_SQL: &str = "SELECT r::text, \
     (CASE WHEN r THEN pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0') \
           ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0') END)::bigint::text, \
     (CASE WHEN r THEN pg_wal_lsn_diff(coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), \
                                       pg_last_wal_replay_lsn()) END)::bigint::text, \
     (CASE WHEN r THEN extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END)::float8::text, \
     (CASE WHEN NOT r THEN ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END)::text, \
     current_setting('default_transaction_read_only') \
     FROM pg_is_in_recovery() AS r";

/// Time between rounds while no primary is known.
const OUTAGE_INTERVAL: Duration = Duration::from_millis(100);

/// What the watcher needs, replaced on reload.
#[derive(Debug, Clone)]
pub(super) struct WatchSettings {
    /// How to log in to each host, in configured order.
    pub targets: Vec<LoginTarget>,
    /// Time between rounds.
    pub interval: Duration,
    /// Limit on opening a check connection.
    pub connect_timeout: Duration,
    /// When a replica leaves the rotation.
    pub limits: LagLimits,
}

/// Checks every host, round after round, for as long as the topology lives.
pub(super) async fn watch_hosts(
    topology: Weak<Topology>,
    settings: Arc<RwLock<WatchSettings>>,
    metrics: Arc<Metrics>,
) {
    let mut connections: Vec<Option<ServerConn>> = Vec::new();
    loop {
        let round = settings.read().expect("watch settings lock").clone();
        connections.resize_with(round.targets.len(), || None);
        let checks = connections
            .iter_mut()
            .zip(&round.targets)
            .map(|(conn, target)| check(conn, target, &round));
        let results = join_all(checks).await;
        let Some(topology) = topology.upgrade() else {
            return;
        };
        let changed = topology.apply(results, round.limits);
        for (i, host) in topology.hosts().iter().enumerate() {
            metrics.hosts.record(&HostFigures {
                host: &host.address,
                state: host.state.name(),
                lag_bytes: host.lag_bytes,
                lag_seconds: host.lag_seconds,
                lagging: host.lagging,
                changed: changed.contains(&i),
            });
        }
        // While no host takes writes (a failover under way), writes are waiting: look for
        // the new primary ten times a second rather than once per interval.
        let wait = if topology.primary().is_none() {
            round.interval.min(OUTAGE_INTERVAL)
        } else {
            round.interval
        };
        topology.next_check(wait).await;
    }
}

/// One check of one host over its kept connection, opened again when it failed last time.
async fn check(
    conn: &mut Option<ServerConn>,
    target: &LoginTarget,
    round: &WatchSettings,
) -> Result<Probe, String> {
    if conn.is_none() {
        *conn = Some(
            ServerConn::connect(target, round.connect_timeout, 0)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let open = conn.as_mut().expect("opened above");
    let limit = round.interval.max(Duration::from_secs(1));
    let row = match tokio::time::timeout(limit, open.fetch_row(PROBE_SQL)).await {
        Ok(Ok(row)) => row,
        Ok(Err(e)) => {
            *conn = None;
            return Err(e.to_string());
        }
        Err(_) => {
            *conn = None;
            return Err(BackendError::Timeout(limit).to_string());
        }
    };
    parse_probe(&row)
}

/// Reads the probe's row.
fn parse_probe(row: &[Option<String>]) -> Result<Probe, String> {
    let column = |i: usize| row.get(i).cloned().flatten();
    let number = |i: usize| column(i).and_then(|v| v.parse::<u64>().ok());
    Ok(Probe {
        in_recovery: column(0).as_deref() == Some("true"),
        lsn: number(1).ok_or("the check returned no WAL position")?,
        unreplayed: number(2).unwrap_or(0),
        replay_age: column(3).and_then(|v| v.parse().ok()),
        timeline: column(4).and_then(|v| v.parse().ok()),
        read_only: column(5).as_deref() == Some("on"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(values: &[Option<&str>]) -> Vec<Option<String>> {
        values.iter().map(|v| v.map(str::to_owned)).collect()
    }

    #[test]
    fn a_primary_row_reads_as_its_position_and_timeline() {
        let probe =
            parse_probe(&row(&[Some("false"), Some("5000"), None, None, Some("2")])).unwrap();
        assert!(!probe.in_recovery);
        assert_eq!((probe.lsn, probe.timeline), (5000, Some(2)));
    }

    #[test]
    fn a_replica_row_reads_as_its_replay_and_backlog() {
        let probe = parse_probe(&row(&[
            Some("true"),
            Some("4000"),
            Some("120"),
            Some("3.5"),
            None,
        ]))
        .unwrap();
        assert!(probe.in_recovery);
        assert_eq!((probe.lsn, probe.unreplayed), (4000, 120));
        assert_eq!(probe.replay_age, Some(3.5));
    }

    #[test]
    fn a_row_without_a_position_is_a_failed_check() {
        assert!(parse_probe(&row(&[Some("true"), None])).is_err());
    }
}
