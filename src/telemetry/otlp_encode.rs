//! An OTLP `ExportTraceServiceRequest` encoded straight from the SDK's spans into one buffer.
//!
//! The SDK's exporters first copy every span into protobuf structs (a `String` per attribute key
//! and value, a `Vec` per list) and then encode those; with a span per query that copying was
//! most of the export thread's work. Here each field goes from the span to the wire once. The
//! bytes are the same message (tested against the SDK's own conversion).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::InstrumentationScope;
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SpanData;

use super::otlp_fields::{
    attributes_len, bytes_field_len, fixed32_field_len, fixed64_field_len, key_value_len,
    message_field_len, put_attributes, put_bytes_field, put_fixed32_field, put_fixed64_field,
    put_key_value, put_message_header, put_string_field, put_varint_field, string_field_len,
    varint_field_len,
};

/// The span flag bit saying whether the parent's remoteness is known (OTLP `SpanFlags`).
pub(super) const FLAG_HAS_IS_REMOTE: u32 = 0x100;
/// The span flag bit saying the parent is remote.
pub(super) const FLAG_IS_REMOTE: u32 = 0x200;

/// The request bodies of one resource's batches, for both exporters: each body is allocated
/// once, at the size of the one before.
#[derive(Debug)]
pub struct TraceRequests {
    resource: Resource,
    last_len: AtomicUsize,
}

impl Default for TraceRequests {
    fn default() -> Self {
        Self {
            resource: Resource::builder_empty().build(),
            last_len: AtomicUsize::new(0),
        }
    }
}

impl TraceRequests {
    /// The `ExportTraceServiceRequest` carrying `spans`.
    pub fn body(&self, spans: &[SpanData]) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.last_len.load(Ordering::Relaxed));
        encode_request(&self.resource, spans, &mut body);
        self.last_len.store(body.len(), Ordering::Relaxed);
        body
    }

    /// The resource the SDK gives the exporter.
    pub fn set_resource(&mut self, resource: &Resource) {
        self.resource = resource.clone();
    }
}

/// Appends the request carrying `spans` of `resource` to `out`, the spans grouped by their
/// instrumentation scope.
fn encode_request(resource: &Resource, spans: &[SpanData], out: &mut Vec<u8>) {
    let span_lengths: Vec<usize> = spans.iter().map(span_len).collect();
    let mut scopes: Vec<(&InstrumentationScope, usize)> = Vec::new();
    for (span, len) in spans.iter().zip(&span_lengths) {
        let spans_len = message_field_len(2, *len);
        match scopes
            .iter_mut()
            .find(|(scope, _)| *scope == &span.instrumentation_scope)
        {
            Some((_, total)) => *total += spans_len,
            None => scopes.push((&span.instrumentation_scope, spans_len)),
        }
    }
    put_request(out, resource, &scopes, |out, scope| {
        for (span, len) in spans.iter().zip(&span_lengths) {
            if &span.instrumentation_scope == scope {
                put_message_header(out, 2, *len);
                put_span(out, span);
            }
        }
    });
}

/// Appends the request of `resource` whose spans come in `scopes`, each with the length of its
/// spans' fields; `put_spans` writes those fields for one scope.
pub(super) fn put_request(
    out: &mut Vec<u8>,
    resource: &Resource,
    scopes: &[(&InstrumentationScope, usize)],
    mut put_spans: impl FnMut(&mut Vec<u8>, &InstrumentationScope),
) {
    let resource_len = resource_len(resource);
    let scope_lengths: Vec<usize> = scopes
        .iter()
        .map(|(scope, spans_len)| {
            message_field_len(1, scope_len(scope))
                + spans_len
                + string_field_len(3, scope.schema_url().unwrap_or_default())
        })
        .collect();
    let resource_spans_len = message_field_len(1, resource_len)
        + scope_lengths
            .iter()
            .map(|len| message_field_len(2, *len))
            .sum::<usize>()
        + string_field_len(3, resource.schema_url().unwrap_or_default());
    out.reserve(message_field_len(1, resource_spans_len));
    put_message_header(out, 1, resource_spans_len);
    put_message_header(out, 1, resource_len);
    put_resource(out, resource);
    for ((scope, _), scope_len) in scopes.iter().zip(&scope_lengths) {
        put_message_header(out, 2, *scope_len);
        put_message_header(out, 1, self::scope_len(scope));
        put_scope(out, scope);
        put_spans(out, scope);
        put_string_field(out, 3, scope.schema_url().unwrap_or_default());
    }
    put_string_field(out, 3, resource.schema_url().unwrap_or_default());
}

pub(super) fn nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn flags(context: &SpanContext, remote: bool) -> u32 {
    u32::from(context.trace_flags().to_u8())
        | FLAG_HAS_IS_REMOTE
        | if remote { FLAG_IS_REMOTE } else { 0 }
}

fn kind_number(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

/// `(code, message)` of a span's status.
pub(super) fn status_parts(status: &Status) -> (u64, &str) {
    match status {
        Status::Unset => (0, ""),
        Status::Ok => (1, ""),
        Status::Error { description } => (2, description),
    }
}

// Resource { attributes = 1 }

fn resource_len(resource: &Resource) -> usize {
    resource
        .iter()
        .map(|(key, value)| message_field_len(1, key_value_len(key.as_str(), value)))
        .sum()
}

fn put_resource(out: &mut Vec<u8>, resource: &Resource) {
    for (key, value) in resource {
        put_key_value(out, 1, key.as_str(), value);
    }
}

// InstrumentationScope { name = 1; version = 2; attributes = 3 }

fn scope_len(scope: &InstrumentationScope) -> usize {
    string_field_len(1, scope.name())
        + string_field_len(2, scope.version().unwrap_or_default())
        + scope
            .attributes()
            .map(|kv| message_field_len(3, key_value_len(kv.key.as_str(), &kv.value)))
            .sum::<usize>()
}

fn put_scope(out: &mut Vec<u8>, scope: &InstrumentationScope) {
    put_string_field(out, 1, scope.name());
    put_string_field(out, 2, scope.version().unwrap_or_default());
    for kv in scope.attributes() {
        put_key_value(out, 3, kv.key.as_str(), &kv.value);
    }
}

// Span { trace_id = 1; span_id = 2; trace_state = 3; parent_span_id = 4; name = 5; kind = 6;
// start_time_unix_nano = 7; end_time_unix_nano = 8; attributes = 9;
// dropped_attributes_count = 10; events = 11; dropped_events_count = 12; links = 13;
// dropped_links_count = 14; status = 15; flags = 16 }

fn parent_id(span: &SpanData) -> Option<[u8; 8]> {
    (span.parent_span_id != SpanId::INVALID).then(|| span.parent_span_id.to_bytes())
}

pub(super) fn status_len(status: &Status) -> usize {
    let (code, message) = status_parts(status);
    string_field_len(2, message) + varint_field_len(3, code)
}

// Event { time_unix_nano = 1; name = 2; attributes = 3; dropped_attributes_count = 4 }

fn event_len(event: &opentelemetry::trace::Event) -> usize {
    fixed64_field_len(1, nanos(event.timestamp))
        + string_field_len(2, &event.name)
        + attributes_len(3, &event.attributes)
        + varint_field_len(4, u64::from(event.dropped_attributes_count))
}

// Link { trace_id = 1; span_id = 2; trace_state = 3; attributes = 4;
// dropped_attributes_count = 5; flags = 6 }

fn link_len(link: &opentelemetry::trace::Link, trace_state: &str) -> usize {
    let context = &link.span_context;
    bytes_field_len(1, &context.trace_id().to_bytes())
        + bytes_field_len(2, &context.span_id().to_bytes())
        + string_field_len(3, trace_state)
        + attributes_len(4, &link.attributes)
        + varint_field_len(5, u64::from(link.dropped_attributes_count))
        + fixed32_field_len(6, flags(context, context.is_remote()))
}

fn span_len(span: &SpanData) -> usize {
    let context = &span.span_context;
    let trace_state = context.trace_state().header();
    let parent = parent_id(span);
    bytes_field_len(1, &context.trace_id().to_bytes())
        + bytes_field_len(2, &context.span_id().to_bytes())
        + string_field_len(3, &trace_state)
        + parent.map_or(0, |p| bytes_field_len(4, &p))
        + string_field_len(5, &span.name)
        + varint_field_len(6, kind_number(&span.span_kind))
        + fixed64_field_len(7, nanos(span.start_time))
        + fixed64_field_len(8, nanos(span.end_time))
        + attributes_len(9, &span.attributes)
        + varint_field_len(10, u64::from(span.dropped_attributes_count))
        + span
            .events
            .events
            .iter()
            .map(|e| message_field_len(11, event_len(e)))
            .sum::<usize>()
        + varint_field_len(12, u64::from(span.events.dropped_count))
        + span
            .links
            .links
            .iter()
            .map(|l| message_field_len(13, link_len(l, &l.span_context.trace_state().header())))
            .sum::<usize>()
        + varint_field_len(14, u64::from(span.links.dropped_count))
        + message_field_len(15, status_len(&span.status))
        + fixed32_field_len(16, flags(context, span.parent_span_is_remote))
}

fn put_span(out: &mut Vec<u8>, span: &SpanData) {
    let context = &span.span_context;
    put_bytes_field(out, 1, &context.trace_id().to_bytes());
    put_bytes_field(out, 2, &context.span_id().to_bytes());
    put_string_field(out, 3, &context.trace_state().header());
    if let Some(parent) = parent_id(span) {
        put_bytes_field(out, 4, &parent);
    }
    put_string_field(out, 5, &span.name);
    put_varint_field(out, 6, kind_number(&span.span_kind));
    put_fixed64_field(out, 7, nanos(span.start_time));
    put_fixed64_field(out, 8, nanos(span.end_time));
    put_attributes(out, 9, &span.attributes);
    put_varint_field(out, 10, u64::from(span.dropped_attributes_count));
    for event in &span.events.events {
        put_message_header(out, 11, event_len(event));
        put_fixed64_field(out, 1, nanos(event.timestamp));
        put_string_field(out, 2, &event.name);
        put_attributes(out, 3, &event.attributes);
        put_varint_field(out, 4, u64::from(event.dropped_attributes_count));
    }
    put_varint_field(out, 12, u64::from(span.events.dropped_count));
    for link in &span.links.links {
        let context = &link.span_context;
        let trace_state = context.trace_state().header();
        put_message_header(out, 13, link_len(link, &trace_state));
        put_bytes_field(out, 1, &context.trace_id().to_bytes());
        put_bytes_field(out, 2, &context.span_id().to_bytes());
        put_string_field(out, 3, &trace_state);
        put_attributes(out, 4, &link.attributes);
        put_varint_field(out, 5, u64::from(link.dropped_attributes_count));
        put_fixed32_field(out, 6, flags(context, context.is_remote()));
    }
    put_varint_field(out, 14, u64::from(span.links.dropped_count));
    put_message_header(out, 15, status_len(&span.status));
    let (code, message) = status_parts(&span.status);
    put_string_field(out, 2, message);
    put_varint_field(out, 3, code);
    put_fixed32_field(out, 16, flags(context, span.parent_span_is_remote));
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use opentelemetry::trace::{Event, Link, SpanContext, TraceFlags, TraceId, TraceState};
    use opentelemetry::{Array, KeyValue, Value};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use prost::Message as _;

    use super::*;

    fn context(trace: u128, span: u64, remote: bool, state: &str) -> SpanContext {
        SpanContext::new(
            TraceId::from(trace),
            SpanId::from(span),
            TraceFlags::SAMPLED,
            remote,
            state.parse::<TraceState>().unwrap(),
        )
    }

    fn query_span(scope: &InstrumentationScope, parent: u64, status: Status) -> SpanData {
        let start = UNIX_EPOCH + Duration::from_nanos(1_764_000_000_123_456_789);
        let mut events = SpanEvents::default();
        events.events.push(Event::new(
            "retry",
            start + Duration::from_micros(5),
            vec![KeyValue::new("attempt", 2_i64)],
            1,
        ));
        events.dropped_count = 3;
        let mut links = SpanLinks::default();
        links.links.push(Link::new(
            context(0xdef, 0x99, true, "vendor=value"),
            vec![KeyValue::new("why", "batch")],
            0,
        ));
        SpanData {
            span_context: context(0xabc, 0x1234, false, ""),
            parent_span_id: SpanId::from(parent),
            parent_span_is_remote: parent != 0,
            span_kind: SpanKind::Client,
            name: "SELECT documents".into(),
            start_time: start,
            end_time: start + Duration::from_micros(420),
            attributes: vec![
                KeyValue::new("db.system.name", "postgresql"),
                KeyValue::new("db.query.text", "SELECT * FROM documents WHERE id = $1"),
                KeyValue::new("db.response.returned_rows", 0_i64),
                KeyValue::new("server.port", -5432_i64),
                KeyValue::new("pgsidecar.pool.wait_seconds", 0.0),
                KeyValue::new("pgsidecar.server.duration_seconds", 0.000_42),
                KeyValue::new("pgsidecar.retried", false),
                KeyValue::new("empty", ""),
                KeyValue::new("list", Value::Array(Array::I64(vec![1, 0, -1]))),
                KeyValue::new(
                    "names",
                    Value::Array(Array::String(vec!["a".into(), "".into()])),
                ),
            ],
            dropped_attributes_count: 2,
            events,
            links,
            status,
            instrumentation_scope: scope.clone(),
        }
    }

    #[test]
    fn the_request_is_the_one_the_sdk_would_send() {
        let resource = Resource::builder_empty()
            .with_attributes([
                KeyValue::new("service.name", "pgsidecar"),
                KeyValue::new("service.version", "1.0"),
            ])
            .build();
        let proxy = InstrumentationScope::builder("pgsidecar").build();
        let logs = InstrumentationScope::builder("tracing")
            .with_version("0.1")
            .with_schema_url("https://opentelemetry.io/schemas/1.33.0")
            .with_attributes([KeyValue::new("kind", "logs")])
            .build();
        let spans = vec![
            query_span(&proxy, 0, Status::Unset),
            query_span(&logs, 0x77, Status::error("SQLSTATE 42P01")),
            query_span(&proxy, 0x78, Status::Ok),
        ];
        let mut ours = Vec::new();
        encode_request(&resource, &spans, &mut ours);
        let sdk = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(
                spans,
                &ResourceAttributesWithSchema::from(&resource),
            ),
        };
        let decoded = ExportTraceServiceRequest::decode(ours.as_slice()).unwrap();
        assert_eq!(decoded, sdk);
        assert_eq!(ours, sdk.encode_to_vec(), "the same bytes, field by field");
    }

    #[test]
    fn one_batch_after_another_makes_the_same_requests() {
        let scope = InstrumentationScope::builder("pgsidecar").build();
        let requests = TraceRequests::default();
        let first = requests.body(&[query_span(&scope, 0, Status::Unset)]);
        let second = requests.body(&[query_span(&scope, 0, Status::Unset)]);
        assert_eq!(first, second);
        let empty_batch = requests.body(&[]);
        let decoded = ExportTraceServiceRequest::decode(empty_batch.as_slice()).unwrap();
        assert!(decoded.resource_spans[0].scope_spans.is_empty());
    }
}
