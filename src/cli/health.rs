//! `pgsidecar health`: the database's health checks, and optionally a sidecar's pools, with a
//! Nagios-style exit code (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use pgsidecar::config::parse_duration;
use pgsidecar::health::{self, Check, Status, Thresholds, grade};

#[derive(Args)]
pub struct HealthArgs {
    /// The database to check; DATABASE_URL when not given.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// A sidecar's admin address, to check its pools' saturation and waits too.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Share of max_connections in use: warn,critical.
    #[arg(long, value_parser = ratios, default_value = "0.8,0.95")]
    connections: (f64, f64),
    /// Oldest open transaction: warn,critical.
    #[arg(long, value_parser = durations, default_value = "5m,30m")]
    long_transaction: (Duration, Duration),
    /// Oldest idle-in-transaction session: warn,critical.
    #[arg(long, value_parser = durations, default_value = "1m,10m")]
    idle_in_transaction: (Duration, Duration),
    /// Longest lock wait: warn,critical.
    #[arg(long, value_parser = durations, default_value = "5s,1m")]
    lock_wait: (Duration, Duration),
}

fn split(text: &str) -> Result<(&str, &str), String> {
    text.split_once(',')
        .ok_or_else(|| format!("expected warn,critical, got `{text}`"))
}

fn ratios(text: &str) -> Result<(f64, f64), String> {
    let (w, c) = split(text)?;
    let parse = |v: &str| {
        v.trim()
            .parse::<f64>()
            .map_err(|_| format!("not a number: `{v}`"))
    };
    Ok((parse(w)?, parse(c)?))
}

fn durations(text: &str) -> Result<(Duration, Duration), String> {
    let (w, c) = split(text)?;
    Ok((parse_duration(w)?, parse_duration(c)?))
}

/// The sidecar's pools from its `/v1/status`: clients waiting for a server connection.
async fn sidecar_pools(addr: SocketAddr) -> Check {
    let fail = |summary: String| Check {
        name: "sidecar_pools",
        status: Status::Unknown,
        value: 0.0,
        summary,
        details: Vec::new(),
    };
    let body = match pgsidecar::admin::client::request(addr, "GET", "/v1/status", "", None).await {
        Ok((200, body)) => body,
        Ok((code, _)) => return fail(format!("{addr}/v1/status answered HTTP {code}")),
        Err(e) => return fail(e.to_string()),
    };
    let Ok(status) = serde_json::from_str::<serde_json::Value>(&body) else {
        return fail(format!("{addr}/v1/status is not JSON"));
    };
    let mut worst = Status::Ok;
    let mut most_waiting = 0.0;
    let mut details = Vec::new();
    for pool in status["pools"].as_array().into_iter().flatten() {
        let waiting = pool["waiting"].as_f64().unwrap_or(0.0);
        let size = pool["pool_size"].as_f64().unwrap_or(1.0);
        let waits = pool["totals"]["waits"].as_f64().unwrap_or(0.0);
        let wait_micros = pool["totals"]["wait_micros"].as_f64().unwrap_or(0.0);
        let mean_wait_ms = if waits > 0.0 {
            wait_micros / waits / 1000.0
        } else {
            0.0
        };
        worst = worst.max(grade(waiting, (1.0, size)));
        if waiting > most_waiting {
            most_waiting = waiting;
        }
        details.push(format!(
            "{}/{}: {} of {} server connections, {} clients waiting, mean wait {mean_wait_ms:.2} ms",
            pool["database"].as_str().unwrap_or("?"),
            pool["user"].as_str().unwrap_or("?"),
            pool["server_connections"],
            pool["pool_size"],
            pool["waiting"],
        ));
    }
    Check {
        name: "sidecar_pools",
        status: worst,
        value: most_waiting,
        summary: format!(
            "{} pool(s), at most {most_waiting} client(s) waiting",
            details.len()
        ),
        details,
    }
}

/// Runs the checks and reports them.
pub async fn run(args: HealthArgs) -> ExitCode {
    let client = match tokio_postgres::connect(
        &args.database_url,
        pgsidecar::tls::control_connector(),
    )
    .await
    {
        Ok((client, connection)) => {
            tokio::spawn(connection);
            client
        }
        Err(e) => {
            println!("HEALTH UNKNOWN: cannot connect: {e}");
            return ExitCode::from(Status::Unknown.exit_code());
        }
    };
    let thresholds = Thresholds {
        connections: args.connections,
        long_transaction: args.long_transaction,
        idle_in_transaction: args.idle_in_transaction,
        lock_wait: args.lock_wait,
        ..Thresholds::default()
    };
    let mut checks = health::run_checks(&client, &thresholds).await;
    if let Some(addr) = args.admin {
        checks.push(sidecar_pools(addr).await);
    }
    let status = health::overall(&checks);
    if args.json {
        super::print_json(&serde_json::json!({ "status": status, "checks": checks }));
    } else {
        println!(
            "HEALTH {}",
            serde_json::to_value(status)
                .unwrap_or_default()
                .as_str()
                .unwrap_or("?")
        );
        for check in &checks {
            let label = serde_json::to_value(check.status).unwrap_or_default();
            println!(
                "{:<8} {}: {}",
                label.as_str().unwrap_or("?"),
                check.name,
                check.summary
            );
            for line in &check.details {
                println!("         - {line}");
            }
        }
    }
    ExitCode::from(status.exit_code())
}
