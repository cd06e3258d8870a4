//! Hostile and malformed input: the proxy answers with errors or closes the connection, never
//! panics, and keeps serving everyone else.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{ProxyProcess, fresh_database};

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
            message(b'Q', format!("{sql}\0").as_bytes())
        }
        2 => message(b'P', b"s1\0SELECT $1::int\0\0\0"),
        3 => message(b'B', b"\0s1\0\0\0\0\x01\0\0\0\x0142\0\0"),
        4 => message(b'E', b"\0\0\0\0\0"),
        5 => message(b'S', b""),
        6 => message(b'D', b"Ss1\0"),
        _ => message(b'C', b"Ss1\0"),
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
