//! The span of one query as the data path hands it over: ids, times and numbers, with the
//! attributes of its session and of its statement shared and already encoded. Building an SDK
//! span per query (a vector of attributes, the name copied into a `String`, a `SpanData` of
//! several hundred bytes through a channel) and encoding it field by field afterwards was most of
//! what tracing cost; here the attributes that repeat are encoded once per session and once per
//! statement, and a span costs a few copies.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::Resource;

use super::otlp_encode::{FLAG_HAS_IS_REMOTE, FLAG_IS_REMOTE, nanos, put_request};
use super::otlp_fields::{
    Single, attributes_len, bytes_field_len, fixed32_field_len, fixed64_field_len,
    message_field_len, put_attributes, put_bytes_field, put_fixed32_field, put_fixed64_field,
    put_message_header, put_single_key_value, put_string_field, put_varint_field,
    single_key_value_field_len, string_field_len, varint_field_len,
};
use super::statements::StatementFacts;

/// The `Span.attributes` field number.
const ATTRIBUTES: u32 = 9;
/// `SpanKind.SPAN_KIND_CLIENT`: the proxy is the database's client.
const KIND_CLIENT: u64 = 3;
/// `Status.STATUS_CODE_ERROR`.
const STATUS_ERROR: u64 = 2;
/// W3C trace flag: the trace is sampled (every span exported is).
const SAMPLED: u32 = 0x01;
/// The status message of a failed query starts so, followed by its SQLSTATE.
const SQLSTATE_PREFIX: &str = "SQLSTATE ";

/// Span attributes encoded once, as the `attributes` fields of an OTLP span, and shared by every
/// span that carries them.
#[derive(Debug, Clone, Default)]
pub struct EncodedAttributes(Arc<[u8]>);

impl EncodedAttributes {
    /// Encodes `attributes` in their order.
    #[must_use]
    pub fn new(attributes: &[KeyValue]) -> Self {
        let mut out = Vec::with_capacity(attributes_len(ATTRIBUTES, attributes));
        put_attributes(&mut out, ATTRIBUTES, attributes);
        Self(out.into())
    }

    /// The encoded fields.
    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// One sampled query, waiting to be exported.
#[derive(Debug)]
pub struct QuerySpan {
    /// The trace: the caller's, or a new one for a root span.
    pub trace_id: u128,
    /// This span's id.
    pub span_id: u64,
    /// The caller's span, when the query carried a `traceparent`.
    pub parent_span_id: Option<u64>,
    /// When the request reached the proxy.
    pub started: Instant,
    /// From then until the query completed.
    pub elapsed: Duration,
    /// The attributes of the session's spans.
    pub session: EncodedAttributes,
    /// The span name and the attributes of the statement.
    pub statement: Arc<StatementFacts>,
    /// The SQLSTATE of the first error, if the query failed.
    pub sqlstate: Option<Box<str>>,
    /// Rows returned or affected.
    pub rows: i64,
    /// Time spent waiting for a server connection.
    pub wait: Duration,
    /// Time the server took.
    pub server: Duration,
}

/// A wall-clock reading paired with the monotonic clock, taken once per batch: the data path
/// records only `Instant`s and reads no wall clock of its own.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    instant: Instant,
    unix_nanos: u64,
}

impl WallClock {
    /// Both clocks now.
    #[must_use]
    pub fn now() -> Self {
        Self {
            instant: Instant::now(),
            unix_nanos: nanos(SystemTime::now()),
        }
    }

    /// `at` in nanoseconds since the Unix epoch.
    fn unix_nanos(self, at: Instant) -> u64 {
        let ago = self.instant.saturating_duration_since(at);
        self.unix_nanos
            .saturating_sub(u64::try_from(ago.as_nanos()).unwrap_or(u64::MAX))
    }
}

/// The span's own fields that are not attributes and do not depend on its length.
struct Times {
    start: u64,
    end: u64,
}

impl QuerySpan {
    fn times(&self, clock: WallClock) -> Times {
        let start = clock.unix_nanos(self.started);
        let elapsed = u64::try_from(self.elapsed.as_nanos()).unwrap_or(u64::MAX);
        Times {
            start,
            end: start.saturating_add(elapsed),
        }
    }

    fn flags(&self) -> u32 {
        SAMPLED
            | FLAG_HAS_IS_REMOTE
            | if self.parent_span_id.is_some() {
                FLAG_IS_REMOTE
            } else {
                0
            }
    }

    /// The attributes that differ from span to span, in the order they are written, with the
    /// session's before them and the statement's between the numbers and `error.type`.
    fn own_attributes(&self) -> [(&'static str, Single<'_>); 4] {
        [
            (
                "db.response.status_code",
                Single::Text(self.sqlstate.as_deref().unwrap_or("00000")),
            ),
            ("db.response.returned_rows", Single::Int(self.rows)),
            (
                "pgsidecar.pool.wait_seconds",
                Single::Double(self.wait.as_secs_f64()),
            ),
            (
                "pgsidecar.server.duration_seconds",
                Single::Double(self.server.as_secs_f64()),
            ),
        ]
    }

    fn status_len(&self) -> usize {
        self.sqlstate.as_deref().map_or(0, |code| {
            message_field_len(2, SQLSTATE_PREFIX.len() + code.len())
                + varint_field_len(3, STATUS_ERROR)
        })
    }

    /// The length of the encoded `Span` message.
    fn len(&self, times: &Times) -> usize {
        let fixed_ids = bytes_field_len(1, &[0; 16]) + bytes_field_len(2, &[0; 8]);
        let parent = self
            .parent_span_id
            .map_or(0, |_| bytes_field_len(4, &[0; 8]));
        let own: usize = self
            .own_attributes()
            .iter()
            .map(|(key, value)| single_key_value_field_len(ATTRIBUTES, key, value))
            .sum();
        let error_type = self.sqlstate.as_deref().map_or(0, |code| {
            single_key_value_field_len(ATTRIBUTES, "error.type", &Single::Text(code))
        });
        fixed_ids
            + parent
            + string_field_len(5, &self.statement.name)
            + varint_field_len(6, KIND_CLIENT)
            + fixed64_field_len(7, times.start)
            + fixed64_field_len(8, times.end)
            + self.session.bytes().len()
            + own
            + self.statement.attributes.bytes().len()
            + error_type
            + message_field_len(15, self.status_len())
            + fixed32_field_len(16, self.flags())
    }

    /// Writes the `Span` message's fields, in field order.
    fn put(&self, out: &mut Vec<u8>, times: &Times) {
        put_bytes_field(out, 1, &self.trace_id.to_be_bytes());
        put_bytes_field(out, 2, &self.span_id.to_be_bytes());
        if let Some(parent) = self.parent_span_id {
            put_bytes_field(out, 4, &parent.to_be_bytes());
        }
        put_string_field(out, 5, &self.statement.name);
        put_varint_field(out, 6, KIND_CLIENT);
        put_fixed64_field(out, 7, times.start);
        put_fixed64_field(out, 8, times.end);
        out.extend_from_slice(self.session.bytes());
        for (key, value) in &self.own_attributes() {
            put_single_key_value(out, ATTRIBUTES, key, value);
        }
        out.extend_from_slice(self.statement.attributes.bytes());
        if let Some(code) = self.sqlstate.as_deref() {
            put_single_key_value(out, ATTRIBUTES, "error.type", &Single::Text(code));
        }
        put_message_header(out, 15, self.status_len());
        if let Some(code) = self.sqlstate.as_deref() {
            put_message_header(out, 2, SQLSTATE_PREFIX.len() + code.len());
            out.extend_from_slice(SQLSTATE_PREFIX.as_bytes());
            out.extend_from_slice(code.as_bytes());
            put_varint_field(out, 3, STATUS_ERROR);
        }
        put_fixed32_field(out, 16, self.flags());
    }
}

/// The export requests of the query spans: one resource, one instrumentation scope.
#[derive(Debug)]
pub struct QueryRequests {
    resource: Resource,
    scope: InstrumentationScope,
    last_len: usize,
}

impl QueryRequests {
    /// Requests for the spans of `resource`, under the scope `pgsidecar`.
    #[must_use]
    pub fn new(resource: Resource) -> Self {
        Self {
            resource,
            scope: InstrumentationScope::builder("pgsidecar").build(),
            last_len: 0,
        }
    }

    /// The `ExportTraceServiceRequest` carrying `spans`, their times read against `clock`.
    pub fn body(&mut self, spans: &[QuerySpan], clock: WallClock) -> Vec<u8> {
        let sized: Vec<(Times, usize)> = spans
            .iter()
            .map(|span| {
                let times = span.times(clock);
                let len = span.len(&times);
                (times, len)
            })
            .collect();
        let spans_len = sized
            .iter()
            .map(|(_, len)| message_field_len(2, *len))
            .sum();
        let mut out = Vec::with_capacity(self.last_len);
        put_request(
            &mut out,
            &self.resource,
            &[(&self.scope, spans_len)],
            |out, _| {
                for (span, (times, len)) in spans.iter().zip(&sized) {
                    put_message_header(out, 2, *len);
                    span.put(out, times);
                }
            },
        );
        self.last_len = out.len();
        out
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::time::UNIX_EPOCH;

    use opentelemetry::trace::{
        SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
    use prost::Message as _;

    use super::super::otlp_encode::TraceRequests;
    use super::*;

    fn session() -> Vec<KeyValue> {
        vec![
            KeyValue::new("db.system.name", "postgresql"),
            KeyValue::new("db.namespace", "app"),
            KeyValue::new("server.port", 5432_i64),
        ]
    }

    fn query_span(clock: WallClock, parent: Option<u64>, sqlstate: Option<&str>) -> QuerySpan {
        QuerySpan {
            trace_id: 0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c,
            span_id: 0xb7ad_6b71_6920_3331,
            parent_span_id: parent,
            started: clock.instant.checked_sub(Duration::from_millis(3)).unwrap(),
            elapsed: Duration::from_micros(1_250),
            session: EncodedAttributes::new(&session()),
            statement: Arc::new(StatementFacts::of(b"SELECT * FROM documents WHERE id = 7")),
            sqlstate: sqlstate.map(Box::from),
            rows: 1,
            wait: Duration::from_micros(50),
            server: Duration::from_micros(1_200),
        }
    }

    /// The same span as the SDK would have built it from the same facts.
    fn sdk_span(span: &QuerySpan, clock: WallClock, scope: &InstrumentationScope) -> SpanData {
        let start = UNIX_EPOCH + Duration::from_nanos(span.times(clock).start);
        let code = span.sqlstate.as_deref();
        let mut attributes = session();
        attributes.extend([
            KeyValue::new(
                "db.response.status_code",
                code.unwrap_or("00000").to_owned(),
            ),
            KeyValue::new("db.response.returned_rows", span.rows),
            KeyValue::new("pgsidecar.pool.wait_seconds", span.wait.as_secs_f64()),
            KeyValue::new(
                "pgsidecar.server.duration_seconds",
                span.server.as_secs_f64(),
            ),
            KeyValue::new("db.operation.name", "SELECT"),
            KeyValue::new("db.collection.name", "documents"),
            KeyValue::new("db.query.summary", "SELECT documents"),
            KeyValue::new("db.query.text", "SELECT * FROM documents WHERE id = ?"),
        ]);
        if let Some(code) = code {
            attributes.push(KeyValue::new("error.type", code.to_owned()));
        }
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(span.trace_id),
                SpanId::from(span.span_id),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: span.parent_span_id.map_or(SpanId::INVALID, SpanId::from),
            parent_span_is_remote: span.parent_span_id.is_some(),
            span_kind: SpanKind::Client,
            name: Cow::Owned(span.statement.name.to_string()),
            start_time: start,
            end_time: start + span.elapsed,
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: code.map_or(Status::Unset, |code| {
                Status::error(format!("SQLSTATE {code}"))
            }),
            instrumentation_scope: scope.clone(),
        }
    }

    #[test]
    fn a_query_span_is_the_message_the_sdk_would_send() {
        let resource = Resource::builder_empty()
            .with_attributes([KeyValue::new("service.name", "pgsidecar")])
            .build();
        let clock = WallClock::now();
        let spans = [
            query_span(clock, None, None),
            query_span(clock, Some(0x00f0_67aa_0ba9_02b7), Some("42P01")),
        ];
        let mut requests = QueryRequests::new(resource.clone());
        let ours = requests.body(&spans, clock);
        let mut sdk = TraceRequests::default();
        sdk.set_resource(&resource);
        let expected: Vec<SpanData> = spans
            .iter()
            .map(|span| sdk_span(span, clock, &requests.scope))
            .collect();
        assert_eq!(ours, sdk.body(&expected), "the same bytes, field by field");
        let decoded = ExportTraceServiceRequest::decode(ours.as_slice()).unwrap();
        let decoded = &decoded.resource_spans[0].scope_spans[0];
        assert_eq!(decoded.scope.as_ref().unwrap().name, "pgsidecar");
        assert_eq!(
            decoded.spans[1].status.as_ref().unwrap().message,
            "SQLSTATE 42P01"
        );
        assert_eq!(
            decoded.spans[1].flags, 0x301,
            "sampled, with a remote parent"
        );
    }

    #[test]
    fn times_come_from_the_monotonic_clock_read_against_one_wall_clock_reading() {
        let clock = WallClock::now();
        let span = query_span(clock, None, None);
        let times = span.times(clock);
        assert_eq!(clock.unix_nanos - times.start, 3_000_000);
        assert_eq!(times.end - times.start, 1_250_000);
        let later = WallClock {
            instant: clock.instant + Duration::from_secs(1),
            unix_nanos: clock.unix_nanos + 1_000_000_000,
        };
        assert_eq!(span.times(later).start, times.start);
    }

    #[test]
    fn requests_one_after_another_are_equal() {
        let clock = WallClock::now();
        let mut requests = QueryRequests::new(Resource::builder_empty().build());
        let first = requests.body(&[query_span(clock, None, None)], clock);
        let second = requests.body(&[query_span(clock, None, None)], clock);
        assert_eq!(first, second);
    }
}
