//! One OpenTelemetry CLIENT span per query, built after the query completed (so the sampling
//! decision can keep every error and every slow query) with its real start time, and exported
//! over OTLP by a batch processor that never makes the data path wait.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue, StringValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfig, BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider, SpanData,
    SpanExporter, SpanProcessor,
};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use super::metrics::Metrics;
use super::otlp_env::export_timeout;
use super::otlp_grpc::GrpcTraceExporter;
use super::otlp_http::HttpTraceExporter;
use super::statements::{StatementCache, StatementFacts};
use super::traceparent::{self, TraceParent};
use crate::config::{OtlpProtocol, RootSampling, SamplerSettings, TelemetrySettings};
use crate::tls::CollectorTls;

/// Spans queued or being exported before new ones are dropped, unless
/// `OTEL_BSP_MAX_QUEUE_SIZE` says otherwise. Four times the SDK's 2048: a proxy emits a span per
/// query, and a queue that absorbs a collector's hiccup of a fraction of a second at tens of
/// thousands of queries per second costs only a few MiB.
const DEFAULT_QUEUE: usize = 8192;

/// Why the exporter could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the OTLP exporter for {endpoint}: {message}")]
pub struct TracingError {
    endpoint: String,
    message: String,
}

/// What the data path knows about a completed query; borrowed, so an unsampled query costs no
/// allocation.
#[derive(Debug, Clone, Copy)]
pub struct FinishedQuery<'a> {
    /// The SQL as the client sent it (empty when unknown).
    pub sql: &'a [u8],
    /// The attributes every span of this session carries, from [`QueryTracer::session_attributes`].
    pub session: &'a [KeyValue],
    /// When the request reached the proxy.
    pub started: Instant,
    /// Time spent waiting for a server connection.
    pub wait: Duration,
    /// Time from forwarding to the server until its ReadyForQuery.
    pub server: Duration,
    /// The SQLSTATE of the first error, if the query failed.
    pub sqlstate: Option<&'a str>,
    /// Rows returned or affected, from the command tags.
    pub rows: u64,
}

/// Spans allowed in the export pipeline at once; counts what is dropped for want of room.
#[derive(Debug)]
struct ExportBudget {
    in_flight: AtomicUsize,
    limit: usize,
    metrics: Arc<Metrics>,
}

/// The batch processor behind a budget check: a full pipeline drops the span at once (and counts
/// it) instead of queueing without bound.
#[derive(Debug)]
struct BudgetedProcessor {
    inner: BatchSpanProcessor,
    budget: Arc<ExportBudget>,
}

impl SpanProcessor for BudgetedProcessor {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        let budget = &self.budget;
        if budget.in_flight.fetch_add(1, Ordering::AcqRel) >= budget.limit {
            budget.in_flight.fetch_sub(1, Ordering::AcqRel);
            budget.metrics.spans_dropped("queue_full", 1);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, reporting each batch's fate to the budget and the metrics.
#[derive(Debug)]
struct CountingExporter<E> {
    inner: E,
    budget: Arc<ExportBudget>,
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let count = batch.len();
        let result = self.inner.export(batch).await;
        self.budget.in_flight.fetch_sub(count, Ordering::AcqRel);
        let metrics = &self.budget.metrics;
        match &result {
            Ok(()) => metrics.spans_exported(count as u64),
            Err(e) => {
                metrics.spans_dropped("export_failed", count as u64);
                tracing::debug!(error = %e, spans = count, "OTLP export failed");
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// What the spans of one session on one upstream host share.
#[derive(Debug, Clone, Copy)]
pub struct SessionFacts<'a> {
    /// The database.
    pub database: &'a str,
    /// The user.
    pub user: &'a str,
    /// The client's `application_name`.
    pub application_name: &'a str,
    /// The migration version the sidecar serves, if set.
    pub schema_version: Option<i64>,
    /// `host:port` of the upstream host.
    pub server: &'a str,
    /// That host's role when the session's transaction started (`primary`, `replica`).
    pub role: &'static str,
}

/// Turns completed queries into spans.
#[derive(Debug)]
pub struct QueryTracer {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    sampler: SamplerSettings,
    slow: Duration,
    statements: StatementCache,
}

impl QueryTracer {
    /// Sets up the OTLP pipeline for `settings`, or `None` when no endpoint is configured.
    /// Must run inside the tokio runtime (the gRPC channel lives there).
    ///
    /// # Errors
    /// [`TracingError`] when the endpoint or protocol settings are unusable.
    pub fn start(
        settings: &TelemetrySettings,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Self>, TracingError> {
        let Some(endpoint) = settings.otlp_endpoint.clone() else {
            return Ok(None);
        };
        let failed = |message: String| TracingError {
            endpoint: endpoint.clone(),
            message,
        };
        let https = endpoint.starts_with("https://");
        // The HTTP client is built on rustls without a provider of its own: it takes the
        // process-wide one (ring, as everywhere in pgsidecar); one already installed is kept.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tls = settings.collector_tls.as_ref();
        let limit = queue_size();
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(limit)
            .build();
        let provider = match settings.otlp_protocol {
            OtlpProtocol::Grpc => {
                let mut channel = Endpoint::from_shared(endpoint.clone())
                    .map_err(|e| failed(e.to_string()))?
                    .timeout(export_timeout())
                    .connect_timeout(export_timeout());
                if https {
                    channel = channel
                        .tls_config(grpc_tls(tls))
                        .map_err(|e| failed(e.to_string()))?;
                }
                let exporter = GrpcTraceExporter::new(channel.connect_lazy());
                budgeted_provider(exporter, batch, limit, metrics)
            }
            OtlpProtocol::HttpProtobuf => {
                // A general endpoint gets the signal path; a traces endpoint already has it.
                let url = if endpoint.ends_with("/v1/traces") {
                    endpoint.clone()
                } else {
                    format!("{}/v1/traces", endpoint.trim_end_matches('/'))
                };
                // The blocking HTTP client owns a runtime of its own: build it off this one.
                let client = std::thread::scope(|scope| {
                    scope
                        .spawn(|| match tls {
                            Some(tls) => http_client(tls),
                            None => reqwest::blocking::Client::builder()
                                .timeout(export_timeout())
                                .build()
                                .map_err(|e| e.to_string()),
                        })
                        .join()
                })
                .map_err(|_| failed("the HTTP client could not be built".into()))?
                .map_err(failed)?;
                budgeted_provider(HttpTraceExporter::new(client, url), batch, limit, metrics)
            }
        }
        .with_resource(resource(settings.service_name.as_deref()))
        .build();
        let tracer = provider.tracer("pgsidecar");
        Ok(Some(Self {
            provider,
            tracer,
            sampler: settings.sampler,
            slow: settings.slow_query_threshold,
            statements: StatementCache::default(),
        }))
    }

    /// The tracer, for the process's own `tracing` spans.
    #[must_use]
    pub fn tracer(&self) -> SdkTracer {
        self.tracer.clone()
    }

    /// The attributes shared by the spans of one session on one upstream host, built once:
    /// their strings are reference-counted, so copying them into each span allocates nothing.
    #[must_use]
    pub fn session_attributes(&self, session: &SessionFacts<'_>) -> Vec<KeyValue> {
        let shared = |s: &str| StringValue::from(Arc::<str>::from(s));
        let (host, port) = session
            .server
            .rsplit_once(':')
            .map_or((session.server, 5432), |(host, port)| {
                (host, port.parse().unwrap_or(5432))
            });
        let mut attributes = vec![
            KeyValue::new("db.system.name", "postgresql"),
            KeyValue::new("db.namespace", shared(session.database)),
            KeyValue::new("server.address", shared(host)),
            KeyValue::new("server.port", i64::from(port)),
            KeyValue::new("pgsidecar.server.role", session.role),
            KeyValue::new(
                "pgsidecar.pool",
                shared(&format!("{}/{}", session.database, session.user)),
            ),
            KeyValue::new(
                "pgsidecar.application_name",
                shared(session.application_name),
            ),
        ];
        let schema_version = session.schema_version;
        if let Some(version) = schema_version {
            attributes.push(KeyValue::new("pgsidecar.schema_version", version));
        }
        attributes
    }

    /// Records `query` as a span if the sampler keeps it.
    pub fn record(&self, query: &FinishedQuery<'_>) {
        let parent = traceparent::find(query.sql);
        if !self.keep(query, parent) {
            return;
        }
        // A statement carrying a traceparent is unique to one execution: not worth remembering.
        let facts = if parent.is_some() {
            Arc::new(StatementFacts::of(query.sql))
        } else {
            self.statements.facts(query.sql)
        };
        let mut attributes = Vec::with_capacity(query.session.len() + facts.attributes.len() + 5);
        attributes.extend_from_slice(query.session);
        attributes.extend([
            KeyValue::new(
                "db.response.status_code",
                query.sqlstate.map_or(StringValue::from("00000"), |code| {
                    StringValue::from(code.to_owned())
                }),
            ),
            KeyValue::new(
                "db.response.returned_rows",
                i64::try_from(query.rows).unwrap_or(i64::MAX),
            ),
            KeyValue::new("pgsidecar.pool.wait_seconds", query.wait.as_secs_f64()),
            KeyValue::new(
                "pgsidecar.server.duration_seconds",
                query.server.as_secs_f64(),
            ),
        ]);
        attributes.extend_from_slice(&facts.attributes);
        if let Some(code) = query.sqlstate {
            attributes.push(KeyValue::new("error.type", code.to_owned()));
        }
        let elapsed = query.wait + query.server;
        let start = SystemTime::now() - query.started.elapsed();
        let cx = parent.map_or_else(Context::new, |p| {
            Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from(p.trace_id),
                SpanId::from(p.span_id),
                if p.sampled {
                    TraceFlags::SAMPLED
                } else {
                    TraceFlags::default()
                },
                true,
                TraceState::default(),
            ))
        });
        let mut span = self
            .tracer
            .span_builder(facts.name.to_string())
            .with_kind(SpanKind::Client)
            .with_start_time(start)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &cx);
        if let Some(code) = query.sqlstate {
            span.set_status(Status::error(format!("SQLSTATE {code}")));
        }
        span.end_with_timestamp(start + elapsed);
    }

    fn keep(&self, query: &FinishedQuery<'_>, parent: Option<TraceParent>) -> bool {
        if self.sampler.root == RootSampling::Never {
            return false;
        }
        if query.sqlstate.is_some() || query.wait + query.server >= self.slow {
            return true;
        }
        if let (true, Some(parent)) = (self.sampler.parent_based, parent) {
            return parent.sampled;
        }
        match self.sampler.root {
            RootSampling::Always => true,
            RootSampling::Never => false,
            RootSampling::Ratio(ratio) => rand::random::<f64>() < ratio,
        }
    }

    /// Exports what is queued now. Blocks: call it from a blocking context.
    pub fn flush(&self) {
        let _ = self.provider.force_flush();
    }

    /// Exports what is queued and stops the exporter. Blocks: call it from a blocking context.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "OTLP exporter did not shut down cleanly");
        }
    }
}

/// The gRPC channel's TLS: the system's roots plus the configured CA, and the client identity.
fn grpc_tls(tls: Option<&CollectorTls>) -> ClientTlsConfig {
    let mut config = ClientTlsConfig::new().with_native_roots();
    if let Some(ca) = tls.and_then(CollectorTls::ca_pem) {
        config = config.ca_certificate(Certificate::from_pem(ca));
    }
    if let Some((cert, key)) = tls.and_then(CollectorTls::identity_pem) {
        config = config.identity(Identity::from_pem(cert, key));
    }
    config
}

/// The HTTP client for a collector with its own CA (then trusted alone) or a client identity.
fn http_client(tls: &CollectorTls) -> Result<reqwest::blocking::Client, String> {
    let built = |e: reqwest::Error| e.to_string();
    let mut builder = reqwest::blocking::Client::builder().timeout(export_timeout());
    if let Some(config) = tls.http_config() {
        builder = builder.tls_backend_preconfigured(config);
    } else if let Some((cert, key)) = tls.identity_pem() {
        builder =
            builder.identity(reqwest::Identity::from_pem(&[cert, key].concat()).map_err(built)?);
    }
    builder.build().map_err(built)
}

/// A provider whose spans go through a batch processor within a budget of `limit` spans in
/// flight, exported by `exporter`.
fn budgeted_provider<E: SpanExporter + 'static>(
    exporter: E,
    batch: BatchConfig,
    limit: usize,
    metrics: Arc<Metrics>,
) -> opentelemetry_sdk::trace::TracerProviderBuilder {
    let budget = Arc::new(ExportBudget {
        in_flight: AtomicUsize::new(0),
        limit,
        metrics,
    });
    let processor = BudgetedProcessor {
        inner: BatchSpanProcessor::builder(CountingExporter {
            inner: exporter,
            budget: Arc::clone(&budget),
        })
        .with_batch_config(batch)
        .build(),
        budget,
    };
    SdkTracerProvider::builder().with_span_processor(processor)
}

/// `OTEL_BSP_MAX_QUEUE_SIZE`, which the batch processor also reads.
fn queue_size() -> usize {
    std::env::var("OTEL_BSP_MAX_QUEUE_SIZE")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or(DEFAULT_QUEUE)
}

/// The resource from `OTEL_RESOURCE_ATTRIBUTES` / `OTEL_SERVICE_NAME`, with `service.name`
/// defaulting to `pgsidecar` rather than `unknown_service`.
fn resource(service_name: Option<&str>) -> Resource {
    let detected = Resource::builder().build();
    let unnamed = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_none_or(|v| v.as_str().starts_with("unknown_service"));
    let builder = Resource::builder()
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    match (service_name, unnamed) {
        (Some(name), _) => builder.with_service_name(name.to_owned()),
        (None, true) => builder.with_service_name("pgsidecar"),
        (None, false) => builder,
    }
    .build()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Keeps what it is sent.
    #[derive(Debug, Default, Clone)]
    struct Keeper(Arc<Mutex<Vec<String>>>);

    impl SpanExporter for Keeper {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            let names = batch.iter().map(|s| s.name.to_string());
            self.0.lock().unwrap().extend(names);
            Ok(())
        }
    }

    #[test]
    fn a_full_pipeline_drops_and_counts_instead_of_queueing() {
        let metrics = Arc::new(Metrics::new());
        let keeper = Keeper::default();
        // No scheduled export during the test: spans stay in flight until the flush.
        let batch = BatchConfigBuilder::default()
            .with_scheduled_delay(Duration::from_secs(600))
            .build();
        let provider = budgeted_provider(keeper.clone(), batch, 2, Arc::clone(&metrics)).build();
        let tracer = provider.tracer("test");
        for i in 0..5 {
            tracer.start(format!("q{i}")).end();
        }
        assert_eq!(metrics.spans_dropped_count("queue_full"), 3);
        provider.force_flush().unwrap();
        assert_eq!(*keeper.0.lock().unwrap(), ["q0", "q1"]);
        // Room again once exported.
        tracer.start("q5").end();
        provider.force_flush().unwrap();
        assert_eq!(keeper.0.lock().unwrap().len(), 3);
        assert_eq!(metrics.spans_dropped_count("queue_full"), 3);
        assert!(
            metrics
                .encode()
                .contains("pgsidecar_spans_exported_total 3")
        );
        provider.shutdown().unwrap();
    }
}
