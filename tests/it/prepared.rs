//! Named prepared statements in transaction mode: every Parse, Bind, Describe and Close works
//! whichever server connection each transaction lands on.

use std::collections::HashSet;
use std::sync::Arc;

use futures::future::{join_all, try_join_all};

use crate::support::{assert_python_ok, fresh_database, sqlstate, start_proxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_once_executes_on_every_server_connection() {
    let db = fresh_database().await;
    let proxy = Arc::new(start_proxy("transaction", 2).await);
    let clients = (0..20).map(|id: i32| {
        let (proxy, db) = (Arc::clone(&proxy), db.clone());
        async move {
            let mut client = proxy.connect(&db).await?;
            let add = client
                .prepare("SELECT $1::int + $2::int, pg_backend_pid()")
                .await?;
            let mut pids = HashSet::new();
            for n in 0..100_i32 {
                let row = if n % 10 == 0 {
                    let tx = client.transaction().await?;
                    let row = tx.query_one(&add, &[&id, &n]).await?;
                    tx.commit().await?;
                    row
                } else {
                    client.query_one(&add, &[&id, &n]).await?
                };
                assert_eq!(row.get::<_, i32>(0), id + n);
                pids.insert(row.get::<_, i32>(1));
            }
            Ok::<_, tokio_postgres::Error>(pids)
        }
    });
    let pids: HashSet<i32> = try_join_all(clients)
        .await
        .unwrap()
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(
        pids.len(),
        2,
        "statements ran on both server connections: {pids:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_thousand_transactions_with_one_prepare() {
    let db = fresh_database().await;
    let proxy = start_proxy("transaction", 2).await;
    let client = proxy.connect(&db).await.unwrap();
    let other = proxy.connect(&db).await.unwrap();
    let square = client
        .prepare("SELECT $1::bigint * $1::bigint")
        .await
        .unwrap();
    let mut total = 0_i64;
    for n in 0..1000_i64 {
        // Another client takes a connection now and then, so the first one moves around.
        if n % 7 == 0 {
            other.batch_execute("SELECT 1").await.unwrap();
        }
        total += client
            .query_one(&square, &[&n])
            .await
            .unwrap()
            .get::<_, i64>(0);
    }
    assert_eq!(total, (0..1000_i64).map(|n| n * n).sum::<i64>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_only_reports_parameters_and_columns() {
    let db = fresh_database().await;
    let proxy = start_proxy("transaction", 2).await;
    let client = proxy.connect(&db).await.unwrap();
    client
        .batch_execute("CREATE TABLE docs (id bigint PRIMARY KEY, title text, score real)")
        .await
        .unwrap();
    let statement = client
        .prepare("SELECT id, title, score FROM docs WHERE id = $1 AND title <> $2")
        .await
        .unwrap();
    let params: Vec<String> = statement
        .params()
        .iter()
        .map(|t| t.name().to_owned())
        .collect();
    assert_eq!(params, ["int8", "text"]);
    let columns: Vec<&str> = statement
        .columns()
        .iter()
        .map(tokio_postgres::Column::name)
        .collect();
    assert_eq!(columns, ["id", "title", "score"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_text_from_many_clients_is_one_server_statement() {
    let db = fresh_database().await;
    let proxy = start_proxy("transaction", 1).await;
    let text = "SELECT 'shared statement'::text";
    let mut clients = Vec::new();
    for _ in 0..5 {
        let client = proxy.connect(&db).await.unwrap();
        let statement = client.prepare(text).await.unwrap();
        let value: String = client.query_one(&statement, &[]).await.unwrap().get(0);
        assert_eq!(value, "shared statement");
        clients.push(client);
    }
    let copies: i64 = clients[0]
        .query_one(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement = $1",
            &[&text],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(copies, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_and_prepare_again() {
    let db = fresh_database().await;
    let proxy = start_proxy("transaction", 2).await;
    let client = proxy.connect(&db).await.unwrap();
    for round in 0..20_i32 {
        let statement = client.prepare("SELECT $1::int + 1").await.unwrap();
        let n: i32 = client
            .query_one(&statement, &[&round])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, round + 1);
        drop(statement);
    }
    let named: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement = 'SELECT $1::int + 1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(named <= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_in_a_pipeline_affects_only_its_statement() {
    let db = fresh_database().await;
    let proxy = start_proxy("transaction", 2).await;
    let client = proxy.connect(&db).await.unwrap();
    let divide = client.prepare("SELECT 10 / $1::int").await.unwrap();
    let divisors = [5, 2, 0, 1, 10];
    let results = join_all(divisors.iter().map(|d| {
        let (client, divide) = (&client, &divide);
        async move { client.query_one(divide, &[d]).await }
    }))
    .await;
    for (d, result) in divisors.iter().zip(results) {
        match d {
            0 => assert_eq!(sqlstate(&result.unwrap_err()), "22012"),
            d => assert_eq!(result.unwrap().get::<_, i32>(0), 10 / d),
        }
    }
    let after: i32 = client.query_one(&divide, &[&3]).await.unwrap().get(0);
    assert_eq!(after, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_prepare_leaves_no_trace() {
    let db = fresh_database().await;
    let proxy = start_proxy("transaction", 1).await;
    let client = proxy.connect(&db).await.unwrap();
    let err = client
        .prepare("SELECT * FROM missing_table")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42P01");
    client
        .batch_execute("CREATE TABLE missing_table (x int)")
        .await
        .unwrap();
    let statement = client.prepare("SELECT * FROM missing_table").await.unwrap();
    assert!(client.query(&statement, &[]).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_prepared_threshold_and_pipeline_mode() {
    let db = fresh_database().await;
    let proxy = start_proxy("transaction", 2).await;
    let dsn = format!(
        "host=127.0.0.1 port={} user=postgres dbname={db}",
        proxy.port
    );
    assert_python_ok("psycopg_transaction_mode.py", &dsn, &[]).await;
}

/// A statement prepared before a schema change fails: with PostgreSQL's 0A000, or, on a
/// connection that prepares it afresh in the new shape, with tokio-postgres refusing rows that
/// do not match its cached description. Never with wrong data.
fn assert_stale(err: &tokio_postgres::Error) {
    match err.code() {
        Some(code) => assert_eq!(code.code(), "0A000"),
        None => assert!(
            format!("{err:?}").contains("DataRow field count"),
            "{err:?}"
        ),
    }
}

/// Prepares and runs `SELECT * FROM t` a few times after a schema change, on whichever server
/// connections the client lands: at most one stale-plan error may reach it, and every
/// successful run sees the new shape.
async fn prepare_after_schema_change(
    client: &tokio_postgres::Client,
    other: &tokio_postgres::Client,
    new_shape: impl Fn(&tokio_postgres::Row) -> bool,
) {
    let mut errors = 0;
    for _ in 0..4 {
        let fresh = match client.prepare("SELECT * FROM t ORDER BY a").await {
            Ok(statement) => statement,
            Err(e) => {
                assert_eq!(sqlstate(&e), "0A000");
                errors += 1;
                continue;
            }
        };
        match client.query(&fresh, &[]).await {
            Ok(rows) => assert!(new_shape(&rows[0])),
            Err(e) => {
                assert_eq!(sqlstate(&e), "0A000");
                errors += 1;
            }
        }
        other.batch_execute("SELECT 1").await.unwrap();
    }
    assert!(
        errors <= 1,
        "{errors} stale-plan errors after one schema change"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_plan_drops_the_server_copy_so_preparing_again_works() {
    let db = fresh_database().await;
    let proxy = start_proxy("transaction", 2).await;
    let client = proxy.connect(&db).await.unwrap();
    let ddl = proxy.connect(&db).await.unwrap();
    ddl.batch_execute("CREATE TABLE t (a int); INSERT INTO t VALUES (1), (2)")
        .await
        .unwrap();
    let everything = client.prepare("SELECT * FROM t ORDER BY a").await.unwrap();
    assert_eq!(client.query(&everything, &[]).await.unwrap().len(), 2);
    ddl.batch_execute("ALTER TABLE t ADD COLUMN b text DEFAULT 'new'")
        .await
        .unwrap();
    // tokio-postgres keeps the row description from prepare time, so its old statement fails
    // (psycopg, which describes each portal, gets a transparent retry: tests/python).
    // Preparing again then works on every server connection.
    assert_stale(&client.query(&everything, &[]).await.unwrap_err());
    prepare_after_schema_change(&client, &ddl, |row| row.get::<_, &str>(1) == "new").await;
    // A prepare (Parse, Describe) meeting a stale copy gets the error at most once per schema
    // change; the copy is replaced everywhere.
    for column in ["c", "e"] {
        ddl.batch_execute(&format!("ALTER TABLE t ADD COLUMN {column} int DEFAULT 5"))
            .await
            .unwrap();
        prepare_after_schema_change(&client, &ddl, |row| row.get::<_, i32>(row.len() - 1) == 5)
            .await;
    }
    // Inside a transaction block the error is PostgreSQL's to report.
    let fresh = client.prepare("SELECT * FROM t ORDER BY a").await.unwrap();
    ddl.batch_execute("ALTER TABLE t ADD COLUMN d int")
        .await
        .unwrap();
    client.batch_execute("BEGIN").await.unwrap();
    assert_stale(&client.query(&fresh, &[]).await.unwrap_err());
    client.batch_execute("ROLLBACK").await.unwrap();
}
