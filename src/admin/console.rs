//! The admin console: `psql -d pgsidecar` on the proxy's own port, for the users in
//! `admin_users`. It answers `SHOW POOLS|HOSTS|CLIENTS|SERVERS|STATS|CONFIG|VERSION|HELP`, `PAUSE [db]`,
//! `RESUME [db]` and `SHUTDOWN WAIT` over the simple query protocol, with PgBouncer's column names wherever the meaning is the same, so existing
//! habits and scripts carry over.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;

use crate::backend::{HostState, ServerPool};
use crate::context::ProxyContext;
use crate::gate::{DEFAULT_MAX_HOLD, DEFAULT_PAUSE_DEADLINE, PauseError, PauseOptions, Scope};
use crate::tls::PgStream;
use crate::wire::extended::{put_command_complete, put_empty};
use crate::wire::messages::{
    Severity, error, put_backend_key, put_data_row, put_parameter_status, put_ready_for_query,
    put_row_description, take_cstr,
};
use crate::wire::tag::{client, server, status};
use crate::wire::{WireError, read_frame, sqlstate};

/// Largest message the console reads; its commands are short.
const MAX_MESSAGE: usize = 64 * 1024;

const TEXT: u32 = 25;
const INT8: u32 = 20;

/// A result set the console sends back.
struct Table {
    columns: Vec<(&'static str, u32)>,
    rows: Vec<Vec<Option<String>>>,
}

impl Table {
    fn new(columns: &[(&'static str, u32)]) -> Self {
        Self {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, values: Vec<Option<String>>) {
        self.rows.push(values);
    }

    fn encode(&self, out: &mut BytesMut) {
        put_row_description(out, &self.columns);
        for row in &self.rows {
            let values: Vec<Option<&str>> = row.iter().map(Option::as_deref).collect();
            put_data_row(out, &values);
        }
        put_command_complete(out, "SHOW");
    }
}

/// A non-NULL cell; NULL cells are written `None`.
#[allow(clippy::unnecessary_wraps)]
fn text(value: impl std::fmt::Display) -> Option<String> {
    Some(value.to_string())
}

/// `2026-11-25 19:46:02 UTC`, as PgBouncer prints times.
fn timestamp(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rest = secs % 86_400;
    // Civil date from days since 1970-01-01 (proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

fn ago(elapsed: Duration) -> SystemTime {
    SystemTime::now().checked_sub(elapsed).unwrap_or(UNIX_EPOCH)
}

/// Pools by database, user and host, as listed.
fn sorted_pools(ctx: &ProxyContext) -> Vec<Arc<ServerPool>> {
    let mut pools = ctx.pools.all();
    pools.sort_by(|a, b| (a.key(), a.host()).cmp(&(b.key(), b.host())));
    pools
}

/// The upstream hosts: role as configured and as found, replay lag, and whether each takes
/// new transactions.
fn show_hosts(ctx: &ProxyContext) -> Table {
    let mut table = Table::new(&[
        ("host", TEXT),
        ("configured_role", TEXT),
        ("state", TEXT),
        ("in_rotation", TEXT),
        ("lag_bytes", INT8),
        ("lag_seconds", TEXT),
        ("state_since", TEXT),
        ("last_error", TEXT),
    ]);
    for host in ctx.pools.topology().hosts() {
        let in_rotation = matches!(host.state, HostState::Primary)
            || (host.state == HostState::Replica && !host.lagging);
        table.row(vec![
            text(&host.address),
            text(host.configured),
            text(host.state.name()),
            text(if in_rotation { "yes" } else { "no" }),
            host.lag_bytes.map(|b| b.to_string()),
            host.lag_seconds.map(|s| format!("{s:.3}")),
            text(timestamp(ago(host.since.elapsed()))),
            host.last_probe.and_then(Result::err),
        ]);
    }
    table
}

fn show_pools(ctx: &ProxyContext) -> Table {
    let mut table = Table::new(&[
        ("database", TEXT),
        ("user", TEXT),
        ("cl_active", INT8),
        ("cl_waiting", INT8),
        ("sv_active", INT8),
        ("sv_idle", INT8),
        ("pool_mode", TEXT),
        ("host", TEXT),
        ("role", TEXT),
    ]);
    for pool in sorted_pools(ctx) {
        let usage = pool.usage();
        let clients = pool.metrics().totals().clients;
        table.row(vec![
            text(&pool.key().database),
            text(&pool.key().user),
            text(clients.saturating_sub(usage.waiting)),
            text(usage.waiting),
            text(usage.size.saturating_sub(usage.available)),
            text(usage.available),
            text(pool.mode()),
            text(pool.address()),
            text(pool.host_state().name()),
        ]);
    }
    table
}

fn show_clients(ctx: &ProxyContext) -> Table {
    let mut table = Table::new(&[
        ("type", TEXT),
        ("user", TEXT),
        ("database", TEXT),
        ("state", TEXT),
        ("addr", TEXT),
        ("port", INT8),
        ("local_addr", TEXT),
        ("local_port", INT8),
        ("connect_time", TEXT),
        ("application_name", TEXT),
        ("server_pid", INT8),
        ("tls", TEXT),
    ]);
    let mut clients = ctx.cancels.all();
    clients.sort_by_key(|c| c.info.connected_at);
    for client in clients {
        let info = &client.info;
        let server = client.current();
        let state = match (server, client.is_waiting()) {
            (Some(_), _) => "active",
            (None, true) => "waiting",
            (None, false) => "idle",
        };
        table.row(vec![
            text("C"),
            text(&info.pool.user),
            text(&info.pool.database),
            text(state),
            text(info.peer.ip()),
            text(info.peer.port()),
            info.local.map(|a| a.ip().to_string()),
            info.local.map(|a| a.port().to_string()),
            text(timestamp(info.connected_at)),
            text(&info.application_name),
            server.map(|s| s.pid.to_string()),
            info.tls.as_deref().map(str::to_owned),
        ]);
    }
    table
}

fn show_servers(ctx: &ProxyContext) -> Table {
    let mut table = Table::new(&[
        ("type", TEXT),
        ("user", TEXT),
        ("database", TEXT),
        ("state", TEXT),
        ("addr", TEXT),
        ("port", INT8),
        ("connect_time", TEXT),
        ("remote_pid", INT8),
        ("application_name", TEXT),
    ]);
    for client in ctx.cancels.all() {
        if let Some(server) = client.current() {
            let info = &client.info;
            table.row(vec![
                text("S"),
                text(&info.pool.user),
                text(&info.pool.database),
                text("active"),
                text(server.addr.ip()),
                text(server.addr.port()),
                None,
                text(server.pid),
                text(&info.application_name),
            ]);
        }
    }
    for pool in ctx.pools.all() {
        for idle in pool.idle_servers() {
            table.row(vec![
                text("S"),
                text(&pool.key().user),
                text(&pool.key().database),
                text("idle"),
                text(idle.server.addr.ip()),
                text(idle.server.addr.port()),
                text(timestamp(ago(idle.age))),
                text(idle.server.pid),
                text(""),
            ]);
        }
    }
    table
}

fn show_stats(ctx: &ProxyContext) -> Table {
    let mut table = Table::new(&[
        ("database", TEXT),
        ("user", TEXT),
        ("total_xact_count", INT8),
        ("total_query_count", INT8),
        ("total_error_count", INT8),
        ("total_received", INT8),
        ("total_sent", INT8),
        ("total_query_time", INT8),
        ("total_wait_time", INT8),
        ("host", TEXT),
    ]);
    for pool in sorted_pools(ctx) {
        let totals = pool.metrics().totals();
        table.row(vec![
            text(&pool.key().database),
            text(&pool.key().user),
            text(totals.transactions),
            text(totals.queries),
            text(totals.errors),
            text(totals.received_bytes),
            text(totals.sent_bytes),
            text(totals.query_micros),
            text(totals.wait_micros),
            text(pool.address()),
        ]);
    }
    table
}

fn show_config(ctx: &ProxyContext) -> Table {
    let mut table = Table::new(&[
        ("key", TEXT),
        ("value", TEXT),
        ("default", TEXT),
        ("changeable", TEXT),
    ]);
    for setting in ctx.config().settings() {
        table.row(vec![
            text(setting.key),
            text(setting.value),
            text(setting.default),
            text("no"),
        ]);
    }
    table
}

const COMMANDS: [&str; 12] = [
    "SHOW POOLS",
    "SHOW HOSTS",
    "SHOW CLIENTS",
    "SHOW SERVERS",
    "SHOW STATS",
    "SHOW CONFIG",
    "SHOW VERSION",
    "SHOW HELP",
    "PAUSE [db]",
    "RESUME [db]",
    "SHUTDOWN WAIT",
    "RELOAD",
];

/// What the console sends back for a command that succeeded.
enum Reply {
    Table(Table),
    Tag(&'static str),
    Empty,
}

/// `PAUSE [db]` with the default deadline and maximum hold (within the configured caps).
async fn pause(
    ctx: &ProxyContext,
    database: Option<&str>,
) -> Result<Reply, (&'static str, String)> {
    let caps = ctx.config().control.clone();
    let options = PauseOptions {
        scope: Scope::from_database(database),
        deadline: DEFAULT_PAUSE_DEADLINE.min(caps.max_pause_deadline),
        max_hold: DEFAULT_MAX_HOLD.min(caps.max_pause_hold),
        cancel_stragglers: false,
    };
    match ctx.pause(&options).await {
        Ok(_) => Ok(Reply::Tag("PAUSE")),
        Err(e @ PauseError::Deadline { .. }) => {
            let PauseError::Deadline { stragglers, .. } = &e else {
                unreachable!()
            };
            let list: Vec<String> = stragglers
                .iter()
                .map(|s| {
                    format!(
                        "{}@{} app={:?} server_pid={} open {:.1}s",
                        s.user,
                        s.client_addr,
                        s.application_name,
                        s.server_pid
                            .map_or_else(|| "-".to_owned(), |p| p.to_string()),
                        s.transaction_seconds
                    )
                })
                .collect();
            Err((
                sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("{e}: {}", list.join("; ")),
            ))
        }
        Err(e) => Err((sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE, e.to_string())),
    }
}

/// The answer to one console command.
async fn answer(ctx: &ProxyContext, sql: &str) -> Result<Reply, (&'static str, String)> {
    let words: Vec<&str> = sql
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .collect();
    let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
    let upper: Vec<&str> = upper.iter().map(String::as_str).collect();
    match upper.as_slice() {
        ["PAUSE"] => pause(ctx, None).await,
        ["PAUSE", _] => pause(ctx, Some(words[1])).await,
        ["RESUME"] | ["RESUME", _] => {
            let scope = Scope::from_database(words.get(1).copied());
            if ctx.gate.resume(&scope) {
                Ok(Reply::Tag("RESUME"))
            } else {
                Err((
                    sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
                    format!("{scope} is not paused"),
                ))
            }
        }
        ["RELOAD"] => match ctx.reload_from_source() {
            Ok(_) => Ok(Reply::Tag("RELOAD")),
            Err(e) => Err((sqlstate::CONFIG_FILE_ERROR, e.to_string())),
        },
        ["SHUTDOWN", "WAIT"] => {
            ctx.gate
                .drain(std::time::Instant::now() + ctx.config().drain_timeout);
            Ok(Reply::Tag("SHUTDOWN"))
        }
        _ => show(ctx, sql),
    }
}

/// The answer to a SHOW command: a table, or the SQLSTATE and message of an error.
fn show(ctx: &ProxyContext, sql: &str) -> Result<Reply, (&'static str, String)> {
    let words: Vec<String> = sql
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .map(str::to_ascii_uppercase)
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let table = match words.as_slice() {
        [] => return Ok(Reply::Empty),
        ["SHOW", "POOLS"] => show_pools(ctx),
        ["SHOW", "HOSTS"] => show_hosts(ctx),
        ["SHOW", "CLIENTS"] => show_clients(ctx),
        ["SHOW", "SERVERS"] => show_servers(ctx),
        ["SHOW", "STATS"] => show_stats(ctx),
        ["SHOW", "CONFIG"] => show_config(ctx),
        ["SHOW", "VERSION"] => {
            let mut table = Table::new(&[("version", TEXT)]);
            table.row(vec![text(format!(
                "pgsidecar {}",
                env!("CARGO_PKG_VERSION")
            ))]);
            table
        }
        ["SHOW", "HELP"] => {
            let mut table = Table::new(&[("command", TEXT)]);
            for command in COMMANDS {
                table.row(vec![text(command)]);
            }
            table
        }
        _ => {
            return Err((
                sqlstate::SYNTAX_ERROR,
                format!(
                    "pgsidecar admin console: unknown command \"{}\"; SHOW HELP lists the commands",
                    sql.trim()
                ),
            ));
        }
    };
    Ok(Reply::Table(table))
}

/// Why a console session ended early.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The client's socket failed.
    #[error("console client i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The client broke the protocol.
    #[error("console client {0}")]
    Protocol(#[from] WireError),
}

/// Serves an authenticated admin until it leaves.
///
/// # Errors
/// [`ConsoleError`] when the client's socket fails or it breaks the protocol (it is told).
pub async fn serve(
    ctx: &Arc<ProxyContext>,
    stream: &mut PgStream,
    user: &str,
) -> Result<(), ConsoleError> {
    let mut out = BytesMut::new();
    for (name, value) in [
        (
            "server_version",
            concat!(env!("CARGO_PKG_VERSION"), "/pgsidecar"),
        ),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("session_authorization", user),
    ] {
        put_parameter_status(&mut out, name, value);
    }
    put_backend_key(&mut out, 0, 0);
    put_ready_for_query(&mut out, status::IDLE);
    stream.send(&out).await?;
    let mut buf = BytesMut::new();
    // After an extended-protocol message the console refuses, the rest of that batch is
    // skipped until its Sync, as a server would.
    let mut skipping = false;
    loop {
        let read = tokio::select! {
            read = read_frame(stream, &mut buf, MAX_MESSAGE) => read,
            () = ctx.gate.drain_started() => {
                let message = "terminating connection due to administrator command: pgsidecar is draining";
                let _ = stream
                    .send(&error(Severity::Fatal, sqlstate::ADMIN_SHUTDOWN, message))
                    .await;
                return Ok(());
            }
        };
        let frame = match read {
            Ok(frame) => frame,
            Err(WireError::Closed) => return Ok(()),
            Err(e) => {
                let _ = stream
                    .send(&error(
                        Severity::Fatal,
                        sqlstate::PROTOCOL_VIOLATION,
                        &e.to_string(),
                    ))
                    .await;
                return Err(e.into());
            }
        };
        out.clear();
        match frame.tag {
            client::QUERY => {
                let (sql, _) = take_cstr(&frame.body)?;
                match answer(ctx, sql).await {
                    Ok(Reply::Table(table)) => table.encode(&mut out),
                    Ok(Reply::Tag(tag)) => put_command_complete(&mut out, tag),
                    Ok(Reply::Empty) => put_empty(&mut out, server::EMPTY_QUERY_RESPONSE),
                    Err((code, message)) => {
                        out.extend_from_slice(&error(Severity::Error, code, &message));
                    }
                }
                put_ready_for_query(&mut out, status::IDLE);
            }
            client::SYNC => {
                skipping = false;
                put_ready_for_query(&mut out, status::IDLE);
            }
            client::TERMINATE => return Ok(()),
            client::PARSE
            | client::BIND
            | client::DESCRIBE
            | client::EXECUTE
            | client::CLOSE
            | client::FLUSH => {
                if !skipping {
                    skipping = true;
                    out.extend_from_slice(&error(
                        Severity::Error,
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "the pgsidecar admin console speaks the simple query protocol only",
                    ));
                }
            }
            other => {
                let message = format!("invalid frontend message type {other}");
                let _ = stream
                    .send(&error(
                        Severity::Fatal,
                        sqlstate::PROTOCOL_VIOLATION,
                        &message,
                    ))
                    .await;
                return Err(WireError::protocol(message).into());
            }
        }
        if !out.is_empty() {
            stream.send(&out).await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_civil_utc() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        let at = UNIX_EPOCH + Duration::from_secs(1_795_635_962);
        assert_eq!(timestamp(at), "2026-11-25 19:46:02 UTC");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(timestamp(leap), "2000-02-29 00:00:00 UTC");
    }
}
