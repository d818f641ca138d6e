//! The ids herald puts in each SMS's `StatusCallback` URL, signed with
//! herald's own key, so that a callback (see `receipts`) can only name a
//! send herald made.

use base64::Engine;
use hmac::{Hmac, Mac};
use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

/// Why a callback's query is not one herald wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CallbackError {
    /// Missing, repeated, extra or ill-formed parameters.
    #[error("the callback's ids are malformed")]
    Malformed,
    /// Well-formed, but not signed by herald's key.
    #[error("the callback's ids are not signed by herald")]
    Forged,
}

/// Where Twilio sends callbacks (the public URL, as Twilio sees it behind
/// any proxy), and the key herald signs its callback ids with.
#[derive(Debug, Clone)]
pub(crate) struct StatusCallbacks {
    pub public_url: Url,
    key: SecretString,
}

/// The ids a status callback reports on, as herald put them in its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CallbackIds {
    pub event_id: String,
    pub user_id: String,
    pub attempt: u32,
    /// The requests partition the send came from; its status goes there.
    pub partition: i32,
}

impl StatusCallbacks {
    /// `key` signs the ids in callback URLs. Without one of its own, herald
    /// derives it from the Twilio auth token.
    pub(crate) fn new(public_url: Url, key: Option<SecretString>, auth_token: &SecretString) -> Self {
        let key = key.unwrap_or_else(|| {
            let mut mac = Hmac::<Sha256>::new_from_slice(auth_token.expose_secret().as_bytes()).expect("HMAC takes keys of any length");
            mac.update(b"herald receipts key v1");
            SecretString::from(base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
        });
        StatusCallbacks { public_url, key }
    }

    /// Where Twilio posts incoming messages.
    pub(crate) fn inbound_url(&self) -> Url {
        self.public_url.join("inbound").expect("a relative path joins any base")
    }

    /// The `StatusCallback` for one attempt of one event.
    pub(crate) fn callback_url(&self, ids: &CallbackIds) -> Url {
        let mut url = self.public_url.clone();
        url.query_pairs_mut()
            .append_pair("event_id", &ids.event_id)
            .append_pair("user_id", &ids.user_id)
            .append_pair("attempt", &ids.attempt.to_string())
            .append_pair("partition", &ids.partition.to_string())
            .append_pair("sig", &self.sign(ids));
        url
    }

    fn sign(&self, ids: &CallbackIds) -> String {
        let mac = self.ids_mac(ids);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    fn ids_mac(&self, ids: &CallbackIds) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.key.expose_secret().as_bytes()).expect("HMAC takes keys of any length");
        // Each field prefixed with its length, so no two tuples of ids
        // produce the same input.
        for field in [ids.event_id.as_bytes(), ids.user_id.as_bytes(), &ids.attempt.to_be_bytes(), &ids.partition.to_be_bytes()] {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field);
        }
        mac
    }

    /// The ids of a callback's query, if it is exactly what herald wrote:
    /// each parameter once, nothing else, well-formed, and signed.
    pub(crate) fn callback_ids(&self, query: &str) -> Result<CallbackIds, CallbackError> {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        const NAMES: [&str; 5] = ["event_id", "user_id", "attempt", "partition", "sig"];
        if pairs.len() != NAMES.len() || NAMES.iter().any(|n| pairs.iter().filter(|(k, _)| k == n).count() != 1) {
            return Err(CallbackError::Malformed);
        }
        let value = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or_default();
        let attempt = value("attempt").parse::<u32>().ok().filter(|a| *a >= 1);
        let partition = value("partition").parse::<i32>().ok().filter(|p| *p >= 0);
        let (Some(attempt), Some(partition)) = (attempt, partition) else { return Err(CallbackError::Malformed) };
        if value("event_id").is_empty() || value("user_id").is_empty() {
            return Err(CallbackError::Malformed);
        }
        let ids = CallbackIds { event_id: value("event_id").to_owned(), user_id: value("user_id").to_owned(), attempt, partition };
        let claimed = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(value("sig")).map_err(|_| CallbackError::Forged)?;
        self.ids_mac(&ids).verify_slice(&claimed).map_err(|_| CallbackError::Forged)?;
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn callbacks() -> StatusCallbacks {
        StatusCallbacks::new(Url::parse("https://h.example/twilio/status").unwrap(), None, &SecretString::from("token"))
    }

    fn ids() -> CallbackIds {
        CallbackIds { event_id: "e 1&x".into(), user_id: "u/1".into(), attempt: 2, partition: 5 }
    }

    #[test]
    fn the_callback_url_carries_the_ids_signed() {
        let e = callbacks();
        let url = e.callback_url(&ids());
        assert!(url.as_str().starts_with("https://h.example/twilio/status?event_id=e+1%26x&user_id=u%2F1&attempt=2&partition=5&sig="), "{url}");
        assert_eq!(e.callback_ids(url.query().unwrap()), Ok(ids()));
        let other_key = StatusCallbacks::new(e.public_url.clone(), Some(SecretString::from("another key")), &SecretString::from("token"));
        assert_eq!(other_key.callback_ids(url.query().unwrap()), Err(CallbackError::Forged), "signed with another key");
    }

    #[test]
    fn callback_ids_are_exactly_what_herald_wrote() {
        let e = callbacks();
        let query = e.callback_url(&ids()).query().unwrap().to_owned();
        let sig = query.rsplit_once("sig=").unwrap().1.to_owned();
        let rows = [
            // The attack: the attempt's digits shifted into a body parameter's name.
            (query.replace("attempt=2", "attempt="), CallbackError::Malformed),
            (query.replace("attempt=2", "attempt=0"), CallbackError::Malformed),
            (query.replace("attempt=2", "attempt=two"), CallbackError::Malformed),
            (query.replace("partition=5", "partition=-1"), CallbackError::Malformed),
            (query.replace("event_id=e+1%26x", "event_id="), CallbackError::Malformed),
            (format!("{query}&attempt=3"), CallbackError::Malformed),
            (format!("{query}&extra=1"), CallbackError::Malformed),
            (query.replace(&format!("&sig={sig}"), ""), CallbackError::Malformed),
            (query.replace("attempt=2", "attempt=3"), CallbackError::Forged),
            (query.replace("event_id=e+1%26x", "event_id=never-sent"), CallbackError::Forged),
            (query.replace(&sig, "AAAA"), CallbackError::Forged),
        ];
        for (query, expected) in rows {
            assert_eq!(e.callback_ids(&query), Err(expected), "{query}");
        }
    }
}
