//! What the OpenTelemetry SDK environment specification says about talking to the collector,
//! for the exporters pgsidecar runs itself: headers for the collector's authentication and the
//! time one export may take.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::span_lane::BatchSettings;

/// Spans queued or being exported before new ones are dropped, unless
/// `OTEL_BSP_MAX_QUEUE_SIZE` says otherwise. Four times the SDK's 2048: a proxy emits a span per
/// query, and a queue that absorbs a collector's hiccup of a fraction of a second at tens of
/// thousands of queries per second costs only a few MiB.
const DEFAULT_QUEUE: usize = 8192;

/// `OTEL_BSP_MAX_QUEUE_SIZE`: spans queued or being exported at most.
#[must_use]
pub fn queue_size() -> usize {
    positive("OTEL_BSP_MAX_QUEUE_SIZE").unwrap_or(DEFAULT_QUEUE)
}

/// How query spans are batched, as `OTEL_BSP_SCHEDULE_DELAY` (default 5 s),
/// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` (default 512, at most `queue_size`) and
/// `OTEL_BSP_EXPORT_TIMEOUT` (default 30 s, how long a flush waits) say.
#[must_use]
pub fn batch_settings(queue_size: usize) -> BatchSettings {
    let millis = |name, default| Duration::from_millis(positive::<u64>(name).unwrap_or(default));
    BatchSettings {
        delay: millis("OTEL_BSP_SCHEDULE_DELAY", 5_000),
        max_batch: positive::<usize>("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")
            .unwrap_or(512)
            .min(queue_size),
        flush_timeout: millis("OTEL_BSP_EXPORT_TIMEOUT", 30_000),
    }
}

/// A positive number from the environment variable `name`.
fn positive<T: std::str::FromStr + Default + PartialOrd>(name: &str) -> Option<T> {
    std::env::var(name)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|n| *n > T::default())
}

/// How long one export request to the collector may take: `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`
/// or `OTEL_EXPORTER_OTLP_TIMEOUT` in milliseconds, else the SDK's default of 10 s.
#[must_use]
pub fn export_timeout() -> Duration {
    [
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
    ]
    .into_iter()
    .find_map(|name| std::env::var(name).ok()?.trim().parse().ok())
    .map_or(Duration::from_secs(10), Duration::from_millis)
}

/// Whether `OTEL_EXPORTER_OTLP_TRACES_COMPRESSION` or `OTEL_EXPORTER_OTLP_COMPRESSION` asks
/// for gzip.
#[must_use]
pub fn gzip_requested() -> bool {
    [
        "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
        "OTEL_EXPORTER_OTLP_COMPRESSION",
    ]
    .into_iter()
    .find_map(|name| std::env::var(name).ok())
    .is_some_and(|value| value.trim().eq_ignore_ascii_case("gzip"))
}

/// The headers of `OTEL_EXPORTER_OTLP_HEADERS`, then those of
/// `OTEL_EXPORTER_OTLP_TRACES_HEADERS`, which win for a name given in both.
#[must_use]
pub fn headers_from_env() -> HeaderMap {
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
