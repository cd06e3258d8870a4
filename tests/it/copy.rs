//! COPY in both directions and large results, checked byte for byte and for bounded memory.

use std::fmt::Write as _;

use bytes::Bytes;
use futures::{SinkExt, StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};

use crate::support::{ProxyProcess, direct, fresh_database, start_proxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_100k_rows_in_and_out_unchanged() {
    let db = fresh_database().await;
    direct(&db)
        .await
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY, label text, score float8)")
        .await
        .unwrap();
    let proxy = start_proxy("transaction", 2).await;
    let client = proxy.connect(&db).await.unwrap();
    let mut sent = Sha256::new();
    let sink = client
        .copy_in::<_, Bytes>("COPY items FROM STDIN")
        .await
        .unwrap();
    futures::pin_mut!(sink);
    let mut chunk = String::new();
    for id in 0..100_000 {
        let _ = writeln!(chunk, "{id}\tlabel-{id}-\\\\tab\t{}", f64::from(id) / 7.0);
        if chunk.len() > 64 * 1024 {
            sent.update(chunk.as_bytes());
            sink.send(Bytes::from(std::mem::take(&mut chunk)))
                .await
                .unwrap();
        }
    }
    sent.update(chunk.as_bytes());
    sink.send(Bytes::from(chunk)).await.unwrap();
    let copied = sink.finish().await.unwrap();
    assert_eq!(copied, 100_000);
    let stream = client
        .copy_out("COPY (SELECT * FROM items ORDER BY id) TO STDOUT")
        .await
        .unwrap();
    let received = stream
        .try_fold(Sha256::new(), |mut hash, bytes| async move {
            hash.update(&bytes);
            Ok(hash)
        })
        .await
        .unwrap();
    assert_eq!(sent.finalize(), received.finalize());
    let count: i64 = client
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 100_000);
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn million_row_result_streams_in_bounded_memory() {
    let db = fresh_database().await;
    let mut proxy = ProxyProcess::spawn(&[]);
    let pid = proxy.child.id().unwrap();
    let client = proxy.connect(&db).await;
    let before = peak_rss_kib(pid);
    let rows = client
        .query_raw(
            "SELECT g, repeat('x', 100) FROM generate_series(1, 1000000) g",
            std::iter::empty::<i32>(),
        )
        .await
        .unwrap();
    futures::pin_mut!(rows);
    let mut count = 0_u64;
    let mut last = 0;
    while let Some(row) = rows.next().await {
        last = row.unwrap().get::<_, i32>(0);
        count += 1;
    }
    assert_eq!((count, last), (1_000_000, 1_000_000));
    let peak = peak_rss_kib(pid);
    // About 110 MB went through; the proxy may only ever hold a few read buffers of it.
    assert!(
        peak < before + 32 * 1024,
        "proxy peak RSS grew from {before} KiB to {peak} KiB"
    );
    proxy.child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_value_and_a_256_mib_copy_row_pass_through_in_bounded_memory() {
    const SIZE: usize = 256 * 1024 * 1024;
    let db = fresh_database().await;
    let mut proxy = ProxyProcess::spawn(&[]);
    let pid = proxy.child.id().unwrap();
    let client = proxy.connect(&db).await;
    let before = peak_rss_kib(pid);

    let row = client
        .query_one(&format!("SELECT repeat('x', {SIZE}), 42"), &[])
        .await
        .unwrap();
    let value: &str = row.get(0);
    assert_eq!(value.len(), SIZE);
    assert!(value.bytes().all(|b| b == b'x'));
    assert_eq!(row.get::<_, i32>(1), 42, "the row's next column is intact");

    let stream = client
        .copy_out(&format!("COPY (SELECT repeat('y', {SIZE})) TO STDOUT"))
        .await
        .unwrap();
    let copied = stream
        .try_fold(0_usize, |n, bytes| async move {
            assert!(bytes.iter().all(|b| *b == b'y' || *b == b'\n'));
            Ok(n + bytes.len())
        })
        .await
        .unwrap();
    assert_eq!(copied, SIZE + 1, "the row and its newline");
    // The session still works and is in sync afterwards.
    let after: i32 = client.query_one("SELECT 7", &[]).await.unwrap().get(0);
    assert_eq!(after, 7);

    let peak = peak_rss_kib(pid);
    eprintln!("256 MiB value and COPY row: proxy peak RSS {before} KiB -> {peak} KiB");
    assert!(
        peak < before + 16 * 1024,
        "512 MiB went through; proxy peak RSS grew from {before} KiB to {peak} KiB"
    );
    proxy.child.kill().await.unwrap();
}
