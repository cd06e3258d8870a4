//! Admin HTTP endpoints, served with axum on their own listener so that health checks never
//! queue behind client traffic.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{RawQuery, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::config::parse_duration;
use crate::context::ProxyContext;
use crate::gate::{
    DEFAULT_MAX_HOLD, DEFAULT_PAUSE_DEADLINE, GateStatus, PauseError, PauseOptions, Scope,
};
use crate::telemetry::{PoolGauges, PoolTotals};

/// One pool in `GET /v1/status`.
#[derive(Debug, Serialize)]
pub struct PoolStatus {
    /// Client-facing database.
    pub database: String,
    /// Client-facing user.
    pub user: String,
    /// `host:port` of the upstream host its connections go to.
    pub host: String,
    /// What that host is now: `primary`, `replica`, `down`, `fenced`, `unknown`.
    pub role: String,
    /// `transaction` or `session`.
    pub mode: String,
    /// Configured maximum of server connections.
    pub pool_size: usize,
    /// Server connections open now.
    pub server_connections: usize,
    /// Of those, idle in the pool.
    pub idle: usize,
    /// Clients waiting for a server connection.
    pub waiting: usize,
    /// Cumulative traffic figures.
    pub totals: PoolTotals,
}

/// The body of `GET /v1/status`.
#[derive(Debug, Serialize)]
pub struct Status {
    /// Client connections open now.
    pub clients: usize,
    /// Pauses and drain.
    pub gate: GateStatus,
    /// Every pool created so far.
    pub pools: Vec<PoolStatus>,
    /// The upstream hosts, as routing sees them.
    pub hosts: Vec<HostReport>,
}

/// One upstream host in `GET /v1/status`.
#[derive(Debug, Serialize)]
pub struct HostReport {
    /// `host:port`.
    pub host: String,
    /// The role configured: `primary`, `replica` or `auto`.
    pub configured_role: String,
    /// What it is now: `primary`, `replica`, `down`, `fenced`, `unknown`.
    pub state: String,
    /// Replicas: out of the rotation for lag.
    pub lagging: bool,
    /// Replicas: WAL bytes behind the primary.
    pub lag_bytes: Option<u64>,
    /// Replicas: seconds behind.
    pub lag_seconds: Option<f64>,
}

impl Status {
    /// A snapshot of the proxy's state.
    #[must_use]
    pub fn of(ctx: &ProxyContext) -> Self {
        let mut pools: Vec<PoolStatus> = ctx
            .pools
            .all()
            .iter()
            .map(|pool| {
                let usage = pool.usage();
                PoolStatus {
                    database: pool.key().database.clone(),
                    user: pool.key().user.clone(),
                    host: pool.address().to_owned(),
                    role: pool.host_state().name().to_owned(),
                    mode: pool.mode().to_string(),
                    pool_size: pool.settings().size,
                    server_connections: usage.size,
                    idle: usage.available,
                    waiting: usage.waiting,
                    totals: pool.metrics().totals(),
                }
            })
            .collect();
        pools.sort_by(|a, b| (&a.database, &a.user, &a.host).cmp(&(&b.database, &b.user, &b.host)));
        Self {
            clients: ctx.clients.load(Ordering::Relaxed),
            gate: ctx.gate.status(),
            pools,
            hosts: ctx
                .pools
                .topology()
                .hosts()
                .into_iter()
                .map(|host| HostReport {
                    host: host.address,
                    configured_role: host.configured.to_string(),
                    state: host.state.name().to_owned(),
                    lagging: host.lagging,
                    lag_bytes: host.lag_bytes,
                    lag_seconds: host.lag_seconds,
                })
                .collect(),
        }
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// How long `/readyz` waits for the upstream to accept a TCP connection.
const UPSTREAM_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Ready while this sidecar takes new clients (it is not draining). A database outage alone
/// leaves it ready: the database is shared by every pod of a Service, so failing readiness on it
/// would remove all of them at once, and the clients already get the pool's own errors
/// (`acquire_timeout`). `GET /readyz?upstream` also requires the upstream to accept a TCP
/// connection, for deployments that prefer a pod out of rotation to an error.
async fn readyz(
    State(ctx): State<Arc<ProxyContext>>,
    RawQuery(query): RawQuery,
) -> (StatusCode, String) {
    if ctx.gate.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n".to_owned());
    }
    let wants_upstream = query.as_deref().is_some_and(|q| {
        q.split('&')
            .any(|pair| pair.split('=').next() == Some("upstream"))
    });
    if !wants_upstream {
        return (StatusCode::OK, "ready\n".to_owned());
    }
    let topology = ctx.pools.topology();
    if topology.is_watched() {
        // Several hosts: the watcher already knows whether one takes writes.
        return match topology.primary() {
            Some(_) => (StatusCode::OK, "ready\n".to_owned()),
            None => (
                StatusCode::SERVICE_UNAVAILABLE,
                "no upstream host is a usable primary now\n".to_owned(),
            ),
        };
    }
    let address = ctx.config().upstream.hosts[0].address();
    match tokio::time::timeout(UPSTREAM_PROBE_TIMEOUT, TcpStream::connect(address.as_str())).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready\n".to_owned()),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("upstream {address} unreachable: {e}\n"),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "upstream {address} did not accept a connection within {UPSTREAM_PROBE_TIMEOUT:?}\n"
            ),
        ),
    }
}

/// The Prometheus exposition, with pool gauges read at scrape time.
async fn metrics(State(ctx): State<Arc<ProxyContext>>) -> impl IntoResponse {
    let metrics = &ctx.telemetry.metrics;
    for pool in ctx.pools.all() {
        let usage = pool.usage();
        metrics.set_pool_gauges(
            pool.metrics(),
            &PoolGauges {
                active: usage.size.saturating_sub(usage.available),
                idle: usage.available,
                waiting: usage.waiting,
                pool_size: pool.settings().size,
            },
        );
    }
    metrics.set_paused_scopes(ctx.gate.status().paused.len());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}

async fn status(State(ctx): State<Arc<ProxyContext>>) -> Json<Status> {
    Json(Status::of(&ctx))
}

/// The JSON body of the gate endpoints; every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GateRequest {
    /// One database, or all when absent.
    database: Option<String>,
    /// Pause: how long to wait for transactions in flight; drain: for sessions to finish.
    deadline: Option<String>,
    /// Pause: the longest it holds.
    max_hold: Option<String>,
    /// Pause: end the transactions still running at the deadline.
    #[serde(default)]
    cancel_stragglers: bool,
}

type JsonReply = (StatusCode, Json<serde_json::Value>);

fn reply(code: StatusCode, body: serde_json::Value) -> JsonReply {
    (code, Json(body))
}

fn parse_request(body: &[u8]) -> Result<GateRequest, JsonReply> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(GateRequest::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| reply(StatusCode::BAD_REQUEST, json!({ "error": e.to_string() })))
}

/// A duration from the request, or `default`; one above `cap` (the config key `cap_key`) is
/// refused rather than shortened, so that the caller is never surprised by a shorter hold.
fn duration_field(
    value: Option<&str>,
    name: &str,
    default: Duration,
    (cap, cap_key): (Duration, &str),
) -> Result<Duration, JsonReply> {
    let bad = |message: String| reply(StatusCode::BAD_REQUEST, json!({ "error": message }));
    let duration = value.map_or(Ok(default.min(cap)), |v| {
        parse_duration(v).map_err(|m| bad(format!("{name}: {m}")))
    })?;
    if duration > cap {
        return Err(bad(format!(
            "{name}: {duration:?} is longer than this sidecar's {cap_key} ({cap:?})"
        )));
    }
    Ok(duration)
}

/// The header's bearer token, if it has one.
fn bearer(request: &Request) -> Option<&str> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Lets a request to an endpoint that changes traffic through only with the configured admin
/// token; without a configured token those endpoints are off. Refusals are logged and counted.
async fn require_token(
    State(ctx): State<Arc<ProxyContext>>,
    request: Request,
    next: Next,
) -> Response {
    let config = ctx.config();
    let (code, reason, message) = match (&config.control.admin_token, bearer(&request)) {
        (Some(token), Some(presented)) if token.matches(presented) => {
            return next.run(request).await;
        }
        (None, _) => (
            StatusCode::FORBIDDEN,
            "no_token_configured",
            "the endpoints that change traffic (gate, reload) are off: no admin token is configured (admin_token_file or PGSIDECAR_ADMIN_TOKEN)",
        ),
        (Some(_), None) => (
            StatusCode::UNAUTHORIZED,
            "missing_token",
            "this endpoint needs `Authorization: Bearer <admin token>`",
        ),
        (Some(_), Some(_)) => (
            StatusCode::UNAUTHORIZED,
            "wrong_token",
            "the admin token is wrong",
        ),
    };
    tracing::warn!(path = %request.uri().path(), reason, "admin request refused");
    ctx.telemetry
        .metrics
        .control_request_refused("admin_http", reason);
    (
        code,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(json!({ "error": message })),
    )
        .into_response()
}

/// `POST /v1/gate/pause`: returns when paused (200) or when the pause failed (409, with the
/// transactions that held it); traffic flows again after a failure.
async fn gate_pause(State(ctx): State<Arc<ProxyContext>>, body: Bytes) -> JsonReply {
    let request = match parse_request(&body) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let caps = &ctx.config().control;
    let options = match (
        duration_field(
            request.deadline.as_deref(),
            "deadline",
            DEFAULT_PAUSE_DEADLINE,
            (caps.max_pause_deadline, "max_pause_deadline"),
        ),
        duration_field(
            request.max_hold.as_deref(),
            "max_hold",
            DEFAULT_MAX_HOLD,
            (caps.max_pause_hold, "max_pause_hold"),
        ),
    ) {
        (Ok(deadline), Ok(max_hold)) => PauseOptions {
            scope: Scope::from_database(request.database.as_deref()),
            deadline,
            max_hold,
            cancel_stragglers: request.cancel_stragglers,
        },
        (Err(e), _) | (_, Err(e)) => return e,
    };
    match ctx.pause(&options).await {
        Ok(report) => reply(StatusCode::OK, json!({ "paused": report })),
        Err(e @ PauseError::Deadline { .. }) => {
            let PauseError::Deadline { stragglers, .. } = &e else {
                unreachable!()
            };
            reply(
                StatusCode::CONFLICT,
                json!({ "error": e.to_string(), "stragglers": stragglers }),
            )
        }
        Err(e @ PauseError::Draining) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "error": e.to_string() }),
        ),
    }
}

/// `POST /v1/gate/resume`.
async fn gate_resume(State(ctx): State<Arc<ProxyContext>>, body: Bytes) -> JsonReply {
    match parse_request(&body) {
        Ok(request) => {
            let scope = Scope::from_database(request.database.as_deref());
            let resumed = ctx.gate.resume(&scope);
            reply(
                StatusCode::OK,
                json!({ "resumed": resumed, "scope": scope.to_string() }),
            )
        }
        Err(e) => e,
    }
}

/// `POST /v1/gate/drain`: starts draining and returns at once (202).
async fn gate_drain(State(ctx): State<Arc<ProxyContext>>, body: Bytes) -> JsonReply {
    let request = match parse_request(&body) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let config = ctx.config();
    match duration_field(
        request.deadline.as_deref(),
        "deadline",
        config.drain_timeout,
        (
            config.drain_timeout.max(config.control.max_pause_deadline),
            "max_pause_deadline",
        ),
    ) {
        Ok(deadline) => {
            ctx.gate.drain(Instant::now() + deadline);
            reply(
                StatusCode::ACCEPTED,
                json!({ "draining": true, "deadline_seconds": deadline.as_secs_f64() }),
            )
        }
        Err(e) => e,
    }
}

/// Reads the configuration file again (`POST /v1/reload`), as SIGHUP does, for containers
/// where nothing can send a signal. 200 with the keys the file could not change (fixed by a flag
/// or an environment variable at start); 422 with the reason when the file does not validate.
async fn reload(State(ctx): State<Arc<ProxyContext>>) -> JsonReply {
    match ctx.reload_from_source() {
        Ok(pinned) => reply(
            StatusCode::OK,
            json!({ "reloaded": true, "pinned_by_flags_or_environment": pinned }),
        ),
        Err(e) => reply(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({ "reloaded": false, "error": e.to_string() }),
        ),
    }
}

/// A bound admin listener.
pub struct AdminServer {
    listener: TcpListener,
    ctx: Arc<ProxyContext>,
}

impl AdminServer {
    /// Binds `addr` for the proxy whose context is `ctx`.
    ///
    /// # Errors
    /// The bind error.
    pub async fn bind(addr: SocketAddr, ctx: Arc<ProxyContext>) -> std::io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(addr).await?,
            ctx,
        })
    }

    /// The bound address.
    ///
    /// # Errors
    /// The socket's error.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` turns true.
    ///
    /// # Errors
    /// A failure of the listener.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> std::io::Result<()> {
        let changes_traffic = Router::new()
            .route("/v1/gate/pause", post(gate_pause))
            .route("/v1/gate/resume", post(gate_resume))
            .route("/v1/gate/drain", post(gate_drain))
            .route("/v1/reload", post(reload))
            .route_layer(middleware::from_fn_with_state(
                Arc::clone(&self.ctx),
                require_token,
            ));
        let app = Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .route("/v1/status", get(status))
            .merge(changes_traffic)
            .with_state(self.ctx);
        axum::serve(self.listener, app)
            .with_graceful_shutdown(async move {
                while !*shutdown.borrow() {
                    if shutdown.changed().await.is_err() {
                        return;
                    }
                }
            })
            .await
    }
}
