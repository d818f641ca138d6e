//! Status events: written by hand in the bundled schema, and read back
//! (the status store, the send ledger, tests).

use apache_avro::Schema;
use apache_avro::types::Value;

use super::{binary, millis, record_fields, take_enum, take_string, take_time, unframe, unwrap_union, FieldError, Fields, WireError, HEADER_LEN, MAGIC};
use crate::model::{Channel, Encoding, ErrorClass, ErrorCode, Origin, Provider, SmsCost, Status, StatusEvent, Tried};

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

/// Why bytes are not a status event.
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
