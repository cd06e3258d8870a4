//! Who may change the fleet's traffic. Any role that can connect can NOTIFY, so a NOTIFY
//! proves nothing: a request is a row of `pgsidecar.control_requests`, which PostgreSQL lets
//! only roles granted INSERT write, and whose `requested_by` a CHECK ties to the writing role.
//! The NOTIFY carries only the row's id. A sidecar obeys the row when its writer is a superuser
//! or a member of the configured control role, the table's owner is trusted the same way (an
//! owner could drop the CHECK), and the row is fresh and not seen before (no replays).

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use super::Request;

/// Creates the request table if it is missing; run by coordinators, never by sidecars, so that
/// the table is owned by the role that sends requests.
pub const CONTROL_DDL: &str = "CREATE SCHEMA IF NOT EXISTS pgsidecar;
CREATE TABLE IF NOT EXISTS pgsidecar.control_requests (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request jsonb NOT NULL,
    requested_by name NOT NULL DEFAULT current_user CHECK (requested_by = current_user),
    requested_at timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON pgsidecar.control_requests FROM PUBLIC";

/// Requests older than this (by the database's clock) are not obeyed: a replayed NOTIFY of an
/// old id changes nothing.
pub const REQUEST_MAX_AGE: Duration = Duration::from_secs(30);

/// How many handled request ids a sidecar remembers to refuse replays.
const REMEMBERED: usize = 1024;

/// Why a request on the control channel was not obeyed; each is logged and counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The payload is not a request id (a hand-written NOTIFY, or an older coordinator).
    #[error("the NOTIFY payload is not a request id")]
    Malformed,
    /// No request row has that id (or the table does not exist).
    #[error("no request {0} in pgsidecar.control_requests")]
    Unknown(i64),
    /// The request table is owned by a role that is not trusted.
    #[error(
        "pgsidecar.control_requests is owned by {0}, who is neither a superuser nor a member of the control role"
    )]
    UntrustedTable(String),
    /// The row's writer may not control the fleet.
    #[error(
        "request {id} was written by {writer}, who is neither a superuser nor a member of the control role{hint}"
    )]
    UnauthorizedWriter {
        /// The request.
        id: i64,
        /// Its writer.
        writer: String,
        /// How to allow it, when no control role is configured.
        hint: &'static str,
    },
    /// The request is older than [`REQUEST_MAX_AGE`].
    #[error("request {0} is stale (replayed?)")]
    Stale(i64),
    /// The request was handled before.
    #[error("request {0} was already handled (replayed)")]
    Replayed(i64),
    /// The row's JSON is not a request this version understands.
    #[error("request {0} is not a request this sidecar understands: {1}")]
    BadBody(i64, String),
    /// The sidecar's own role cannot read the table.
    #[error("cannot read pgsidecar.control_requests: {0}")]
    Unreadable(String),
}

impl Refusal {
    /// The metric label.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Unknown(_) => "unknown_request",
            Self::UntrustedTable(_) => "untrusted_table",
            Self::UnauthorizedWriter { .. } => "unauthorized_writer",
            Self::Stale(_) => "stale",
            Self::Replayed(_) => "replayed",
            Self::BadBody(..) => "bad_body",
            Self::Unreadable(_) => "unreadable",
        }
    }
}

/// A sidecar's judge of control requests.
#[derive(Debug)]
pub struct Authority {
    control_role: Option<String>,
    seen: HashSet<i64>,
    order: VecDeque<i64>,
}

const READ_REQUEST: &str = "
SELECT r.request::text AS request,
       r.requested_by::text AS writer,
       extract(epoch FROM now() - r.requested_at)::float8 AS age,
       coalesce(w.rolsuper, false)
         OR coalesce(CASE WHEN $2::text IS NOT NULL
                           AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $2::text)
                          THEN pg_has_role(w.oid, $2::text, 'MEMBER') END, false) AS writer_allowed,
       o.rolname::text AS owner,
       o.rolsuper
         OR coalesce(CASE WHEN $2::text IS NOT NULL
                           AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $2::text)
                          THEN pg_has_role(o.oid, $2::text, 'MEMBER') END, false) AS owner_allowed
  FROM pgsidecar.control_requests r
  LEFT JOIN pg_roles w ON w.rolname = r.requested_by
  JOIN pg_class c ON c.oid = 'pgsidecar.control_requests'::regclass
  JOIN pg_roles o ON o.oid = c.relowner
 WHERE r.id = $1";

impl Authority {
    /// A judge that trusts superusers and members of `control_role`.
    #[must_use]
    pub fn new(control_role: Option<String>) -> Self {
        Self {
            control_role,
            seen: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// The request a NOTIFY `payload` points at, if its row says it may be obeyed.
    ///
    /// # Errors
    /// [`Refusal`] saying why not; a failure of the connection itself is returned as the
    /// outer error so that the member reconnects.
    pub async fn judge(
        &mut self,
        client: &Client,
        payload: &str,
    ) -> Result<Result<Request, Refusal>, tokio_postgres::Error> {
        let Ok(id) = payload.trim().parse::<i64>() else {
            return Ok(Err(Refusal::Malformed));
        };
        if self.seen.contains(&id) {
            return Ok(Err(Refusal::Replayed(id)));
        }
        let row = match client
            .query_opt(READ_REQUEST, &[&id, &self.control_role])
            .await
        {
            Ok(row) => row,
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => {
                return Ok(Err(Refusal::Unknown(id)));
            }
            Err(e) if e.code().is_some() => return Ok(Err(Refusal::Unreadable(e.to_string()))),
            Err(e) => return Err(e),
        };
        let Some(row) = row else {
            return Ok(Err(Refusal::Unknown(id)));
        };
        if !row.get::<_, bool>("owner_allowed") {
            return Ok(Err(Refusal::UntrustedTable(row.get("owner"))));
        }
        if !row.get::<_, bool>("writer_allowed") {
            return Ok(Err(Refusal::UnauthorizedWriter {
                id,
                writer: row.get("writer"),
                hint: if self.control_role.is_none() {
                    " (set fleet_control_role to allow a non-superuser)"
                } else {
                    ""
                },
            }));
        }
        if row.get::<_, f64>("age") > REQUEST_MAX_AGE.as_secs_f64() {
            return Ok(Err(Refusal::Stale(id)));
        }
        self.remember(id);
        Ok(serde_json::from_str(row.get("request"))
            .map_err(|e| Refusal::BadBody(id, e.to_string())))
    }

    fn remember(&mut self, id: i64) {
        self.seen.insert(id);
        self.order.push_back(id);
        if self.order.len() > REMEMBERED
            && let Some(oldest) = self.order.pop_front()
        {
            self.seen.remove(&oldest);
        }
    }
}

/// Writes `request` as a row and wakes every sidecar with its id, in one statement (so one
/// transaction: the NOTIFY is delivered when the row is visible). Rows older than a day are
/// removed on the way.
///
/// # Errors
/// The database's error, e.g. 42501 when this role may not write requests.
pub async fn publish(client: &Client, request: &Request) -> Result<(), tokio_postgres::Error> {
    let body = serde_json::to_string(request).unwrap_or_default();
    client
        .execute(
            "WITH old AS (DELETE FROM pgsidecar.control_requests
                           WHERE requested_at < now() - interval '1 day'),
                  new AS (INSERT INTO pgsidecar.control_requests (request)
                          VALUES ($1::text::jsonb) RETURNING id)
             SELECT pg_notify($2, id::text) FROM new",
            &[&body, &super::CONTROL_CHANNEL],
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_id_is_forgotten_only_after_many_newer_ones() {
        let mut authority = Authority::new(None);
        for id in 0..=i64::try_from(REMEMBERED).unwrap() {
            authority.remember(id);
        }
        assert!(!authority.seen.contains(&0));
        assert!(authority.seen.contains(&1));
        assert_eq!(authority.seen.len(), REMEMBERED);
    }

    #[test]
    fn every_refusal_has_a_metric_label() {
        assert_eq!(Refusal::Malformed.reason(), "malformed");
        assert_eq!(Refusal::Replayed(3).reason(), "replayed");
        assert!(
            Refusal::UnauthorizedWriter {
                id: 1,
                writer: "app".into(),
                hint: ""
            }
            .to_string()
            .contains("written by app")
        );
    }
}
