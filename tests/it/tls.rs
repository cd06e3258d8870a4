//! TLS on both sides: libpq (psql) with verify-full against the proxy's certificate, PostgreSQL
//! 17-style direct TLS with ALPN, the policy that requires TLS, bytes injected after an
//! SSLRequest, and the upstream connection at each verification level.

use std::path::Path;
use std::sync::Arc;

use pgsidecar::config::Overrides;
use pgsidecar::wire::tag::{client, server, status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::Client;
use tokio_postgres::config::SslNegotiation;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::support::{
    TestProxy, assert_python_ok, cluster, fresh_database, overrides, pg_program, sqlstate,
    start_proxy_with,
};

/// A rustls client trusting `ca`, optionally announcing ALPN `postgresql`.
pub fn client_config(ca: &Path, alpn: bool) -> rustls::ClientConfig {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    if alpn {
        config.alpn_protocols = vec![b"postgresql".to_vec()];
    }
    config
}

/// Connects with tokio-postgres over rustls.
pub async fn connect_tls(
    config: &tokio_postgres::Config,
    tls: rustls::ClientConfig,
) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(MakeRustlsConnect::new(tls)).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Overrides for a proxy whose listener presents the localhost certificate.
pub fn tls_overrides(client_tls: &str) -> Overrides {
    let pki = cluster().pki();
    let mut settings = overrides("transaction", 3);
    settings.tls_cert = Some(pki.localhost.0.display().to_string());
    settings.tls_key = Some(pki.localhost.1.display().to_string());
    settings.client_tls = Some(client_tls.into());
    settings
}

fn tls_url(proxy: &TestProxy, db: &str) -> tokio_postgres::Config {
    let mut config: tokio_postgres::Config = format!(
        "host=localhost port={} user=postgres password=postgres dbname={db}",
        proxy.port
    )
    .parse()
    .unwrap();
    config.ssl_mode(tokio_postgres::config::SslMode::Require);
    config
}

/// Whether the proxy's own server connection for this session is encrypted.
async fn upstream_is_tls(client: &Client) -> bool {
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

async fn psql(port: u16, db: &str, sslmode: &str, root: &Path) -> std::process::Output {
    tokio::process::Command::new(pg_program("psql"))
        .arg(format!(
            "host=localhost port={port} user=postgres dbname={db} sslmode={sslmode} sslrootcert={}",
            root.display()
        ))
        .args([
            "-X",
            "-A",
            "-t",
            "-c",
            "SELECT 'through ' || current_database()",
        ])
        .env("PGPASSWORD", "postgres")
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .await
        .expect("psql runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_verify_full_and_the_require_policy() {
    let db = fresh_database().await;
    let pki = cluster().pki();
    let mut settings = tls_overrides("require");
    settings.auth = None;
    let file = "auth = \"scram-sha-256\"\n[users.postgres]\npassword = \"postgres\"\n";
    let proxy = start_proxy_with(&settings, Some(file)).await;

    let ok = psql(proxy.port, &db, "verify-full", &pki.ca).await;
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout).trim(),
        format!("through {db}")
    );

    let untrusted = psql(proxy.port, &db, "verify-full", &pki.other_ca).await;
    assert!(!untrusted.status.success());
    let stderr = String::from_utf8_lossy(&untrusted.stderr);
    assert!(stderr.contains("certificate verify failed"), "{stderr}");

    let plain = psql(proxy.port, &db, "disable", &pki.ca).await;
    assert!(!plain.status.success());
    let stderr = String::from_utf8_lossy(&plain.stderr);
    assert!(stderr.contains("accepts only TLS connections"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_needs_alpn() {
    let db = fresh_database().await;
    let pki = cluster().pki();
    let proxy = start_proxy_with(&tls_overrides("allow"), None).await;
    let mut config = tls_url(&proxy, &db);
    config.ssl_negotiation(SslNegotiation::Direct);
    let client = connect_tls(&config, client_config(&pki.ca, true))
        .await
        .expect("direct TLS with ALPN");
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    let refused = connect_tls(&config, client_config(&pki.ca, false)).await;
    assert!(refused.is_err(), "direct TLS without ALPN must be refused");
    // The same listener still takes SSLRequest and plaintext clients (policy allow).
    let mut negotiated = tls_url(&proxy, &db);
    negotiated.ssl_negotiation(SslNegotiation::Postgres);
    connect_tls(&negotiated, client_config(&pki.ca, false))
        .await
        .expect("SSLRequest without ALPN");
    proxy.connect(&db).await.expect("plaintext under allow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_injected_after_ssl_request_are_refused() {
    let proxy = start_proxy_with(&tls_overrides("allow"), None).await;
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port))
        .await
        .unwrap();
    // SSLRequest and, in the same segment, a plaintext startup packet a man in the middle
    // hopes will be read as if it came over TLS.
    let mut stuffed = vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let params = b"user\0postgres\0database\0postgres\0\0";
    stuffed.extend_from_slice(&u32::try_from(8 + params.len()).unwrap().to_be_bytes());
    stuffed.extend_from_slice(&196_608_u32.to_be_bytes());
    stuffed.extend_from_slice(params);
    raw.write_all(&stuffed).await.unwrap();
    let mut reply = Vec::new();
    raw.read_to_end(&mut reply).await.unwrap();
    assert_eq!(
        reply.first(),
        Some(&server::ERROR_RESPONSE),
        "got {reply:?}"
    );
    let text = String::from_utf8_lossy(&reply);
    assert!(text.contains("08P01"), "{text}");
    assert!(
        text.contains("unencrypted data after SSL request"),
        "{text}"
    );
}

async fn upstream_client(
    mode: &str,
    ca: &Path,
    db: &str,
) -> (TestProxy, Result<Client, tokio_postgres::Error>) {
    let mut settings = overrides("transaction", 2);
    settings.server_tls_mode = Some(mode.into());
    settings.server_ca = Some(ca.display().to_string());
    settings.upstream = Some(format!(
        "postgres://postgres:postgres@localhost:{}",
        cluster().port()
    ));
    let proxy = start_proxy_with(&settings, None).await;
    let client = proxy.connect(db).await;
    (proxy, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_at_each_verification_level() {
    let db = fresh_database().await;
    let pki = cluster().pki();
    for mode in ["prefer", "require", "verify-ca", "verify-full"] {
        let (_proxy, client) = upstream_client(mode, &pki.ca, &db).await;
        assert!(
            upstream_is_tls(&client.unwrap()).await,
            "{mode}: not encrypted"
        );
    }
    let (_proxy, disabled) = upstream_client("disable", &pki.ca, &db).await;
    assert!(!upstream_is_tls(&disabled.unwrap()).await);
    // A server certificate from a CA the proxy does not trust: no connection.
    let (_proxy, refused) = upstream_client("verify-full", &pki.other_ca, &db).await;
    let err = refused.unwrap_err();
    let message = err
        .as_db_error()
        .map(|e| e.message().to_owned())
        .unwrap_or_default();
    assert!(message.contains("TLS"), "{err:?}");
}

/// Host name checks: a proxy presenting a certificate for another name stands in for an
/// upstream, so verify-ca (chain only) connects and verify-full (chain and name) refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_checks_the_host_name_and_verify_ca_does_not() {
    let db = fresh_database().await;
    let pki = cluster().pki();
    let mut front = overrides("transaction", 2);
    front.tls_cert = Some(pki.wrong_name.0.display().to_string());
    front.tls_key = Some(pki.wrong_name.1.display().to_string());
    let wrong_name = start_proxy_with(&front, None).await;
    let chained_to = |mode: &str, ca: &Path| {
        let mut settings = overrides("transaction", 2);
        settings.upstream = Some(format!(
            "postgres://postgres:postgres@localhost:{}",
            wrong_name.port
        ));
        settings.server_tls_mode = Some(mode.into());
        settings.server_ca = Some(ca.display().to_string());
        settings
    };
    let chained = |mode: &str| chained_to(mode, &pki.ca);
    // Wrong name and an untrusted CA: verify-ca must still refuse (the chain is checked first).
    let untrusted = start_proxy_with(&chained_to("verify-ca", &pki.other_ca), None).await;
    let err = untrusted.connect(&db).await.unwrap_err();
    assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");
    let ca_only = start_proxy_with(&chained("verify-ca"), None).await;
    let client = ca_only
        .connect(&db)
        .await
        .expect("verify-ca ignores the name");
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    let full = start_proxy_with(&chained("verify-full"), None).await;
    let err = full.connect(&db).await.unwrap_err();
    assert!(format!("{err:?}").contains("TLS"), "{err:?}");
    // An upstream without TLS: require refuses, prefer falls back to plaintext.
    let mut plain_front = overrides("transaction", 2);
    plain_front.client_tls = Some("disable".into());
    let plain = start_proxy_with(&plain_front, None).await;
    let over_plain = |mode: &str| {
        let mut settings = overrides("transaction", 2);
        settings.upstream = Some(format!(
            "postgres://postgres:postgres@127.0.0.1:{}",
            plain.port
        ));
        settings.server_tls_mode = Some(mode.into());
        settings
    };
    let require = start_proxy_with(&over_plain("require"), None).await;
    let err = require.connect(&db).await.unwrap_err();
    assert!(
        format!("{err:?}").contains("does not support TLS"),
        "{err:?}"
    );
    assert_eq!(sqlstate(&err), "08001");
    let prefer = start_proxy_with(&over_plain("prefer"), None).await;
    prefer.connect(&db).await.expect("prefer falls back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate() {
    let db = fresh_database().await;
    let pki = cluster().pki();
    let config = std::env::temp_dir().join(format!(
        "pgsidecar-it-tls-reload-{}.toml",
        std::process::id()
    ));
    let write = |(cert, key): &(std::path::PathBuf, std::path::PathBuf)| {
        std::fs::write(
            &config,
            format!(
                "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
                cert.display(),
                key.display()
            ),
        )
        .unwrap();
    };
    write(&pki.untrusted);
    let sidecar = crate::support::ProxyProcess::spawn(&["--config", config.to_str().unwrap()]);
    sidecar.connect(&db).await;
    let before = psql(sidecar.port, &db, "verify-full", &pki.ca).await;
    assert!(
        !before.status.success(),
        "the untrusted certificate was accepted"
    );
    write(&pki.localhost);
    let pid = sidecar.child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let mut after = None;
    for _ in 0..50 {
        let out = psql(sidecar.port, &db, "verify-full", &pki.ca).await;
        if out.status.success() {
            after = Some(out);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let after = after.expect("the reloaded certificate is served");
    assert_eq!(
        String::from_utf8_lossy(&after.stdout).trim(),
        format!("through {db}")
    );
    let _ = std::fs::remove_file(&config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_connections_use_tls_when_the_server_offers_it() {
    let (client, connection) = tokio_postgres::connect(
        &cluster().url("postgres"),
        pgsidecar::tls::control_connector(),
    )
    .await
    .expect("control connection");
    tokio::spawn(connection);
    assert!(upstream_is_tls(&client).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_listener_has_its_own_tls_policy() {
    let db = fresh_database().await;
    let pki = cluster().pki();
    let proxy = start_proxy_with(
        &tls_overrides("allow"),
        Some("[[listeners]]\naddress = \"127.0.0.1:0\"\nclient_tls = \"require\"\n"),
    )
    .await;
    let strict = proxy.extra_ports[0];
    proxy
        .connect(&db)
        .await
        .expect("plaintext on the main listener");
    let err = crate::support::connect(&format!(
        "postgres://postgres:postgres@127.0.0.1:{strict}/{db}"
    ))
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&err), "28000");
    let mut config: tokio_postgres::Config =
        format!("host=localhost port={strict} user=postgres password=postgres dbname={db}")
            .parse()
            .unwrap();
    config.ssl_mode(tokio_postgres::config::SslMode::Require);
    let client = connect_tls(&config, client_config(&pki.ca, false))
        .await
        .expect("TLS on the strict listener");
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

/// A raw TLS session with the proxy (SSLRequest, handshake, startup as `postgres`), read up to
/// its first ReadyForQuery; or, with `cancel`, a CancelRequest sent over TLS instead.
async fn raw_tls_session(
    port: u16,
    db: &str,
    cancel: Option<(i32, i32)>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .unwrap();
    let mut answer = [0_u8; 1];
    tcp.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"S");
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(client_config(&cluster().pki().ca, false)));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let mut packet = Vec::new();
    if let Some((pid, secret)) = cancel {
        packet.extend_from_slice(&16_u32.to_be_bytes());
        packet.extend_from_slice(&80_877_102_u32.to_be_bytes());
        packet.extend_from_slice(&pid.to_be_bytes());
        packet.extend_from_slice(&secret.to_be_bytes());
        tls.write_all(&packet).await.unwrap();
        tls.flush().await.unwrap();
        return tls;
    }
    let params = format!("user\0postgres\0database\0{db}\0\0");
    packet.extend_from_slice(&u32::try_from(8 + params.len()).unwrap().to_be_bytes());
    packet.extend_from_slice(&196_608_u32.to_be_bytes());
    packet.extend_from_slice(params.as_bytes());
    tls.write_all(&packet).await.unwrap();
    tls.flush().await.unwrap();
    let mut seen = Vec::new();
    while !seen
        .windows(6)
        .any(|w| w == [server::READY_FOR_QUERY, 0, 0, 0, 5, status::IDLE])
    {
        let mut chunk = [0_u8; 1024];
        let n = tls.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed during login: {seen:?}");
        seen.extend_from_slice(&chunk[..n]);
    }
    tls
}

/// Reads to the end and says how the connection ended: `Ok(bytes)` after a close_notify,
/// `Err` when the socket closed without one (rustls reports an unexpected EOF).
async fn how_it_ends(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> Result<Vec<u8>, std::io::Error> {
    let mut rest = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tls.read_to_end(&mut rest),
    )
    .await
    .expect("the proxy closes the connection")?;
    Ok(rest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connections_end_with_close_notify() {
    let db = fresh_database().await;
    let proxy = start_proxy_with(&tls_overrides("require"), None).await;
    // Terminate.
    let mut tls = raw_tls_session(proxy.port, &db, None).await;
    tls.write_all(&[client::TERMINATE, 0, 0, 0, 4])
        .await
        .unwrap();
    tls.flush().await.unwrap();
    assert_eq!(how_it_ends(&mut tls).await.unwrap(), b"");
    // A FATAL in the middle of the session.
    let mut tls = raw_tls_session(proxy.port, &db, None).await;
    proxy.ctx.abort_all("the test ends every session");
    let fatal = how_it_ends(&mut tls)
        .await
        .expect("close_notify after a FATAL");
    assert_eq!(fatal.first(), Some(&server::ERROR_RESPONSE));
    assert!(String::from_utf8_lossy(&fatal).contains("FATAL"));
    // A cancel request over TLS, as libpq 17+ sends it.
    let mut tls = raw_tls_session(proxy.port, &db, Some((1, 2))).await;
    assert_eq!(how_it_ends(&mut tls).await.unwrap(), b"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_cancel_safe_over_tls() {
    let db = fresh_database().await;
    let proxy = start_proxy_with(&tls_overrides("require"), None).await;
    let dsn = format!(
        "host=localhost port={} user=postgres dbname={db} sslmode=verify-full sslrootcert={}",
        proxy.port,
        cluster().pki().ca.display()
    );
    assert_python_ok("psycopg_cancel_over_tls.py", &dsn, &[]).await;
}
