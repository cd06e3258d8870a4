//! The OTLP/gRPC span exporter: each batch encoded by [`TraceEncoder`] straight into the
//! request, sent as the collector's `TraceService/Export` call over a tonic channel. Headers,
//! compression and the timeout follow the OpenTelemetry environment ([`super::otlp_env`]).

use bytes::{Buf as _, BufMut as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use tonic::client::Grpc;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;

use super::otlp_encode::TraceRequests;
use super::otlp_env::{gzip_requested, headers_from_env};

/// The collector's trace service method.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Sends batches of spans to a collector's gRPC trace service.
#[derive(Debug)]
pub struct GrpcTraceExporter {
    channel: Channel,
    metadata: MetadataMap,
    gzip: bool,
    requests: TraceRequests,
}

impl GrpcTraceExporter {
    /// An exporter over `channel`, with the headers and compression the environment asks for.
    #[must_use]
    pub fn new(channel: Channel) -> Self {
        Self {
            channel,
            metadata: MetadataMap::from_headers(headers_from_env()),
            gzip: gzip_requested(),
            requests: TraceRequests::default(),
        }
    }
}

impl SpanExporter for GrpcTraceExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let message = self.requests.body(&batch);
        drop(batch);
        let mut grpc = Grpc::new(self.channel.clone());
        if self.gzip {
            grpc = grpc.send_compressed(CompressionEncoding::Gzip);
        }
        let failed = |e: &dyn std::fmt::Display| {
            OTelSdkError::InternalFailure(format!("OTLP export failed: {e}"))
        };
        grpc.ready().await.map_err(|e| failed(&e))?;
        let mut request = tonic::Request::new(message);
        *request.metadata_mut() = self.metadata.clone();
        grpc.unary(
            request,
            PathAndQuery::from_static(EXPORT_PATH),
            EncodedCodec,
        )
        .await
        .map(drop)
        .map_err(|e| failed(&e))
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.requests.set_resource(resource);
    }
}

/// Sends an already encoded message and ignores the answer's content (the service answers an
/// `ExportTraceServiceResponse` whose partial-success counts pgsidecar does not act on).
#[derive(Debug, Clone, Copy)]
struct EncodedCodec;

impl Codec for EncodedCodec {
    type Encode = Vec<u8>;
    type Decode = ();
    type Encoder = EncodedCodec;
    type Decoder = EncodedCodec;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl Encoder for EncodedCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for EncodedCodec {
    type Item = ();
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, Self::Error> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}
