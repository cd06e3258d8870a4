//! LISTEN/NOTIFY served without pinning: notifications handed to clients, those refused because
//! a client did not read its mailbox in time, and channels listened on.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DatabaseLabels {
    database: String,
}

/// The notification families, registered with the rest of `pgsidecar_*`.
#[derive(Debug, Default)]
pub struct NotifyMetrics {
    delivered: Counter,
    dropped: Family<ReasonLabels, Counter>,
    channels: Family<DatabaseLabels, Gauge>,
}

impl NotifyMetrics {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "notifications_delivered",
            "Notifications handed to a listening client's mailbox (one per client per notification)",
            self.delivered.clone(),
        );
        registry.register(
            "notifications_dropped",
            "Notifications a client did not get, by reason (queue_full: its mailbox was full; the client is closed)",
            self.dropped.clone(),
        );
        registry.register(
            "listen_channels",
            "Channels the sidecar's listening connections listen on",
            self.channels.clone(),
        );
    }

    /// One notification into one mailbox.
    pub fn delivered(&self) {
        self.delivered.inc();
    }

    /// One notification a client will not get.
    pub fn dropped(&self, reason: &'static str) {
        self.dropped.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Channels listened on for `database` now.
    pub fn channels(&self, database: &str, count: usize) {
        self.channels
            .get_or_create(&DatabaseLabels {
                database: database.to_owned(),
            })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
}
