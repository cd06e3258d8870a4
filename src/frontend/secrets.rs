//! Where a client's stored secret comes from: the users of the configuration file, or, for
//! users the file does not list, the upstream itself through `auth_query`, run as `auth_user`
//! on that user's pool so that users need not be duplicated in the sidecar's configuration.

use super::ProxyContext;
use super::login::LoginError;
use crate::auth::Secret;
use crate::backend::{AcquireError, BackendError, PoolKey};
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
    match checkout
        .conn()
        .fetch_row_with(&auth_query.query, &[user])
        .await
    {
        Ok(row) => {
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
            // The query failed but the connection is idle again (ReadyForQuery was read).
            checkout.release();
            Err(unavailable(&fields))
        }
        Err(e) => {
            checkout.discard(false).await;
            Err(unavailable(&e))
        }
    }
}
