//! Avro contracts and the Confluent wire format: magic byte 0, a big-endian
//! 4-byte schema id, then the Avro binary datum.
//!
//! Requests and status events are mapped to `Value` by hand rather than via
//! serde: the mapping is explicit about unions and enums, and it is the hot
//! path of every record.

use std::collections::HashMap;

use apache_avro::types::Value;
use apache_avro::Schema;
use chrono::{DateTime, TimeZone, Utc};

use crate::model::{
    AndroidOverrides, AndroidPriority, ApnsOverrides, Channel, Content, Encoding, ErrorClass, ErrorCode, Origin, Prefs, Priority, Provider, Request, SmsCost, Status,
    StatusEvent, Tried,
};

mod binary;
pub mod decode;
pub mod registry;

pub const REQUEST_SCHEMA: &str = include_str!("../../schemas/notification.requested.avsc");
pub const STATUS_SCHEMA: &str = include_str!("../../schemas/notification.status.avsc");

const MAGIC: u8 = 0;
const HEADER_LEN: usize = 5;

/// The schemas herald was built with, parsed once.
#[derive(Debug, Clone)]
pub struct Bundled {
    pub request: Schema,
    pub status: Schema,
}

impl Bundled {
    pub fn load() -> Self {
        // Both files are compiled in and covered by tests, so failing here
        // is a build defect, not an operational error.
        Bundled {
            request: Schema::parse_str(REQUEST_SCHEMA).expect("bundled request schema parses"),
            status: Schema::parse_str(STATUS_SCHEMA).expect("bundled status schema parses"),
        }
    }
}

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

/// Why an Avro value does not make a request.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FieldError {
    #[error("field {0} is missing or has the wrong type")]
    Missing(&'static str),
}

/// Why an Avro value is not a request herald can act on.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error(transparent)]
    Field(#[from] FieldError),
    /// Well-formed, but for a channel this build does not deliver to; the
    /// ids are kept so the outcome can still be reported.
    #[error("channel {symbol} is not one herald delivers to")]
    UnknownChannel { event_id: String, user_id: String, symbol: String },
    #[error(transparent)]
    Binary(#[from] binary::ReadError),
}

/// Reads a request written with the bundled schema, by hand (see `binary`);
/// other writer schemas go through apache-avro and [`request_from_value`].
pub fn read_request(datum: &[u8]) -> Result<Request, RequestError> {
    let mut r = binary::Reader::new(datum);
    let event_id = r.string()?;
    let user_id = r.string()?;
    // The bundled symbols are Channel::ALL in order, then UNKNOWN. Without a
    // registry the writer's schema is unknown; writers add symbols (the
    // schema says so), so an index past this reader's symbols is one it
    // does not know, which Avro's resolution reads as the default, UNKNOWN.
    let channel = r.enum_index()?;
    let recipient = r.string()?;
    let title = r.optional(binary::Reader::string)?;
    let body = r.string()?;
    let template_vars = r.string_map()?;
    let data = r.string_map()?;
    let android = r.optional(read_android)?.map(Box::new);
    let apns = r.optional(read_apns)?.map(Box::new);
    let scheduled_at = r.optional(binary::Reader::long)?;
    let created_at = r.long()?;
    // A writer with the schema before these fields ends here: defaults.
    let (mut prefs, mut template_id) = (Prefs::default(), None);
    if !r.is_empty() {
        prefs.time_zone = r.optional(binary::Reader::string)?;
        prefs.locale = r.optional(binary::Reader::string)?;
        // Past the known symbols: one this reader lacks, read as UNKNOWN.
        prefs.priority = Priority::KNOWN.get(r.enum_index()?).copied().unwrap_or_default();
        template_id = r.optional(binary::Reader::string)?;
    }
    let Some(&channel) = Channel::ALL.get(channel) else {
        return Err(RequestError::UnknownChannel { event_id, user_id, symbol: "UNKNOWN".into() });
    };
    Ok(Request {
        event_id,
        user_id,
        channel,
        recipient,
        content: Content { title, body, template_id, template_vars, data, android, apns },
        scheduled_at: scheduled_at.map(|ms| millis(ms).ok_or(FieldError::Missing("scheduled_at"))).transpose()?,
        created_at: millis(created_at).ok_or(FieldError::Missing("created_at"))?,
        prefs,
    })
}

fn read_android(r: &mut binary::Reader<'_>) -> Result<AndroidOverrides, binary::ReadError> {
    // The bundled symbols are AndroidPriority::ALL in order, then UNKNOWN;
    // past them, as for the channel, a symbol this reader does not know.
    let priority = r.optional(binary::Reader::enum_index)?;
    let ttl_seconds = r.optional(binary::Reader::long)?;
    let collapse_key = r.optional(binary::Reader::string)?;
    let channel_id = r.optional(binary::Reader::string)?;
    let sound = r.optional(binary::Reader::string)?;
    let click_action = r.optional(binary::Reader::string)?;
    let priority = priority.and_then(|i| AndroidPriority::ALL.get(i).copied());
    Ok(AndroidOverrides { priority, ttl_seconds, collapse_key, channel_id, sound, click_action })
}

fn read_apns(r: &mut binary::Reader<'_>) -> Result<ApnsOverrides, binary::ReadError> {
    let headers = r.string_map()?;
    let sound = r.optional(binary::Reader::string)?;
    let badge = r.optional(binary::Reader::int)?;
    let category = r.optional(binary::Reader::string)?;
    let thread_id = r.optional(binary::Reader::string)?;
    let content_available = r.boolean()?;
    Ok(ApnsOverrides { headers, sound, badge, category, thread_id, content_available })
}

fn android_from_value(value: Value) -> Option<AndroidOverrides> {
    let mut f = record_fields(unwrap_union(value))?;
    Some(AndroidOverrides {
        priority: take_enum(&mut f, "priority").and_then(|s| AndroidPriority::ALL.into_iter().find(|p| p.symbol() == s)),
        ttl_seconds: match f.remove("ttl_seconds").map(unwrap_union) {
            Some(Value::Long(n)) => Some(n),
            _ => None,
        },
        collapse_key: take_string(&mut f, "collapse_key"),
        channel_id: take_string(&mut f, "channel_id"),
        sound: take_string(&mut f, "sound"),
        click_action: take_string(&mut f, "click_action"),
    })
}

fn apns_from_value(value: Value) -> Option<ApnsOverrides> {
    let mut f = record_fields(unwrap_union(value))?;
    Some(ApnsOverrides {
        headers: take_string_map(&mut f, "headers"),
        sound: take_string(&mut f, "sound"),
        badge: match f.remove("badge").map(unwrap_union) {
            Some(Value::Int(n)) => Some(n),
            _ => None,
        },
        category: take_string(&mut f, "category"),
        thread_id: take_string(&mut f, "thread_id"),
        content_available: matches!(f.remove("content_available"), Some(Value::Boolean(true))),
    })
}

pub fn request_from_value(value: Value) -> Result<Request, RequestError> {
    let mut fields = record_fields(value).ok_or(FieldError::Missing("<record>"))?;
    let event_id = take_string(&mut fields, "event_id").ok_or(FieldError::Missing("event_id"))?;
    let user_id = take_string(&mut fields, "user_id").ok_or(FieldError::Missing("user_id"))?;
    let symbol = take_enum(&mut fields, "channel").ok_or(FieldError::Missing("channel"))?;
    let Some(channel) = Channel::from_symbol(&symbol) else {
        return Err(RequestError::UnknownChannel { event_id, user_id, symbol });
    };
    let mut content = record_fields(fields.remove("content").ok_or(FieldError::Missing("content"))?)
        .ok_or(FieldError::Missing("content"))?;
    Ok(Request {
        event_id,
        user_id,
        channel,
        recipient: take_string(&mut fields, "recipient").ok_or(FieldError::Missing("recipient"))?,
        content: Content {
            title: take_string(&mut content, "title"),
            body: take_string(&mut content, "body").ok_or(FieldError::Missing("content.body"))?,
            template_id: take_string(&mut fields, "template_id"),
            template_vars: take_string_map(&mut content, "template_vars"),
            data: take_string_map(&mut content, "data"),
            android: content.remove("android").and_then(android_from_value).map(Box::new),
            apns: content.remove("apns").and_then(apns_from_value).map(Box::new),
        },
        scheduled_at: take_time(&mut fields, "scheduled_at"),
        created_at: take_time(&mut fields, "created_at").ok_or(FieldError::Missing("created_at"))?,
        prefs: Prefs {
            time_zone: take_string(&mut fields, "time_zone"),
            locale: take_string(&mut fields, "locale"),
            priority: take_enum(&mut fields, "priority").and_then(|s| Priority::KNOWN.into_iter().find(|p| p.symbol() == s)).unwrap_or_default(),
        },
    })
}

/// Encodes a request as producers do. herald itself never writes requests;
/// this is for the demo, tests and benchmarks, and as a reference.
pub fn encode_request(schema: &Schema, schema_id: u32, r: &Request) -> Result<Vec<u8>, apache_avro::Error> {
    let content = Value::Record(vec![
        ("title".into(), optional(r.content.title.clone().map(Value::String))),
        ("body".into(), Value::String(r.content.body.clone())),
        ("template_vars".into(), string_map(&r.content.template_vars)),
        ("data".into(), string_map(&r.content.data)),
        ("android".into(), optional(r.content.android.as_deref().map(android_value))),
        ("apns".into(), optional(r.content.apns.as_deref().map(apns_value))),
    ]);
    let value = Value::Record(vec![
        ("event_id".into(), Value::String(r.event_id.clone())),
        ("user_id".into(), Value::String(r.user_id.clone())),
        ("channel".into(), Value::Enum(r.channel.index() as u32, r.channel.symbol().into())),
        ("recipient".into(), Value::String(r.recipient.clone())),
        ("content".into(), content),
        ("scheduled_at".into(), optional(r.scheduled_at.map(|t| Value::TimestampMillis(t.timestamp_millis())))),
        ("created_at".into(), Value::TimestampMillis(r.created_at.timestamp_millis())),
        ("time_zone".into(), optional(r.prefs.time_zone.clone().map(Value::String))),
        ("locale".into(), optional(r.prefs.locale.clone().map(Value::String))),
        ("priority".into(), Value::Enum(priority_index(r.prefs.priority), r.prefs.priority.symbol().into())),
        ("template_id".into(), optional(r.content.template_id.clone().map(Value::String))),
    ]);
    frame(schema_id, schema, value)
}

fn priority_index(p: Priority) -> u32 {
    Priority::KNOWN.iter().position(|k| *k == p).unwrap_or(Priority::KNOWN.len()) as u32
}

fn android_value(a: &AndroidOverrides) -> Value {
    let text = |s: &Option<String>| optional(s.clone().map(Value::String));
    Value::Record(vec![
        ("priority".into(), optional(a.priority.map(|p| Value::Enum(p as u32, p.symbol().into())))),
        ("ttl_seconds".into(), optional(a.ttl_seconds.map(Value::Long))),
        ("collapse_key".into(), text(&a.collapse_key)),
        ("channel_id".into(), text(&a.channel_id)),
        ("sound".into(), text(&a.sound)),
        ("click_action".into(), text(&a.click_action)),
    ])
}

fn apns_value(a: &ApnsOverrides) -> Value {
    let text = |s: &Option<String>| optional(s.clone().map(Value::String));
    Value::Record(vec![
        ("headers".into(), string_map(&a.headers)),
        ("sound".into(), text(&a.sound)),
        ("badge".into(), optional(a.badge.map(Value::Int))),
        ("category".into(), text(&a.category)),
        ("thread_id".into(), text(&a.thread_id)),
        ("content_available".into(), Value::Boolean(a.content_available)),
    ])
}

// Symbol indexes follow the order in notification.status.avsc.
const STATUS_CHANNEL_UNKNOWN: usize = 2;

fn status_index(s: Status) -> usize {
    match s {
        Status::Sent => 0,
        Status::RateLimited => 1,
        Status::RetryScheduled => 2,
        Status::Failed => 3,
        Status::DeadLettered => 4,
        Status::Invalid => 5,
        Status::Scheduled => 6,
        Status::Deferred => 7,
        Status::Delivered => 8,
        Status::Undelivered => 9,
        Status::Suppressed => 10,
        // 11 is UNKNOWN, the default for readers that predate a symbol.
        Status::Cancelled => 12,
    }
}

fn error_class_index(c: ErrorClass) -> usize {
    match c {
        ErrorClass::Invalid => 0,
        ErrorClass::Permanent => 1,
        ErrorClass::Transient => 2,
        ErrorClass::RateLimited => 3,
    }
}

/// Writes a status event with the bundled schema, by hand (see `binary`).
pub fn encode_status(schema_id: u32, e: &StatusEvent) -> Vec<u8> {
    let strings = e.event_id.len()
        + e.user_id.len()
        + e.error_message.as_ref().map_or(0, String::len)
        + e.recipient.as_ref().map_or(0, String::len)
        + e.origin.as_ref().map_or(0, |o| o.topic.len() + 16)
        + e.tried.len() * 32
        + e.locale.as_ref().map_or(0, String::len);
    let mut w = binary::Writer { buf: Vec::with_capacity(HEADER_LEN + 64 + strings) };
    w.buf.push(MAGIC);
    w.buf.extend_from_slice(&schema_id.to_be_bytes());
    w.string(&e.event_id);
    w.string(&e.user_id);
    w.index(e.channel.map_or(STATUS_CHANNEL_UNKNOWN, Channel::index));
    w.index(status_index(e.status));
    w.long(i64::from(e.attempt.min(i32::MAX as u32)));
    let texts = [e.provider.map(Provider::name), e.provider_message_id.as_deref(), e.error_code.as_ref().map(ErrorCode::as_str)];
    for text in texts {
        w.optional(text, |w, s| w.string(s));
    }
    w.optional(e.error_class, |w, c| w.index(error_class_index(c)));
    w.optional(e.error_message.as_deref(), |w, s| w.string(s));
    w.long(e.occurred_at.timestamp_millis());
    w.optional(e.next_attempt_at, |w, t| w.long(t.timestamp_millis()));
    w.optional(e.recipient.as_deref(), |w, s| w.string(s));
    w.optional(e.created_at, |w, t| w.long(t.timestamp_millis()));
    w.optional(e.scheduled_at, |w, t| w.long(t.timestamp_millis()));
    w.optional(e.sms, |w, c| w.long(i64::from(c.segments)));
    w.optional(e.sms, |w, c| w.index(c.encoding as usize));
    w.optional(e.origin.as_ref(), |w, o| {
        w.string(&o.topic);
        w.long(i64::from(o.partition));
        w.long(o.offset);
    });
    // An array is written as one block of its items, then an empty block.
    if !e.tried.is_empty() {
        w.long(e.tried.len() as i64);
        for t in &e.tried {
            w.string(t.provider.name());
            w.string(t.error_code.as_str());
        }
    }
    w.long(0);
    w.optional(e.locale.as_deref(), |w, s| w.string(s));
    w.buf
}

#[derive(Debug, thiserror::Error)]
pub enum StatusDecodeError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("avro: {0}")]
    Avro(#[from] apache_avro::Error),
    #[error(transparent)]
    Field(#[from] FieldError),
    #[error(transparent)]
    Binary(#[from] binary::ReadError),
    /// A status symbol this build does not know: from a newer writer.
    #[error("status symbol {0} is not one this build knows")]
    UnknownStatus(usize),
}

/// Reads a framed status event by hand, as written with the bundled
/// schema or a newer one that appended fields. Symbols a newer writer
/// added read as unknown: a channel, provider or error class as `None`, a
/// status as an error the caller can skip.
pub fn read_status(bytes: &[u8]) -> Result<StatusEvent, StatusDecodeError> {
    let (_, datum) = unframe(bytes)?;
    let mut r = binary::Reader::new(datum);
    let event_id = r.string()?;
    let user_id = r.string()?;
    let channel = Channel::ALL.get(r.enum_index()?).copied();
    let status = r.enum_index()?;
    let status = Status::ALL.into_iter().find(|s| status_index(*s) == status).ok_or(StatusDecodeError::UnknownStatus(status))?;
    let attempt = r.int()?.max(0) as u32;
    let provider = r.optional(binary::Reader::string)?.as_deref().and_then(Provider::from_name);
    let provider_message_id = r.optional(binary::Reader::string)?;
    let error_code = r.optional(binary::Reader::string)?.map(ErrorCode::read);
    let error_class = r.optional(binary::Reader::enum_index)?.and_then(|i| ErrorClass::ALL.into_iter().find(|c| error_class_index(*c) == i));
    let error_message = r.optional(binary::Reader::string)?;
    let occurred_at = millis(r.long()?).ok_or(FieldError::Missing("occurred_at"))?;
    let next_attempt_at = r.optional(binary::Reader::long)?.and_then(millis);
    // Written by a herald that predates these fields: their defaults.
    let (mut recipient, mut created_at, mut scheduled_at, mut sms, mut origin, mut tried, mut locale) = (None, None, None, None, None, Vec::new(), None);
    if !r.is_empty() {
        recipient = r.optional(binary::Reader::string)?;
        created_at = r.optional(binary::Reader::long)?.and_then(millis);
        scheduled_at = r.optional(binary::Reader::long)?.and_then(millis);
        let segments = r.optional(binary::Reader::int)?;
        let encoding = r.optional(binary::Reader::enum_index)?.and_then(|i| Encoding::ALL.get(i).copied());
        sms = segments.zip(encoding).map(|(segments, encoding)| SmsCost { segments: segments.max(0) as u32, encoding });
        origin = r.optional(|r| Ok(Origin { topic: r.string()?, partition: r.int()?, offset: r.long()? }))?;
        loop {
            let count = r.long()?;
            if count == 0 {
                break;
            }
            // A negative count is followed by the block's size in bytes.
            if count < 0 {
                r.long()?;
            }
            for _ in 0..count.unsigned_abs() {
                let provider = r.string()?;
                let code = r.string()?;
                if let Some(provider) = Provider::from_name(&provider) {
                    tried.push(Tried { provider, error_code: ErrorCode::read(code) });
                }
            }
        }
        if !r.is_empty() {
            locale = r.optional(binary::Reader::string)?;
        }
    }
    Ok(StatusEvent {
        event_id,
        user_id,
        channel,
        status,
        attempt,
        provider,
        provider_message_id,
        error_code,
        error_class,
        error_message,
        occurred_at,
        next_attempt_at,
        recipient,
        created_at,
        scheduled_at,
        sms,
        origin,
        tried,
        locale,
    })
}

/// Decodes a status event with the bundled schema: for subscribers, the
/// demo and tests.
pub fn decode_status(schema: &Schema, bytes: &[u8]) -> Result<StatusEvent, StatusDecodeError> {
    let (_, mut datum) = unframe(bytes)?;
    let value = apache_avro::from_avro_datum(schema, &mut datum, None)?;
    let mut f = record_fields(value).ok_or(FieldError::Missing("<record>"))?;
    let status = take_enum(&mut f, "status").ok_or(FieldError::Missing("status"))?;
    Ok(StatusEvent {
        event_id: take_string(&mut f, "event_id").ok_or(FieldError::Missing("event_id"))?,
        user_id: take_string(&mut f, "user_id").ok_or(FieldError::Missing("user_id"))?,
        channel: take_enum(&mut f, "channel").and_then(|s| Channel::from_symbol(&s)),
        status: Status::from_symbol(&status).ok_or(FieldError::Missing("status"))?,
        attempt: match f.remove("attempt") {
            Some(Value::Int(n)) => n.max(0) as u32,
            _ => return Err(FieldError::Missing("attempt").into()),
        },
        provider: take_string(&mut f, "provider").as_deref().and_then(Provider::from_name),
        provider_message_id: take_string(&mut f, "provider_message_id"),
        error_code: take_string(&mut f, "error_code").map(ErrorCode::read),
        error_class: match f.remove("error_class") {
            Some(Value::Union(_, v)) => match *v {
                Value::Enum(_, s) => ErrorClass::from_symbol(&s),
                _ => None,
            },
            _ => None,
        },
        error_message: take_string(&mut f, "error_message"),
        occurred_at: take_time(&mut f, "occurred_at").ok_or(FieldError::Missing("occurred_at"))?,
        next_attempt_at: take_time(&mut f, "next_attempt_at"),
        recipient: take_string(&mut f, "recipient"),
        created_at: take_time(&mut f, "created_at"),
        scheduled_at: take_time(&mut f, "scheduled_at"),
        sms: match (f.remove("sms_segments").map(unwrap_union), take_enum(&mut f, "sms_encoding")) {
            (Some(Value::Int(segments)), Some(encoding)) => Encoding::ALL
                .into_iter()
                .find(|e| e.symbol() == encoding)
                .map(|encoding| SmsCost { segments: segments.max(0) as u32, encoding }),
            _ => None,
        },
        origin: match f.remove("origin").map(unwrap_union) {
            Some(Value::Record(fields)) => {
                let mut o: Fields = fields.into_iter().collect();
                match (take_string(&mut o, "topic"), o.remove("partition"), o.remove("offset")) {
                    (Some(topic), Some(Value::Int(partition)), Some(Value::Long(offset))) => Some(Origin { topic, partition, offset }),
                    _ => None,
                }
            }
            _ => None,
        },
        tried: match f.remove("providers_tried") {
            Some(Value::Array(items)) => items
                .into_iter()
                .filter_map(|item| {
                    let mut t = record_fields(item)?;
                    let provider = Provider::from_name(&take_string(&mut t, "provider")?)?;
                    Some(Tried { provider, error_code: ErrorCode::read(take_string(&mut t, "error_code")?) })
                })
                .collect(),
            _ => Vec::new(),
        },
        locale: take_string(&mut f, "locale"),
    })
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
mod tests {
    use super::*;

    fn sample_request() -> Request {
        Request {
            prefs: Default::default(),
            event_id: "evt-1".into(),
            user_id: "user-1".into(),
            channel: Channel::Push,
            recipient: "token-abc".into(),
            content: Content {
                template_id: None,
                title: Some("Hi".into()),
                body: "Hello there".into(),
                template_vars: HashMap::from([("name".into(), "Ada".into())]),
                data: HashMap::from([("k".into(), "v".into())]),
                android: Some(Box::new(AndroidOverrides {
                    priority: Some(AndroidPriority::High),
                    ttl_seconds: Some(3600),
                    collapse_key: Some("news".into()),
                    channel_id: None,
                    sound: Some("default".into()),
                    click_action: None,
                })),
                apns: Some(Box::new(ApnsOverrides {
                    headers: HashMap::from([("apns-priority".into(), "10".into())]),
                    badge: Some(3),
                    content_available: true,
                    ..ApnsOverrides::default()
                })),
            },
            scheduled_at: Some(Utc.timestamp_millis_opt(1_800_000_000_123).unwrap()),
            created_at: Utc.timestamp_millis_opt(1_700_000_000_456).unwrap(),
        }
    }

    #[test]
    fn request_round_trips_through_the_wire_format() {
        let b = Bundled::load();
        let bytes = encode_request(&b.request, 42, &sample_request()).unwrap();
        let (id, mut datum) = unframe(&bytes).unwrap();
        assert_eq!(id, 42);
        let value = apache_avro::from_avro_datum(&b.request, &mut datum, None).unwrap();
        assert_eq!(request_from_value(value).unwrap(), sample_request());
    }

    #[test]
    fn a_request_written_with_the_schema_before_quiet_hours_resolves_with_defaults() {
        // The schema as it was: without the four fields appended for quiet
        // hours and templates. A registry hands herald such a writer schema.
        let mut older: serde_json::Value = serde_json::from_str(REQUEST_SCHEMA).unwrap();
        let fields = older["fields"].as_array_mut().unwrap();
        let new = ["time_zone", "locale", "priority", "template_id"];
        fields.retain(|f| !new.contains(&f["name"].as_str().unwrap()));
        let older = Schema::parse_str(&older.to_string()).unwrap();
        let b = Bundled::load();
        let request = sample_request();
        let Value::Record(mut fields) = apache_avro::from_avro_datum(&b.request, &mut unframe(&encode_request(&b.request, 1, &request).unwrap()).unwrap().1, None).unwrap() else {
            panic!("a record")
        };
        fields.retain(|(name, _)| !new.contains(&name.as_str()));
        let datum = apache_avro::to_avro_datum(&older, Value::Record(fields)).unwrap();
        let resolved = apache_avro::from_avro_datum(&older, &mut &datum[..], Some(&b.request)).unwrap();
        assert_eq!(request_from_value(resolved).unwrap(), request, "defaults: no zone, no locale, UNKNOWN, no template");
        // Without a registry, the hand reader takes the older datum too.
        assert_eq!(read_request(&datum), Ok(request));
    }

    #[test]
    fn time_zone_locale_priority_and_template_round_trip_both_ways() {
        let b = Bundled::load();
        let prefs = Prefs { time_zone: Some("America/New_York".into()), locale: Some("pt-BR".into()), priority: Priority::Urgent };
        let mut request = Request { prefs, ..sample_request() };
        request.content.template_id = Some("order_shipped".into());
        let bytes = encode_request(&b.request, 1, &request).unwrap();
        let mut datum = unframe(&bytes).unwrap().1;
        assert_eq!(read_request(datum), Ok(request.clone()));
        let value = apache_avro::from_avro_datum(&b.request, &mut datum, None).unwrap();
        assert_eq!(request_from_value(value).unwrap(), request);
        // A priority symbol a newer writer added reads as UNKNOWN.
        let mut newer = unframe(&bytes).unwrap().1.to_vec();
        let at = newer.len() - 1 - 1 - "order_shipped".len() - 1;
        assert_eq!(newer[at], 2, "URGENT's index, zigzagged");
        newer[at] = 8;
        assert_eq!(read_request(&newer).unwrap().prefs.priority, Priority::Unknown);
    }

    #[test]
    fn the_hand_reader_reads_what_apache_avro_writes() {
        let b = Bundled::load();
        let minimal = Request {
            channel: Channel::Sms,
            recipient: "+14155550100".into(),
            content: Content { body: "Grüße 👋".into(), ..Content::default() },
            scheduled_at: None,
            ..sample_request()
        };
        let many = Content {
            template_vars: (0..100).map(|i| (format!("k{i}"), "v".repeat(i))).collect(),
            ..sample_request().content
        };
        for request in [sample_request(), minimal, Request { content: many, ..sample_request() }] {
            let bytes = encode_request(&b.request, 1, &request).unwrap();
            assert_eq!(read_request(unframe(&bytes).unwrap().1), Ok(request));
        }
    }

    #[test]
    fn the_hand_reader_reports_unknown_channels_and_truncation() {
        let b = Bundled::load();
        let bytes = encode_request(&b.request, 1, &sample_request()).unwrap();
        let datum = unframe(&bytes).unwrap().1;
        // Three nulls and an enum index: the fields appended for quiet hours
        // and templates. A datum that ends before them is an older writer's.
        let older = datum.len() - 4;
        for cut in (0..datum.len()).filter(|cut| *cut != older) {
            assert!(read_request(&datum[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(read_request(&datum[..older]), Ok(sample_request()), "an older writer's request reads with defaults");
        let mut unknown = datum.to_vec();
        let channel_at = 1 + "evt-1".len() + 1 + "user-1".len();
        // zigzag 2: UNKNOWN; 3 and 60: symbols a newer writer added.
        for index in [4, 6, 120] {
            unknown[channel_at] = index;
            assert_eq!(
                read_request(&unknown),
                Err(RequestError::UnknownChannel { event_id: "evt-1".into(), user_id: "user-1".into(), symbol: "UNKNOWN".into() }),
                "index {}", index / 2
            );
        }
        unknown[channel_at] = 1; // zigzag -1
        assert!(matches!(read_request(&unknown), Err(RequestError::Binary(_))));
    }

    #[test]
    fn status_round_trips_with_every_optional_field() {
        let b = Bundled::load();
        let event = StatusEvent {
            locale: None,
            event_id: "e".into(),
            user_id: "u".into(),
            channel: None,
            status: Status::RetryScheduled,
            attempt: 2,
            provider: Some(Provider::Twilio),
            provider_message_id: None,
            error_code: Some(ErrorCode::http(503)),
            error_class: Some(ErrorClass::Transient),
            error_message: Some("provider unavailable".into()),
            occurred_at: Utc.timestamp_millis_opt(1_700_000_000_000).unwrap(),
            next_attempt_at: Some(Utc.timestamp_millis_opt(1_700_000_600_000).unwrap()),
            recipient: Some("+*******0100".into()),
            created_at: Some(Utc.timestamp_millis_opt(1_699_999_999_000).unwrap()),
            scheduled_at: Some(Utc.timestamp_millis_opt(1_700_000_000_000).unwrap()),
            sms: Some(SmsCost { segments: 3, encoding: Encoding::Ucs2 }),
            origin: Some(Origin { topic: "notification.requested".into(), partition: 4, offset: 1_234_567_890_123 }),
            tried: vec![
                Tried { provider: Provider::Twilio, error_code: ErrorCode::http(503) },
                Tried { provider: Provider::Vonage, error_code: ErrorCode::provider(Provider::Vonage, "6") },
            ],
        };
        // Written by hand, read back by apache-avro.
        let bytes = encode_status(0, &event);
        assert_eq!(decode_status(&b.status, &bytes).unwrap(), event);
        assert_eq!(read_status(&bytes).unwrap(), event, "and by the hand reader");
        let bare = StatusEvent {
            channel: Some(Channel::Sms),
            status: Status::Sent,
            provider: None,
            error_code: None,
            error_class: None,
            error_message: None,
            next_attempt_at: None,
            provider_message_id: Some("SM1".into()),
            recipient: None,
            created_at: None,
            scheduled_at: None,
            sms: None,
            origin: None,
            tried: Vec::new(),
            ..event
        };
        for status in Status::ALL {
            let e = StatusEvent { status, ..bare.clone() };
            assert_eq!(decode_status(&b.status, &encode_status(7, &e)).unwrap(), e);
            assert_eq!(read_status(&encode_status(7, &e)).unwrap(), e, "the hand reader too");
        }
    }

    #[test]
    fn a_status_from_a_herald_older_than_the_enrichment_reads_with_defaults() {
        let event = StatusEvent {
            locale: None,
            event_id: "e".into(),
            user_id: "u".into(),
            channel: Some(Channel::Sms),
            status: Status::Sent,
            attempt: 1,
            provider: Some(Provider::Twilio),
            provider_message_id: Some("SM1".into()),
            error_code: None,
            error_class: None,
            error_message: None,
            occurred_at: Utc.timestamp_millis_opt(1_700_000_000_000).unwrap(),
            next_attempt_at: None,
            recipient: None,
            created_at: None,
            scheduled_at: None,
            sms: None,
            origin: None,
            tried: Vec::new(),
        };
        let bytes = encode_status(0, &event);
        // Seven null unions and an empty array: what the oldest writer lacked.
        let older = &bytes[..bytes.len() - 8];
        assert_eq!(read_status(older).unwrap(), event);
        // And the null locale: what a writer before templates lacked.
        assert_eq!(read_status(&bytes[..bytes.len() - 1]).unwrap(), event);
    }

    #[test]
    fn the_status_hand_reader_takes_symbols_and_fields_a_newer_writer_added() {
        let event = StatusEvent {
            locale: None,
            event_id: "e".into(),
            user_id: "u".into(),
            channel: Some(Channel::Push),
            status: Status::Sent,
            attempt: 1,
            provider: None,
            provider_message_id: None,
            error_code: None,
            error_class: Some(ErrorClass::Permanent),
            error_message: None,
            occurred_at: Utc.timestamp_millis_opt(1_700_000_000_000).unwrap(),
            next_attempt_at: None,
            recipient: None,
            created_at: None,
            scheduled_at: None,
            sms: None,
            origin: None,
            tried: Vec::new(),
        };
        let mut bytes = encode_status(0, &event);
        bytes.extend([2, b'x']); // a field appended by a newer schema
        assert_eq!(read_status(&bytes).unwrap(), event);
        let at = 5 + 2 + 2; // header, then event_id and user_id of one byte each
        bytes[at] = 10; // channel index 5: unknown
        assert_eq!(read_status(&bytes).unwrap().channel, None);
        bytes[at + 1] = 40; // status index 20: unknown
        assert!(matches!(read_status(&bytes), Err(StatusDecodeError::UnknownStatus(20))));
    }

    #[test]
    fn every_status_is_a_schema_symbol_and_back() {
        let Schema::Record(record) = Bundled::load().status else { panic!("status schema is a record") };
        let field = record.fields.iter().find(|f| f.name == "status").expect("status field");
        let Schema::Enum(e) = &field.schema else { panic!("status is an enum") };
        let known: Vec<&str> = e.symbols.iter().map(String::as_str).filter(|s| *s != "UNKNOWN").collect();
        assert_eq!(known, Status::ALL.map(Status::symbol));
    }

    #[test]
    fn unframe_rejects_what_is_not_the_wire_format() {
        assert_eq!(unframe(&[]), Err(WireError::Empty));
        assert_eq!(unframe(&[1, 0, 0, 0, 1, 9]), Err(WireError::BadMagic(1)));
        assert_eq!(unframe(&[0, 0, 1]), Err(WireError::TooShort(3)));
        assert_eq!(unframe(&[0, 0, 0, 1, 2, 7]), Ok((258, &[7u8][..])));
    }
}
