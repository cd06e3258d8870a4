//! The sidecar's own health watch: the same checks on an interval over a control connection,
//! handed to a sink (the Prometheus registry) so that dashboards and alerts see the database's
//! health next to the sidecar's traffic.

use std::time::Duration;

use tokio::task::JoinHandle;

use super::{Check, Thresholds, run_checks};

/// Runs the checks against `url` every `interval` until the task is aborted, reconnecting when
/// the connection fails; each round's results go to `sink`.
pub fn spawn(
    url: String,
    interval: Duration,
    sink: impl Fn(&[Check]) + Send + Sync + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let thresholds = Thresholds::default();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let client = match tokio_postgres::connect(&url, crate::tls::control_connector()).await
            {
                Ok((client, connection)) => {
                    tokio::spawn(connection);
                    client
                }
                Err(e) => {
                    tracing::warn!(error = %e, "health checks cannot connect; retrying");
                    tick.tick().await;
                    continue;
                }
            };
            loop {
                tick.tick().await;
                if client.is_closed() {
                    break;
                }
                sink(&run_checks(&client, &thresholds).await);
            }
        }
    })
}
