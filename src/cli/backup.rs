//! `pgsidecar backup`: take a backup with its manifest, and prove it restores.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use pgsidecar::backup::{self, BackupError};

use super::{EXIT_FAILED, EXIT_USAGE, print_json};

#[derive(Args)]
pub struct BackupArgs {
    #[command(subcommand)]
    action: BackupAction,
}

#[derive(Subcommand)]
enum BackupAction {
    /// A custom-format dump in an exported snapshot, with FILE.manifest.json beside it.
    Create {
        /// The database to back up; DATABASE_URL when not given.
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        /// Where the dump goes.
        #[arg(long)]
        output: PathBuf,
    },
    /// Restore FILE into a scratch database and compare it with its manifest.
    Verify {
        /// The dump (its manifest is FILE.manifest.json).
        file: PathBuf,
        /// A server where a scratch database may be created (and is dropped afterwards).
        #[arg(long, env = "PGSIDECAR_SCRATCH_URL")]
        scratch_url: String,
        /// The source database, to record the verification for `migrate apply`'s policy.
        #[arg(long, env = "DATABASE_URL")]
        database_url: Option<String>,
    },
}

/// Runs `backup create|verify`: exit 0 when proven, 1 when verification failed, 2 otherwise.
pub async fn run(args: BackupArgs) -> ExitCode {
    let result = match args.action {
        BackupAction::Create {
            database_url,
            output,
        } => backup::create(&database_url, &output).await.map(|m| {
            print_json(&serde_json::json!({
                "file": output,
                "manifest": backup::manifest_path(&output),
                "sha256": m.sha256,
                "size_bytes": m.size_bytes,
                "tables": m.tables.len(),
                "duration_seconds": m.duration_seconds,
            }));
        }),
        BackupAction::Verify {
            file,
            scratch_url,
            database_url,
        } => backup::verify(&file, &scratch_url, database_url.as_deref())
            .await
            .map(|report| print_json(&report)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ BackupError::Mismatch(_)) => {
            eprintln!("pgsidecar backup: {e}");
            ExitCode::from(EXIT_FAILED)
        }
        Err(e) => {
            eprintln!("pgsidecar backup: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}
