//! Where a client's stored secret comes from: the users of the configuration file, or, for
//! users the file does not list, the upstream itself through `auth_query`, run as `auth_user`
//! on that user's pool so that users need not be duplicated in the sidecar's configuration.

use super::login::LoginError;
use crate::auth::Secret;
use crate::backend::{AcquireError, BackendError, PoolKey};
use crate::context::ProxyContext;
use crate::wire::sqlstate;

/// The stored secret of `user` for a login to `database`; `None` when the user is unknown or
/// has no password.
///
/// # Errors
/// [`LoginError`] when the auth query cannot run (no server connection, a server error).
pub async fn lookup_secret(
    ctx: &ProxyContext,
    user: &str,
    database: &str,
) -> Result<Option<Secret>, LoginError> {
    let config = ctx.config();
    if let Some(secret) = config.users.get(user).and_then(|u| u.secret.clone()) {
        return Ok(Some(secret));
    }
    let Some(auth_query) = &config.auth_query else {
        return Ok(None);
    };
    let pool = ctx.pools.get(&PoolKey {
        database: database.to_owned(),
        user: auth_query.user.clone(),
    });
    let unavailable = |e: &dyn std::fmt::Display| {
        tracing::warn!(user, database, error = %e, "auth_query failed");
        LoginError::new(
            sqlstate::CANNOT_CONNECT_NOW,
            format!("pgsidecar cannot look up user \"{user}\": {e}"),
        )
    };
    let mut checkout = pool.checkout().await.map_err(|e| match e {
        AcquireError::Backend(BackendError::Server(fields)) if fields.code == "3D000" => {
            LoginError::new("3D000", fields.message)
        }
        e => unavailable(&e),
    })?;
    match run_auth_query(checkout.conn(), &auth_query.query, user).await {
        Ok(None) => {
            checkout.release();
            tracing::info!(user, "auth_query: the password has expired (VALID UNTIL)");
            Ok(None)
        }
        Ok(Some(row)) => {
            checkout.release();
            let stored = row.into_iter().nth(1).flatten();
            Ok(stored.and_then(|text| match Secret::parse(&text) {
                Ok(secret) => Some(secret),
                Err(e) => {
                    tracing::warn!(user, error = %e, "auth_query returned a secret pgsidecar cannot use");
                    None
                }
            }))
        }
        Err(BackendError::Server(fields)) => {
            // The query failed but the connection is idle again (its transaction rolled back).
            checkout.release();
            Err(unavailable(&fields))
        }
        Err(e) => {
            checkout.discard(false).await;
            Err(unavailable(&e))
        }
    }
}

/// Runs the auth query in a read-only transaction whose `search_path` is `pg_catalog` only, so
/// that settings a client of the same pool left on the connection cannot put its own
/// `pg_shadow` in front; `None` when the role's password has expired (`VALID UNTIL` in the
/// past), which PostgreSQL itself would refuse. The connection is idle again afterwards.
async fn run_auth_query(
    conn: &mut crate::backend::ServerConn,
    query: &str,
    user: &str,
) -> Result<Option<Vec<Option<String>>>, BackendError> {
    conn.run_quietly("BEGIN READ ONLY; SET LOCAL search_path TO pg_catalog, pg_temp")
        .await?;
    let looked_up = async {
        let row = conn.fetch_row_with(query, &[user]).await?;
        let expired = conn
            .fetch_row_with(
                "SELECT coalesce(rolvaliduntil < now(), false) FROM pg_catalog.pg_roles \
                 WHERE rolname = $1",
                &[user],
            )
            .await?;
        Ok::<_, BackendError>((
            row,
            expired.first().cloned().flatten().as_deref() == Some("t"),
        ))
    }
    .await;
    let end = if looked_up.is_ok() {
        "COMMIT"
    } else {
        "ROLLBACK"
    };
    match (looked_up, conn.run_quietly(end).await) {
        (Ok((_, true)), Ok(())) => Ok(None),
        (Ok((row, false)), Ok(())) => Ok(Some(row)),
        (Err(e), Ok(())) | (_, Err(e)) => Err(e),
    }
}
