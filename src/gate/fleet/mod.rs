//! The fleet: every sidecar in front of one database keeps a control connection to it,
//! registers in `pgsidecar.sidecars`, heartbeats, and LISTENs on a control channel. A
//! coordinator (the `pgsidecar gate` command, and the migration runner) writes a pause or
//! resume as a row that only authorised roles may write, wakes the sidecars with NOTIFY, and
//! collects every live sidecar's acknowledgement on a reply channel. The database is the only
//! coordination bus, and its privileges decide who may use it (see [`authority`]).

pub mod authority;
mod coordinator;
mod member;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use authority::{CONTROL_DDL, Refusal};
pub use coordinator::{
    FleetError, FleetPause, FleetReport, SidecarRow, fleet_invalidate, fleet_pause, fleet_resume,
    sidecars,
};
pub use member::{FleetSettings, FleetSide, run_member};

use super::Straggler;

/// Channel the coordinator publishes requests on.
pub const CONTROL_CHANNEL: &str = "pgsidecar_control";
/// Channel sidecars acknowledge on.
pub const ACK_CHANNEL: &str = "pgsidecar_control_ack";

/// Creates the registry table if it is missing (idempotent; run by each sidecar and each
/// coordinator only when the table is missing, so that least-privilege roles need no CREATE).
pub const REGISTRY_DDL: &str = "CREATE SCHEMA IF NOT EXISTS pgsidecar;
CREATE TABLE IF NOT EXISTS pgsidecar.sidecars (
    id text PRIMARY KEY,
    host text NOT NULL,
    version text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    last_heartbeat timestamptz NOT NULL DEFAULT now(),
    schema_version bigint
)";

/// Adds the column a registry made by an older pgsidecar lacks (run only when it is missing).
pub const REGISTRY_UPGRADE_DDL: &str =
    "ALTER TABLE pgsidecar.sidecars ADD COLUMN IF NOT EXISTS schema_version bigint";

/// A request on the control channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// Pause (all databases, or one).
    Pause {
        /// Correlates acknowledgements.
        request: String,
        /// One database, or all.
        database: Option<String>,
        /// Each sidecar's wait for its transactions in flight.
        deadline_ms: u64,
        /// Each sidecar's maximum hold.
        max_hold_ms: u64,
        /// End transactions still running at the deadline.
        cancel_stragglers: bool,
    },
    /// Resume (all databases, or one).
    Resume {
        /// Correlates acknowledgements.
        request: String,
        /// One database, or all.
        database: Option<String>,
    },
    /// The schema changed: prepare every statement afresh before its next use.
    Invalidate {
        /// Correlates acknowledgements.
        request: String,
    },
}

impl Request {
    fn id(&self) -> &str {
        match self {
            Self::Pause { request, .. }
            | Self::Resume { request, .. }
            | Self::Invalidate { request } => request,
        }
    }
}

/// A sidecar's answer on the ack channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    /// The request answered.
    pub request: String,
    /// The sidecar answering.
    pub sidecar: String,
    /// Whether it did what was asked.
    pub ok: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// From receiving the request to done.
    pub took_ms: f64,
    /// The transactions that held a failed pause (at most ten).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stragglers: Vec<Straggler>,
}

/// Most stragglers one acknowledgement carries (NOTIFY payloads are limited to 8000 bytes).
const MAX_ACK_STRAGGLERS: usize = 10;

/// Runs `ddl` when `table` does not exist yet.
async fn ensure_table(
    client: &tokio_postgres::Client,
    table: &str,
    ddl: &str,
) -> Result<(), tokio_postgres::Error> {
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await?
        .get(0);
    if !exists {
        client.batch_execute(ddl).await?;
    }
    Ok(())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_json() {
        let request = Request::Pause {
            request: "r1".into(),
            database: Some("app".into()),
            deadline_ms: 5000,
            max_hold_ms: 60_000,
            cancel_stragglers: false,
        };
        let text = serde_json::to_string(&request).unwrap();
        assert!(text.contains(r#""op":"pause""#), "{text}");
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), request);
        assert_eq!(request.id(), "r1");
    }
}
