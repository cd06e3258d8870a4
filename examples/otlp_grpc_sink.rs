//! A stand-in OTLP/gRPC collector for benchmarks (`bench/tracing.sh` with `PROTOCOL=grpc`):
//! accepts `TraceService/Export`, counts the spans and discards them, and prints the count on
//! Ctrl-C or SIGTERM. Usage: `otlp_grpc_sink PORT`.

use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

/// Spans received so far.
static SPANS: AtomicU64 = AtomicU64::new(0);

struct Sink;

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        SPANS.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("usage: otlp_grpc_sink PORT");
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(Sink))
        .serve_with_shutdown(([127, 0, 0, 1], port).into(), async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        })
        .await
        .unwrap();
    println!("spans received: {}", SPANS.load(Ordering::Relaxed));
}
