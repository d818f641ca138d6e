//! Stage 1: bytes from Kafka → a `Request`, or a classified reason why not.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use apache_avro::Schema;

use crate::codec::registry::{Registry, RegistryError};
use crate::codec::{self, Bundled, RequestError, WireError};
use crate::model::{ErrorCode, Ids, InvalidReason, Request};

/// Why a record is not a usable request.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeError {
    /// Not a request at all; nothing in it can be trusted, so it can only
    /// be dead-lettered.
    #[error("undecodable: {0}")]
    Undecodable(Undecodable),
    /// A request, but one that can never be delivered. Its ids are known,
    /// so the outcome is reported.
    #[error("invalid request {}: {reason}", ids.event_id)]
    Invalid { ids: Ids, reason: InvalidReason },
    /// The schema registry is unreachable: the record is not at fault and
    /// must not be dead-lettered.
    #[error(transparent)]
    Unavailable(RegistryError),
}

/// Why a consumed record is not a request herald can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Undecodable {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("writer schema: {0}")]
    Schema(String),
    #[error("avro: {0}")]
    Avro(String),
    #[error(transparent)]
    Field(#[from] codec::FieldError),
    #[error(transparent)]
    Envelope(#[from] crate::record::EnvelopeError),
}

impl Undecodable {
    /// Stable code for the dead-letter header.
    pub(crate) fn code(&self) -> ErrorCode {
        ErrorCode::herald(match self {
            Undecodable::Wire(_) => "not-wire-format",
            Undecodable::Schema(_) => "unknown-schema",
            Undecodable::Avro(_) => "avro-decode",
            Undecodable::Field(_) => "schema-mismatch",
            Undecodable::Envelope(_) => "bad-herald-header",
        })
    }
}

pub(crate) struct Decoder {
    bundled: Bundled,
    /// Without a registry every record is read with the bundled schema,
    /// whatever id it carries.
    registry: Option<Arc<Registry>>,
    /// Writer schemas by id; `None` when the writer schema is the bundled
    /// one, which lets the common case skip schema resolution.
    writers: RwLock<HashMap<u32, Option<Arc<Schema>>>>,
}

impl Decoder {
    pub(crate) fn new(bundled: Bundled, registry: Option<Arc<Registry>>) -> Self {
        Decoder { bundled, registry, writers: RwLock::default() }
    }

    async fn writer_schema(&self, id: u32) -> Result<Option<Arc<Schema>>, DecodeError> {
        let Some(registry) = &self.registry else { return Ok(None) };
        if let Some(known) = self.writers.read().expect("writer cache lock").get(&id) {
            return Ok(known.clone());
        }
        let schema = registry.writer_schema(id).await.map_err(|e| match e {
            RegistryError::Unavailable(_) => DecodeError::Unavailable(e),
            _ => DecodeError::Undecodable(Undecodable::Schema(e.to_string())),
        })?;
        let writer = (schema.canonical_form() != self.bundled.request.canonical_form()).then(|| Arc::new(schema));
        self.writers.write().expect("writer cache lock").insert(id, writer.clone());
        Ok(writer)
    }

    pub(crate) async fn decode(&self, key: Option<&[u8]>, payload: Option<&[u8]>) -> Result<Request, DecodeError> {
        let request = self.read(payload).await?;
        let invalid = |reason| DecodeError::Invalid { ids: request.ids(), reason };
        if request.event_id.is_empty() {
            return Err(invalid(InvalidReason::EmptyEventId));
        }
        if request.user_id.is_empty() {
            return Err(invalid(InvalidReason::EmptyUserId));
        }
        if key != Some(request.user_id.as_bytes()) {
            return Err(invalid(InvalidReason::KeyMismatch));
        }
        Ok(request)
    }

    /// The request `payload` holds, as written, without the checks a
    /// request must pass to be sent (ids, the record key): for showing what
    /// an invalid request said.
    pub(crate) async fn read(&self, payload: Option<&[u8]>) -> Result<Request, DecodeError> {
        let undecodable = |e: Undecodable| DecodeError::Undecodable(e);
        let (schema_id, mut datum) = codec::unframe(payload.unwrap_or_default()).map_err(|e| undecodable(e.into()))?;
        let request = match self.writer_schema(schema_id).await? {
            None => codec::read_request(datum),
            Some(writer) => apache_avro::from_avro_datum(&writer, &mut datum, Some(&self.bundled.request))
                .map_err(|e| undecodable(Undecodable::Avro(e.to_string())))
                .map(codec::request_from_value)?,
        }
        .map_err(|e| match e {
            RequestError::Field(f) => undecodable(f.into()),
            RequestError::Binary(e) => undecodable(Undecodable::Avro(e.to_string())),
            RequestError::UnknownChannel { event_id, user_id, symbol } => {
                let ids = Ids::bare(event_id, user_id, None);
                DecodeError::Invalid { ids, reason: InvalidReason::UnknownChannel(symbol) }
            }
        })?;
        Ok(request)
    }
}
