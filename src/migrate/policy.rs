//! The live-database policy before applying: a backup verified recently enough, or one taken and
//! verified now, or an explicit, recorded decision to go without.

use std::path::PathBuf;
use std::time::Duration;

use super::MigrateError;
use crate::backup;

/// What the runner requires before touching the database.
#[derive(Debug, Clone)]
pub enum BackupPolicy {
    /// A backup of this database verified within this age.
    RequireVerified(Duration),
    /// Take one now to `output` and verify it on the server at `scratch_url`.
    TakeNow {
        /// Where the dump goes.
        output: PathBuf,
        /// Where the scratch restore happens.
        scratch_url: String,
    },
    /// Go ahead without; the reason is recorded with every migration of the run.
    Without(String),
}

/// What satisfied the policy.
#[derive(Debug, Clone, serde::Serialize)]
pub enum BackupEvidence {
    /// An earlier verified backup (its SHA-256).
    Verified(String),
    /// A backup taken and verified now (its SHA-256 and the restore time).
    Taken(String, f64),
    /// None, for this reason.
    Skipped(String),
}

/// Checks (or fulfils) the policy for the database at `url`.
///
/// # Errors
/// [`MigrateError::Backup`] when the policy is not met or the backup fails to verify.
pub async fn ensure_backup(
    url: &str,
    policy: &BackupPolicy,
) -> Result<BackupEvidence, MigrateError> {
    let failed = |e: backup::BackupError| MigrateError::Backup(e.to_string());
    match policy {
        BackupPolicy::Without(reason) => Ok(BackupEvidence::Skipped(reason.clone())),
        BackupPolicy::RequireVerified(max_age) => {
            match backup::latest_verified(url, *max_age)
                .await
                .map_err(failed)?
            {
                Some(sha256) => Ok(BackupEvidence::Verified(sha256)),
                None => Err(MigrateError::Backup(format!(
                    "no backup of this database was verified in the last {max_age:?}: run `pgsidecar backup create` and `pgsidecar backup verify --database-url …`, or pass --backup (take and verify one now), or --no-backup --reason \"…\" (recorded in the history)"
                ))),
            }
        }
        BackupPolicy::TakeNow {
            output,
            scratch_url,
        } => {
            let manifest = backup::create(url, output).await.map_err(failed)?;
            let report = backup::verify(output, scratch_url, Some(url))
                .await
                .map_err(failed)?;
            Ok(BackupEvidence::Taken(
                manifest.sha256,
                report.restore_seconds,
            ))
        }
    }
}
