//! Query spans reach a real OTLP receiver with the database semantic conventions, join the
//! caller's trace, are sampled as configured; `/metrics` counts what ran.

use std::sync::Arc;

use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use pgsidecar::context::ProxyContext;

use crate::support::otlp::{Collector, attribute};
use crate::support::{
    TestProxy, cluster, connect, fresh_database, http_get, overrides, start_proxy_with,
};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

async fn traced_proxy(collector: &Collector, sampler: &str, arg: &str) -> TestProxy {
    let mut o = overrides("transaction", 2);
    o.otlp_endpoint = Some(collector.endpoint.clone());
    o.traces_sampler = Some(sampler.into());
    o.traces_sampler_arg = Some(arg.into());
    o.slow_query_threshold = Some("200ms".into());
    o.schema_version = Some("3".into());
    start_proxy_with(&o, None).await
}

/// Exports everything queued; the exporter's calls block, so off the async threads.
async fn flush(ctx: &Arc<ProxyContext>) {
    let ctx = Arc::clone(ctx);
    tokio::task::spawn_blocking(move || ctx.telemetry.tracer.as_ref().unwrap().flush())
        .await
        .unwrap();
}

fn named<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, b| {
        use std::fmt::Write as _;
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// The span of the query that carried a traceparent: every attribute the conventions ask for.
fn check_child_span(child: &Span, db: &str) {
    let port = cluster().port().to_string();
    for (key, value) in [
        ("db.system.name", "postgresql"),
        ("db.namespace", db),
        ("db.operation.name", "SELECT"),
        ("db.collection.name", "documents"),
        ("db.query.summary", "SELECT documents"),
        ("db.query.text", "SELECT id FROM documents WHERE title = ?"),
        ("db.response.status_code", "00000"),
        ("db.response.returned_rows", "1"),
        ("server.address", "127.0.0.1"),
        ("server.port", port.as_str()),
        ("pgsidecar.server.role", "primary"),
        ("pgsidecar.pool", &format!("{db}/postgres")),
        ("pgsidecar.application_name", "span-test"),
        ("pgsidecar.schema_version", "3"),
    ] {
        assert_eq!(attribute(child, key).as_deref(), Some(value), "{key}");
    }
    let wait: f64 = attribute(child, "pgsidecar.pool.wait_seconds")
        .unwrap()
        .parse()
        .unwrap();
    let server: f64 = attribute(child, "pgsidecar.server.duration_seconds")
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait >= 0.0 && server > 0.0);
    assert!(child.end_time_unix_nano > child.start_time_unix_nano);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_follow_the_database_conventions_and_join_the_callers_trace() {
    let collector = Collector::grpc().await;
    let db = fresh_database().await;
    let proxy = traced_proxy(&collector, "parentbased_always_on", "1").await;
    let client = connect(&format!("{}?application_name=span-test", proxy.url(&db)))
        .await
        .unwrap();
    client
        .batch_execute("CREATE TABLE documents (id int, title text)")
        .await
        .unwrap();
    client
        .batch_execute("INSERT INTO documents VALUES (1, 'top-secret-title'), (2, 'other')")
        .await
        .unwrap();
    let traced = format!(
        "SELECT id FROM documents WHERE title = 'top-secret-title' /*traceparent='00-{TRACE}-{PARENT}-01'*/"
    );
    client.simple_query(&traced).await.unwrap();
    let rows = client
        .query("SELECT id FROM documents WHERE id > $1", &[&0i32])
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    let error = client
        .simple_query("SELECT * FROM missing_table")
        .await
        .unwrap_err();
    assert_eq!(error.code().unwrap().code(), "42P01");
    flush(&proxy.ctx).await;
    let spans = collector
        .received
        .wait_for("five query spans", |s| s.len() >= 5)
        .await;

    let selects = named(&spans, "SELECT documents");
    assert_eq!(selects.len(), 2, "{spans:#?}");
    let child = selects
        .iter()
        .find(|s| !s.parent_span_id.is_empty())
        .expect("the traceparent query has a parent");
    assert_eq!(hex(&child.trace_id), TRACE);
    assert_eq!(hex(&child.parent_span_id), PARENT);
    assert_eq!(child.kind, SpanKind::Client as i32);
    check_child_span(child, &db);

    let extended = selects
        .iter()
        .find(|s| s.parent_span_id.is_empty())
        .unwrap();
    assert_ne!(
        hex(&extended.trace_id),
        TRACE,
        "a query without traceparent is a root"
    );
    assert_eq!(
        attribute(extended, "db.query.text").as_deref(),
        Some("SELECT id FROM documents WHERE id > $1")
    );
    assert_eq!(
        attribute(extended, "db.response.returned_rows").as_deref(),
        Some("2")
    );

    let failed = named(&spans, "SELECT missing_table");
    assert_eq!(failed.len(), 1);
    let failed = failed[0];
    assert_eq!(
        failed.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );
    assert_eq!(attribute(failed, "error.type").as_deref(), Some("42P01"));
    assert_eq!(
        attribute(failed, "db.response.status_code").as_deref(),
        Some("42P01")
    );
    assert_eq!(named(&spans, "INSERT documents").len(), 1);

    let everything = format!("{spans:?}");
    assert!(
        !everything.contains("top-secret-title"),
        "a literal reached the collector"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_keeps_errors_slow_queries_and_sampled_parents() {
    let collector = Collector::grpc().await;
    let db = fresh_database().await;
    let proxy = traced_proxy(&collector, "parentbased_traceidratio", "0").await;
    let client = proxy.connect(&db).await.unwrap();
    for _ in 0..20 {
        client.simple_query("SELECT 1").await.unwrap();
    }
    let unsampled_parent = format!("SELECT 2 /*traceparent='00-{TRACE}-{PARENT}-00'*/");
    client.simple_query(&unsampled_parent).await.unwrap();
    let sampled_parent = format!("SELECT 3 /*traceparent='00-{TRACE}-{PARENT}-01'*/");
    client.simple_query(&sampled_parent).await.unwrap();
    let error = client.simple_query("SELECT 1/0").await.unwrap_err();
    assert_eq!(error.code().unwrap().code(), "22012");
    client.simple_query("SELECT pg_sleep(0.3)").await.unwrap();
    flush(&proxy.ctx).await;
    let spans = collector
        .received
        .wait_for("three kept spans", |s| s.len() >= 3)
        .await;
    let texts: Vec<String> = spans
        .iter()
        .filter_map(|s| attribute(s, "db.query.text"))
        .collect();
    assert_eq!(spans.len(), 3, "{texts:?}");
    for kept in ["SELECT ?", "SELECT ?/?", "SELECT pg_sleep(?)"] {
        assert!(texts.iter().any(|t| t == kept), "{kept} missing: {texts:?}");
    }
    let sampled = spans
        .iter()
        .find(|s| attribute(s, "db.query.text").as_deref() == Some("SELECT ?"))
        .unwrap();
    assert_eq!(hex(&sampled.parent_span_id), PARENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_export_over_http_protobuf() {
    let collector = Collector::http().await;
    let db = fresh_database().await;
    let mut o = overrides("transaction", 2);
    o.otlp_endpoint = Some(collector.endpoint.clone());
    o.otlp_protocol = Some("http/protobuf".into());
    let proxy = start_proxy_with(&o, None).await;
    let client = proxy.connect(&db).await.unwrap();
    client
        .simple_query("SELECT count(*) FROM pg_class")
        .await
        .unwrap();
    flush(&proxy.ctx).await;
    let spans = collector
        .received
        .wait_for("the span over HTTP", |s| !s.is_empty())
        .await;
    assert_eq!(spans[0].name, "SELECT pg_class");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_costs_spans_not_queries() {
    let db = fresh_database().await;
    let mut o = overrides("transaction", 2);
    // Nothing listens on port 1: every export fails.
    o.otlp_endpoint = Some("http://127.0.0.1:1".into());
    let proxy = start_proxy_with(&o, None).await;
    let client = proxy.connect(&db).await.unwrap();
    for i in 0..3 {
        let row = client.query_one("SELECT $1::int", &[&i]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), i);
    }
    flush(&proxy.ctx).await;
    let metrics = &proxy.ctx.telemetry.metrics;
    assert_eq!(metrics.spans_dropped_count("export_failed"), 3);
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    let response = http_get(addr, "/metrics").await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(response.head.contains("application/openmetrics-text"));
    response.body
}

/// The value of the sample `name{labels...}`, the labels given as `key="value"` pieces; every
/// series checked here counts whole things.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<u64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name && labels.iter().all(|l| rest.contains(l)))
                .then(|| value.parse().ok())?
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_ran() {
    let db = fresh_database().await;
    let proxy = start_proxy_with(&overrides("transaction", 2), None).await;
    let admin = proxy.admin().await;
    let addr = admin.addr;
    let client = proxy.connect(&db).await.unwrap();
    for _ in 0..5 {
        client.simple_query("SELECT 1").await.unwrap();
    }
    for i in 0..3 {
        client.query_one("SELECT $1::int", &[&i]).await.unwrap();
    }
    client
        .simple_query("SELECT * FROM nowhere")
        .await
        .unwrap_err();
    client.simple_query("SELECT 1/0").await.unwrap_err();
    client
        .simple_query("BEGIN; SELECT 1; COMMIT")
        .await
        .unwrap();

    let database = format!("database=\"{db}\"");
    let pool = [database.as_str(), "user=\"postgres\""];
    let mut text = String::new();
    // The last ReadyForQuery reaches the client a moment before the proxy counts it.
    for _ in 0..100 {
        text = scrape(addr).await;
        if sample(&text, "pgsidecar_queries_total", &pool) == Some(11) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(text.trim_end().ends_with("# EOF"));
    let value = |name: &str, extra: &[&str]| {
        let labels: Vec<&str> = pool.iter().chain(extra).copied().collect();
        sample(&text, name, &labels).unwrap_or_else(|| panic!("{name} {extra:?} missing:\n{text}"))
    };
    assert_eq!(value("pgsidecar_queries_total", &[]), 11);
    assert_eq!(value("pgsidecar_query_duration_seconds_count", &[]), 11);
    assert_eq!(value("pgsidecar_transactions_total", &[]), 11);
    assert_eq!(
        value("pgsidecar_query_errors_total", &["sqlstate_class=\"42\""]),
        1
    );
    assert_eq!(
        value("pgsidecar_query_errors_total", &["sqlstate_class=\"22\""]),
        1
    );
    assert!(value("pgsidecar_client_received_bytes_total", &[]) > 100);
    assert!(value("pgsidecar_client_sent_bytes_total", &[]) > 100);
    assert!(value("pgsidecar_pool_acquire_wait_seconds_count", &[]) >= 11);
    let cache = value("pgsidecar_prepared_statements_cache_hits_total", &[])
        + value("pgsidecar_prepared_statements_cache_misses_total", &[]);
    assert!(cache >= 3, "{cache}");
    assert_eq!(
        value("pgsidecar_client_connections", &["state=\"idle\""]),
        1
    );
    assert_eq!(
        value("pgsidecar_client_connections", &["state=\"active\""]),
        0
    );
    assert_eq!(
        value("pgsidecar_server_connections", &["state=\"idle\""]),
        1
    );
    assert_eq!(value("pgsidecar_pool_size", &[]), 2);
    assert_eq!(value("pgsidecar_pinned_clients_total", &[]), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_a_tls_collector_trusted_through_the_configured_ca() {
    let db = fresh_database().await;
    let ca = cluster().pki().ca.to_str().unwrap().to_owned();
    for protocol in ["grpc", "http/protobuf"] {
        let plain = if protocol == "grpc" {
            Collector::grpc().await
        } else {
            Collector::http().await
        };
        let collector = Collector::behind_tls(plain).await;
        let mut o = overrides("transaction", 2);
        o.otlp_endpoint = Some(collector.endpoint.clone());
        o.otlp_protocol = Some(protocol.into());
        o.otlp_certificate = Some(ca.clone());
        let proxy = start_proxy_with(&o, None).await;
        let client = proxy.connect(&db).await.unwrap();
        client.simple_query("SELECT 1").await.unwrap();
        flush(&proxy.ctx).await;
        collector
            .received
            .wait_for(&format!("the span over TLS ({protocol})"), |s| {
                !s.is_empty()
            })
            .await;

        // Without the CA the collector's certificate is not trusted: spans are dropped and
        // counted, queries go on.
        o.otlp_certificate = None;
        let untrusting = start_proxy_with(&o, None).await;
        let client = untrusting.connect(&db).await.unwrap();
        client.simple_query("SELECT 2").await.unwrap();
        flush(&untrusting.ctx).await;
        // The exporter may still be retrying when the flush gives up waiting for it.
        let metrics = &untrusting.ctx.telemetry.metrics;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while metrics.spans_dropped_count("export_failed") == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{protocol}: the refused export was never counted"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(
            metrics.spans_dropped_count("export_failed"),
            1,
            "{protocol}"
        );
        assert!(
            collector.received.spans().len() == 1,
            "{protocol}: nothing reached the untrusted collector"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_gets_the_headers_of_the_otel_environment() {
    let db = fresh_database().await;
    let collector = Collector::behind_tls(Collector::http().await).await;
    let ca = cluster().pki().ca.to_str().unwrap().to_owned();
    let proxy = crate::support::ProxyProcess::spawn_with_env(
        &[
            "--otlp-endpoint",
            &collector.endpoint,
            "--traces-sampler",
            "always_on",
        ],
        &[
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "x-collector-token=s3cret%20value",
            ),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let client = proxy.connect(&db).await;
    client.simple_query("SELECT 3").await.unwrap();
    collector
        .received
        .wait_for("the span with its headers", |s| !s.is_empty())
        .await;
    assert!(
        collector
            .received
            .tokens()
            .iter()
            .all(|t| t == "s3cret value"),
        "{:?}",
        collector.received.tokens()
    );
    assert!(!collector.received.tokens().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_travel_gzipped_when_the_otel_environment_asks() {
    let db = fresh_database().await;
    for protocol in ["grpc", "http/protobuf"] {
        let collector = if protocol == "grpc" {
            Collector::grpc().await
        } else {
            Collector::http().await
        };
        let proxy = crate::support::ProxyProcess::spawn_with_env(
            &[
                "--otlp-endpoint",
                &collector.endpoint,
                "--traces-sampler",
                "always_on",
            ],
            &[
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", protocol),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
                ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ],
        );
        let client = proxy.connect(&db).await;
        client
            .simple_query("SELECT count(*) FROM pg_class WHERE relname = 'x'")
            .await
            .unwrap();
        let spans = collector
            .received
            .wait_for(&format!("the gzipped span ({protocol})"), |s| !s.is_empty())
            .await;
        assert_eq!(spans[0].name, "SELECT pg_class", "{protocol}");
        let encodings = collector.received.encodings();
        assert!(
            !encodings.is_empty() && encodings.iter().all(|e| e == "gzip"),
            "{protocol}: {encodings:?}"
        );
    }
}
