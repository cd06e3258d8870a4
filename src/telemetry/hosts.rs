//! Per-host metrics of a multi-host upstream: which role each host has now, how far behind the
//! primary each replica is, and whether it is in the read rotation, so that a dashboard shows a
//! failover and a lagging replica as they happen.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Every state a host can be in, so that the one it left is set back to 0.
const STATES: [&str; 5] = ["unknown", "primary", "replica", "down", "fenced"];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostLabels {
    host: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostStateLabels {
    host: String,
    state: &'static str,
}

/// One host's figures after a check.
#[derive(Debug, Clone, Copy)]
pub struct HostFigures<'a> {
    /// `host:port`.
    pub host: &'a str,
    /// `unknown`, `primary`, `replica`, `down` or `fenced`.
    pub state: &'static str,
    /// Replicas: WAL bytes behind the primary.
    pub lag_bytes: Option<u64>,
    /// Replicas: seconds behind.
    pub lag_seconds: Option<f64>,
    /// Replicas: out of the rotation for lag.
    pub lagging: bool,
    /// The check changed its state.
    pub changed: bool,
}

/// The host families, registered with the rest of `pgsidecar_*`.
#[derive(Debug, Default)]
pub struct HostMetrics {
    state: Family<HostStateLabels, Gauge>,
    lag_bytes: Family<HostLabels, Gauge>,
    lag_seconds: Family<HostLabels, Gauge<f64, AtomicU64>>,
    lagging: Family<HostLabels, Gauge>,
    state_changes: Family<HostLabels, Counter>,
}

impl HostMetrics {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "upstream_host_state",
            "1 for the state each upstream host is in (primary, replica, down, fenced, unknown)",
            self.state.clone(),
        );
        registry.register(
            "upstream_replica_lag_bytes",
            "WAL bytes a replica is behind the primary",
            self.lag_bytes.clone(),
        );
        registry.register(
            "upstream_replica_lag_seconds",
            "Seconds a replica is behind (0 when it has replayed all it received)",
            self.lag_seconds.clone(),
        );
        registry.register(
            "upstream_replica_lagging",
            "1 while a replica is out of the read rotation for lag",
            self.lagging.clone(),
        );
        registry.register(
            "upstream_host_state_changes",
            "State changes of each upstream host (failovers, outages, returns)",
            self.state_changes.clone(),
        );
    }

    /// Records one host after a check.
    pub fn record(&self, figures: &HostFigures<'_>) {
        let host = figures.host.to_owned();
        for state in STATES {
            self.state
                .get_or_create(&HostStateLabels {
                    host: host.clone(),
                    state,
                })
                .set(i64::from(state == figures.state));
        }
        let labels = HostLabels { host };
        if figures.changed {
            self.state_changes.get_or_create(&labels).inc();
        }
        self.lag_bytes.get_or_create(&labels).set(
            figures
                .lag_bytes
                .map_or(0, |b| i64::try_from(b).unwrap_or(i64::MAX)),
        );
        self.lag_seconds
            .get_or_create(&labels)
            .set(figures.lag_seconds.unwrap_or(0.0));
        self.lagging
            .get_or_create(&labels)
            .set(i64::from(figures.lagging));
    }
}
