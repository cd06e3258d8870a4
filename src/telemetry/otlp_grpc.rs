//! OTLP/gRPC: each encoded request sent as the collector's `TraceService/Export` call over a
//! tonic channel, from an export thread that waits on the runtime for the answer. Headers,
//! compression and the timeout follow the OpenTelemetry environment ([`super::otlp_env`]).

use bytes::{Buf as _, BufMut as _};
use tokio::runtime::Handle;
use tonic::client::Grpc;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;

use super::otlp_env::{gzip_requested, headers_from_env};
use super::span_lane::{Collector, ExportError};

/// The service method OTLP/gRPC exports traces with.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// A collector's `TraceService`.
#[derive(Debug)]
pub struct GrpcCollector {
    channel: Channel,
    /// The runtime the channel's connection lives on.
    runtime: Handle,
    metadata: MetadataMap,
    gzip: bool,
}

impl GrpcCollector {
    /// Calls over `channel`, with the headers and compression of the OpenTelemetry environment.
    /// Must be created inside the runtime the channel runs on.
    #[must_use]
    pub fn new(channel: Channel) -> Self {
        Self {
            channel,
            runtime: Handle::current(),
            metadata: MetadataMap::from_headers(headers_from_env()),
            gzip: gzip_requested(),
        }
    }

    async fn export(&self, body: Vec<u8>) -> Result<(), ExportError> {
        let mut grpc = Grpc::new(self.channel.clone());
        if self.gzip {
            grpc = grpc.send_compressed(CompressionEncoding::Gzip);
        }
        grpc.ready()
            .await
            .map_err(|e| ExportError::Unreachable(e.to_string()))?;
        let mut request = tonic::Request::new(body);
        *request.metadata_mut() = self.metadata.clone();
        grpc.unary(
            request,
            PathAndQuery::from_static(EXPORT_PATH),
            EncodedCodec,
        )
        .await
        .map(drop)
        .map_err(|status| match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                ExportError::Unreachable(status.to_string())
            }
            _ => ExportError::Refused(status.to_string()),
        })
    }
}

impl Collector for GrpcCollector {
    fn send(&self, body: Vec<u8>) -> Result<(), ExportError> {
        self.runtime.block_on(self.export(body))
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
