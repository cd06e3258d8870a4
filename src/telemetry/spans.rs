//! One OpenTelemetry CLIENT span per query, built after the query completed (so the sampling
//! decision can keep every error and every slow query) with its real start time, and exported
//! over OTLP by an export thread that never makes the data path wait. The process's own
//! `tracing` spans, a few per minute, go through the SDK's batch processor to the same
//! collector; the queries' spans take their own lane ([`super::span_lane`]), which skips the
//! SDK's span objects altogether.

use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{
    BatchConfig, BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider, SpanData,
    SpanExporter, SpanProcessor,
};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use super::metrics::Metrics;
use super::otlp_encode::TraceRequests;
use super::otlp_env::{batch_settings, export_timeout, queue_size};
use super::otlp_grpc::GrpcCollector;
use super::otlp_http::HttpCollector;
use super::query_spans::{EncodedAttributes, QueryRequests, QuerySpan};
use super::span_lane::{Collector, ExportBudget, SpanLane};
use super::statements::{LastStatement, StatementCache, StatementFacts};
use super::traceparent::{self, TraceParent};
use crate::config::{OtlpProtocol, RootSampling, SamplerSettings, TelemetrySettings};
use crate::tls::CollectorTls;

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
    pub session: &'a EncodedAttributes,
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

/// The SDK's batch processor behind the budget both lanes share: a full pipeline drops the span
/// at once (and counts it) instead of queueing without bound.
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
        if self.budget.admit() {
            self.inner.on_end(span);
        }
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

/// The SDK's spans encoded and sent to the collector, each batch's fate reported to the budget.
#[derive(Debug)]
struct SdkSpanExporter {
    collector: Arc<dyn Collector>,
    requests: TraceRequests,
    budget: Arc<ExportBudget>,
}

impl SpanExporter for SdkSpanExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let body = self.requests.body(&batch);
        let result = self.collector.send(body);
        self.budget.settle(batch.len(), result.as_ref().map(drop));
        result.map_err(|e| OTelSdkError::InternalFailure(e.to_string()))
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.requests.set_resource(resource);
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
    /// The process's own spans.
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    /// The queries' spans.
    lane: SpanLane,
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
        let collector = collector(settings, &endpoint).map_err(failed)?;
        let limit = queue_size();
        let budget = Arc::new(ExportBudget::new(limit, metrics));
        let resource = resource(settings.service_name.as_deref());
        let lane = SpanLane::start(
            Arc::clone(&collector),
            QueryRequests::new(resource.clone()),
            batch_settings(limit),
            Arc::clone(&budget),
        )
        .map_err(|e| failed(format!("cannot start the export thread: {e}")))?;
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(limit)
            .build();
        let provider = sdk_provider(collector, batch, budget)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("pgsidecar");
        Ok(Some(Self {
            provider,
            tracer,
            lane,
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

    /// The attributes shared by the spans of one session on one upstream host, encoded once.
    #[must_use]
    pub fn session_attributes(&self, session: &SessionFacts<'_>) -> EncodedAttributes {
        let (host, port) = session
            .server
            .rsplit_once(':')
            .map_or((session.server, 5432), |(host, port)| {
                (host, port.parse().unwrap_or(5432))
            });
        let mut attributes = vec![
            KeyValue::new("db.system.name", "postgresql"),
            KeyValue::new("db.namespace", session.database.to_owned()),
            KeyValue::new("server.address", host.to_owned()),
            KeyValue::new("server.port", i64::from(port)),
            KeyValue::new("pgsidecar.server.role", session.role),
            KeyValue::new(
                "pgsidecar.pool",
                format!("{}/{}", session.database, session.user),
            ),
            KeyValue::new(
                "pgsidecar.application_name",
                session.application_name.to_owned(),
            ),
        ];
        if let Some(version) = session.schema_version {
            attributes.push(KeyValue::new("pgsidecar.schema_version", version));
        }
        EncodedAttributes::new(&attributes)
    }

    /// Records `query` as a span if the sampler keeps it; `last` is the session's last
    /// literal-laden statement, which spares the lexer when the text has its layout.
    pub fn record(&self, query: &FinishedQuery<'_>, last: &mut LastStatement) {
        let parent = traceparent::find(query.sql);
        if !self.keep(query, parent) {
            return;
        }
        // A statement carrying a traceparent is unique to one execution: not worth remembering.
        let statement = if parent.is_some() {
            Arc::new(StatementFacts::of(query.sql))
        } else {
            self.statements.facts(query.sql, last)
        };
        self.lane.push(QuerySpan {
            trace_id: parent.map_or_else(new_trace_id, |p| p.trace_id),
            span_id: new_span_id(),
            parent_span_id: parent.map(|p| p.span_id),
            started: query.started,
            elapsed: query.wait + query.server,
            session: query.session.clone(),
            statement,
            sqlstate: query.sqlstate.map(Box::from),
            rows: i64::try_from(query.rows).unwrap_or(i64::MAX),
            wait: query.wait,
            server: query.server,
        });
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
        self.lane.flush();
        let _ = self.provider.force_flush();
    }

    /// Exports what is queued and stops the exporters. Blocks: call it from a blocking context.
    pub fn shutdown(&self) {
        self.lane.shutdown();
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "OTLP exporter did not shut down cleanly");
        }
    }
}

/// A random trace id, never the invalid all-zero one.
fn new_trace_id() -> u128 {
    loop {
        let id = rand::random::<u128>();
        if id != 0 {
            return id;
        }
    }
}

/// A random span id, never the invalid all-zero one.
fn new_span_id() -> u64 {
    loop {
        let id = rand::random::<u64>();
        if id != 0 {
            return id;
        }
    }
}

/// The collector `endpoint` over the configured protocol.
fn collector(settings: &TelemetrySettings, endpoint: &str) -> Result<Arc<dyn Collector>, String> {
    let https = endpoint.starts_with("https://");
    // The HTTP client is built on rustls without a provider of its own: it takes the
    // process-wide one (ring, as everywhere in pgsidecar); one already installed is kept.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = settings.collector_tls.as_ref();
    match settings.otlp_protocol {
        OtlpProtocol::Grpc => {
            let mut channel = Endpoint::from_shared(endpoint.to_owned())
                .map_err(|e| e.to_string())?
                .timeout(export_timeout())
                .connect_timeout(export_timeout());
            if https {
                channel = channel
                    .tls_config(grpc_tls(tls))
                    .map_err(|e| e.to_string())?;
            }
            Ok(Arc::new(GrpcCollector::new(channel.connect_lazy())))
        }
        OtlpProtocol::HttpProtobuf => {
            // A general endpoint gets the signal path; a traces endpoint already has it.
            let url = if endpoint.ends_with("/v1/traces") {
                endpoint.to_owned()
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
            .map_err(|_| "the HTTP client could not be built".to_owned())??;
            Ok(Arc::new(HttpCollector::new(client, url)))
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

/// A provider whose spans go through the SDK's batch processor within `budget`, sent to
/// `collector`.
fn sdk_provider(
    collector: Arc<dyn Collector>,
    batch: BatchConfig,
    budget: Arc<ExportBudget>,
) -> opentelemetry_sdk::trace::TracerProviderBuilder {
    let exporter = SdkSpanExporter {
        collector,
        requests: TraceRequests::default(),
        budget: Arc::clone(&budget),
    };
    let processor = BudgetedProcessor {
        inner: BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch)
            .build(),
        budget,
    };
    SdkTracerProvider::builder().with_span_processor(processor)
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

    use opentelemetry::trace::{Span as _, Tracer as _};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message as _;

    use super::super::span_lane::BatchSettings;
    use super::*;

    /// Keeps the names of the spans it is sent.
    #[derive(Debug, Default)]
    struct Keeper(Mutex<Vec<String>>);

    impl Collector for Keeper {
        fn send(&self, body: Vec<u8>) -> Result<(), super::super::span_lane::ExportError> {
            let request = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
            let mut names = self.0.lock().unwrap();
            for scope in &request.resource_spans[0].scope_spans {
                names.extend(scope.spans.iter().map(|s| s.name.clone()));
            }
            Ok(())
        }
    }

    #[test]
    fn the_process_spans_and_the_query_spans_share_one_budget() {
        let metrics = Arc::new(Metrics::new());
        let keeper = Arc::new(Keeper::default());
        let collector: Arc<dyn Collector> = Arc::clone(&keeper) as Arc<dyn Collector>;
        let budget = Arc::new(ExportBudget::new(2, Arc::clone(&metrics)));
        // No scheduled export during the test: spans stay in flight until the flush.
        let delay = Duration::from_secs(600);
        let settings = BatchSettings {
            delay,
            max_batch: 100,
            flush_timeout: Duration::from_secs(30),
        };
        let resource = Resource::builder_empty().build();
        let requests = QueryRequests::new(resource);
        let lane = SpanLane::start(
            Arc::clone(&collector),
            requests,
            settings,
            Arc::clone(&budget),
        )
        .unwrap();
        let batch = BatchConfigBuilder::default()
            .with_scheduled_delay(delay)
            .build();
        let provider = sdk_provider(collector, batch, budget).build();
        let tracer = provider.tracer("test");
        lane.push(QuerySpan {
            trace_id: 1,
            span_id: 1,
            parent_span_id: None,
            started: Instant::now(),
            elapsed: Duration::ZERO,
            session: EncodedAttributes::default(),
            statement: Arc::new(StatementFacts::of(b"SELECT * FROM documents")),
            sqlstate: None,
            rows: 0,
            wait: Duration::ZERO,
            server: Duration::ZERO,
        });
        for name in ["migrate", "dropped"] {
            tracer.start(name).end();
        }
        assert_eq!(metrics.spans_dropped_count("queue_full"), 1);
        lane.flush();
        provider.force_flush().unwrap();
        let mut names = keeper.0.lock().unwrap().clone();
        names.sort();
        assert_eq!(names, ["SELECT documents", "migrate"]);
        assert!(
            metrics
                .encode()
                .contains("pgsidecar_spans_exported_total 2")
        );
        lane.shutdown();
        provider.shutdown().unwrap();
    }
}
