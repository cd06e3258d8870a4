//! Hostile and malformed input: the proxy answers with errors or closes the connection, never
//! panics, and keeps serving everyone else.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pgsidecar::wire::tag::{client, server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{ProxyProcess, fresh_database, overrides, start_proxy_with, wait_until};

/// A small deterministic generator, so that a failure can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        u32::try_from(self.0 >> 33).unwrap()
    }

    fn below(&mut self, n: u32) -> u32 {
        self.next() % n
    }
}

fn startup(db: &str) -> Vec<u8> {
    let params = format!("user\0postgres\0database\0{db}\0\0");
    let mut packet = Vec::new();
    packet.extend_from_slice(&u32::try_from(8 + params.len()).unwrap().to_be_bytes());
    packet.extend_from_slice(&196_608_u32.to_be_bytes());
    packet.extend_from_slice(params.as_bytes());
    packet
}

/// One message with a random (often valid) tag and a random body; now and then a lying length.
fn random_message(rng: &mut Lcg) -> Vec<u8> {
    const TAGS: &[u8] = b"QPBEDCSHFdcfpX\x00\xffZ1";
    let tag = TAGS[rng.below(u32::try_from(TAGS.len()).unwrap()) as usize];
    let body_len = rng.below(64) as usize;
    let body: Vec<u8> = (0..body_len)
        .map(|_| u8::try_from(rng.below(256)).unwrap())
        .collect();
    let declared = match rng.below(10) {
        0 => u32::MAX,
        1 => 2,
        _ => u32::try_from(body_len + 4).unwrap(),
    };
    let mut message = vec![tag];
    message.extend_from_slice(&declared.to_be_bytes());
    message.extend_from_slice(&body);
    message
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A well-formed message a real client might send, often in an awkward place.
fn plausible_message(rng: &mut Lcg) -> Vec<u8> {
    const QUERIES: &[&str] = &[
        "BEGIN",
        "SELECT 1",
        "SET work_mem = '1MB'",
        "SELECT pg_sleep(0.02)",
        "COPY (SELECT 1) TO STDOUT",
        "SELECT 1/0",
        "DEALLOCATE ALL",
        "COMMIT",
        "ROLLBACK",
    ];
    match rng.below(8) {
        0 | 1 => {
            let sql = QUERIES[rng.below(u32::try_from(QUERIES.len()).unwrap()) as usize];
            message(client::QUERY, format!("{sql}\0").as_bytes())
        }
        2 => message(client::PARSE, b"s1\0SELECT $1::int\0\0\0"),
        3 => message(client::BIND, b"\0s1\0\0\0\0\x01\0\0\0\x0142\0\0"),
        4 => message(client::EXECUTE, b"\0\0\0\0\0"),
        5 => message(client::SYNC, b""),
        6 => message(client::DESCRIBE, b"Ss1\0"),
        _ => message(client::CLOSE, b"Ss1\0"),
    }
}

async fn drain(stream: &mut tokio::net::TcpStream) {
    let mut buf = [0_u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_traffic_never_panics_or_disturbs_others() {
    let db = fresh_database().await;
    let mut proxy = ProxyProcess::spawn(&["--pool-size", "3", "--client-login-timeout", "2s"]);
    let port = proxy.port;
    let bystander = proxy.connect(&db).await;
    let mut rng = Lcg(0x5eed);
    for round in 0..80 {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        if round % 4 == 0 {
            // Garbage instead of a startup packet.
            let junk: Vec<u8> = (0..rng.below(40))
                .map(|_| u8::try_from(rng.below(256)).unwrap())
                .collect();
            let _ = stream.write_all(&junk).await;
        } else {
            let _ = stream.write_all(&startup(&db)).await;
            for _ in 0..=rng.below(6) {
                let next = if rng.below(3) == 0 {
                    random_message(&mut rng)
                } else {
                    plausible_message(&mut rng)
                };
                // Now and then the client vanishes in the middle of a message.
                let cut = if rng.below(8) == 0 {
                    rng.below(u32::try_from(next.len()).unwrap()) as usize
                } else {
                    next.len()
                };
                let _ = stream.write_all(&next[..cut]).await;
            }
        }
        drain(&mut stream).await;
        let n: i32 = bystander
            .query_one("SELECT $1::int", &[&round])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, round);
        // A simple query outside any transaction starts one: now() is its own start time.
        let messages = bystander
            .simple_query("SELECT now() = statement_timestamp(), current_setting('work_mem')")
            .await
            .unwrap();
        let row = messages
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
                _ => None,
            })
            .unwrap();
        assert_eq!(
            row.get(0),
            Some("t"),
            "round {round}: the bystander landed inside someone's transaction"
        );
        assert_eq!(
            row.get(1),
            Some("4MB"),
            "round {round}: someone's SET leaked"
        );
    }
    assert!(
        proxy.child.try_wait().unwrap().is_none(),
        "the proxy exited"
    );
    let fresh = proxy.connect(&db).await;
    assert_eq!(
        fresh
            .query_one("SELECT 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
    proxy.child.start_kill().unwrap();
    let out = proxy.child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Reads until the proxy closes the connection (or 10 s pass) and returns what it sent.
async fn read_all(stream: &mut TcpStream) -> Vec<u8> {
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply)).await;
    reply
}

/// Asserts the reply is an ErrorResponse carrying `code`.
fn assert_error(reply: &[u8], code: &str, what: &str) {
    let text = String::from_utf8_lossy(reply);
    assert!(
        reply.contains(&server::ERROR_RESPONSE) && text.contains(code),
        "{what}: expected SQLSTATE {code}, got {text:?}"
    );
}

/// A raw connection that has logged in (trust) and seen its first ReadyForQuery.
async fn logged_in(port: u16, db: &str) -> TcpStream {
    let mut raw = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    raw.write_all(&startup(db)).await.unwrap();
    let mut seen = Vec::new();
    let mut chunk = [0_u8; 4096];
    while !seen.ends_with(b"Z\0\0\0\x05I") {
        let n = raw.read(&mut chunk).await.unwrap();
        assert!(n > 0, "proxy closed during login");
        seen.extend_from_slice(&chunk[..n]);
    }
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_clients_get_errors_while_ten_others_run() {
    let db = fresh_database().await;
    let mut settings = overrides("transaction", 4);
    settings.max_message_size = Some("64KiB".into());
    settings.client_login_timeout = Some("1s".into());
    let proxy = start_proxy_with(&settings, None).await;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut bystanders = Vec::new();
    for id in 0..10 {
        let client = proxy.connect(&db).await.unwrap();
        let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
        bystanders.push(tokio::spawn(async move {
            let mut n = 0_i32;
            while !stop.load(Ordering::Relaxed) {
                let got: i32 = client
                    .query_one("SELECT $1::int + $2::int", &[&n, &id])
                    .await
                    .expect("a bystander's query failed")
                    .get(0);
                assert_eq!(got, n + id);
                n += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            n
        }));
    }
    let port = proxy.port;

    // Garbage instead of a startup packet.
    let mut raw = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    raw.write_all(b"\xff\xff\xff\xffGET / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    assert_error(&read_all(&mut raw).await, "08P01", "garbage startup");

    // A startup packet declaring a megabyte.
    let mut raw = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    raw.write_all(&[0, 0x10, 0, 0, 0, 3, 0, 0]).await.unwrap();
    assert_error(&read_all(&mut raw).await, "08P01", "oversized startup");

    // A startup packet cut short: the client half-closes before the rest arrives.
    let mut raw = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    raw.write_all(&startup(&db)[..12]).await.unwrap();
    raw.shutdown().await.unwrap();
    assert_error(&read_all(&mut raw).await, "08P01", "truncated startup");

    // After login: a length far above max_message_size.
    let mut raw = logged_in(port, &db).await;
    raw.write_all(b"Q\x7f\xff\xff\xff").await.unwrap();
    assert_error(&read_all(&mut raw).await, "54000", "oversized message");

    // After login: a message cut short.
    let mut raw = logged_in(port, &db).await;
    raw.write_all(b"Q\0\0\0\x20SELE").await.unwrap();
    raw.shutdown().await.unwrap();
    assert_error(&read_all(&mut raw).await, "08P01", "truncated message");

    // After login: a message type that does not exist.
    let mut raw = logged_in(port, &db).await;
    raw.write_all(b"\x01\0\0\0\x04").await.unwrap();
    assert_error(&read_all(&mut raw).await, "08P01", "unknown message type");

    // A client that connects and says nothing is dropped at the login timeout.
    let mut raw = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let started = Instant::now();
    let silent = read_all(&mut raw).await;
    assert!(silent.is_empty(), "{silent:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a silent client held its slot for {:?}",
        started.elapsed()
    );

    let before = done.load(Ordering::Relaxed);
    wait_until("bystanders go on with their queries", async || {
        done.load(Ordering::Relaxed) > before
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for bystander in bystanders {
        assert!(bystander.await.expect("bystander panicked") > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_3_2_is_negotiated_down_to_3_0() {
    let db = fresh_database().await;
    let proxy = start_proxy_with(&overrides("transaction", 2), None).await;
    let mut raw = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    let params = format!("user\0postgres\0database\0{db}\0_pq_.frob\0on\0\0");
    let mut packet = Vec::new();
    packet.extend_from_slice(&u32::try_from(8 + params.len()).unwrap().to_be_bytes());
    packet.extend_from_slice(&((3_u32 << 16) | 2).to_be_bytes());
    packet.extend_from_slice(params.as_bytes());
    raw.write_all(&packet).await.unwrap();
    let mut head = [0_u8; 5];
    raw.read_exact(&mut head).await.unwrap();
    assert_eq!(
        head[0],
        server::NEGOTIATE_PROTOCOL_VERSION,
        "NegotiateProtocolVersion comes first"
    );
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut body = vec![0_u8; len - 4];
    raw.read_exact(&mut body).await.unwrap();
    let newest_minor = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    let unrecognised = u32::from_be_bytes([body[4], body[5], body[6], body[7]]);
    assert_eq!(newest_minor, 0);
    assert_eq!(unrecognised, 1);
    assert_eq!(&body[8..], b"_pq_.frob\0");
    // The session then goes on in 3.0: authentication, parameters, ReadyForQuery.
    let mut seen = Vec::new();
    let mut chunk = [0_u8; 4096];
    while !seen.ends_with(b"Z\0\0\0\x05I") {
        let n = raw.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed after negotiation");
        seen.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(seen[0], server::AUTHENTICATION);
}
