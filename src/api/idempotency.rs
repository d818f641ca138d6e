//! Idempotency keys, as Stripe and Knock define them: a caller that sends
//! again with the same `Idempotency-Key` and the same body within a day
//! gets the first answer, and nothing is written twice; the same key with
//! another body is refused. Keys are bound to the token that sent them, so
//! two callers cannot read or block each other's (table in
//! `schemas/scylla/004_idempotency_keys.cql`).
//!
//! Two retries of one key in one instance wait for each other. Across
//! instances nothing locks (ScyllaDB's lightweight transactions would cost
//! a Paxos round on every send); instead a keyed request's event id is
//! derived from its key, so two instances racing write the same event id
//! twice, and the pipeline sends and counts an event id once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use sha2::{Digest, Sha256};

use super::store::StoreError;

/// How long a key is remembered.
pub(crate) const KEPT_SECS: i32 = 24 * 3600;

/// The longest key taken, as Stripe's.
pub(crate) const MAX_KEY_BYTES: usize = 255;

/// A key as one token used it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    /// A digest of the token, never the token.
    pub token: [u8; 32],
    pub key: String,
}

impl Key {
    /// The event id of the request at `index` of what was sent under this
    /// key: the same on every retry, in every instance.
    pub(crate) fn event_id(&self, index: usize) -> String {
        let mut hash = Sha256::new();
        hash.update(b"herald idempotency key\0");
        hash.update(self.token);
        hash.update((self.key.len() as u64).to_be_bytes());
        hash.update(self.key.as_bytes());
        hash.update((index as u64).to_be_bytes());
        uuid_shaped(&hash.finalize()[..16])
    }
}

/// 16 bytes written as a UUID is, with version 8 ("custom") and the
/// RFC 9562 variant set, so that tools that parse ids take it.
pub(crate) fn uuid_shaped(bytes: &[u8]) -> String {
    let mut b = [0u8; 16];
    b.copy_from_slice(&bytes[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

/// The first answer given under a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    pub status: u16,
    pub body: String,
}

/// What a key holds: a digest of the body first sent with it, and the
/// answer that body got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stored {
    pub body: [u8; 32],
    pub answer: Answer,
}

/// The keys' table, and the keys in use in this instance.
pub(crate) struct Keys {
    session: Arc<Session>,
    select: PreparedStatement,
    insert: PreparedStatement,
    in_use: Mutex<HashMap<Key, Weak<tokio::sync::Mutex<()>>>>,
}

/// Held while a keyed request is answered: a retry of the same key waits.
pub(crate) struct InUse {
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Keys {
    /// The table in `keyspace`, checked to exist.
    pub(crate) async fn open(session: Arc<Session>, keyspace: &str) -> Result<Keys, StoreError> {
        let prepare = |cql: String| {
            let session = session.clone();
            async move { session.prepare(cql).await.map_err(|e| StoreError::Schema { keyspace: keyspace.to_owned(), source: e.into() }) }
        };
        let select = prepare(format!("SELECT body, status, answer FROM {keyspace}.idempotency_keys WHERE token = ? AND key = ?")).await?;
        let insert = prepare(format!(
            "INSERT INTO {keyspace}.idempotency_keys (token, key, body, status, answer, created_at) VALUES (?, ?, ?, ?, ?, ?) USING TTL {KEPT_SECS}"
        ))
        .await?;
        Ok(Keys { session, select, insert, in_use: Mutex::default() })
    }

    /// Waits until no other request of this instance holds `keyed`.
    pub(crate) async fn hold(&self, keyed: &Key) -> InUse {
        let lock = {
            let mut in_use = self.in_use.lock().unwrap_or_else(|p| p.into_inner());
            // Entries of keys no longer held go, so the map stays as
            // large as the requests under way.
            if in_use.len() >= 1024 {
                in_use.retain(|_, held| held.strong_count() > 0);
            }
            match in_use.get(keyed).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    in_use.insert(keyed.clone(), Arc::downgrade(&lock));
                    lock
                }
            }
        };
        InUse { _guard: lock.lock_owned().await }
    }

    pub(crate) async fn get(&self, keyed: &Key) -> Result<Option<Stored>, StoreError> {
        let read = |e: Box<dyn std::error::Error + Send + Sync>| StoreError::Read(e);
        let rows = self.session.execute_unpaged(&self.select, (keyed.token.as_slice(), &keyed.key)).await.map_err(|e| read(e.into()))?;
        let rows = rows.into_rows_result().map_err(|e| read(e.into()))?;
        let Some(row) = rows.maybe_first_row::<(Vec<u8>, i32, String)>().map_err(|e| read(e.into()))? else { return Ok(None) };
        let (body, status, answer) = row;
        let body: [u8; 32] = body.try_into().map_err(|_| read("a stored body digest is not 32 bytes".into()))?;
        let status = u16::try_from(status).map_err(|_| read("a stored status is not an HTTP status".into()))?;
        Ok(Some(Stored { body, answer: Answer { status, body: answer } }))
    }

    pub(crate) async fn put(&self, keyed: &Key, stored: &Stored) -> Result<(), StoreError> {
        let values = (keyed.token.as_slice(), &keyed.key, stored.body.as_slice(), i32::from(stored.answer.status), &stored.answer.body, chrono::Utc::now());
        self.session.execute_unpaged(&self.insert, values).await.map_err(|e| StoreError::Write(e.into()))?;
        Ok(())
    }
}

/// A digest of a JSON body as parsed, so that a retry that only spaces it
/// differently is still the same request.
pub(crate) fn digest(body: &serde_json::Value) -> [u8; 32] {
    Sha256::digest(serde_json::to_vec(body).expect("a parsed value serializes")).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_s_event_ids_are_stable_distinct_by_index_token_and_key_and_shaped_as_uuids() {
        let keyed = Key { token: [1; 32], key: "order-7".into() };
        let id = keyed.event_id(0);
        assert_eq!(id, keyed.event_id(0));
        assert_ne!(id, keyed.event_id(1));
        assert_ne!(id, Key { token: [2; 32], ..keyed.clone() }.event_id(0));
        assert_ne!(id, Key { key: "order-8".into(), ..keyed.clone() }.event_id(0));
        // A key that ends where another's index would begin is not the
        // other key: the key's length is hashed too.
        assert_ne!(Key { token: [1; 32], key: "a".into() }.event_id(0), Key { token: [1; 32], key: "a\0".into() }.event_id(0));
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "8", "version 8: {id}");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "RFC 9562 variant: {id}");
    }

    #[test]
    fn the_digest_ignores_spacing_but_not_content() {
        let a: serde_json::Value = serde_json::from_str(r#"{"user_id": "u", "recipient": "+14155550100"}"#).unwrap();
        let b: serde_json::Value = serde_json::from_str(r#"{"user_id":"u","recipient":"+14155550100"}"#).unwrap();
        let c: serde_json::Value = serde_json::from_str(r#"{"user_id":"u","recipient":"+14155550101"}"#).unwrap();
        assert_eq!(digest(&a), digest(&b));
        assert_ne!(digest(&a), digest(&c));
    }
}
