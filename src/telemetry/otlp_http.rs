//! OTLP/HTTP (protobuf): each encoded request posted to the collector's `/v1/traces` with the
//! blocking HTTP client, from an export thread. Headers for the collector's authentication and
//! gzip compression come from the OpenTelemetry environment ([`super::otlp_env`]).

use std::io::Write as _;

use flate2::Compression;
use flate2::write::GzEncoder;
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderValue};

use super::otlp_env::{gzip_requested, headers_from_env};
use super::span_lane::{Collector, ExportError};

/// A collector's `/v1/traces`.
#[derive(Debug)]
pub struct HttpCollector {
    client: reqwest::blocking::Client,
    url: String,
    headers: HeaderMap,
    gzip: bool,
}

impl HttpCollector {
    /// Posts to `url` with `client`, with the headers and compression of the OpenTelemetry
    /// environment.
    #[must_use]
    pub fn new(client: reqwest::blocking::Client, url: String) -> Self {
        let mut headers = headers_from_env();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        let gzip = gzip_requested();
        if gzip {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        Self {
            client,
            url,
            headers,
            gzip,
        }
    }
}

/// `body` gzipped. The fast level: a batch of spans shrinks several times at it already, and
/// the export thread's CPU is taken from the database's machine.
fn gzipped(body: &[u8]) -> Result<Vec<u8>, ExportError> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(body.len() / 4), Compression::fast());
    encoder
        .write_all(body)
        .and_then(|()| encoder.finish())
        .map_err(ExportError::Compression)
}

impl Collector for HttpCollector {
    fn send(&self, body: Vec<u8>) -> Result<(), ExportError> {
        let body = if self.gzip { gzipped(&body)? } else { body };
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
