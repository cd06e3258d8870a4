//! Accepting clients: admission limits, the login deadline, cancel dispatch, and one task per
//! session.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::login::{Admission, LoginError, admission, authenticate};
use super::negotiate::negotiate;
use super::params::ClientParams;
use super::session::Session;
use crate::admin::{ADMIN_DATABASE, console};
use crate::auth::ScramKeys;
use crate::backend::{Intent, PoolKey};
use crate::context::{ClientCount, ClientInfo, ProxyContext};
use crate::tls::{ClientTlsMode, PgStream};
use crate::wire::sqlstate;
use crate::wire::startup::StartupRequest;

/// Accepts clients on one listener until told to stop, each in a task of its own; the listener
/// closes when this returns. `index` is the listener's place in the configuration (`listen`
/// first), which selects its TLS policy.
pub async fn accept_clients(
    ctx: Arc<ProxyContext>,
    listener: TcpListener,
    index: usize,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let ctx = Arc::clone(&ctx);
                    tokio::spawn(async move { handle_client(ctx, stream, peer, index).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => return,
        }
    }
}

/// How long a refused connection is kept to let the client read why.
const CLOSE_LINGER: Duration = Duration::from_millis(250);

async fn handle_client(ctx: Arc<ProxyContext>, tcp: TcpStream, peer: SocketAddr, listener: usize) {
    let _ = tcp.set_nodelay(true);
    let local = tcp.local_addr().ok();
    let (counted, count) = ClientCount::new(&ctx);
    let config = ctx.config();
    let policy = config.client_tls_for(listener);
    let deadline = tokio::time::Instant::now() + config.client_login_timeout;
    // A client that does not finish negotiating in time is closed without a word, as
    // PostgreSQL does: it may be half-way through a TLS handshake.
    let (mut stream, request) = match tokio::time::timeout_at(
        deadline,
        negotiate(&config, policy, tcp),
    )
    .await
    {
        Ok(Ok(negotiated)) => negotiated,
        Ok(Err(refusal)) => {
            tracing::info!(%peer, error = %refusal.error, "connection refused");
            if let Some(stream) = refusal.stream {
                stream
                    .send_and_close(&refusal.error.to_client(), CLOSE_LINGER)
                    .await;
            }
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "client did not send a startup packet within client_login_timeout");
            ctx.telemetry.metrics.client_refused("login_timeout");
            return;
        }
    };
    let login =
        match tokio::time::timeout_at(deadline, login(&ctx, &mut stream, request, policy, count))
            .await
        {
            Ok(Ok(Some(login))) => login,
            Ok(Ok(None)) => {
                // A cancel request: its connection ends cleanly (libpq 17+ sends cancels over
                // TLS and reports a missing close_notify as a failed cancel).
                stream.close().await;
                return;
            }
            Ok(Err(e)) => {
                tracing::info!(%peer, error = %e, "login refused");
                if e.is_auth_failure() {
                    ctx.telemetry.metrics.login_failed(peer.ip());
                    tokio::time::sleep(config.auth_failure_delay).await;
                }
                stream.send_and_close(&e.to_client(), CLOSE_LINGER).await;
                return;
            }
            Err(_) => {
                ctx.telemetry.metrics.client_refused("login_timeout");
                let e = LoginError::new(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!(
                        "login not completed within client_login_timeout ({:?})",
                        config.client_login_timeout
                    ),
                );
                stream.send_and_close(&e.to_client(), CLOSE_LINGER).await;
                return;
            }
        };
    if login.database == ADMIN_DATABASE {
        let _counted = counted;
        if let Err(e) = console::serve(&ctx, &mut stream, &login.user).await {
            tracing::info!(%peer, error = %e, "admin console session ended with an error");
        }
        stream.close().await;
        return;
    }
    start_session(ctx, stream, login, peer, local, counted).await;
}

/// Gives a logged-in client its pool, cancel key and server greeting, then runs its session as
/// a task of its own.
async fn start_session(
    ctx: Arc<ProxyContext>,
    stream: PgStream,
    login: Login,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    counted: ClientCount,
) {
    // A read alias shares its database's pools, gate and pause (it is listed under the database
    // it stands for); its transactions go to
    // replicas.
    let config = ctx.config();
    let (database, reads_only) = config.routing.resolve(&login.database);
    let intent = if reads_only {
        Intent::Read
    } else {
        Intent::Write
    };
    let pool = ctx.pools.get_for(
        &PoolKey {
            database: database.to_owned(),
            user: login.user,
        },
        intent,
    );
    let info = ClientInfo {
        application_name: login
            .params
            .wanted()
            .get("application_name")
            .map(|name| name.as_str().into())
            .unwrap_or_default(),
        pool: pool.shared_key(),
        peer,
        local,
        connected_at: SystemTime::now(),
        tls: stream.tls_description().map(String::into_boxed_str),
    };
    if let Some(keys) = login.scram_keys {
        pool.offer_scram_keys(keys);
    }
    let cancel = ctx.cancels.issue(info);
    // Boxed: the task below then holds a pointer to the session, not a copy of it beside the
    // one its running future holds.
    let mut session = Box::new(Session::new(
        Arc::clone(&ctx),
        stream,
        pool,
        login.params,
        cancel,
        reads_only,
        counted,
    ));
    if let Err(e) = session.greet().await {
        tracing::info!(%peer, error = %e, "no server for a new client");
        session.fail(&e).await;
        session.close().await;
        return;
    }
    // The session runs as a task of its own so that an idle client costs only the session's
    // state, not the (larger) login state machine this task carries.
    tokio::spawn(session.run());
}

/// A client that has authenticated.
struct Login {
    user: String,
    database: String,
    params: ClientParams,
    /// The keys a SCRAM login proved, for logging in to the server on the client's behalf.
    scram_keys: Option<ScramKeys>,
}

/// Checks the startup packet and authenticates; `None` means the connection was a cancel
/// request and is done.
async fn login(
    ctx: &Arc<ProxyContext>,
    stream: &mut PgStream,
    request: StartupRequest,
    policy: ClientTlsMode,
    count: usize,
) -> Result<Option<Login>, LoginError> {
    let (user, database, mut params) = match admission(stream, request, policy).await? {
        Admission::Cancel { pid, secret } => {
            if let Some(target) = ctx.cancels.resolve(pid, secret)
                && let Err(e) = target.send().await
            {
                tracing::warn!(error = %e, "forwarding a cancel request failed");
            }
            return Ok(None);
        }
        Admission::Startup {
            user,
            database,
            params,
        } => (user, database, params),
    };
    if count > ctx.config().max_client_conn {
        ctx.telemetry.metrics.client_refused("max_client_conn");
        return Err(LoginError::new(
            sqlstate::TOO_MANY_CONNECTIONS,
            format!(
                "sorry, too many clients already (max_client_conn is {})",
                ctx.config().max_client_conn
            ),
        ));
    }
    if database != ADMIN_DATABASE
        && let Some(path) = ctx.config().version_search_path()
    {
        params.default_to("search_path", &path);
    }
    let scram_keys = authenticate(ctx, stream, &user, &database).await?;
    if database == ADMIN_DATABASE && !ctx.config().admin_users.contains(&user) {
        return Err(LoginError::new(
            sqlstate::INVALID_AUTHORIZATION,
            format!(
                "user \"{user}\" may not open the pgsidecar admin console (not in admin_users)"
            ),
        ));
    }
    Ok(Some(Login {
        user,
        database,
        params,
        scram_keys,
    }))
}
