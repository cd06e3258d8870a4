//! OTLP/HTTP (protobuf): each encoded request posted to the collector's `/v1/traces` with the
//! blocking HTTP client, from an export thread. Headers for the collector's authentication come
//! from the OpenTelemetry environment ([`super::otlp_env`]).

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};

use super::otlp_env::headers_from_env;
use super::span_lane::{Collector, ExportError};

/// A collector's `/v1/traces`.
#[derive(Debug)]
pub struct HttpCollector {
    client: reqwest::blocking::Client,
    url: String,
    headers: HeaderMap,
}

impl HttpCollector {
    /// Posts to `url` with `client`, with the headers of the OpenTelemetry environment.
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
        }
    }
}

impl Collector for HttpCollector {
    fn send(&self, body: Vec<u8>) -> Result<(), ExportError> {
        let response = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
            .body(body)
            .send()
            .map_err(|e| ExportError::Unreachable(e.to_string()))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(ExportError::Refused(format!("HTTP {status}")))
        }
    }
}
