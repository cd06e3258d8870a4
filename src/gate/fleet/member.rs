//! A sidecar's membership in the fleet: register, heartbeat, answer pause/resume requests from
//! the control channel, reconnect after failures, deregister at shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client};

use super::authority::Authority;
use super::{
    ACK_CHANNEL, Ack, CONTROL_CHANNEL, MAX_ACK_STRAGGLERS, REGISTRY_DDL, REGISTRY_UPGRADE_DDL,
    Refusal, Request, ensure_table,
};
use crate::gate::{Gate, PauseError, PauseOptions, Scope, Stragglers};

/// How a sidecar joins the fleet.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    /// Direct connection to the database the fleet fronts (not through a pooler).
    pub control_url: String,
    /// This sidecar's id in `pgsidecar.sidecars`.
    pub id: String,
    /// The host it runs on, for people reading the registry.
    pub host: String,
    /// How often it heartbeats.
    pub heartbeat: Duration,
    /// Besides superusers, members of this role may send requests it obeys.
    pub control_role: Option<String>,
    /// Longest `max_hold` it accepts.
    pub max_pause_hold: Duration,
    /// Longest pause deadline it accepts.
    pub max_pause_deadline: Duration,
    /// The schema version its clients are served, registered so that `migrate complete` knows
    /// whether the old version is still in use.
    pub schema_version: Option<i64>,
}

/// What the fleet asks of a sidecar beyond its gate.
pub trait FleetSide: Stragglers + Send + Sync {
    /// The schema changed (a migration ran): every cached prepared statement is prepared afresh
    /// before its next use.
    fn schema_changed(&self);

    /// A control request was not obeyed: count it by `reason`.
    fn control_request_refused(&self, reason: &'static str);
}

/// What the member task needs from the proxy.
pub struct Member {
    gate: Arc<Gate>,
    side: Arc<dyn FleetSide>,
    settings: FleetSettings,
}

/// Keeps this sidecar in the fleet until draining starts, reconnecting with backoff.
pub fn run_member(
    gate: Arc<Gate>,
    side: Arc<dyn FleetSide>,
    settings: FleetSettings,
) -> JoinHandle<()> {
    let member = Member {
        gate,
        side,
        settings,
    };
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(500);
        loop {
            let connected = Instant::now();
            tokio::select! {
                result = member.session() => {
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "fleet control connection lost; reconnecting");
                    }
                }
                () = member.gate.drain_started() => {
                    member.deregister().await;
                    return;
                }
            }
            if connected.elapsed() > Duration::from_secs(30) {
                backoff = Duration::from_millis(500);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    })
}

impl Member {
    async fn connect(
        &self,
    ) -> Result<(Client, mpsc::UnboundedReceiver<String>), tokio_postgres::Error> {
        let (client, mut connection) =
            tokio_postgres::connect(&self.settings.control_url, crate::tls::control_connector())
                .await?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => {
                        if tx.send(n.payload().to_owned()).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "fleet control connection failed");
                        return;
                    }
                }
            }
        });
        Ok((client, rx))
    }

    /// One connected stretch: register, listen, heartbeat and answer until the connection fails.
    async fn session(&self) -> Result<(), tokio_postgres::Error> {
        let (client, mut requests) = self.connect().await?;
        ensure_table(&client, "pgsidecar.sidecars", REGISTRY_DDL).await?;
        self.register(&client).await?;
        client
            .batch_execute(&format!("LISTEN {CONTROL_CHANNEL}"))
            .await?;
        tracing::info!(id = %self.settings.id, "joined the fleet");
        let client = Arc::new(client);
        let mut heartbeat = tokio::time::interval(self.settings.heartbeat);
        let mut pending: HashMap<Scope, JoinHandle<()>> = HashMap::new();
        let mut authority = Authority::new(self.settings.control_role.clone());
        loop {
            tokio::select! {
                _ = heartbeat.tick() => {
                    client
                        .execute(
                            "UPDATE pgsidecar.sidecars SET last_heartbeat = now() WHERE id = $1",
                            &[&self.settings.id],
                        )
                        .await?;
                }
                payload = requests.recv() => {
                    let Some(payload) = payload else {
                        return client.simple_query("SELECT 1").await.map(|_| ());
                    };
                    match authority.judge(&client, &payload).await? {
                        Ok(request) => match self.within_caps(&request) {
                            Ok(()) => self.answer(request, &client, &mut pending),
                            Err(error) => self.refuse_over_cap(&client, &request, error),
                        },
                        Err(refusal) => self.refused(&refusal),
                    }
                }
            }
        }
    }

    fn refused(&self, refusal: &Refusal) {
        tracing::warn!(%refusal, "fleet control request refused");
        self.side.control_request_refused(refusal.reason());
    }

    /// Whether a pause asks for more than this sidecar allows.
    fn within_caps(&self, request: &Request) -> Result<(), String> {
        let Request::Pause {
            deadline_ms,
            max_hold_ms,
            ..
        } = request
        else {
            return Ok(());
        };
        let caps = [
            (
                *deadline_ms,
                self.settings.max_pause_deadline,
                "deadline",
                "max_pause_deadline",
            ),
            (
                *max_hold_ms,
                self.settings.max_pause_hold,
                "max_hold",
                "max_pause_hold",
            ),
        ];
        for (asked, cap, name, key) in caps {
            if Duration::from_millis(asked) > cap {
                return Err(format!(
                    "{name} {asked}ms is longer than this sidecar's {key} ({cap:?})"
                ));
            }
        }
        Ok(())
    }

    /// Answers an authorised pause that asks too much with a failed acknowledgement, so that the
    /// coordinator fails (and resumes everyone) instead of waiting.
    fn refuse_over_cap(&self, client: &Arc<Client>, request: &Request, error: String) {
        tracing::warn!(%error, "fleet pause refused");
        self.side.control_request_refused("over_cap");
        let client = Arc::clone(client);
        let ack = Ack {
            request: request.id().to_owned(),
            sidecar: self.settings.id.clone(),
            ok: false,
            error: Some(error),
            took_ms: 0.0,
            stragglers: Vec::new(),
        };
        tokio::spawn(async move { acknowledge(&client, ack).await });
    }

    fn answer(
        &self,
        request: Request,
        client: &Arc<Client>,
        pending: &mut HashMap<Scope, JoinHandle<()>>,
    ) {
        let received = Instant::now();
        let id = request.id().to_owned();
        match request {
            Request::Pause {
                database,
                deadline_ms,
                max_hold_ms,
                cancel_stragglers,
                ..
            } => {
                let options = PauseOptions {
                    scope: Scope::from_database(database.as_deref()),
                    deadline: Duration::from_millis(deadline_ms),
                    max_hold: Duration::from_millis(max_hold_ms),
                    cancel_stragglers,
                };
                let gate = Arc::clone(&self.gate);
                let side = Arc::clone(&self.side);
                let client = Arc::clone(client);
                let sidecar = self.settings.id.clone();
                let scope = options.scope.clone();
                let task = tokio::spawn(async move {
                    let result = crate::gate::pause(&gate, &options, side.as_ref()).await;
                    let (ok, error, mut in_the_way) = match result {
                        Ok(_) => (true, None, Vec::new()),
                        Err(e @ PauseError::Deadline { .. }) => {
                            let PauseError::Deadline { stragglers, .. } = &e else {
                                unreachable!()
                            };
                            (false, Some(e.to_string()), stragglers.clone())
                        }
                        Err(e) => (false, Some(e.to_string()), Vec::new()),
                    };
                    in_the_way.truncate(MAX_ACK_STRAGGLERS);
                    acknowledge(
                        &client,
                        Ack {
                            request: id,
                            sidecar,
                            ok,
                            error,
                            took_ms: received.elapsed().as_secs_f64() * 1000.0,
                            stragglers: in_the_way,
                        },
                    )
                    .await;
                });
                if let Some(previous) = pending.insert(scope, task) {
                    previous.abort();
                }
            }
            Request::Invalidate { .. } => {
                self.side.schema_changed();
                tracing::info!("schema changed: prepared statements will be prepared afresh");
                self.acknowledge_now(client, id, received);
            }
            Request::Resume { database, .. } => {
                let scope = Scope::from_database(database.as_deref());
                // A pause still waiting for its transactions is abandoned: the gate opens.
                if let Some(task) = pending.remove(&scope) {
                    task.abort();
                }
                self.gate.resume(&scope);
                self.acknowledge_now(client, id, received);
            }
        }
    }

    /// Acknowledges a request that was carried out at once.
    fn acknowledge_now(&self, client: &Arc<Client>, request: String, received: Instant) {
        let client = Arc::clone(client);
        let ack = Ack {
            request,
            sidecar: self.settings.id.clone(),
            ok: true,
            error: None,
            took_ms: received.elapsed().as_secs_f64() * 1000.0,
            stragglers: Vec::new(),
        };
        tokio::spawn(async move { acknowledge(&client, ack).await });
    }

    /// Registers (or re-registers) this sidecar. A registry made by an older pgsidecar gets the
    /// `schema_version` column when this role may add it; otherwise a sidecar that serves no
    /// schema version registers without it, and one that serves a version fails loudly, since
    /// `migrate complete` could not see what it serves.
    async fn register(&self, client: &Client) -> Result<(), tokio_postgres::Error> {
        match self.upsert(client).await {
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_COLUMN) => {
                match client.batch_execute(REGISTRY_UPGRADE_DDL).await {
                    Ok(()) => self.upsert(client).await.map(|_| ()),
                    Err(upgrade) if self.settings.schema_version.is_none() => {
                        tracing::warn!(error = %upgrade, "the fleet registry has no schema_version column and this role cannot add it; registering without");
                        client
                            .execute(
                                "INSERT INTO pgsidecar.sidecars (id, host, version) VALUES ($1, $2, $3)
                                 ON CONFLICT (id) DO UPDATE SET host = $2, version = $3, last_heartbeat = now()",
                                &[&self.settings.id, &self.settings.host, &env!("CARGO_PKG_VERSION")],
                            )
                            .await
                            .map(|_| ())
                    }
                    Err(upgrade) => Err(upgrade),
                }
            }
            other => other.map(|_| ()),
        }
    }

    async fn upsert(&self, client: &Client) -> Result<u64, tokio_postgres::Error> {
        let s = &self.settings;
        client
            .execute(
                "INSERT INTO pgsidecar.sidecars (id, host, version, schema_version) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (id) DO UPDATE SET host = $2, version = $3, schema_version = $4,
                     last_heartbeat = now()",
                &[&s.id, &s.host, &env!("CARGO_PKG_VERSION"), &s.schema_version],
            )
            .await
    }

    async fn deregister(&self) {
        if let Ok((client, _)) = self.connect().await
            && let Err(e) = client
                .execute(
                    "DELETE FROM pgsidecar.sidecars WHERE id = $1",
                    &[&self.settings.id],
                )
                .await
        {
            tracing::warn!(error = %e, "could not leave the fleet registry");
        }
    }
}

async fn acknowledge(client: &Client, ack: Ack) {
    let payload = serde_json::to_string(&ack).unwrap_or_default();
    if let Err(e) = client
        .execute("SELECT pg_notify($1, $2)", &[&ACK_CHANNEL, &payload])
        .await
    {
        tracing::warn!(error = %e, "could not acknowledge a fleet request");
    }
}
