//! Avro contracts and the Confluent wire format: magic byte 0, a big-endian
//! 4-byte schema id, then the Avro binary datum.
//!
//! Requests and status events are mapped to `Value` by hand rather than via
//! serde: the mapping is explicit about unions and enums, and it is the hot
//! path of every record.

use std::collections::HashMap;

use apache_avro::Schema;
use apache_avro::types::Value;
use chrono::{DateTime, TimeZone, Utc};

mod binary;

pub use binary::ReadError;
pub(crate) mod decode;
pub(crate) mod registry;
mod request;
mod status;

pub use request::encode_request;
pub use request::read_request;
pub use request::request_from_value;
pub use request::FieldError;
pub use decode::Undecodable;
pub use registry::RegistryError;
pub use request::RequestError;
pub use status::StatusDecodeError;
pub use status::decode_status;
pub use status::encode_status;
pub use status::read_status;

/// `schemas/notification.requested.avsc`, compiled in.
pub const REQUEST_SCHEMA: &str = include_str!("../../schemas/notification.requested.avsc");
pub(crate) const STATUS_SCHEMA: &str = include_str!("../../schemas/notification.status.avsc");

const MAGIC: u8 = 0;
const HEADER_LEN: usize = 5;

/// The schemas herald was built with, parsed once.
#[derive(Debug, Clone)]
pub struct Bundled {
    pub request: Schema,
    pub status: Schema,
}

impl Bundled {
    /// Parses the bundled schemas.
    pub fn load() -> Self {
        // Both files are compiled in and covered by tests, so failing here
        // is a build defect, not an operational error.
        Bundled {
            request: Schema::parse_str(REQUEST_SCHEMA).expect("bundled request schema parses"),
            status: Schema::parse_str(STATUS_SCHEMA).expect("bundled status schema parses"),
        }
    }
}

/// Why bytes are not in the Confluent wire format.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("record has no payload")]
    Empty,
    #[error("record is {0} bytes, shorter than the 5-byte wire header")]
    TooShort(usize),
    #[error("magic byte is {0}, not 0: not in the Confluent wire format")]
    BadMagic(u8),
}

/// Splits a framed record into its schema id and Avro datum.
pub fn unframe(bytes: &[u8]) -> Result<(u32, &[u8]), WireError> {
    match bytes {
        [] => Err(WireError::Empty),
        [magic, ..] if *magic != MAGIC => Err(WireError::BadMagic(*magic)),
        b if b.len() < HEADER_LEN => Err(WireError::TooShort(b.len())),
        b => Ok((u32::from_be_bytes([b[1], b[2], b[3], b[4]]), &b[HEADER_LEN..])),
    }
}

fn frame(schema_id: u32, schema: &Schema, value: Value) -> Result<Vec<u8>, apache_avro::Error> {
    let datum = apache_avro::to_avro_datum(schema, value)?;
    let mut out = Vec::with_capacity(HEADER_LEN + datum.len());
    out.push(MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(&datum);
    Ok(out)
}

type Fields = HashMap<String, Value>;

fn record_fields(value: Value) -> Option<Fields> {
    match value {
        Value::Record(fields) => Some(fields.into_iter().collect()),
        _ => None,
    }
}

fn unwrap_union(value: Value) -> Value {
    match value {
        Value::Union(_, inner) => *inner,
        other => other,
    }
}

fn take_string(f: &mut Fields, name: &str) -> Option<String> {
    match f.remove(name).map(unwrap_union)? {
        Value::String(s) => Some(s),
        _ => None,
    }
}

fn take_enum(f: &mut Fields, name: &str) -> Option<String> {
    match f.remove(name).map(unwrap_union)? {
        Value::Enum(_, s) => Some(s),
        _ => None,
    }
}

fn millis(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

fn take_time(f: &mut Fields, name: &str) -> Option<DateTime<Utc>> {
    match f.remove(name).map(unwrap_union)? {
        Value::TimestampMillis(ms) | Value::Long(ms) => millis(ms),
        _ => None,
    }
}

fn take_string_map(f: &mut Fields, name: &str) -> HashMap<String, String> {
    match f.remove(name) {
        Some(Value::Map(m)) => m
            .into_iter()
            .filter_map(|(k, v)| match v {
                Value::String(s) => Some((k, s)),
                _ => None,
            })
            .collect(),
        _ => HashMap::new(),
    }
}

fn optional(value: Option<Value>) -> Value {
    match value {
        Some(v) => Value::Union(1, Box::new(v)),
        None => Value::Union(0, Box::new(Value::Null)),
    }
}

fn string_map(m: &HashMap<String, String>) -> Value {
    Value::Map(m.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect())
}

#[cfg(test)]
mod tests;
