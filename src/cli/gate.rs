//! `pgsidecar gate`: pause, resume and inspect traffic of the fleet or of one sidecar.

use clap::{Args, Subcommand};
use std::process::ExitCode;

use super::{EXIT_FAILED, EXIT_USAGE, print_json};

#[derive(Args)]
pub struct GateArgs {
    #[command(subcommand)]
    action: GateAction,
    /// The database the fleet fronts (a direct URL); DATABASE_URL when not given.
    #[arg(long, global = true, env = "DATABASE_URL", conflicts_with = "admin")]
    database_url: Option<String>,
    /// One sidecar's admin address instead of the fleet (e.g. 127.0.0.1:9187).
    #[arg(long, global = true)]
    admin: Option<std::net::SocketAddr>,
    /// Only this client-facing database (default: all).
    #[arg(long, global = true)]
    database: Option<String>,
    /// With --admin: a file holding the sidecar's admin token (or the token itself in
    /// PGSIDECAR_ADMIN_TOKEN).
    #[arg(long, global = true)]
    admin_token_file: Option<std::path::PathBuf>,
    /// Fleet only: heartbeats older than this mark a sidecar dead: excluded and reported
    /// (default 10s).
    #[arg(long, global = true, value_parser = pgsidecar::config::parse_duration)]
    stale_after: Option<std::time::Duration>,
}

#[derive(Subcommand)]
pub enum GateAction {
    /// Pause; returns once every sidecar is paused, or resumes them all and fails.
    Pause {
        /// How long each sidecar waits for its transactions in flight.
        #[arg(long, default_value = "10s", value_parser = pgsidecar::config::parse_duration)]
        deadline: std::time::Duration,
        /// The pause lifts by itself after this.
        #[arg(long, default_value = "60s", value_parser = pgsidecar::config::parse_duration)]
        max_hold: std::time::Duration,
        /// End transactions still running at the deadline instead of failing.
        #[arg(long)]
        cancel_stragglers: bool,
    },
    /// Resume.
    Resume,
    /// Show the registered sidecars (fleet) or the gate's state (one sidecar).
    Status,
}

/// A flag given where this call would ignore it: refused rather than dropped.
fn unhonoured(args: &GateArgs) -> Option<&'static str> {
    if args.admin.is_some() && args.stale_after.is_some() {
        return Some("--stale-after applies to the fleet (--database-url), not to one sidecar");
    }
    if args.admin.is_none() && args.admin_token_file.is_some() {
        return Some("--admin-token-file goes with --admin (one sidecar's admin API)");
    }
    if matches!(args.action, GateAction::Status) && args.database.is_some() {
        return Some("gate status shows everything; --database applies to pause and resume");
    }
    None
}

/// `pgsidecar gate ...`: prints a JSON report; exits 0 on success, 1 when a pause failed, 2 on
/// bad arguments or an unreachable target.
pub async fn run(args: GateArgs) -> ExitCode {
    use pgsidecar::gate::fleet::{self, FleetError, FleetPause};
    let fail = |message: String| {
        eprintln!("pgsidecar gate: {message}");
        ExitCode::from(EXIT_USAGE)
    };
    if let Some(message) = unhonoured(&args) {
        return fail(message.into());
    }
    let stale_after = args
        .stale_after
        .unwrap_or(std::time::Duration::from_secs(10));
    if let Some(addr) = args.admin {
        let token = match &args.admin_token_file {
            Some(path) => match std::fs::read_to_string(path) {
                Ok(token) => Some(token),
                Err(e) => return fail(format!("cannot read {}: {e}", path.display())),
            },
            None => std::env::var("PGSIDECAR_ADMIN_TOKEN").ok(),
        };
        let (method, path, body) = match &args.action {
            GateAction::Pause {
                deadline,
                max_hold,
                cancel_stragglers,
            } => (
                "POST",
                "/v1/gate/pause",
                serde_json::json!({
                    "database": args.database,
                    "deadline": format!("{}ms", deadline.as_millis()),
                    "max_hold": format!("{}ms", max_hold.as_millis()),
                    "cancel_stragglers": cancel_stragglers,
                })
                .to_string(),
            ),
            GateAction::Resume => (
                "POST",
                "/v1/gate/resume",
                serde_json::json!({ "database": args.database }).to_string(),
            ),
            GateAction::Status => ("GET", "/v1/status", String::new()),
        };
        return match pgsidecar::admin::client::request(addr, method, path, &body, token.as_deref())
            .await
        {
            Ok((200..=299, body)) => {
                println!("{body}");
                ExitCode::SUCCESS
            }
            Ok((409, body)) => {
                println!("{body}");
                ExitCode::from(EXIT_FAILED)
            }
            Ok((code, body)) => fail(format!("HTTP {code}: {body}")),
            Err(e) => fail(e.to_string()),
        };
    }
    let Some(url) = args.database_url else {
        return fail(
            "give --database-url (or DATABASE_URL) for the fleet, or --admin for one sidecar"
                .into(),
        );
    };
    let result = match args.action {
        GateAction::Pause {
            deadline,
            max_hold,
            cancel_stragglers,
        } => {
            let pause = FleetPause {
                database: args.database,
                deadline,
                max_hold,
                cancel_stragglers,
                stale_after,
            };
            fleet::fleet_pause(&url, &pause)
                .await
                .map(|r| print_json(&r))
        }
        GateAction::Resume => fleet::fleet_resume(&url, args.database.as_deref(), stale_after)
            .await
            .map(|r| print_json(&r)),
        GateAction::Status => fleet::sidecars(&url, stale_after)
            .await
            .map(|r| print_json(&r)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(FleetError::PauseFailed { reason, report }) => {
            print_json(&report);
            eprintln!(
                "pgsidecar gate: fleet pause failed ({reason}); every sidecar was told to resume"
            );
            ExitCode::from(EXIT_FAILED)
        }
        Err(e) => fail(e.to_string()),
    }
}
