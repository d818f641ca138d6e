//! Headers herald puts on records it moves to a retry or dead-letter topic,
//! and reads back when it consumes them. The payload is never changed: a
//! copy holds the producer's bytes exactly, or, when the record is too
//! large to copy, none of them (`herald-original-size` says how many).

use chrono::{DateTime, TimeZone, Utc};
use rdkafka::message::{Header, Headers, OwnedHeaders};

use crate::model::{Attempts, ErrorClass, ErrorCode};

/// Attempts made before this copy.
pub const ATTEMPTS: &str = "herald-attempts";
/// When a parked copy is due, in epoch milliseconds.
pub const NOT_BEFORE: &str = "herald-not-before";
/// The topic the request was first read from.
pub const ORIGINAL_TOPIC: &str = "herald-original-topic";
/// Its partition there.
pub const ORIGINAL_PARTITION: &str = "herald-original-partition";
/// Its offset there.
pub const ORIGINAL_OFFSET: &str = "herald-original-offset";
/// A dead letter's error class.
pub const ERROR_CLASS: &str = "herald-error-class";
/// A dead letter's error code.
pub const ERROR_CODE: &str = "herald-error-code";
/// A dead letter's error message.
pub const ERROR_MESSAGE: &str = "herald-error-message";
/// On a copy that carries none of the producer's bytes: how many bytes of
/// key, value and headers the record had.
pub const ORIGINAL_SIZE: &str = "herald-original-size";

/// Every header herald writes on a copy. A copy replaces these and keeps
/// every other header, `herald-replayed-from` included, so a replayed
/// record that is dead-lettered again still says where it came from.
const OWN: [&str; 11] = [
    ATTEMPTS,
    NOT_BEFORE,
    ORIGINAL_TOPIC,
    ORIGINAL_PARTITION,
    ORIGINAL_OFFSET,
    ERROR_CLASS,
    ERROR_CODE,
    ERROR_MESSAGE,
    ORIGINAL_SIZE,
    super::seal::OWNER,
    super::seal::TAG,
];

fn own(key: &str) -> bool {
    OWN.contains(&key)
}

/// herald's error message headers are cut to this many bytes, so the
/// headers herald adds stay within a fixed room (see `Publisher`).
const MAX_MESSAGE_BYTES: usize = 256;

pub(crate) use crate::model::Origin;

/// Why the record is where it is: the error behind its last move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ErrorHeaders {
    pub class: ErrorClass,
    pub code: ErrorCode,
    /// herald's own sentence, free of personal data.
    pub message: String,
}

/// herald's headers on a consumed record. A record from the requests topic
/// has none: no attempts made, due now, and it is its own origin.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Envelope {
    /// Delivery attempts already made.
    pub attempts: Attempts,
    pub not_before: Option<DateTime<Utc>>,
    pub origin: Option<Origin>,
    /// The error that sent it here, so a copy parked again keeps it.
    pub error: Option<ErrorHeaders>,
}

/// A header herald wrote that does not parse.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("header {header} is not a valid number, or out of range")]
pub struct EnvelopeError {
    pub header: &'static str,
}

impl Envelope {
    pub(crate) fn read(headers: Option<&OwnedHeaders>) -> Result<Envelope, EnvelopeError> {
        let mut envelope = Envelope::default();
        let Some(headers) = headers else { return Ok(envelope) };
        let (mut topic, mut partition, mut offset) = (None, None, None);
        let (mut class, mut code, mut message) = (None, None, None);
        for h in headers.iter() {
            if !own(h.key) {
                continue;
            }
            let value = h.value.and_then(|v| std::str::from_utf8(v).ok()).unwrap_or_default();
            match h.key {
                ATTEMPTS => {
                    envelope.attempts = Attempts::made(number(ATTEMPTS, value)?).ok_or(EnvelopeError { header: ATTEMPTS })?;
                }
                NOT_BEFORE => {
                    let millis: i64 = number(NOT_BEFORE, value)?;
                    envelope.not_before = Some(Utc.timestamp_millis_opt(millis).single().ok_or(EnvelopeError { header: NOT_BEFORE })?);
                }
                ORIGINAL_TOPIC => topic = Some(value.to_owned()),
                ORIGINAL_PARTITION => partition = Some(number(ORIGINAL_PARTITION, value)?),
                ORIGINAL_OFFSET => offset = Some(number(ORIGINAL_OFFSET, value)?),
                // Informational: a class this build does not know is dropped.
                ERROR_CLASS => class = ErrorClass::from_symbol(value),
                ERROR_CODE => code = Some(ErrorCode::read(value.to_owned())),
                ERROR_MESSAGE => message = Some(value.to_owned()),
                _ => {}
            }
        }
        if let (Some(topic), Some(partition), Some(offset)) = (topic, partition, offset) {
            envelope.origin = Some(Origin { topic, partition, offset });
        }
        if let (Some(class), Some(code)) = (class, code) {
            envelope.error = Some(ErrorHeaders { class, code, message: message.unwrap_or_default() });
        }
        Ok(envelope)
    }

    /// Headers for the record's next hop: the `original` headers given
    /// are kept (a stripped copy, which says its `original_size`, is given
    /// only those herald propagates), herald's are replaced.
    pub(crate) fn write(&self, original: Option<&OwnedHeaders>, origin: &Origin, original_size: Option<usize>) -> OwnedHeaders {
        let mut out = OwnedHeaders::new();
        if let Some(original) = original {
            for h in original.iter().filter(|h| !own(h.key)) {
                out = out.insert(Header { key: h.key, value: h.value });
            }
        }
        let mut add = |key: &str, value: &str| {
            out = std::mem::take(&mut out).insert(Header { key, value: Some(value) });
        };
        add(ATTEMPTS, &self.attempts.count().to_string());
        if let Some(t) = self.not_before {
            // Rounded up: a record must not come due a fraction of a
            // millisecond before its time (a rate-limit window that frees
            // then would still be full).
            let millis = t.timestamp_millis() + i64::from(t.timestamp_subsec_nanos() % 1_000_000 != 0);
            add(NOT_BEFORE, &millis.to_string());
        }
        add(ORIGINAL_TOPIC, &origin.topic);
        add(ORIGINAL_PARTITION, &origin.partition.to_string());
        add(ORIGINAL_OFFSET, &origin.offset.to_string());
        if let Some(error) = &self.error {
            add(ERROR_CLASS, error.class.symbol());
            add(ERROR_CODE, error.code.as_str());
            add(ERROR_MESSAGE, cut(&error.message, MAX_MESSAGE_BYTES));
        }
        if let Some(size) = original_size {
            add(ORIGINAL_SIZE, &size.to_string());
        }
        out
    }
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn number<T: std::str::FromStr>(header: &'static str, value: &str) -> Result<T, EnvelopeError> {
    value.parse().map_err(|_| EnvelopeError { header })
}

/// Reads one header's value as text; for tests and tools.
pub fn header<'a>(headers: &'a OwnedHeaders, key: &str) -> Option<&'a str> {
    headers.iter().find(|h| h.key == key).and_then(|h| h.value).and_then(|v| std::str::from_utf8(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MAX_ATTEMPTS;

    fn transient() -> ErrorHeaders {
        ErrorHeaders { class: ErrorClass::Transient, code: ErrorCode::http(503), message: "down".into() }
    }

    #[test]
    fn round_trips_and_keeps_the_producers_headers() {
        let original = OwnedHeaders::new()
            .insert(Header { key: "traceparent", value: Some("00-abc") })
            .insert(Header { key: ATTEMPTS, value: Some("1") });
        let origin = Origin { topic: "notification.requested".into(), partition: 3, offset: 42 };
        let envelope = Envelope {
            attempts: Attempts::made(2).unwrap(),
            not_before: Some(Utc.timestamp_millis_opt(1_700_000_000_123).unwrap()),
            origin: Some(origin.clone()),
            error: Some(transient()),
        };
        let written = envelope.write(Some(&original), &origin, None);
        assert_eq!(Envelope::read(Some(&written)), Ok(envelope));
        assert_eq!(header(&written, "traceparent"), Some("00-abc"));
        assert_eq!(header(&written, ERROR_CLASS), Some("TRANSIENT"));
        assert_eq!(header(&written, ORIGINAL_SIZE), None);
        assert_eq!(written.iter().filter(|h| h.key == ATTEMPTS).count(), 1, "old herald headers replaced");
    }

    #[test]
    fn a_copy_without_the_producers_bytes_says_how_large_it_was() {
        let original = OwnedHeaders::new().insert(Header { key: "big", value: Some(&[0u8; 64][..]) });
        let origin = Origin { topic: "t".into(), partition: 0, offset: 0 };
        let written = Envelope::default().write(None, &origin, Some(2_000_000));
        assert_eq!(header(&written, ORIGINAL_SIZE), Some("2000000"));
        assert!(written.iter().all(|h| own(h.key)), "none of the producer's headers");
        // The caller keeps what it chooses (the propagated trace headers).
        let kept = Envelope::default().write(Some(&original), &origin, Some(2_000_000));
        assert_eq!(kept.iter().filter(|h| !own(h.key)).map(|h| h.key).collect::<Vec<_>>(), ["big"]);
    }

    #[test]
    fn long_error_messages_are_cut_at_a_character_boundary() {
        let origin = Origin { topic: "t".into(), partition: 0, offset: 0 };
        let error = ErrorHeaders { message: "é".repeat(200), ..transient() };
        let written = Envelope { error: Some(error), ..Envelope::default() }.write(None, &origin, None);
        let message = header(&written, ERROR_MESSAGE).unwrap();
        assert_eq!(message.len(), MAX_MESSAGE_BYTES);
        assert_eq!(message, "é".repeat(128));
    }

    #[test]
    fn a_record_without_headers_is_a_fresh_request() {
        assert_eq!(Envelope::read(None), Ok(Envelope::default()));
    }

    #[test]
    fn garbled_numbers_are_errors() {
        for bad in ["two", "-1", "4294967295", "4294967296", "1001"] {
            let h = OwnedHeaders::new().insert(Header { key: ATTEMPTS, value: Some(bad) });
            assert_eq!(Envelope::read(Some(&h)), Err(EnvelopeError { header: ATTEMPTS }), "{bad}");
        }
        let h = OwnedHeaders::new().insert(Header { key: ATTEMPTS, value: Some("1000") });
        assert_eq!(Envelope::read(Some(&h)).map(|e| e.attempts), Ok(Attempts::made(MAX_ATTEMPTS).unwrap()));
    }

    #[test]
    fn a_replayed_record_keeps_saying_so_when_it_is_copied_again() {
        let original = OwnedHeaders::new()
            .insert(Header { key: "herald-replayed-from", value: Some("dlq/0/7") })
            .insert(Header { key: super::super::seal::TAG, value: Some("old") });
        let origin = Origin { topic: "t".into(), partition: 0, offset: 0 };
        let written = Envelope::default().write(Some(&original), &origin, None);
        assert_eq!(header(&written, "herald-replayed-from"), Some("dlq/0/7"));
        assert_eq!(header(&written, super::super::seal::TAG), None, "an old tag is dropped");
    }
}
