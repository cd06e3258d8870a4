//! The OTLP/HTTP (protobuf) span exporter: each batch encoded by [`TraceEncoder`] straight into
//! the request body and posted with the blocking HTTP client on the batch processor's thread.
//! Headers for the collector's authentication come from the OpenTelemetry environment
//! (`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TRACES_HEADERS`), as the SDK's exporter
//! takes them.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

use super::otlp_encode::TraceEncoder;

/// Posts batches of spans to a collector's `/v1/traces`.
#[derive(Debug)]
pub struct HttpTraceExporter {
    client: reqwest::blocking::Client,
    url: String,
    headers: HeaderMap,
    resource: Resource,
    encoder: Mutex<TraceEncoder>,
    /// The last body's size, so that the next one is allocated once.
    last_body: AtomicUsize,
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
            resource: Resource::builder_empty().build(),
            encoder: Mutex::default(),
            last_body: AtomicUsize::new(0),
        }
    }
}

impl SpanExporter for HttpTraceExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut body = Vec::with_capacity(self.last_body.load(Ordering::Relaxed));
        self.encoder
            .lock()
            .map_err(|_| OTelSdkError::InternalFailure("encoder lock poisoned".into()))?
            .encode(&self.resource, &batch, &mut body);
        drop(batch);
        self.last_body.store(body.len(), Ordering::Relaxed);
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
        self.resource = resource.clone();
    }
}

/// The headers of `OTEL_EXPORTER_OTLP_HEADERS`, then those of
/// `OTEL_EXPORTER_OTLP_TRACES_HEADERS`, which win for a name given in both.
fn headers_from_env() -> HeaderMap {
    let mut headers = HeaderMap::new();
    for variable in [
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    ] {
        if let Ok(list) = std::env::var(variable) {
            for (name, value) in parse_headers(&list) {
                headers.insert(name, value);
            }
        }
    }
    headers
}

/// `name=value` pairs separated by commas, values percent-encoded (the OpenTelemetry
/// environment's W3C baggage-like format). Pairs that do not make a valid header are skipped.
fn parse_headers(list: &str) -> Vec<(HeaderName, HeaderValue)> {
    list.split(',')
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            let name = HeaderName::try_from(name.trim()).ok()?;
            let value = HeaderValue::from_bytes(&percent_decode(value.trim())).ok()?;
            Some((name, value))
        })
        .collect()
}

/// Decodes `%XX` escapes; a `%` not followed by two hex digits stays as it is.
fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let escape = (bytes[at] == b'%')
            .then(|| bytes.get(at + 1..at + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        if let Some(byte) = escape {
            decoded.push(byte);
            at += 3;
        } else {
            decoded.push(bytes[at]);
            at += 1;
        }
    }
    decoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_pairs_with_percent_encoded_values() {
        let headers = parse_headers("x-token=s3cret%20value, api-key = a%2Cb ,broken,=x,ok=100%");
        let as_text: Vec<(String, Vec<u8>)> = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect();
        assert_eq!(
            as_text,
            vec![
                ("x-token".to_owned(), b"s3cret value".to_vec()),
                ("api-key".to_owned(), b"a,b".to_vec()),
                ("ok".to_owned(), b"100%".to_vec()),
            ]
        );
    }
}
