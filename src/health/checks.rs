//! The checks, each one SQL query against the `pg_stat_*` views.

use tokio_postgres::Client;

use super::{Check, Status, Thresholds, grade};

fn pair(d: (std::time::Duration, std::time::Duration)) -> (f64, f64) {
    (d.0.as_secs_f64(), d.1.as_secs_f64())
}

fn unknown(name: &'static str, e: &tokio_postgres::Error) -> Check {
    Check {
        name,
        status: Status::Unknown,
        value: 0.0,
        summary: format!("could not check: {e}"),
        details: Vec::new(),
    }
}

async fn connections(client: &Client, t: &Thresholds) -> Result<Check, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT count(*)::float8, current_setting('max_connections')::float8 FROM pg_stat_activity",
            &[],
        )
        .await?;
    let (used, max): (f64, f64) = (row.get(0), row.get(1));
    let share = used / max;
    Ok(Check {
        name: "connections",
        status: grade(share, t.connections),
        value: share,
        summary: format!(
            "{used} of max_connections {max} in use ({:.0} %)",
            share * 100.0
        ),
        details: Vec::new(),
    })
}

/// Sessions of `state` older than zero, oldest first, as (age in seconds, description).
async fn oldest(client: &Client, idle: bool) -> Result<Vec<(f64, String)>, tokio_postgres::Error> {
    let sql = if idle {
        "SELECT extract(epoch FROM now() - state_change)::float8,
                format('pid %s (%s, %s) idle in transaction for %ss: %s', pid, usename, application_name,
                       round(extract(epoch FROM now() - state_change)), left(query, 200))
           FROM pg_stat_activity
          WHERE state IN ('idle in transaction', 'idle in transaction (aborted)') AND pid <> pg_backend_pid()
          ORDER BY 1 DESC LIMIT 5"
    } else {
        "SELECT extract(epoch FROM now() - xact_start)::float8,
                format('pid %s (%s, %s) transaction open %ss, state %s: %s', pid, usename, application_name,
                       round(extract(epoch FROM now() - xact_start)), state, left(query, 200))
           FROM pg_stat_activity
          WHERE xact_start IS NOT NULL AND backend_type = 'client backend' AND pid <> pg_backend_pid()
          ORDER BY 1 DESC LIMIT 5"
    };
    Ok(client
        .query(sql, &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

async fn sessions(
    client: &Client,
    t: &Thresholds,
    idle: bool,
) -> Result<Check, tokio_postgres::Error> {
    let rows = oldest(client, idle).await?;
    let age = rows.first().map_or(0.0, |r| r.0);
    let (name, limits, what) = if idle {
        (
            "idle_in_transaction",
            pair(t.idle_in_transaction),
            "idle in transaction",
        )
    } else {
        (
            "long_transactions",
            pair(t.long_transaction),
            "open transaction",
        )
    };
    Ok(Check {
        name,
        status: grade(age, limits),
        value: age,
        summary: format!("oldest {what}: {age:.0} s"),
        details: rows.into_iter().map(|r| r.1).collect(),
    })
}

async fn lock_waits(client: &Client, t: &Thresholds) -> Result<Check, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT extract(epoch FROM now() - w.state_change)::float8,
                    format('pid %s (%s) waits %ss for %s; blocked by %s', w.pid, w.application_name,
                           round(extract(epoch FROM now() - w.state_change)), left(w.query, 120),
                           (SELECT string_agg(format('pid %s (%s, %s): %s', b.pid, b.application_name, b.state,
                                                     left(b.query, 120)), '; ')
                              FROM pg_stat_activity b WHERE b.pid = ANY (pg_blocking_pids(w.pid))))
               FROM pg_stat_activity w
              WHERE cardinality(pg_blocking_pids(w.pid)) > 0
              ORDER BY 1 DESC",
            &[],
        )
        .await?;
    let longest = rows.first().map_or(0.0, |r| r.get(0));
    Ok(Check {
        name: "lock_waits",
        status: grade(longest, pair(t.lock_wait)),
        value: longest,
        summary: format!(
            "{} session(s) waiting for a lock, longest {longest:.0} s",
            rows.len()
        ),
        details: rows.iter().map(|r| r.get(1)).collect(),
    })
}

async fn replication(client: &Client, t: &Thresholds) -> Result<Vec<Check>, tokio_postgres::Error> {
    let lag = client
        .query(
            "SELECT coalesce(extract(epoch FROM replay_lag), 0)::float8,
                    format('%s (%s): replay lag %s', application_name, client_addr, coalesce(replay_lag::text, '0'))
               FROM pg_stat_replication ORDER BY 1 DESC",
            &[],
        )
        .await?;
    let worst_lag = lag.first().map_or(0.0, |r| r.get(0));
    let slots = client
        .query(
            "SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::float8,
                    format('slot %s (%s, active %s) retains %s', slot_name, slot_type, active,
                           pg_size_pretty(coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)))
               FROM pg_replication_slots ORDER BY 1 DESC",
            &[],
        )
        .await?;
    let worst_slot = slots.first().map_or(0.0, |r| r.get(0));
    Ok(vec![
        Check {
            name: "replication_lag",
            status: grade(worst_lag, pair(t.replication_lag)),
            value: worst_lag,
            summary: if lag.is_empty() {
                "no replicas connected".to_owned()
            } else {
                format!(
                    "{} replica(s), worst replay lag {worst_lag:.1} s",
                    lag.len()
                )
            },
            details: lag.iter().map(|r| r.get(1)).collect(),
        },
        Check {
            name: "slot_retention",
            status: grade(worst_slot, t.slot_retention),
            value: worst_slot,
            summary: format!(
                "{} replication slot(s), most WAL retained {worst_slot:.0} bytes",
                slots.len()
            ),
            details: slots.iter().map(|r| r.get(1)).collect(),
        },
    ])
}

async fn cache_hit(client: &Client, t: &Thresholds) -> Result<Check, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT blks_hit::float8, blks_read::float8 FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await?;
    let (hit, read): (f64, f64) = (row.get(0), row.get(1));
    let ratio = if hit + read > 0.0 {
        hit / (hit + read)
    } else {
        1.0
    };
    // Lower is worse: grade the miss ratio against the complements.
    let status = if hit + read < 10_000.0 {
        Status::Ok
    } else {
        grade(1.0 - ratio, (1.0 - t.cache_hit.0, 1.0 - t.cache_hit.1))
    };
    Ok(Check {
        name: "cache_hit_ratio",
        status,
        value: ratio,
        summary: format!(
            "{:.2} % of block reads served from shared buffers",
            ratio * 100.0
        ),
        details: Vec::new(),
    })
}

async fn wraparound(client: &Client, t: &Thresholds) -> Result<Check, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT max(age(datfrozenxid))::float8, (array_agg(datname ORDER BY age(datfrozenxid) DESC))[1]
               FROM pg_database",
            &[],
        )
        .await?;
    let (age, database): (f64, String) = (row.get(0), row.get(1));
    Ok(Check {
        name: "wraparound",
        status: grade(age, t.wraparound),
        value: age,
        summary: format!(
            "oldest unfrozen transaction ID age {age:.0} (database {database}); the hard limit is 2^31"
        ),
        details: Vec::new(),
    })
}

async fn dead_tuples(client: &Client, t: &Thresholds) -> Result<Check, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT (n_dead_tup::float8 / greatest(n_live_tup + n_dead_tup, 1)),
                    format('%I.%I: %s dead of %s rows, last autovacuum %s', schemaname, relname, n_dead_tup,
                           n_live_tup + n_dead_tup, coalesce(last_autovacuum::text, 'never'))
               FROM pg_stat_user_tables WHERE n_dead_tup >= 10000 ORDER BY 1 DESC LIMIT 5",
            &[],
        )
        .await?;
    let worst = rows.first().map_or(0.0, |r| r.get(0));
    Ok(Check {
        name: "dead_tuples",
        status: grade(worst, t.dead_tuples),
        value: worst,
        summary: format!("worst dead-tuple share {:.0} %", worst * 100.0),
        details: rows.iter().map(|r| r.get(1)).collect(),
    })
}

async fn indexes(client: &Client, t: &Thresholds) -> Result<Vec<Check>, tokio_postgres::Error> {
    let invalid: Vec<String> = client
        .query(
            "SELECT format('%s on %s', indexrelid::regclass, indrelid::regclass)
               FROM pg_index WHERE NOT indisvalid ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let unused = client
        .query(
            "SELECT pg_relation_size(s.indexrelid)::float8,
                    format('%s on %s: never scanned, %s', s.indexrelid::regclass, s.relid::regclass,
                           pg_size_pretty(pg_relation_size(s.indexrelid)))
               FROM pg_stat_user_indexes s JOIN pg_index i ON i.indexrelid = s.indexrelid
              WHERE s.idx_scan = 0 AND NOT i.indisunique AND NOT i.indisprimary
              ORDER BY 1 DESC LIMIT 10",
            &[],
        )
        .await?;
    let largest_unused = unused.first().map_or(0.0, |r| r.get(0));
    #[allow(clippy::cast_precision_loss)]
    let invalid_count = invalid.len() as f64;
    Ok(vec![
        Check {
            name: "invalid_indexes",
            status: if invalid.is_empty() {
                Status::Ok
            } else {
                Status::Critical
            },
            value: invalid_count,
            summary: format!("{} INVALID index(es)", invalid.len()),
            details: invalid,
        },
        Check {
            name: "unused_indexes",
            status: grade(largest_unused, t.unused_index),
            value: largest_unused,
            summary: format!(
                "{} index(es) never scanned since statistics were reset",
                unused.len()
            ),
            details: unused.iter().map(|r| r.get(1)).collect(),
        },
    ])
}

async fn checkpoints(client: &Client, t: &Thresholds) -> Result<Check, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT checkpoints_timed::float8, checkpoints_req::float8 FROM pg_stat_bgwriter",
            &[],
        )
        .await?;
    let (timed, requested): (f64, f64) = (row.get(0), row.get(1));
    let share = if timed + requested >= 10.0 {
        requested / (timed + requested)
    } else {
        0.0
    };
    Ok(Check {
        name: "checkpoints",
        status: grade(share, t.checkpoints),
        value: share,
        summary: format!(
            "{requested} requested and {timed} timed checkpoints ({:.0} % forced by WAL volume)",
            share * 100.0
        ),
        details: Vec::new(),
    })
}

async fn top_statements(client: &Client) -> Check {
    let rows = client
        .query(
            "SELECT format('%s ms total, %s calls, %s ms mean: %s', round(total_exec_time), calls,
                           round(mean_exec_time::numeric, 2), left(regexp_replace(query, '\\s+', ' ', 'g'), 160))
               FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 5",
            &[],
        )
        .await;
    match rows {
        Ok(rows) => Check {
            name: "top_statements",
            status: Status::Ok,
            value: 0.0,
            summary: "top statements by total time (pg_stat_statements)".to_owned(),
            details: rows.iter().map(|r| r.get(0)).collect(),
        },
        Err(_) => Check {
            name: "top_statements",
            status: Status::Ok,
            value: 0.0,
            summary: "pg_stat_statements is not installed in this database".to_owned(),
            details: Vec::new(),
        },
    }
}

/// Runs every check; one that cannot run is reported UNKNOWN rather than stopping the others.
pub async fn run_checks(client: &Client, t: &Thresholds) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut push = |name: &'static str, result: Result<Check, tokio_postgres::Error>| {
        checks.push(result.unwrap_or_else(|e| unknown(name, &e)));
    };
    push("connections", connections(client, t).await);
    push("long_transactions", sessions(client, t, false).await);
    push("idle_in_transaction", sessions(client, t, true).await);
    push("lock_waits", lock_waits(client, t).await);
    push("cache_hit_ratio", cache_hit(client, t).await);
    push("wraparound", wraparound(client, t).await);
    push("dead_tuples", dead_tuples(client, t).await);
    push("checkpoints", checkpoints(client, t).await);
    match replication(client, t).await {
        Ok(found) => checks.extend(found),
        Err(e) => checks.push(unknown("replication_lag", &e)),
    }
    match indexes(client, t).await {
        Ok(found) => checks.extend(found),
        Err(e) => checks.push(unknown("invalid_indexes", &e)),
    }
    checks.push(top_statements(client).await);
    checks
}

/// The checks that say the database is short of capacity right now (connections, lock waits,
/// replication lag, wraparound): what a background job such as a backfill should yield to.
/// One that cannot run is reported UNKNOWN.
pub async fn load_checks(client: &Client, t: &Thresholds) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut push = |name: &'static str, result: Result<Check, tokio_postgres::Error>| {
        checks.push(result.unwrap_or_else(|e| unknown(name, &e)));
    };
    push("connections", connections(client, t).await);
    push("lock_waits", lock_waits(client, t).await);
    push("wraparound", wraparound(client, t).await);
    match replication(client, t).await {
        Ok(found) => checks.extend(found),
        Err(e) => checks.push(unknown("replication_lag", &e)),
    }
    checks
}
