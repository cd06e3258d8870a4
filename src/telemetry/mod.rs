//! What the proxy tells the outside about the traffic it carries: a span per query over OTLP
//! and Prometheus metrics.

mod hosts;
pub mod metrics;
mod notifications;
mod otlp_encode;
mod otlp_env;
mod otlp_fields;
mod otlp_grpc;
mod otlp_http;
mod query_spans;
mod span_lane;
pub mod spans;
pub mod sql_text;
pub mod statements;
pub mod traceparent;

use std::sync::Arc;

pub use hosts::{HostFigures, HostMetrics};
pub use metrics::{Metrics, PoolGauges, PoolMetrics, PoolTotals};
pub use notifications::NotifyMetrics;
pub use query_spans::EncodedAttributes;
pub use spans::{FinishedQuery, QueryTracer, SessionFacts, TracingError};
pub use statements::LastStatement;

use crate::config::Config;

/// Metrics (always on) and the query tracer (on when an OTLP endpoint is configured).
#[derive(Debug)]
pub struct Telemetry {
    /// The Prometheus registry.
    pub metrics: Arc<Metrics>,
    /// Per-query spans, if enabled.
    pub tracer: Option<QueryTracer>,
}

impl Telemetry {
    /// Sets up telemetry for `config`. Must run inside the tokio runtime.
    ///
    /// # Errors
    /// [`TracingError`] when the OTLP exporter cannot be set up.
    pub fn start(config: &Config) -> Result<Self, TracingError> {
        let metrics = Arc::new(Metrics::new());
        if let Some(version) = config.schema_version {
            metrics.serve_schema_version(version);
        }
        let tracer = QueryTracer::start(&config.telemetry, Arc::clone(&metrics))?;
        Ok(Self { metrics, tracer })
    }
}
