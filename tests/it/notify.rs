//! LISTEN/NOTIFY in transaction mode without pinning: 50 listeners on 10 channels through a
//! pool of 4 get every notification of their channels exactly once (a NOTIFY inside a
//! transaction only after its commit, with the sender's pid), psycopg through `notifies()`, and
//! a client that stops reading cannot hold up the others.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_postgres::{AsyncMessage, Client, NoTls};

use crate::support::{assert_python_ok, fresh_database, start_proxy, wait_until};

/// A notification as a listener saw it: channel, payload, sender pid.
pub type Seen = (String, String, i32);

/// Connects through `url` and collects the connection's notifications; the client, and what
/// it has seen so far.
pub async fn listener(url: &str) -> (Client, Arc<Mutex<Vec<Seen>>>) {
    let (client, mut connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let into = Arc::clone(&seen);
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                into.lock().await.push((
                    n.channel().to_owned(),
                    n.payload().to_owned(),
                    n.process_id(),
                ));
            }
        }
    });
    (client, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_listeners_on_ten_channels_through_a_pool_of_four_get_each_notification_once() {
    let db = fresh_database().await;
    let proxy = start_proxy("transaction", 4).await;
    let url = proxy.url(&db);
    let mut listeners = Vec::new();
    for i in 0..50 {
        let (client, seen) = listener(&url).await;
        client
            .batch_execute(&format!("LISTEN ch{}", i % 10))
            .await
            .unwrap();
        listeners.push((i % 10, client, seen));
    }
    // Not pinned: the pool of 4 still serves everyone, the listeners included.
    for (_, client, _) in &listeners {
        client.simple_query("SELECT 1").await.unwrap();
    }
    let exposition = proxy.ctx.telemetry.metrics.encode();
    let unpinned = format!(
        "pgsidecar_pinned_clients_total{{database=\"{db}\",user=\"postgres\",host=\"127.0.0.1:{}\"}} 0",
        crate::support::cluster().port()
    );
    assert!(
        exposition.contains(&unpinned),
        "no client was pinned: {exposition}"
    );

    let sender = proxy.connect(&db).await.unwrap();
    let other = proxy.connect(&db).await.unwrap();
    // Opened first, committed last: its NOTIFY is delivered after the one sent meanwhile.
    sender
        .batch_execute("BEGIN; NOTIFY ch3, 'inside'")
        .await
        .unwrap();
    other.batch_execute("NOTIFY ch3, 'outside'").await.unwrap();
    sender.batch_execute("COMMIT").await.unwrap();
    let mut expected: HashMap<i32, Vec<String>> = HashMap::new();
    expected.insert(3, vec!["outside".into(), "inside".into()]);
    for round in 0..5 {
        for channel in 0..10 {
            let payload = format!("{channel}-{round}");
            other
                .batch_execute(&format!("NOTIFY ch{channel}, '{payload}'"))
                .await
                .unwrap();
            expected.entry(channel).or_default().push(payload);
        }
    }
    let rows = other
        .simple_query("SELECT pg_backend_pid(), pg_notify('ch7', 'with pid')")
        .await
        .unwrap();
    let sender_pid: i32 = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0)?.parse().ok(),
            _ => None,
        })
        .unwrap();
    expected.entry(7).or_default().push("with pid".into());

    for (channel, _, seen) in &listeners {
        let wanted = expected[channel].len();
        wait_until(
            "every listener has its channel's notifications",
            async || seen.lock().await.len() >= wanted,
        )
        .await;
    }
    for (channel, _, seen) in &listeners {
        let seen = seen.lock().await.clone();
        let payloads: Vec<String> = seen.iter().map(|(_, p, _)| p.clone()).collect();
        assert_eq!(
            payloads, expected[channel],
            "listener of ch{channel}: each notification once, in commit order, none of another channel"
        );
        assert!(seen.iter().all(|(c, _, _)| *c == format!("ch{channel}")));
        if *channel == 7 {
            assert_eq!(
                seen.last().unwrap().2,
                sender_pid,
                "the sender's server pid"
            );
        }
    }

    // Leaving ends the subscriptions: the listening connection stops listening.
    drop(listeners);
    let metrics = Arc::clone(&proxy.ctx.telemetry.metrics);
    let gauge = format!("pgsidecar_listen_channels{{database=\"{db}\"}} 0");
    wait_until("no channel is listened on once everyone left", async || {
        metrics.encode().contains(&gauge)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_receives_notifications_through_notifies_at_pool_size_one() {
    let db = fresh_database().await;
    let proxy = start_proxy("transaction", 1).await;
    let dsn = format!(
        "host=127.0.0.1 port={} user=postgres dbname={db}",
        proxy.port
    );
    assert_python_ok("psycopg_notifies.py", &dsn, &["20"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_without_holding_up_the_others() {
    let db = fresh_database().await;
    let proxy = start_proxy("transaction", 2).await;
    let url = proxy.url(&db);
    let (fast, fast_seen) = listener(&url).await;
    fast.batch_execute("LISTEN burst").await.unwrap();

    // The slow client listens, then its connection is no longer read.
    let (slow, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let (resume, resumed) = oneshot::channel::<()>();
    let (ended, mut slow_end) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut connection = connection;
        let mut messages = futures_util::stream::poll_fn(|cx| connection.poll_message(cx));
        let mut stopped = stopped;
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                message = messages.next() => if message.is_none() { return },
            }
        }
        let _ = resumed.await;
        let mut count = 0;
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(_)) => count += 1,
                Ok(_) => {}
                Err(e) => {
                    let _ = ended.send((count, e.code().map(|c| c.code().to_owned())));
                    return;
                }
            }
        }
        let _ = ended.send((count, None));
    });
    slow.batch_execute("LISTEN burst").await.unwrap();
    stop.send(()).unwrap();

    let sender = proxy.connect(&db).await.unwrap();
    for batch in 1..=3 {
        sender
            .batch_execute(
                // Distinct payloads: PostgreSQL folds identical ones of one transaction.
                "SELECT pg_notify('burst', g || repeat('x', 7000)) FROM generate_series(1, 1000) AS g",
            )
            .await
            .unwrap();
        wait_until("the reading client has every notification", async || {
            fast_seen.lock().await.len() >= batch * 1000
        })
        .await;
    }
    assert_eq!(fast_seen.lock().await.len(), 3000, "none twice");
    let metrics = Arc::clone(&proxy.ctx.telemetry.metrics);
    wait_until("the slow client's overflow is counted", async || {
        metrics
            .encode()
            .contains("pgsidecar_notifications_dropped_total{reason=\"queue_full\"}")
    })
    .await;

    resume.send(()).unwrap();
    let (received, code) = slow_end.recv().await.unwrap();
    assert_eq!(
        code.as_deref(),
        Some("54000"),
        "told why it is closed, after {received} notifications"
    );
    assert!(received >= 1024, "it got what its mailbox held: {received}");
    // The others carry on.
    fast.simple_query("SELECT 1").await.unwrap();
}
