//! Database health: the checks an SRE runs before, during and after a migration — connection
//! saturation, long and idle-in-transaction sessions, lock waits with their blockers,
//! replication lag and slot retention, cache hit ratio, wraparound, dead tuples, invalid and
//! unused indexes, checkpoint pressure, top statements — each with warn/critical thresholds and
//! a Nagios-style overall status.

mod checks;
pub mod monitor;

use std::time::Duration;

pub use checks::{load_checks, run_checks};

/// How bad a check is; ordered, so the worst one is the overall status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// Fine.
    Ok,
    /// Look at it soon.
    Warning,
    /// Look at it now.
    Critical,
    /// The check could not run.
    Unknown,
}

impl Status {
    /// The Nagios plugin exit code.
    #[must_use]
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::Warning => 1,
            Self::Critical => 2,
            Self::Unknown => 3,
        }
    }

    /// As a metric value (the exit code).
    #[must_use]
    pub fn as_metric(self) -> i64 {
        i64::from(self.exit_code())
    }
}

/// One check's outcome.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    /// Short name, e.g. `lock_waits`.
    pub name: &'static str,
    /// Its status.
    pub status: Status,
    /// The measured value the thresholds apply to.
    pub value: f64,
    /// One line for people.
    pub summary: String,
    /// The offenders, one per line.
    pub details: Vec<String>,
}

/// Warn and critical limits of every check.
#[derive(Debug, Clone)]
pub struct Thresholds {
    /// Share of `max_connections` in use.
    pub connections: (f64, f64),
    /// Age of the oldest running transaction.
    pub long_transaction: (Duration, Duration),
    /// Time the oldest idle-in-transaction session has been idle.
    pub idle_in_transaction: (Duration, Duration),
    /// Time the longest lock wait has lasted.
    pub lock_wait: (Duration, Duration),
    /// Replica replay lag.
    pub replication_lag: (Duration, Duration),
    /// WAL retained by a replication slot, bytes.
    pub slot_retention: (f64, f64),
    /// Cache hit ratio below which to warn / page (lower is worse).
    pub cache_hit: (f64, f64),
    /// `age(datfrozenxid)`.
    pub wraparound: (f64, f64),
    /// Dead-tuple share of a table with at least 10,000 dead tuples.
    pub dead_tuples: (f64, f64),
    /// Size of an index never scanned, bytes.
    pub unused_index: (f64, f64),
    /// Share of checkpoints requested (forced by WAL volume) rather than timed.
    pub checkpoints: (f64, f64),
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            connections: (0.8, 0.95),
            long_transaction: (Duration::from_secs(300), Duration::from_secs(1800)),
            idle_in_transaction: (Duration::from_secs(60), Duration::from_secs(600)),
            lock_wait: (Duration::from_secs(5), Duration::from_secs(60)),
            replication_lag: (Duration::from_secs(30), Duration::from_secs(300)),
            slot_retention: (1e9, 1e10),
            cache_hit: (0.95, 0.90),
            wraparound: (5e8, 1e9),
            dead_tuples: (0.2, 0.5),
            unused_index: (1e8, 1e9),
            checkpoints: (0.2, 0.5),
        }
    }
}

/// The status of `value` against `(warn, critical)` where higher is worse.
#[must_use]
pub fn grade(value: f64, (warn, critical): (f64, f64)) -> Status {
    if value >= critical {
        Status::Critical
    } else if value >= warn {
        Status::Warning
    } else {
        Status::Ok
    }
}

/// The worst status of `checks`.
#[must_use]
pub fn overall(checks: &[Check]) -> Status {
    checks.iter().map(|c| c.status).max().unwrap_or(Status::Ok)
}
