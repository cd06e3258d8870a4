//! The OTLP/HTTP (protobuf) span exporter: each batch encoded by [`TraceEncoder`] straight into
//! the request body and posted with the blocking HTTP client on the batch processor's thread.
//! Headers for the collector's authentication come from the OpenTelemetry environment
//! ([`super::otlp_env`]).

use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};

use super::otlp_encode::TraceRequests;
use super::otlp_env::headers_from_env;

/// Posts batches of spans to a collector's `/v1/traces`.
#[derive(Debug)]
pub struct HttpTraceExporter {
    client: reqwest::blocking::Client,
    url: String,
    headers: HeaderMap,
    requests: TraceRequests,
}

impl HttpTraceExporter {
    /// An exporter posting to `url` with `client`, with the headers the environment asks for.
    #[must_use]
    pub fn new(client: reqwest::blocking::Client, url: String) -> Self {
        let mut headers = headers_from_env();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        Self {
            client,
            url,
            headers,
            requests: TraceRequests::default(),
        }
    }
}

impl SpanExporter for HttpTraceExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let body = self.requests.body(&batch);
        drop(batch);
        let response = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
            .body(body)
            .send()
            .map_err(|e| OTelSdkError::InternalFailure(format!("OTLP export failed: {e}")))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(OTelSdkError::InternalFailure(format!(
                "the collector refused the spans: HTTP {status}"
            )))
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.requests.set_resource(resource);
    }
}
