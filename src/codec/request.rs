//! Requests: read from the bundled schema by hand, from any other writer
//! schema through apache-avro, and written as producers write them.

use apache_avro::Schema;
use apache_avro::types::Value;

use super::{binary, frame, millis, optional, record_fields, string_map, take_enum, take_string, take_string_map, take_time, unwrap_union};
use crate::model::{AndroidOverrides, AndroidPriority, ApnsOverrides, Channel, Content, Prefs, Priority, Request};

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

/// A request from an Avro value read with any compatible writer schema.
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
