//! Recipients herald must not contact again: numbers that opted out
//! (Twilio error 21610, or a STOP reply) and push tokens FCM reports
//! UNREGISTERED.
//!
//! The list lives in a compacted topic keyed by channel and recipient
//! (`SMS:+14155550100`, `PUSH:<token>`). A recipient can belong to any
//! user, on any partition, so every instance reads the whole topic at
//! startup and then follows it. A tombstone (a record with no value) lifts
//! a suppression: herald writes one when a number replies START, and any
//! system may write one to opt a recipient back in. The topic has one
//! partition, so every writer's changes are applied in one order whatever
//! its partitioner.
//! Every instance follows it (see `follow`).

use std::collections::HashMap;
use std::fmt;
use std::sync::RwLock;

use rdkafka::message::{BorrowedMessage, Message};
use serde::{Deserialize, Serialize};

use crate::mask::Masked;
use crate::model::{Channel, ErrorCode};
use crate::pipeline::follow::Followed;

/// Why a recipient is suppressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The number opted out of SMS from this sender.
    OptedOut,
    /// The push token no longer reaches an app (uninstalled, expired).
    TokenUnregistered,
}

impl Reason {
    /// The `error_code` of a SUPPRESSED status.
    pub(crate) fn code(self) -> ErrorCode {
        ErrorCode::herald(match self {
            Reason::OptedOut => "opted-out",
            Reason::TokenUnregistered => "token-unregistered",
        })
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::OptedOut => "the number opted out of SMS; a START reply or an opt-in event lifts it",
            Reason::TokenUnregistered => "FCM reported the push token unregistered; an opt-in event lifts it",
        })
    }
}

/// The value of a suppression record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub reason: Reason,
    /// What caused it: a provider code (`twilio:21610`, `fcm:UNREGISTERED`)
    /// or the recipient's keyword (`sms:STOP`).
    pub cause: String,
}

/// One change to the list, as one record on the topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub channel: Channel,
    pub recipient: String,
    /// `None` lifts the suppression (a tombstone).
    pub entry: Option<Entry>,
}

impl Change {
    /// The record key on the suppressions topic.
    pub fn key(&self) -> Vec<u8> {
        format!("{}:{}", self.channel.symbol(), self.recipient).into_bytes()
    }

    /// The record value: none is a tombstone, which opts back in.
    pub fn value(&self) -> Option<Vec<u8>> {
        self.entry.as_ref().map(|e| serde_json::to_vec(e).expect("an entry serializes"))
    }

    /// The change a record on the topic makes, or why it makes none.
    pub(crate) fn from_record(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Change, String> {
        let key = std::str::from_utf8(key.ok_or("no key")?).map_err(|_| "key is not UTF-8")?;
        let (symbol, recipient) = key.split_once(':').ok_or("key is not CHANNEL:recipient")?;
        // The key may be a number with its separator misplaced: never quote it.
        let channel = Channel::from_symbol(symbol).ok_or_else(|| format!("unknown channel {}", Masked(symbol)))?;
        let entry = match value {
            None => None,
            // serde's message quotes what it could not read, which may be
            // a phone number: only where and what kind of mistake.
            Some(v) => Some(serde_json::from_slice(v).map_err(|e| {
                format!("value is not an entry like {{\"reason\":\"opted-out\",\"cause\":\"...\"}} ({:?} error at column {})", e.classify(), e.column())
            })?),
        };
        Ok(Change { channel, recipient: recipient.to_owned(), entry })
    }
}

/// The list in memory, per channel, so a check borrows the recipient
/// instead of building a key. Recipients come from producers: a fast
/// hasher, seeded at random.
#[derive(Debug, Default)]
pub struct Suppressions {
    by_channel: RwLock<[HashMap<String, Reason, foldhash::fast::RandomState>; Channel::ALL.len()]>,
}

impl Suppressions {
    /// Why `recipient` must not be sent to, if it must not.
    pub fn check(&self, channel: Channel, recipient: &str) -> Option<Reason> {
        let list = &self.by_channel.read().expect("no panics under the lock")[channel.index()];
        if list.is_empty() {
            return None;
        }
        list.get(recipient).copied()
    }

    pub(crate) fn apply(&self, change: &Change) {
        let mut by_channel = self.by_channel.write().expect("no panics under the lock");
        let list = &mut by_channel[change.channel.index()];
        match &change.entry {
            Some(entry) => list.insert(change.recipient.clone(), entry.reason),
            None => list.remove(&change.recipient),
        };
    }

    /// Suppressed recipients.
    pub fn len(&self) -> usize {
        self.by_channel.read().expect("no panics under the lock").iter().map(HashMap::len).sum()
    }

    /// Whether none is suppressed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Followed for Suppressions {
    const WHAT: &'static str = "suppression list";

    fn apply(&self, message: &BorrowedMessage<'_>) {
        match Change::from_record(message.key(), message.payload()) {
            Ok(change) => Suppressions::apply(self, &change),
            Err(reason) => tracing::warn!(message = "Ignored a suppression record.", topic = message.topic(), offset = message.offset(), %reason),
        }
    }

    fn len(&self) -> usize {
        Suppressions::len(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(channel: Channel, recipient: &str, entry: Option<Entry>) -> Change {
        Change { channel, recipient: recipient.into(), entry }
    }

    #[test]
    fn records_round_trip_and_bad_ones_are_named() {
        let stop = Entry { reason: Reason::OptedOut, cause: "twilio:21610".into() };
        let c = change(Channel::Sms, "+14155550100", Some(stop));
        assert_eq!(c.key(), b"SMS:+14155550100");
        assert_eq!(c.value().unwrap(), br#"{"reason":"opted-out","cause":"twilio:21610"}"#);
        assert_eq!(Change::from_record(Some(&c.key()), c.value().as_deref()), Ok(c.clone()));
        let lift = change(Channel::Push, "tok:with:colons", None);
        assert_eq!(Change::from_record(Some(&lift.key()), None), Ok(lift));
        assert!(Change::from_record(None, None).unwrap_err().contains("no key"));
        assert!(Change::from_record(Some(b"FAXES:123"), None).unwrap_err().contains("…"));
        let error = Change::from_record(Some(b"+14155550177:SMS"), None).unwrap_err();
        assert!(!error.contains("4155550177"), "no phone number in {error:?}");
        assert!(Change::from_record(Some(b"SMS:+1"), Some(b"{}")).unwrap_err().contains("not an entry"));
        for value in [&br#"{"reason":"+14155550179","cause":"x"}"#[..], br#"{"reason":"opted-out","cause":+14155550179}"#, b"+14155550179"] {
            let error = Change::from_record(Some(b"SMS:+1"), Some(value)).unwrap_err();
            assert!(!error.contains("4155550179") && error.contains("not an entry"), "no phone number in {error:?}");
        }
    }

    #[test]
    fn a_tombstone_lifts_a_suppression_for_its_channel_only() {
        let list = Suppressions::default();
        let gone = Entry { reason: Reason::TokenUnregistered, cause: "fcm:UNREGISTERED".into() };
        list.apply(&change(Channel::Push, "same", Some(gone)));
        assert_eq!(list.check(Channel::Push, "same"), Some(Reason::TokenUnregistered));
        assert_eq!(list.check(Channel::Sms, "same"), None);
        list.apply(&change(Channel::Push, "same", None));
        assert_eq!(list.check(Channel::Push, "same"), None);
        assert!(list.is_empty());
    }
}
