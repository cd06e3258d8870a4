//! Session state in transaction mode: settings follow their client, state that cannot move pins
//! the client, and DEALLOCATE / DISCARD ALL touch only the client's own view. In both modes RESET,
//! RESET ALL and DISCARD ALL return a client to its own startup settings.

use std::collections::HashSet;

use crate::support::{connect, direct, fresh_database, sqlstate, start_proxy, wait_until};

async fn setting(client: &tokio_postgres::Client, name: &str) -> String {
    client
        .query_one("SELECT current_setting($1)", &[&name])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_set_follows_the_client_and_no_one_else() {
    let db = fresh_database().await;
    let proxy = start_proxy("transaction", 2).await;
    let setter = proxy.connect(&db).await.unwrap();
    let others: Vec<_> = futures::future::try_join_all((0..4).map(|_| proxy.connect(&db)))
        .await
        .unwrap();
    setter
        .batch_execute("SET work_mem = '3MB'; SET search_path = app, public")
        .await
        .unwrap();
    setter
        .batch_execute("BEGIN; SET LOCAL statement_timeout = '1s'; COMMIT")
        .await
        .unwrap();
    for round in 0..10 {
        assert_eq!(setting(&setter, "work_mem").await, "3MB", "round {round}");
        assert_eq!(
            setting(&setter, "search_path").await,
            "app, public",
            "round {round}"
        );
        assert_eq!(
            setting(&setter, "statement_timeout").await,
            "0",
            "round {round}"
        );
        for other in &others {
            assert_eq!(setting(other, "work_mem").await, "4MB", "round {round}");
            assert_eq!(setting(other, "search_path").await, "\"$user\", public");
        }
    }
    setter.batch_execute("RESET work_mem").await.unwrap();
    for _ in 0..4 {
        assert_eq!(setting(&setter, "work_mem").await, "4MB");
        assert_eq!(setting(&setter, "search_path").await, "app, public");
    }
    setter.batch_execute("SET work_mem = '5MB'").await.unwrap();
    setter.batch_execute("RESET ALL").await.unwrap();
    for _ in 0..4 {
        assert_eq!(setting(&setter, "work_mem").await, "4MB");
        assert_eq!(setting(&setter, "search_path").await, "\"$user\", public");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_inside_a_rolled_back_transaction_does_not_stick() {
    let db = fresh_database().await;
    let proxy = start_proxy("transaction", 2).await;
    let client = proxy.connect(&db).await.unwrap();
    client
        .batch_execute("BEGIN; SET work_mem = '9MB'; ROLLBACK")
        .await
        .unwrap();
    client
        .batch_execute("BEGIN; SET work_mem = '7MB'; COMMIT")
        .await
        .unwrap();
    let other = proxy.connect(&db).await.unwrap();
    other.batch_execute("BEGIN").await.unwrap();
    assert_eq!(setting(&client, "work_mem").await, "7MB");
    other.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_advisory_lock_pins_the_client() {
    let db = fresh_database().await;
    let proxy = start_proxy("transaction", 2).await;
    let locker = proxy.connect(&db).await.unwrap();
    let others: Vec<_> = futures::future::try_join_all((0..3).map(|_| proxy.connect(&db)))
        .await
        .unwrap();
    locker
        .batch_execute("SELECT pg_advisory_lock(4242)")
        .await
        .unwrap();
    let mut pids = HashSet::new();
    for _ in 0..20 {
        let pid: i32 = locker
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        pids.insert(pid);
        for other in &others {
            let held: bool = other
                .query_one("SELECT pg_try_advisory_xact_lock(4242)", &[])
                .await
                .unwrap()
                .get(0);
            assert!(!held, "another client got the pinned client's lock");
        }
    }
    assert_eq!(pids.len(), 1, "the pinned client moved: {pids:?}");
    let pinned: u64 = proxy
        .ctx
        .pools
        .all()
        .iter()
        .map(|p| p.metrics().totals().pinned_clients)
        .sum();
    assert_eq!(pinned, 1);
    locker
        .batch_execute("SELECT pg_advisory_unlock(4242)")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_prepare_and_execute_work_by_pinning() {
    let db = fresh_database().await;
    let proxy = start_proxy("transaction", 2).await;
    let client = proxy.connect(&db).await.unwrap();
    let busy = proxy.connect(&db).await.unwrap();
    client
        .batch_execute("PREPARE twice(int) AS SELECT $1 * 2")
        .await
        .unwrap();
    for n in 0..10_i32 {
        busy.batch_execute("SELECT 1").await.unwrap();
        let rows = client
            .simple_query(&format!("EXECUTE twice({n})"))
            .await
            .unwrap();
        let value = rows
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .unwrap();
        assert_eq!(value, (n * 2).to_string());
    }
    client.batch_execute("DEALLOCATE twice").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_all_and_discard_all_touch_only_the_callers_view() {
    let db = fresh_database().await;
    let proxy = start_proxy("transaction", 1).await;
    let a = proxy.connect(&db).await.unwrap();
    let b = proxy.connect(&db).await.unwrap();
    let text = "SELECT 40 + 2";
    let from_a = a.prepare(text).await.unwrap();
    let from_b = b.prepare(text).await.unwrap();
    a.batch_execute("DEALLOCATE ALL").await.unwrap();
    let err = a.query_one(&from_a, &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), "26000");
    assert_eq!(
        b.query_one(&from_b, &[]).await.unwrap().get::<_, i32>(0),
        42
    );
    b.batch_execute("SET work_mem = '6MB'").await.unwrap();
    assert_eq!(setting(&b, "work_mem").await, "6MB");
    b.batch_execute("DISCARD ALL").await.unwrap();
    assert_eq!(setting(&b, "work_mem").await, "4MB");
    let err = b.query_one(&from_b, &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), "26000");
    let again = a.prepare(text).await.unwrap();
    assert_eq!(a.query_one(&again, &[]).await.unwrap().get::<_, i32>(0), 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_client_leaving_leaves_nothing_behind() {
    let db = fresh_database().await;
    let proxy = start_proxy("transaction", 1).await;
    let locker = proxy.connect(&db).await.unwrap();
    locker
        .batch_execute(
            "SELECT pg_advisory_lock(77); CREATE TEMP TABLE mine (x int); SET work_mem = '2MB'",
        )
        .await
        .unwrap();
    drop(locker);
    let watcher = direct(&db).await;
    wait_until(
        "the advisory lock of the client that left is released",
        async || {
            let row = watcher
                .query_one(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 77",
                    &[],
                )
                .await
                .unwrap();
            row.get::<_, i64>(0) == 0
        },
    )
    .await;
    let next = proxy.connect(&db).await.unwrap();
    let row = next
        .query_one(
            "SELECT pg_try_advisory_lock(77), to_regclass('mine') IS NULL, current_setting('work_mem')",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "the advisory lock was left behind");
    assert!(row.get::<_, bool>(1), "the temporary table was left behind");
    assert_eq!(row.get::<_, String>(2), "4MB");
}

/// `(current_user, session_user, is_superuser)` as the connection reports them.
async fn who(client: &tokio_postgres::Client) -> (String, String, String) {
    let row = client
        .query_one(
            "SELECT current_user::text, session_user::text, current_setting('is_superuser')",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// 20 transactions of `client`, interleaved with `others` on a pool of 2, each seeing `expected`
/// for the client and the login user for everyone else.
async fn twenty_rounds(
    client: &tokio_postgres::Client,
    others: &[tokio_postgres::Client],
    expected: (&str, &str, &str),
) {
    let owned = |(a, b, c): (&str, &str, &str)| (a.to_owned(), b.to_owned(), c.to_owned());
    for round in 0..20 {
        let (mine, theirs) = tokio::join!(who(client), who(&others[round % others.len()]));
        assert_eq!(mine, owned(expected), "round {round}");
        assert_eq!(
            theirs,
            owned(("postgres", "postgres", "on")),
            "round {round}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_authorization_and_role_follow_their_client_without_a_fatal() {
    let db = fresh_database().await;
    let (alice, reader) = (format!("{db}_alice"), format!("{db}_reader"));
    crate::support::direct(&db)
        .await
        .batch_execute(&format!(
            "CREATE ROLE {alice}; CREATE ROLE {reader}; GRANT {reader} TO {alice};"
        ))
        .await
        .unwrap();
    let proxy = start_proxy("transaction", 2).await;
    let client = proxy.connect(&db).await.unwrap();
    let others: Vec<_> = futures::future::try_join_all((0..3).map(|_| proxy.connect(&db)))
        .await
        .unwrap();
    client
        .batch_execute(&format!("SET SESSION AUTHORIZATION {alice}"))
        .await
        .unwrap();
    twenty_rounds(&client, &others, (&alice, &alice, "off")).await;
    client
        .batch_execute(&format!("SET ROLE {reader}"))
        .await
        .unwrap();
    twenty_rounds(&client, &others, (&reader, &alice, "off")).await;
    // Changing the session authorization resets the role, as PostgreSQL does.
    client
        .batch_execute(&format!("SET SESSION AUTHORIZATION {alice}"))
        .await
        .unwrap();
    twenty_rounds(&client, &others, (&alice, &alice, "off")).await;
    client
        .batch_execute("RESET SESSION AUTHORIZATION")
        .await
        .unwrap();
    twenty_rounds(&client, &others, ("postgres", "postgres", "on")).await;
    // SET ROLE alone, by the login user.
    client
        .batch_execute(&format!("SET ROLE {reader}"))
        .await
        .unwrap();
    twenty_rounds(&client, &others, (&reader, "postgres", "off")).await;
    client.batch_execute("RESET ROLE").await.unwrap();
    twenty_rounds(&client, &others, ("postgres", "postgres", "on")).await;
    // Nothing had to be dropped: the read-only parameters were never replayed.
    let pool = &proxy.ctx.pools.all()[0];
    assert_eq!(pool.metrics().settings_dropped(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setting_the_server_refuses_later_is_dropped_not_fatal() {
    let db = fresh_database().await;
    let admin = crate::support::direct(&db).await;
    let proxy = start_proxy("transaction", 1).await;
    let client = proxy.connect(&db).await.unwrap();
    let other = proxy.connect(&db).await.unwrap();
    // The client's role is dropped while its session lives: the next checkout cannot set it.
    admin
        .batch_execute(&format!(
            "CREATE ROLE {db}_gone; GRANT {db}_gone TO postgres"
        ))
        .await
        .unwrap();
    client
        .batch_execute(&format!("SET ROLE {db}_gone"))
        .await
        .unwrap();
    // The other client takes the only server connection (the role is reset for it), then the
    // role disappears: the client's next checkout cannot apply it again.
    assert_eq!(who(&other).await.0, "postgres");
    admin
        .batch_execute(&format!("DROP ROLE {db}_gone"))
        .await
        .unwrap();
    let (current, session, _) = who(&client).await;
    assert_eq!(
        (current.as_str(), session.as_str()),
        ("postgres", "postgres")
    );
    client.simple_query("SELECT 1").await.unwrap();
    let pool = &proxy.ctx.pools.all()[0];
    assert_eq!(pool.metrics().settings_dropped(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_returns_to_the_clients_startup_settings_not_the_connections() {
    let db = fresh_database().await;
    for mode in ["session", "transaction"] {
        // One server connection, opened by a client with settings of its own.
        let proxy = start_proxy(mode, 1).await;
        let opener = connect(&format!(
            "{}?options=-cTimeZone%3DAsia/Tokyo%20-cDateStyle%3DSQL,DMY",
            proxy.url(&db)
        ))
        .await
        .unwrap();
        assert_eq!(setting(&opener, "TimeZone").await, "Asia/Tokyo", "{mode}");
        drop(opener);

        let client = connect(&format!(
            "{}?options=-cTimeZone%3DAmerica/New_York&application_name=resetter",
            proxy.url(&db)
        ))
        .await
        .unwrap();
        let server_default = "ISO, MDY";
        assert_eq!(
            setting(&client, "DateStyle").await,
            server_default,
            "{mode}"
        );
        client
            .batch_execute("SET TimeZone = 'UTC'; SET DateStyle = 'German'")
            .await
            .unwrap();
        client.batch_execute("RESET TimeZone").await.unwrap();
        assert_eq!(
            setting(&client, "TimeZone").await,
            "America/New_York",
            "{mode}: RESET x"
        );
        assert_eq!(setting(&client, "DateStyle").await, "German, DMY", "{mode}");
        client.batch_execute("RESET DateStyle").await.unwrap();
        assert_eq!(
            setting(&client, "DateStyle").await,
            server_default,
            "{mode}: RESET of a setting the client never gave returns to the server's default, not the opener's"
        );

        client
            .batch_execute("SET TimeZone = 'UTC'; SET application_name = 'other'")
            .await
            .unwrap();
        client.batch_execute("RESET ALL").await.unwrap();
        assert_eq!(
            setting(&client, "TimeZone").await,
            "America/New_York",
            "{mode}: RESET ALL"
        );
        assert_eq!(
            setting(&client, "application_name").await,
            "resetter",
            "{mode}: RESET ALL"
        );

        client.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
        client.batch_execute("DISCARD ALL").await.unwrap();
        assert_eq!(
            setting(&client, "TimeZone").await,
            "America/New_York",
            "{mode}: DISCARD ALL"
        );
        assert_eq!(
            setting(&client, "DateStyle").await,
            server_default,
            "{mode}: DISCARD ALL"
        );
    }
}
