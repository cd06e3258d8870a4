//! The coordinator's side: pause or resume every live sidecar of a database and wait for their
//! acknowledgements. A pause that any sidecar fails (or does not acknowledge in time) is
//! resumed everywhere before the error is returned.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client};

use super::authority::CONTROL_DDL;
use super::{ACK_CHANNEL, Ack, REGISTRY_DDL, Request, ensure_table, millis};

/// Extra time, beyond a pause's own deadline, for acknowledgements to arrive.
const ACK_MARGIN: Duration = Duration::from_secs(3);

/// One row of `pgsidecar.sidecars`, with its liveness.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SidecarRow {
    /// Its id.
    pub id: String,
    /// Where it runs.
    pub host: String,
    /// Its version.
    pub version: String,
    /// The schema version its clients are served (`schema_version`), if any.
    pub schema_version: Option<i64>,
    /// Seconds since its last heartbeat, by the database's clock.
    pub heartbeat_age_seconds: f64,
    /// Whether it counts as live (heartbeat younger than the stale limit).
    pub live: bool,
}

/// A fleet-wide pause request.
#[derive(Debug, Clone)]
pub struct FleetPause {
    /// One database, or all.
    pub database: Option<String>,
    /// Each sidecar's wait for its transactions.
    pub deadline: Duration,
    /// Each sidecar's maximum hold.
    pub max_hold: Duration,
    /// End transactions still running at the deadline.
    pub cancel_stragglers: bool,
    /// Heartbeats older than this mark a sidecar dead: it is excluded and reported.
    pub stale_after: Duration,
}

/// What a fleet pause or resume did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FleetReport {
    /// Acknowledgements, by sidecar.
    pub acks: BTreeMap<String, Ack>,
    /// Sidecars excluded for a stale heartbeat.
    pub stale: Vec<SidecarRow>,
    /// From publishing to the last acknowledgement.
    pub took_seconds: f64,
}

/// Why a fleet operation failed; after a failed pause every sidecar has been told to resume.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The database could not be reached or refused a statement.
    #[error("fleet control database: {0}")]
    Database(#[from] tokio_postgres::Error),
    /// Some sidecar failed or did not answer; `report` says which.
    #[error("fleet pause failed ({reason}); every sidecar was told to resume")]
    PauseFailed {
        /// Which sidecars failed or were silent.
        reason: String,
        /// The acknowledgements that did arrive.
        report: FleetReport,
    },
    /// No sidecar is registered as live.
    #[error("no live sidecar is registered in pgsidecar.sidecars")]
    NoSidecars,
}

async fn connect(url: &str) -> Result<(Client, mpsc::UnboundedReceiver<Ack>), FleetError> {
    let (client, mut connection) =
        tokio_postgres::connect(url, crate::tls::control_connector()).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let AsyncMessage::Notification(n) = message
                && let Ok(ack) = serde_json::from_str::<Ack>(n.payload())
                && tx.send(ack).is_err()
            {
                return;
            }
        }
    });
    ensure_table(&client, "pgsidecar.sidecars", REGISTRY_DDL).await?;
    ensure_table(&client, "pgsidecar.control_requests", CONTROL_DDL).await?;
    client
        .batch_execute(&format!("LISTEN {ACK_CHANNEL}"))
        .await?;
    Ok((client, rx))
}

/// Every registered sidecar, live ones first.
///
/// # Errors
/// [`FleetError::Database`].
pub async fn sidecars(url: &str, stale_after: Duration) -> Result<Vec<SidecarRow>, FleetError> {
    let (client, _) = connect(url).await?;
    list(&client, stale_after).await
}

async fn list(client: &Client, stale_after: Duration) -> Result<Vec<SidecarRow>, FleetError> {
    let rows = client
        .query(
            // Through to_jsonb, so that a registry made before schema_version existed reads too.
            "SELECT id, host, version,
                    extract(epoch FROM now() - last_heartbeat)::float8 AS age,
                    (to_jsonb(s) ->> 'schema_version')::bigint AS schema_version
               FROM pgsidecar.sidecars s ORDER BY age, id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let age: f64 = row.get("age");
            SidecarRow {
                id: row.get("id"),
                host: row.get("host"),
                version: row.get("version"),
                schema_version: row.get("schema_version"),
                heartbeat_age_seconds: age,
                live: age < stale_after.as_secs_f64(),
            }
        })
        .collect())
}

/// The live sidecars' ids, and the stale ones.
async fn roll_call(
    client: &Client,
    stale_after: Duration,
) -> Result<(Vec<String>, Vec<SidecarRow>), FleetError> {
    let (live, stale): (Vec<SidecarRow>, Vec<SidecarRow>) = list(client, stale_after)
        .await?
        .into_iter()
        .partition(|s| s.live);
    Ok((live.into_iter().map(|s| s.id).collect(), stale))
}

fn request_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

async fn publish(client: &Client, request: &Request) -> Result<(), FleetError> {
    Ok(super::authority::publish(client, request).await?)
}

/// Collects acknowledgements of `request` from `expected` until all arrived or `until`.
async fn collect(
    acks: &mut mpsc::UnboundedReceiver<Ack>,
    request: &str,
    expected: &[String],
    until: Instant,
) -> BTreeMap<String, Ack> {
    let mut got = BTreeMap::new();
    while got.len() < expected.len() {
        let Ok(Some(ack)) = tokio::time::timeout_at(until.into(), acks.recv()).await else {
            break;
        };
        if ack.request == request && expected.contains(&ack.sidecar) {
            got.insert(ack.sidecar.clone(), ack);
        }
    }
    got
}

/// Pauses every live sidecar registered in the database at `url`, and returns once all of them
/// are paused. If any fails or is silent past its deadline, all are resumed and the pause fails.
///
/// # Errors
/// [`FleetError`].
pub async fn fleet_pause(url: &str, pause: &FleetPause) -> Result<FleetReport, FleetError> {
    let (client, mut acks) = connect(url).await?;
    let (expected, stale) = roll_call(&client, pause.stale_after).await?;
    if expected.is_empty() {
        return Err(FleetError::NoSidecars);
    }
    let id = request_id();
    let started = Instant::now();
    publish(
        &client,
        &Request::Pause {
            request: id.clone(),
            database: pause.database.clone(),
            deadline_ms: millis(pause.deadline),
            max_hold_ms: millis(pause.max_hold),
            cancel_stragglers: pause.cancel_stragglers,
        },
    )
    .await?;
    let mut got = collect(
        &mut acks,
        &id,
        &expected,
        started + pause.deadline + ACK_MARGIN,
    )
    .await;
    describe_stragglers(&client, &mut got).await;
    let report = FleetReport {
        acks: got,
        stale,
        took_seconds: started.elapsed().as_secs_f64(),
    };
    let silent: Vec<&String> = expected
        .iter()
        .filter(|s| !report.acks.contains_key(*s))
        .collect();
    let failed: Vec<&String> = report
        .acks
        .values()
        .filter(|a| !a.ok)
        .map(|a| &a.sidecar)
        .collect();
    if silent.is_empty() && failed.is_empty() {
        return Ok(report);
    }
    publish(
        &client,
        &Request::Resume {
            request: request_id(),
            database: pause.database.clone(),
        },
    )
    .await?;
    let mut reason = Vec::new();
    if !failed.is_empty() {
        reason.push(format!("failed: {failed:?}"));
    }
    if !silent.is_empty() {
        reason.push(format!("no acknowledgement from {silent:?}"));
    }
    Err(FleetError::PauseFailed {
        reason: reason.join("; "),
        report,
    })
}

/// Adds each straggler's current query from `pg_stat_activity`, so a failed pause says what
/// was in the way. Best effort: without the privilege to see other sessions' queries, they stay
/// unknown.
async fn describe_stragglers(client: &Client, acks: &mut BTreeMap<String, Ack>) {
    let pids: Vec<i32> = acks
        .values()
        .flat_map(|a| a.stragglers.iter().filter_map(|s| s.server_pid))
        .collect();
    if pids.is_empty() {
        return;
    }
    let Ok(rows) = client
        .query(
            "SELECT pid, query FROM pg_stat_activity WHERE pid = ANY($1)",
            &[&pids],
        )
        .await
    else {
        return;
    };
    for straggler in acks.values_mut().flat_map(|a| a.stragglers.iter_mut()) {
        straggler.query = rows
            .iter()
            .find(|r| Some(r.get::<_, i32>("pid")) == straggler.server_pid)
            .and_then(|r| r.get("query"));
    }
}

/// Publishes a request every live sidecar answers at once, and collects their
/// acknowledgements for a few seconds.
async fn broadcast(
    url: &str,
    stale_after: Duration,
    request: impl FnOnce(String) -> Request,
) -> Result<FleetReport, FleetError> {
    let (client, mut acks) = connect(url).await?;
    let (expected, stale) = roll_call(&client, stale_after).await?;
    let id = request_id();
    let started = Instant::now();
    publish(&client, &request(id.clone())).await?;
    let acks = collect(&mut acks, &id, &expected, started + ACK_MARGIN).await;
    Ok(FleetReport {
        acks,
        stale,
        took_seconds: started.elapsed().as_secs_f64(),
    })
}

/// Resumes every live sidecar, waiting briefly for their acknowledgements.
///
/// # Errors
/// [`FleetError::Database`].
pub async fn fleet_resume(
    url: &str,
    database: Option<&str>,
    stale_after: Duration,
) -> Result<FleetReport, FleetError> {
    broadcast(url, stale_after, |request| Request::Resume {
        request,
        database: database.map(str::to_owned),
    })
    .await
}

/// Tells every live sidecar that the schema changed, so that each prepares its cached statements
/// afresh; waits briefly for their acknowledgements.
///
/// # Errors
/// [`FleetError::Database`].
pub async fn fleet_invalidate(url: &str, stale_after: Duration) -> Result<FleetReport, FleetError> {
    broadcast(url, stale_after, |request| Request::Invalidate { request }).await
}
