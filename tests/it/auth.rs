//! Client authentication: SCRAM with and without channel binding, md5 for old clients, cleartext
//! only over TLS, wrong passwords (28P01, delayed, counted per source), and users looked up in
//! the upstream with auth_query, logged in to the server with their own SCRAM keys.

use std::time::{Duration, Instant};

use tokio_postgres::config::{ChannelBinding, SslMode};

use crate::support::{
    cluster, connect, direct, fresh_database, overrides, sqlstate, start_proxy_with,
};
use crate::tls::{client_config, connect_tls, tls_overrides};

fn config(port: u16, user: &str, password: &str, db: &str) -> tokio_postgres::Config {
    format!("host=localhost port={port} user={user} password={password} dbname={db}")
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_with_and_without_channel_binding() {
    let db = fresh_database().await;
    let ca = &cluster().pki().ca;
    let mut settings = tls_overrides("allow");
    settings.auth = None;
    let file = "auth = \"scram-sha-256\"\n[users.postgres]\npassword = \"postgres\"\n";
    let proxy = start_proxy_with(&settings, Some(file)).await;

    // Over TLS, requiring channel binding: only SCRAM-SHA-256-PLUS satisfies the client.
    let mut bound = config(proxy.port, "postgres", "postgres", &db);
    bound.ssl_mode(SslMode::Require);
    bound.channel_binding(ChannelBinding::Require);
    let client = connect_tls(&bound, client_config(ca, false))
        .await
        .expect("SCRAM-SHA-256-PLUS");
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    // Bound, but with the wrong password.
    let mut wrong = config(proxy.port, "postgres", "guess", &db);
    wrong.ssl_mode(SslMode::Require);
    wrong.channel_binding(ChannelBinding::Require);
    let err = connect_tls(&wrong, client_config(ca, false))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "28P01");
    // Over TLS without binding, and over plaintext.
    let mut unbound = config(proxy.port, "postgres", "postgres", &db);
    unbound.ssl_mode(SslMode::Require);
    unbound.channel_binding(ChannelBinding::Disable);
    connect_tls(&unbound, client_config(ca, false))
        .await
        .expect("SCRAM-SHA-256 over TLS");
    proxy
        .connect(&db)
        .await
        .expect("SCRAM-SHA-256 in plaintext");
    // Plaintext cannot satisfy a client that requires binding.
    let mut plain = config(proxy.port, "postgres", "postgres", &db);
    plain.channel_binding(ChannelBinding::Require);
    let (client, connection) = plain
        .connect(tokio_postgres::NoTls)
        .await
        .map_or((None, None), |(c, k)| (Some(c), Some(k)));
    assert!(
        client.is_none() && connection.is_none(),
        "channel binding without TLS"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_delayed_and_counted_per_source() {
    let db = fresh_database().await;
    let mut settings = overrides("transaction", 2);
    settings.auth = None;
    settings.auth_failure_delay = Some("400ms".into());
    let file = "auth = \"scram-sha-256\"\n[users.postgres]\npassword = \"postgres\"\n";
    let proxy = start_proxy_with(&settings, Some(file)).await;
    for user in ["postgres", "mallory"] {
        let started = Instant::now();
        let err = connect(&format!(
            "postgres://{user}:guess@127.0.0.1:{}/{db}",
            proxy.port
        ))
        .await
        .unwrap_err();
        assert_eq!(sqlstate(&err), "28P01");
        assert!(
            started.elapsed() >= Duration::from_millis(400),
            "answered after {:?}",
            started.elapsed()
        );
    }
    proxy.connect(&db).await.expect("the right password");
    let metrics = proxy.ctx.telemetry.metrics.encode();
    assert!(
        metrics.contains("pgsidecar_client_login_failures_total{source=\"127.0.0.1\"} 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_for_old_clients_and_cleartext_only_over_tls() {
    let db = fresh_database().await;
    let ca = &cluster().pki().ca;
    let md5 = postgres_protocol::password::md5(b"alicepw", "alice");
    let mut settings = tls_overrides("allow");
    settings.auth = None;
    let users = format!(
        "[users.alice]\nmd5_secret = \"{md5}\"\n[users.postgres]\npassword = \"postgres\"\n"
    );
    let proxy = start_proxy_with(&settings, Some(&format!("auth = \"md5\"\n{users}"))).await;
    let alice = connect(&format!(
        "postgres://alice:alicepw@127.0.0.1:{}/{db}",
        proxy.port
    ))
    .await
    .expect("md5 login");
    let who: String = alice.query_one("SELECT 'in'", &[]).await.unwrap().get(0);
    assert_eq!(who, "in");
    let err = connect(&format!(
        "postgres://alice:nope@127.0.0.1:{}/{db}",
        proxy.port
    ))
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&err), "28P01");
    // Under md5, a user with a SCRAM verifier logs in with SCRAM, as PostgreSQL does.
    proxy.connect(&db).await.expect("SCRAM user under md5");

    let cleartext =
        start_proxy_with(&settings, Some(&format!("auth = \"password\"\n{users}"))).await;
    let mut over_tls = config(cleartext.port, "alice", "alicepw", &db);
    over_tls.ssl_mode(SslMode::Require);
    connect_tls(&over_tls, client_config(ca, false))
        .await
        .expect("cleartext password over TLS");
    let mut scram_user = config(cleartext.port, "postgres", "postgres", &db);
    scram_user.ssl_mode(SslMode::Require);
    connect_tls(&scram_user, client_config(ca, false))
        .await
        .expect("cleartext checked against a SCRAM verifier");
    let err = connect(&format!(
        "postgres://alice:alicepw@127.0.0.1:{}/{db}",
        cleartext.port
    ))
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&err), "28000");
    assert!(format!("{err:?}").contains("without TLS"), "{err:?}");
}

/// A SCRAM proxy that looks users up with `auth_query` as `postgres`. No user or password in
/// the upstream URL: every server login is the client's own.
async fn auth_query_proxy(pool_size: usize) -> crate::support::TestProxy {
    let mut settings = overrides("transaction", pool_size);
    settings.auth = None;
    settings.upstream = Some(format!("postgres://127.0.0.1:{}", cluster().port()));
    let file = "auth = \"scram-sha-256\"\n\
                auth_user = \"postgres\"\n\
                auth_query = \"SELECT usename, passwd FROM pg_shadow WHERE usename = $1\"\n\
                [users.postgres]\nserver_password = \"postgres\"\n";
    start_proxy_with(&settings, Some(file)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_query_users_log_in_with_their_own_scram_keys() {
    let db = fresh_database().await;
    let role = format!("aq_{db}");
    direct("postgres")
        .await
        .batch_execute(&format!("CREATE ROLE {role} LOGIN PASSWORD 'aqpass'"))
        .await
        .unwrap();
    let proxy = auth_query_proxy(2).await;
    let url =
        |password: &str| format!("postgres://{role}:{password}@127.0.0.1:{}/{db}", proxy.port);
    let client = connect(&url("aqpass")).await.expect("auth_query login");
    let who: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        who, role,
        "the server session runs as the client's own role"
    );
    // A second client reuses the pool; a fresh server connection still logs in with the keys.
    let again = connect(&url("aqpass")).await.expect("second login");
    again
        .batch_execute("BEGIN; SELECT pg_sleep(0.05); COMMIT")
        .await
        .unwrap();
    assert_eq!(
        sqlstate(&connect(&url("wrong")).await.unwrap_err()),
        "28P01"
    );
    let unknown = format!("postgres://nobody_{db}:x@127.0.0.1:{}/{db}", proxy.port);
    assert_eq!(sqlstate(&connect(&unknown).await.unwrap_err()), "28P01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_query_refuses_expired_passwords_and_ignores_a_clients_search_path() {
    let db = fresh_database().await;
    let (expired, current) = (format!("exp_{db}"), format!("cur_{db}"));
    direct("postgres")
        .await
        .batch_execute(&format!(
            "CREATE ROLE {expired} LOGIN PASSWORD 'exppass' VALID UNTIL '2001-01-01';
             CREATE ROLE {current} LOGIN PASSWORD 'curpass' VALID UNTIL 'infinity';"
        ))
        .await
        .unwrap();
    let proxy = auth_query_proxy(1).await;
    let url = |user: &str, password: &str| {
        format!("postgres://{user}:{password}@127.0.0.1:{}/{db}", proxy.port)
    };
    assert_eq!(
        sqlstate(&connect(&url(&expired, "exppass")).await.unwrap_err()),
        "28P01"
    );
    connect(&url(&current, "curpass"))
        .await
        .expect("a password valid until infinity");
    // A client of the auth user's own pool (one server connection) plants a pg_shadow of its
    // own and leaves its search_path on that connection.
    let planter = connect(&url("postgres", "postgres")).await.unwrap();
    planter
        .batch_execute(&format!(
            "CREATE SCHEMA evil;
             CREATE VIEW evil.pg_shadow AS
               SELECT 'intruder_{db}'::name AS usename,
                      (SELECT passwd FROM pg_catalog.pg_shadow WHERE usename = '{current}') AS passwd;
             SET search_path = evil, pg_catalog"
        ))
        .await
        .unwrap();
    assert_eq!(
        sqlstate(
            &connect(&url(&format!("intruder_{db}"), "curpass"))
                .await
                .unwrap_err()
        ),
        "28P01"
    );
    // The planter's own setting is untouched.
    let path: String = planter
        .query_one("SELECT current_setting('search_path')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(path, "evil, pg_catalog");
}
