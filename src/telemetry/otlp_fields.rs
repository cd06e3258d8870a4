//! Protobuf fields as OTLP writes them: lengths computed before writing, so every message goes
//! into one buffer in one pass with no intermediate structs. Shared by the encoder of the SDK's
//! spans and that of the query spans.

use opentelemetry::{Array, KeyValue, StringValue, Value};
use prost::encoding::{WireType, encode_varint, encoded_len_varint, key_len};

// Field helpers. Proto3 leaves out scalar fields at their default, except inside a oneof;
// message fields the SDK always sets are always written, even when empty.

pub(super) fn message_field_len(field: u32, len: usize) -> usize {
    key_len(field) + encoded_len_varint(len as u64) + len
}

/// Writes a varint: most are field tags and short lengths, one byte each, which skip the
/// general loop.
#[inline]
pub(super) fn put_varint(value: u64, out: &mut Vec<u8>) {
    match u8::try_from(value) {
        Ok(byte) if byte < 0x80 => out.push(byte),
        _ => encode_varint(value, out),
    }
}

/// Writes a field's tag.
#[inline]
pub(super) fn put_key(field: u32, wire_type: WireType, out: &mut Vec<u8>) {
    put_varint(u64::from(field << 3 | wire_type as u32), out);
}

pub(super) fn put_message_header(out: &mut Vec<u8>, field: u32, len: usize) {
    put_key(field, WireType::LengthDelimited, out);
    put_varint(len as u64, out);
}

pub(super) fn bytes_field_len(field: u32, bytes: &[u8]) -> usize {
    if bytes.is_empty() {
        0
    } else {
        message_field_len(field, bytes.len())
    }
}

pub(super) fn put_bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    if !bytes.is_empty() {
        put_message_header(out, field, bytes.len());
        out.extend_from_slice(bytes);
    }
}

pub(super) fn string_field_len(field: u32, text: &str) -> usize {
    bytes_field_len(field, text.as_bytes())
}

pub(super) fn put_string_field(out: &mut Vec<u8>, field: u32, text: &str) {
    put_bytes_field(out, field, text.as_bytes());
}

pub(super) fn varint_field_len(field: u32, value: u64) -> usize {
    if value == 0 {
        0
    } else {
        key_len(field) + encoded_len_varint(value)
    }
}

pub(super) fn put_varint_field(out: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        put_key(field, WireType::Varint, out);
        put_varint(value, out);
    }
}

pub(super) fn fixed64_field_len(field: u32, value: u64) -> usize {
    if value == 0 { 0 } else { key_len(field) + 8 }
}

pub(super) fn put_fixed64_field(out: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        put_key(field, WireType::SixtyFourBit, out);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

pub(super) fn fixed32_field_len(field: u32, value: u32) -> usize {
    if value == 0 { 0 } else { key_len(field) + 4 }
}

pub(super) fn put_fixed32_field(out: &mut Vec<u8>, field: u32, value: u32) {
    if value != 0 {
        put_key(field, WireType::ThirtyTwoBit, out);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

// AnyValue { string_value = 1; bool_value = 2; int_value = 3; double_value = 4;
// array_value = 5 (ArrayValue { repeated AnyValue values = 1 }) }: a oneof, always written.

/// An attribute value as OTLP has it: the array kinds are lists of single values.
pub(super) enum Single<'a> {
    /// `bool_value`.
    Bool(bool),
    /// `int_value`.
    Int(i64),
    /// `double_value`.
    Double(f64),
    /// `string_value`.
    Text(&'a str),
}

/// An `int64` on the wire: its two's complement bits as a varint.
pub(super) fn twos_complement(n: i64) -> u64 {
    u64::from_le_bytes(n.to_le_bytes())
}

pub(super) fn single_len(value: &Single<'_>) -> usize {
    match value {
        Single::Bool(_) => key_len(2) + 1,
        Single::Int(n) => key_len(3) + encoded_len_varint(twos_complement(*n)),
        Single::Double(_) => key_len(4) + 8,
        Single::Text(text) => message_field_len(1, text.len()),
    }
}

pub(super) fn put_single(out: &mut Vec<u8>, value: &Single<'_>) {
    match value {
        Single::Bool(b) => {
            put_key(2, WireType::Varint, out);
            put_varint(u64::from(*b), out);
        }
        Single::Int(n) => {
            put_key(3, WireType::Varint, out);
            put_varint(twos_complement(*n), out);
        }
        Single::Double(x) => {
            put_key(4, WireType::SixtyFourBit, out);
            out.extend_from_slice(&x.to_bits().to_le_bytes());
        }
        Single::Text(text) => {
            put_message_header(out, 1, text.len());
            out.extend_from_slice(text.as_bytes());
        }
    }
}

/// Calls `each` with every element of an array value.
pub(super) fn for_each_element(array: &Array, mut each: impl FnMut(&Single<'_>)) {
    match array {
        Array::Bool(values) => values.iter().for_each(|b| each(&Single::Bool(*b))),
        Array::I64(values) => values.iter().for_each(|n| each(&Single::Int(*n))),
        Array::F64(values) => values.iter().for_each(|x| each(&Single::Double(*x))),
        Array::String(values) => values
            .iter()
            .for_each(|s| each(&Single::Text(StringValue::as_str(s)))),
        other => each(&Single::Text(&other.to_string())),
    }
}

pub(super) fn array_len(array: &Array) -> usize {
    let mut len = 0;
    for_each_element(array, |element| {
        len += message_field_len(1, single_len(element));
    });
    len
}

pub(super) fn with_single<T>(value: &Value, f: impl FnOnce(&Single<'_>) -> T) -> Option<T> {
    match value {
        Value::Bool(b) => Some(f(&Single::Bool(*b))),
        Value::I64(n) => Some(f(&Single::Int(*n))),
        Value::F64(x) => Some(f(&Single::Double(*x))),
        Value::String(s) => Some(f(&Single::Text(s.as_str()))),
        Value::Array(_) => None,
        other => Some(f(&Single::Text(&other.as_str()))),
    }
}

pub(super) fn any_value_len(value: &Value) -> usize {
    match value {
        Value::Array(array) => message_field_len(5, array_len(array)),
        other => with_single(other, single_len).unwrap_or_default(),
    }
}

pub(super) fn put_any_value(out: &mut Vec<u8>, value: &Value) {
    if let Value::Array(array) = value {
        put_message_header(out, 5, array_len(array));
        for_each_element(array, |element| {
            put_message_header(out, 1, single_len(element));
            put_single(out, element);
        });
    } else {
        with_single(value, |single| put_single(out, single));
    }
}

// KeyValue { key = 1; value = 2 }

pub(super) fn key_value_len(key: &str, value: &Value) -> usize {
    key_value_message_len(key, any_value_len(value))
}

pub(super) fn put_key_value(out: &mut Vec<u8>, field: u32, key: &str, value: &Value) {
    put_key_value_with(out, field, key, any_value_len(value), |out| {
        put_any_value(out, value);
    });
}

/// The length of a `KeyValue` message whose `AnyValue` is `value_len` long.
fn key_value_message_len(key: &str, value_len: usize) -> usize {
    string_field_len(1, key) + message_field_len(2, value_len)
}

/// Writes a `KeyValue` field: its header, the key, and the `AnyValue` of `value_len` bytes that
/// `put_value` writes.
fn put_key_value_with(
    out: &mut Vec<u8>,
    field: u32,
    key: &str,
    value_len: usize,
    put_value: impl FnOnce(&mut Vec<u8>),
) {
    put_message_header(out, field, key_value_message_len(key, value_len));
    put_string_field(out, 1, key);
    put_message_header(out, 2, value_len);
    put_value(out);
}

pub(super) fn attributes_len(field: u32, attributes: &[KeyValue]) -> usize {
    attributes
        .iter()
        .map(|kv| message_field_len(field, key_value_len(kv.key.as_str(), &kv.value)))
        .sum()
}

pub(super) fn put_attributes(out: &mut Vec<u8>, field: u32, attributes: &[KeyValue]) {
    for kv in attributes {
        put_key_value(out, field, kv.key.as_str(), &kv.value);
    }
}

/// The length of a `KeyValue` field whose value is a single one, header included.
pub(super) fn single_key_value_field_len(field: u32, key: &str, value: &Single<'_>) -> usize {
    message_field_len(field, key_value_message_len(key, single_len(value)))
}

/// Writes a `KeyValue` field whose value is a single one, without building a `Value`.
pub(super) fn put_single_key_value(out: &mut Vec<u8>, field: u32, key: &str, value: &Single<'_>) {
    put_key_value_with(out, field, key, single_len(value), |out| {
        put_single(out, value);
    });
}
