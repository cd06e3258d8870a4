//! What each upstream host is right now (primary, replica, down, fenced) and how far behind the
//! primary each replica is: the picture routing decides from. The host watcher keeps it current;
//! sessions read it on every routed transaction and wait on it while no primary is known.

use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use crate::config::{HostRole, UpstreamHost};

/// Where a host stands, as routing sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostState {
    /// Not checked yet.
    Unknown,
    /// Takes writes.
    Primary,
    /// Takes reads (when not lagging).
    Replica,
    /// Unreachable or refusing logins.
    Down,
    /// Claims to be a primary while a host on a newer timeline is one: a demoted primary that
    /// came back without being rewound. It gets no traffic at all.
    Fenced,
}

impl HostState {
    /// The name used in `SHOW HOSTS`, metrics and spans.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Primary => "primary",
            Self::Replica => "replica",
            Self::Down => "down",
            Self::Fenced => "fenced",
        }
    }
}

/// What one check of a host found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Probe {
    /// `pg_is_in_recovery()`.
    pub in_recovery: bool,
    /// On a primary, its current WAL position; on a replica, the position it has replayed.
    pub lsn: u64,
    /// On a replica, WAL received and not yet replayed.
    pub unreplayed: u64,
    /// On a replica, seconds since the last transaction it replayed was committed.
    pub replay_age: Option<f64>,
    /// On a primary, its timeline: the higher one wins when two hosts claim to be primary.
    pub timeline: Option<u32>,
    /// `default_transaction_read_only` is on: writes would fail with 25006.
    pub read_only: bool,
}

/// One host as routing sees it.
#[derive(Debug, Clone)]
pub struct HostStatus {
    /// `host:port`.
    pub address: String,
    /// The role configured for it.
    pub configured: HostRole,
    /// Its state now.
    pub state: HostState,
    /// Replicas: WAL bytes behind the primary.
    pub lag_bytes: Option<u64>,
    /// Replicas: seconds behind (0 when caught up).
    pub lag_seconds: Option<f64>,
    /// A replica behind by more than the limits: it gets no new transactions.
    pub lagging: bool,
    /// The last check's result, or why it failed.
    pub last_probe: Option<Result<Probe, String>>,
    /// When it entered its state.
    pub since: Instant,
}

/// The limits that take a replica out of rotation.
#[derive(Debug, Clone, Copy)]
pub struct LagLimits {
    /// WAL bytes.
    pub bytes: u64,
    /// Seconds behind.
    pub age: Duration,
}

/// The current picture of every host, shared by the watcher and the sessions.
#[derive(Debug)]
pub struct Topology {
    hosts: RwLock<Vec<HostStatus>>,
    /// Bumped on every change of state or rotation, for sessions waiting for a primary or a
    /// usable replica.
    changes: watch::Sender<u64>,
    /// Asks the watcher to check now (a session could not reach a host).
    recheck: Notify,
    /// Where round-robin balancing is.
    turn: AtomicUsize,
    /// Whether a watcher keeps this current (several hosts); a single host is taken as is.
    watched: bool,
    /// Per host, incremented each time it changes state: server connections opened before are
    /// not reused. Atomics, because every checkout reads them.
    epochs: Vec<AtomicU64>,
}

impl Topology {
    /// The hosts of an upstream, before any check. A single host is not watched: it is the
    /// primary unless configured as a replica, so one upstream costs nothing extra.
    #[must_use]
    pub fn new(hosts: &[UpstreamHost]) -> Self {
        let watched = hosts.len() > 1;
        let now = Instant::now();
        let statuses = hosts
            .iter()
            .map(|host| HostStatus {
                address: host.address(),
                configured: host.role,
                state: match (watched, host.role) {
                    (false, HostRole::Replica) => HostState::Replica,
                    (false, _) => HostState::Primary,
                    (true, _) => HostState::Unknown,
                },
                lag_bytes: None,
                lag_seconds: None,
                lagging: false,
                last_probe: None,
                since: now,
            })
            .collect();
        Self {
            epochs: hosts.iter().map(|_| AtomicU64::new(0)).collect(),
            hosts: RwLock::new(statuses),
            changes: watch::channel(0).0,
            recheck: Notify::new(),
            turn: AtomicUsize::new(0),
            watched,
        }
    }

    /// Whether a watcher keeps the picture current.
    #[must_use]
    pub fn is_watched(&self) -> bool {
        self.watched
    }

    /// Every host, in configured order.
    ///
    /// # Panics
    /// If the lock was poisoned.
    #[must_use]
    pub fn hosts(&self) -> Vec<HostStatus> {
        self.hosts.read().expect("topology lock").clone()
    }

    /// Number of hosts.
    ///
    /// # Panics
    /// If the lock was poisoned.
    #[must_use]
    pub fn len(&self) -> usize {
        self.hosts.read().expect("topology lock").len()
    }

    /// Whether there are no hosts (never, for a validated configuration).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The host taking writes now.
    ///
    /// # Panics
    /// If the lock was poisoned.
    #[must_use]
    pub fn primary(&self) -> Option<usize> {
        let hosts = self.hosts.read().expect("topology lock");
        hosts.iter().position(|h| h.state == HostState::Primary)
    }

    /// Replicas that may take new transactions now.
    ///
    /// # Panics
    /// If the lock was poisoned.
    #[must_use]
    pub fn usable_replicas(&self) -> Vec<usize> {
        let hosts = self.hosts.read().expect("topology lock");
        hosts
            .iter()
            .enumerate()
            .filter(|(_, h)| h.state == HostState::Replica && !h.lagging)
            .map(|(i, _)| i)
            .collect()
    }

    /// The state epoch of `host`: connections opened in an older epoch are not reused.
    #[must_use]
    pub fn epoch(&self, host: usize) -> u64 {
        self.epochs[host].load(Ordering::Acquire)
    }

    /// The state of `host`.
    ///
    /// # Panics
    /// If the lock was poisoned.
    #[must_use]
    pub fn state(&self, host: usize) -> HostState {
        self.hosts.read().expect("topology lock")[host].state
    }

    /// The next position for round-robin balancing.
    pub fn next_turn(&self) -> usize {
        self.turn.fetch_add(1, Ordering::Relaxed)
    }

    /// A receiver that sees every change, for waiting on one.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// A session could not reach `host`: it is taken as down until the next check says
    /// otherwise, and the watcher checks at once.
    ///
    /// # Panics
    /// If the lock was poisoned.
    pub fn report_unreachable(&self, host: usize, error: &str) {
        if !self.watched {
            return;
        }
        {
            let mut hosts = self.hosts.write().expect("topology lock");
            let status = &mut hosts[host];
            if status.state != HostState::Down {
                tracing::warn!(host = %status.address, error, "upstream host unreachable; routing around it");
                enter(status, HostState::Down);
                self.epochs[host].fetch_add(1, Ordering::AcqRel);
            }
        }
        self.changes.send_modify(|n| *n += 1);
        self.recheck.notify_one();
    }

    /// Waits until a session reports a host unreachable, or `interval` passes.
    pub async fn next_check(&self, interval: Duration) {
        let _ = tokio::time::timeout(interval, self.recheck.notified()).await;
    }

    /// Applies one round of checks (one result per host, in order) and returns the hosts
    /// whose state changed.
    ///
    /// # Panics
    /// If the lock was poisoned.
    pub fn apply(&self, results: Vec<Result<Probe, String>>, limits: LagLimits) -> Vec<usize> {
        let mut changed = Vec::new();
        let mut rotation_changed = false;
        {
            let mut hosts = self.hosts.write().expect("topology lock");
            let states = decide(&hosts, &results);
            let primary_lsn = states
                .iter()
                .zip(&results)
                .find(|(state, _)| **state == HostState::Primary)
                .and_then(|(_, probe)| probe.as_ref().ok().map(|p| p.lsn));
            for (i, ((status, state), result)) in
                hosts.iter_mut().zip(states).zip(results).enumerate()
            {
                if status.state != state {
                    tracing::info!(host = %status.address, from = status.state.name(), to = state.name(), "upstream host changed role");
                    enter(status, state);
                    self.epochs[i].fetch_add(1, Ordering::AcqRel);
                    changed.push(i);
                }
                let (bytes, seconds) = match (&result, state) {
                    (Ok(probe), HostState::Replica) => lag(probe, primary_lsn),
                    _ => (None, None),
                };
                let lagging = state == HostState::Replica
                    && (bytes.is_some_and(|b| b > limits.bytes)
                        || seconds.is_some_and(|s| s > limits.age.as_secs_f64()));
                if lagging != status.lagging {
                    tracing::info!(host = %status.address, lagging, lag_bytes = ?bytes, lag_seconds = ?seconds, "replica rotation changed");
                    rotation_changed = true;
                }
                status.lagging = lagging;
                status.lag_bytes = bytes;
                status.lag_seconds = seconds;
                status.last_probe = Some(result);
            }
        }
        if rotation_changed || !changed.is_empty() {
            self.changes.send_modify(|n| *n += 1);
        }
        changed
    }
}

fn enter(status: &mut HostStatus, state: HostState) {
    status.state = state;
    status.since = Instant::now();
}

/// How far a replica is behind: bytes against the primary's position when one was read in the
/// same round (else what it has received and not replayed), and seconds since its last
/// replayed commit while it has WAL left to replay (0 when caught up).
fn lag(replica: &Probe, primary_lsn: Option<u64>) -> (Option<u64>, Option<f64>) {
    let bytes = primary_lsn.map_or(replica.unreplayed, |p| {
        p.saturating_sub(replica.lsn).max(replica.unreplayed)
    });
    let seconds = if bytes == 0 {
        Some(0.0)
    } else {
        replica.replay_age.map(|s| s.max(0.0))
    };
    (Some(bytes), seconds)
}

/// The state each host takes after a round of checks. A host that could not be checked is
/// down; a fixed role is kept while the host answers; an `auto` host is a primary when it is
/// neither in recovery nor read-only by default. Of several primaries, the one on the newest timeline keeps the role (then
/// the one configured `primary`, then the one that already was) and the others are fenced.
fn decide(previous: &[HostStatus], results: &[Result<Probe, String>]) -> Vec<HostState> {
    let mut states: Vec<HostState> = previous
        .iter()
        .zip(results)
        .map(|(host, result)| match (result, host.configured) {
            (Err(_), _) => HostState::Down,
            (Ok(_), HostRole::Replica) => HostState::Replica,
            // Out of recovery but read-only by default: fenced by a failover tool, or a
            // standby-like primary; it serves reads, never writes.
            (Ok(probe), HostRole::Auto) if probe.in_recovery || probe.read_only => {
                HostState::Replica
            }
            (Ok(_), HostRole::Primary | HostRole::Auto) => HostState::Primary,
        })
        .collect();
    let claimants: Vec<usize> = (0..states.len())
        .filter(|&i| states[i] == HostState::Primary)
        .collect();
    if claimants.len() > 1 {
        let rank = |i: usize| {
            let timeline = results[i].as_ref().ok().and_then(|p| p.timeline);
            (
                timeline,
                previous[i].configured == HostRole::Primary,
                previous[i].state == HostState::Primary,
                std::cmp::Reverse(i),
            )
        };
        let keeper = claimants
            .iter()
            .copied()
            .max_by_key(|&i| rank(i))
            .expect("more than one claimant");
        for i in claimants {
            if i != keeper {
                states[i] = HostState::Fenced;
            }
        }
    }
    states
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(roles: &[HostRole]) -> Topology {
        let hosts: Vec<UpstreamHost> = roles
            .iter()
            .enumerate()
            .map(|(i, role)| UpstreamHost {
                host: "h".into(),
                port: u16::try_from(i).unwrap(),
                role: *role,
            })
            .collect();
        Topology::new(&hosts)
    }

    #[allow(clippy::unnecessary_wraps)] // a check's result, as the watcher gives it
    fn primary(lsn: u64, timeline: u32) -> Result<Probe, String> {
        Ok(Probe {
            in_recovery: false,
            lsn,
            unreplayed: 0,
            replay_age: None,
            timeline: Some(timeline),
            read_only: false,
        })
    }

    #[allow(clippy::unnecessary_wraps)] // a check's result, as the watcher gives it
    fn replica(lsn: u64, unreplayed: u64, replay_age: f64) -> Result<Probe, String> {
        Ok(Probe {
            in_recovery: true,
            lsn,
            unreplayed,
            replay_age: Some(replay_age),
            timeline: None,
            read_only: false,
        })
    }

    const LIMITS: LagLimits = LagLimits {
        bytes: 1000,
        age: Duration::from_secs(5),
    };

    #[test]
    fn a_single_host_is_the_primary_without_being_checked() {
        let topology = hosts(&[HostRole::Auto]);
        assert!(!topology.is_watched());
        assert_eq!(topology.primary(), Some(0));
    }

    #[test]
    fn an_auto_host_is_a_primary_when_not_in_recovery_and_a_replica_when_in_it() {
        let topology = hosts(&[HostRole::Auto, HostRole::Auto]);
        assert_eq!(topology.primary(), None, "nothing is known before a check");
        topology.apply(vec![primary(5000, 1), replica(5000, 0, 0.0)], LIMITS);
        assert_eq!(topology.primary(), Some(0));
        assert_eq!(topology.usable_replicas(), [1]);
    }

    #[test]
    fn a_replica_too_far_behind_leaves_the_rotation_until_it_catches_up() {
        let topology = hosts(&[HostRole::Auto, HostRole::Auto]);
        topology.apply(vec![primary(9000, 1), replica(5000, 4000, 30.0)], LIMITS);
        assert!(topology.usable_replicas().is_empty());
        assert_eq!(topology.hosts()[1].lag_bytes, Some(4000));
        topology.apply(vec![primary(9000, 1), replica(9000, 0, 30.0)], LIMITS);
        assert_eq!(topology.usable_replicas(), [1]);
        assert_eq!(
            topology.hosts()[1].lag_seconds,
            Some(0.0),
            "caught up is no lag, however old its last replayed commit"
        );
    }

    #[test]
    fn a_replica_whose_replay_is_old_while_wal_waits_is_lagging_by_time() {
        let topology = hosts(&[HostRole::Auto, HostRole::Auto]);
        topology.apply(vec![primary(5100, 1), replica(5000, 100, 6.0)], LIMITS);
        assert!(topology.usable_replicas().is_empty());
    }

    #[test]
    fn a_promoted_replica_becomes_the_primary_when_the_old_one_is_gone() {
        let topology = hosts(&[HostRole::Auto, HostRole::Auto]);
        topology.apply(vec![primary(5000, 1), replica(5000, 0, 0.0)], LIMITS);
        let epoch = topology.epoch(1);
        let changed = topology.apply(vec![Err("refused".into()), primary(5200, 2)], LIMITS);
        assert_eq!(changed, [0, 1]);
        assert_eq!(topology.primary(), Some(1));
        assert_eq!(topology.state(0), HostState::Down);
        assert!(
            topology.epoch(1) > epoch,
            "connections opened as a replica are not reused"
        );
    }

    #[test]
    fn of_two_primaries_the_newer_timeline_wins_and_the_other_is_fenced() {
        let topology = hosts(&[HostRole::Auto, HostRole::Auto]);
        topology.apply(vec![Err("down".into()), primary(5200, 2)], LIMITS);
        topology.apply(vec![primary(5000, 1), primary(5300, 2)], LIMITS);
        assert_eq!(topology.primary(), Some(1));
        assert_eq!(topology.state(0), HostState::Fenced);
    }

    #[test]
    fn a_primary_made_read_only_stops_taking_writes() {
        let topology = hosts(&[HostRole::Auto, HostRole::Auto]);
        topology.apply(vec![primary(5000, 1), replica(5000, 0, 0.0)], LIMITS);
        let fenced = Ok(Probe {
            read_only: true,
            ..primary(5000, 1).unwrap()
        });
        topology.apply(vec![fenced, replica(5000, 0, 0.0)], LIMITS);
        assert_eq!(topology.primary(), None);
        assert_eq!(topology.state(0), HostState::Replica);
    }

    #[test]
    fn a_fixed_role_is_kept_while_the_host_answers() {
        let topology = hosts(&[HostRole::Primary, HostRole::Replica]);
        topology.apply(vec![replica(1, 0, 0.0), primary(1, 1)], LIMITS);
        assert_eq!(topology.primary(), Some(0));
        assert_eq!(topology.state(1), HostState::Replica);
    }

    #[test]
    fn an_unreachable_report_takes_a_host_out_until_a_check_brings_it_back() {
        let topology = hosts(&[HostRole::Auto, HostRole::Auto]);
        topology.apply(vec![primary(5000, 1), replica(5000, 0, 0.0)], LIMITS);
        topology.report_unreachable(0, "connection refused");
        assert_eq!(topology.primary(), None);
        topology.apply(vec![primary(5000, 1), replica(5000, 0, 0.0)], LIMITS);
        assert_eq!(topology.primary(), Some(0));
    }
}
