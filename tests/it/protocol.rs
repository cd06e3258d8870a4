//! Simple and extended protocol, pipelining, session settings and message limits.

use futures::future::try_join_all;
use pgsidecar::wire::tag::server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{fresh_database, overrides, sqlstate, start_proxy, start_proxy_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_simple_and_extended_queries() {
    let db = fresh_database().await;
    let proxy = start_proxy("session", 4).await;
    let client = proxy.connect(&db).await.unwrap();
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, name text); INSERT INTO t VALUES (1, 'a'), (2, 'b');")
        .await
        .unwrap();
    let rows = client
        .simple_query("SELECT name FROM t ORDER BY id; SELECT 42")
        .await
        .unwrap();
    let values: Vec<String> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap().to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(values, ["a", "b", "42"]);
    let statement = client
        .prepare("SELECT name FROM t WHERE id = $1")
        .await
        .unwrap();
    for (id, name) in [(1, "a"), (2, "b")] {
        let row = client.query_one(&statement, &[&id]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), name);
    }
    let err = client.query_one("SELECT 1/0", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), "22012");
    let n: i64 = client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_pipelines_many_syncs() {
    let db = fresh_database().await;
    let proxy = start_proxy("transaction", 2).await;
    let client = proxy.connect(&db).await.unwrap();
    let statement = client.prepare("SELECT $1::int * 2").await.unwrap();
    let queries = (0..50).map(|i| {
        let client = &client;
        let statement = &statement;
        async move {
            client
                .query_one(statement, &[&i])
                .await
                .map(|r| (i, r.get::<_, i32>(0)))
        }
    });
    let results = try_join_all(queries).await.unwrap();
    for (i, doubled) in results {
        assert_eq!(doubled, i * 2);
    }
    let err = client.query_one("SELECT 'x'::int", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), "22P02");
    let after: i32 = client.query_one("SELECT 7", &[]).await.unwrap().get(0);
    assert_eq!(after, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_settings_follow_the_client_across_server_connections() {
    let db = fresh_database().await;
    let proxy = start_proxy("transaction", 1).await;
    let url = |app: &str, path: &str| {
        format!(
            "{}?application_name={app}&options=-c%20search_path%3D{path}%20-c%20statement_timeout%3D4321",
            proxy.url(&db)
        )
    };
    let a = crate::support::connect(&url("alpha", "sa")).await.unwrap();
    let b = crate::support::connect(&url("beta", "sb")).await.unwrap();
    for _ in 0..3 {
        for (client, app, path) in [(&a, "alpha", "sa"), (&b, "beta", "sb")] {
            let row = client
                .query_one(
                    "SELECT current_setting('application_name'), current_setting('search_path'), current_setting('statement_timeout')",
                    &[],
                )
                .await
                .unwrap();
            assert_eq!(row.get::<_, String>(0), app);
            assert_eq!(row.get::<_, String>(1), path);
            assert_eq!(row.get::<_, String>(2), "4321ms");
        }
    }
    let plain = proxy.connect(&db).await.unwrap();
    let row = plain
        .query_one(
            "SELECT current_setting('application_name'), current_setting('search_path')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "");
    assert_eq!(row.get::<_, String>(1), "\"$user\", public");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_is_refused_and_others_carry_on() {
    let db = fresh_database().await;
    let mut settings = overrides("transaction", 2);
    settings.max_message_size = Some("4KiB".into());
    let proxy = start_proxy_with(&settings, None).await;
    let bystander = proxy.connect(&db).await.unwrap();
    let offender = proxy.connect(&db).await.unwrap();
    let big = format!("SELECT '{}'", "x".repeat(10_000));
    let err = offender.simple_query(&big).await.unwrap_err();
    let code = err.code().map(|c| c.code().to_owned());
    assert!(
        code.as_deref() == Some("54000") || err.is_closed(),
        "unexpected: {err:?}"
    );
    let one: i32 = bystander.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_login_gets_a_protocol_violation() {
    let db = fresh_database().await;
    let proxy = start_proxy("transaction", 2).await;
    let _warm = proxy.connect(&db).await.unwrap();
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port))
        .await
        .unwrap();
    let mut startup = Vec::new();
    let params = format!("user\0postgres\0database\0{db}\0\0");
    startup.extend_from_slice(&u32::try_from(8 + params.len()).unwrap().to_be_bytes());
    startup.extend_from_slice(&196_608_u32.to_be_bytes());
    startup.extend_from_slice(params.as_bytes());
    raw.write_all(&startup).await.unwrap();
    let mut greeting = vec![0_u8; 4096];
    let mut seen = Vec::new();
    while !seen.ends_with(b"Z\0\0\0\x05I") {
        let n = raw.read(&mut greeting).await.unwrap();
        assert!(n > 0, "proxy closed during login");
        seen.extend_from_slice(&greeting[..n]);
    }
    raw.write_all(b"\x01\0\0\0\x04").await.unwrap();
    let mut reply = Vec::new();
    raw.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply.first(), Some(&server::ERROR_RESPONSE));
    assert!(String::from_utf8_lossy(&reply).contains("08P01"));
}
