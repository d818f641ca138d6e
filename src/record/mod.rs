//! The consumed record and the headers herald keeps on it as it moves
//! between topics. Every stage reads it; it depends on no stage.

pub mod envelope;
pub mod seal;

use chrono::{DateTime, TimeZone, Utc};
use rdkafka::message::{BorrowedMessage, Headers, Message, OwnedHeaders};

pub(crate) use envelope::Envelope;
pub use envelope::EnvelopeError;
pub(crate) use envelope::ErrorHeaders;
pub(crate) use envelope::Origin;
pub(crate) use seal::Provenance;
pub use seal::Seal;
pub use seal::SealArgs;
pub(crate) use seal::Unsealed;

/// A producer's headers that herald copies onto everything it writes for
/// a request (status events, and the stripped dead letter that carries no
/// other header), so a trace or a correlation id follows the request end
/// to end. Retry and whole dead-letter copies keep all of them anyway.
#[derive(Debug, Clone)]
pub(crate) struct Propagated {
    names: Vec<String>,
}

/// The W3C trace context: always propagated.
pub(crate) const TRACE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// At most this many bytes of names and values are propagated, so a
/// producer cannot make a stripped dead letter too large to write.
pub(crate) const MAX_PROPAGATED_BYTES: usize = 1024;

impl Propagated {
    /// The trace context, and `extra` (from `--propagate-headers`).
    pub(crate) fn new(extra: &[String]) -> Self {
        Propagated { names: TRACE_HEADERS.iter().map(|h| h.to_string()).chain(extra.iter().cloned()).collect() }
    }

    /// The headers of `headers` to propagate, in their order, the first of
    /// each name only (W3C trace context allows one `traceparent`); names
    /// match whatever their case. `None` when there are none.
    pub(crate) fn of(&self, headers: Option<&OwnedHeaders>) -> Option<OwnedHeaders> {
        let headers = headers?;
        let (mut out, mut bytes, mut taken) = (None::<OwnedHeaders>, 0, Vec::new());
        for h in headers.iter() {
            let Some(name) = self.names.iter().position(|n| n.eq_ignore_ascii_case(h.key)) else { continue };
            if taken.contains(&name) {
                continue;
            }
            taken.push(name);
            bytes += h.key.len() + h.value.map_or(0, <[u8]>::len);
            if bytes > MAX_PROPAGATED_BYTES {
                break;
            }
            out = Some(out.unwrap_or_default().insert(rdkafka::message::Header { key: h.key, value: h.value }));
        }
        out
    }
}

/// A consumed record, owned so it can outlive the poll that returned it.
#[derive(Debug, Clone)]
pub(crate) struct Consumed {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Option<OwnedHeaders>,
    /// When the broker appended it, for a record herald parked (one with a
    /// not-before time).
    pub appended: Option<DateTime<Utc>>,
    /// herald's headers on it; the defaults when they are `unreadable`, or
    /// not proven to be this deployment's (see `seal`).
    pub envelope: Envelope,
    /// Headers with herald's names that another writer filled wrongly.
    pub unreadable: Option<EnvelopeError>,
    pub provenance: Provenance,
}

impl Consumed {
    /// The record `message` holds, copied out of the consumer's buffer.
    /// herald's headers are read only where herald wrote them: on a delay
    /// topic (`parked`, with the seal that proves it). On the requests
    /// topic they are a producer's, and a producer must not make a request
    /// skip its rate limit or its retries by claiming attempts were made.
    pub(crate) fn read(message: &BorrowedMessage<'_>, parked: Option<&Seal>) -> Consumed {
        let headers = message.headers().map(|h| h.detach());
        let provenance = parked.map_or(Provenance::Request, |seal| seal.check(message.key(), message.payload(), headers.as_ref()));
        let (envelope, unreadable) = match provenance {
            Provenance::Request | Provenance::Foreign => (Envelope::default(), None),
            Provenance::Own => match Envelope::read(headers.as_ref()) {
                Ok(envelope) => (envelope, None),
                Err(error) => (Envelope::default(), Some(error)),
            },
            // Judged as new; only its wait is kept (see `seal`).
            Provenance::Unsealed(_) => {
                let not_before = Envelope::read(headers.as_ref()).ok().and_then(|e| e.not_before);
                (Envelope { not_before, ..Envelope::default() }, None)
            }
        };
        // Only a parked record's append time matters (see `Topics::due`),
        // and reading it is not free.
        let appended = envelope.not_before.and_then(|_| message.timestamp().to_millis()).and_then(|ms| Utc.timestamp_millis_opt(ms).single());
        Consumed {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers,
            appended,
            envelope,
            unreadable,
            provenance,
        }
    }

    /// Whether herald parked this record itself: otherwise it is judged
    /// as a new request.
    pub(crate) fn parked_by_us(&self) -> bool {
        self.provenance == Provenance::Own
    }

    /// Where the record first entered herald: kept across every hop.
    pub(crate) fn origin(&self) -> Origin {
        self.envelope.origin.clone().unwrap_or_else(|| Origin {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
        })
    }

    /// Key, value and headers, in bytes: what a producer's
    /// `message.max.bytes` is checked against, less the batch framing.
    pub(crate) fn size(&self) -> usize {
        let headers = self.headers.as_ref().map_or(0, |h| {
            h.iter().map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len)).sum::<usize>()
        });
        self.key.as_ref().map_or(0, Vec::len) + self.payload.as_ref().map_or(0, Vec::len) + headers
    }
}
