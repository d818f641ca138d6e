//! The send ledger: sends a provider already accepted, so that a record
//! delivered again after a crash or a rebalance is not sent again.
//!
//! The ledger is the status topic, read back: the changelog pattern of
//! Kafka Streams, with no store of its own. Statuses go to their request's
//! partition number, so status partition *p* holds the outcomes of the
//! records of partition *p* of every input topic, and belongs to the same
//! instance. Alongside its input offsets, herald stores an offset of status
//! partition *p*: the end of that partition when the oldest record still
//! unfinished was read (`ingest`). Kafka commits both in one request, so
//! wherever a new owner starts reading the inputs again, the statuses of
//! every record it may see again lie after the committed status offset.
//! When a partition is assigned, herald reads its status partition from
//! there to the end before any of its records goes ahead, and keeps here:
//! - the events that were sent (`SENT`, or a receipt that implies it), with
//!   provider, message id and attempt: such an event is not sent again, and
//!   its recorded `SENT` is reported again instead;
//! - the other events seen: if one is sent now, that send is kept too, so a
//!   second copy of it (a redelivered record and its retry both exist) is
//!   not sent a second time.
//!
//! Entries expire `window` after the status's time, or after its next
//! attempt's, and go with their partition when it is revoked.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};

use crate::model::{Stage, Status, StatusEvent};
use crate::pipeline::deliver::Delivered;

/// Entries herald keeps at most, for every partition together: about
/// 100 bytes each.
const MAX_ENTRIES: usize = 1_000_000;
/// Expired entries are swept every this many insertions.
const SWEEP_EVERY: usize = 10_000;

/// A send a provider accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    pub delivered: Delivered,
    /// The attempt it was (from 1).
    pub attempt: u32,
}

#[derive(Debug, Clone)]
enum Entry {
    Seen { until: DateTime<Utc> },
    Sent { sent: Sent, until: DateTime<Utc> },
}

impl Entry {
    fn until(&self) -> DateTime<Utc> {
        match self {
            Entry::Seen { until } | Entry::Sent { until, .. } => *until,
        }
    }
}

#[derive(Default)]
struct Entries {
    by_partition: HashMap<i32, HashMap<String, Entry>>,
    len: usize,
    inserts: usize,
    full_warned: bool,
}

pub struct Ledger {
    entries: Mutex<Entries>,
    window: Duration,
    /// Events whose provider call is under way, by partition: a second
    /// copy of one (crashes before a commit can leave several on the
    /// delay topics, all due at once) must not be sent beside it.
    calling: Mutex<HashSet<(i32, String)>>,
}

/// An event's call under way; the event is free again when this drops,
/// once its outcome is recorded.
pub struct Calling {
    ledger: Arc<Ledger>,
    key: (i32, String),
}

impl Drop for Calling {
    fn drop(&mut self) {
        self.ledger.calling.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
    }
}

impl Ledger {
    pub fn new(window: std::time::Duration) -> Self {
        Ledger { entries: Mutex::default(), window: Duration::from_std(window).unwrap_or(Duration::MAX), calling: Mutex::default() }
    }

    /// Claims the call for `event_id`; `None` while another copy of it is
    /// being sent.
    pub fn begin_call(self: &Arc<Self>, partition: i32, event_id: &str) -> Option<Calling> {
        let key = (partition, event_id.to_owned());
        let claimed = self.calling.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone());
        claimed.then(|| Calling { ledger: self.clone(), key })
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A status read back from status partition `partition`.
    pub fn restore(&self, partition: i32, status: &StatusEvent, now: DateTime<Utc>) {
        let sent = match status.status.stage() {
            Stage::Outcome if status.status != Status::Sent => None,
            Stage::Pending => None,
            _ => status.provider.map(|provider| Sent {
                delivered: Delivered { provider, message_id: status.provider_message_id.clone() },
                attempt: status.attempt,
            }),
        };
        let until = status.occurred_at.max(status.next_attempt_at.unwrap_or(status.occurred_at)) + self.window;
        if until <= now {
            return;
        }
        let entry = match sent {
            Some(sent) => Entry::Sent { sent, until },
            None => Entry::Seen { until },
        };
        self.insert(partition, &status.event_id, entry, now);
    }

    /// The send recorded for `event_id`, read from `partition`.
    pub fn sent(&self, partition: i32, event_id: &str) -> Option<Sent> {
        match self.entries().by_partition.get(&partition)?.get(event_id)? {
            Entry::Sent { sent, .. } => Some(sent.clone()),
            Entry::Seen { .. } => None,
        }
    }

    /// A provider just accepted `event_id`: kept if the event was seen
    /// before, the only case where another copy of it can still come.
    pub fn record(&self, partition: i32, event_id: &str, sent: Sent, now: DateTime<Utc>) {
        let seen = self.entries().by_partition.get(&partition).is_some_and(|p| p.contains_key(event_id));
        if seen {
            self.insert(partition, event_id, Entry::Sent { sent, until: now + self.window }, now);
        }
    }

    /// The partition moved away: its next owner reads its own ledger.
    pub fn forget(&self, partition: i32) {
        let mut entries = self.entries();
        if let Some(removed) = entries.by_partition.remove(&partition) {
            entries.len -= removed.len();
        }
    }

    pub fn len(&self) -> usize {
        self.entries().len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(&self, partition: i32, event_id: &str, entry: Entry, now: DateTime<Utc>) {
        let mut guard = self.entries();
        let entries = &mut *guard;
        entries.inserts += 1;
        if entries.inserts % SWEEP_EVERY == 0 {
            for p in entries.by_partition.values_mut() {
                p.retain(|_, e| e.until() > now);
            }
            entries.len = entries.by_partition.values().map(HashMap::len).sum();
        }
        let partition = entries.by_partition.entry(partition).or_default();
        match partition.get_mut(event_id) {
            // A send is never forgotten for a mere sighting.
            Some(Entry::Sent { .. }) if matches!(entry, Entry::Seen { .. }) => {}
            Some(existing) => *existing = entry,
            None if entries.len >= MAX_ENTRIES => {
                if !entries.full_warned {
                    tracing::warn!(message = "The send ledger is full; events beyond it may be sent again after a crash.", max = MAX_ENTRIES);
                    entries.full_warned = true;
                }
            }
            None => {
                partition.insert(event_id.to_owned(), entry);
                entries.len += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Provider;
    use crate::model::Channel;
    use chrono::TimeZone;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
    }

    fn status(event_id: &str, status: Status, attempt: u32, time: i64) -> StatusEvent {
        StatusEvent {
            locale: None,
            event_id: event_id.into(),
            user_id: "u".into(),
            channel: Some(Channel::Sms),
            status,
            attempt,
            provider: matches!(status, Status::Sent | Status::Delivered | Status::RetryScheduled).then_some(Provider::Twilio),
            provider_message_id: (status == Status::Sent).then(|| "SM1".to_owned()),
            error_code: None,
            error_class: None,
            error_message: None,
            occurred_at: at(time),
            next_attempt_at: (status == Status::RetryScheduled).then(|| at(time + 600)),
            recipient: None,
            created_at: None,
            scheduled_at: None,
            sms: None,
            origin: None,
            tried: Vec::new(),
        }
    }

    #[test]
    fn a_restored_send_is_reported_not_repeated() {
        let ledger = Ledger::new(std::time::Duration::from_secs(3600));
        ledger.restore(2, &status("sent", Status::Sent, 1, 0), at(10));
        ledger.restore(2, &status("failed", Status::Failed, 1, 0), at(10));
        let sent = ledger.sent(2, "sent").unwrap();
        assert_eq!((sent.delivered.provider, sent.delivered.message_id.as_deref(), sent.attempt), (Provider::Twilio, Some("SM1"), 1));
        assert_eq!(ledger.sent(2, "failed"), None);
        assert_eq!(ledger.sent(3, "sent"), None, "another partition's");
    }

    #[test]
    fn a_send_of_an_event_seen_before_is_kept_and_others_are_not() {
        let ledger = Ledger::new(std::time::Duration::from_secs(3600));
        ledger.restore(0, &status("retried", Status::RetryScheduled, 1, 0), at(10));
        let sent = Sent { delivered: Delivered { provider: Provider::Fcm, message_id: Some("m".into()) }, attempt: 1 };
        ledger.record(0, "retried", sent.clone(), at(20));
        ledger.record(0, "new", sent.clone(), at(20));
        assert_eq!(ledger.sent(0, "retried"), Some(sent), "its retry copy will find it");
        assert_eq!(ledger.sent(0, "new"), None);
        assert_eq!(ledger.len(), 1);
    }

    #[test]
    fn a_later_sighting_does_not_undo_a_send() {
        let ledger = Ledger::new(std::time::Duration::from_secs(3600));
        ledger.restore(0, &status("e", Status::Delivered, 1, 5), at(10));
        ledger.restore(0, &status("e", Status::RetryScheduled, 1, 0), at(10));
        assert!(ledger.sent(0, "e").is_some(), "a receipt implies the send");
    }

    #[test]
    fn entries_expire_and_go_with_their_partition() {
        let ledger = Ledger::new(std::time::Duration::from_secs(60));
        ledger.restore(0, &status("old", Status::Sent, 1, 0), at(61));
        assert_eq!(ledger.sent(0, "old"), None, "older than the window");
        // A retry due in 600 s is kept until then, plus the window.
        ledger.restore(0, &status("waiting", Status::RetryScheduled, 1, 0), at(500));
        assert_eq!(ledger.len(), 1);
        ledger.restore(1, &status("other", Status::Sent, 1, 0), at(1));
        ledger.forget(0);
        assert_eq!((ledger.len(), ledger.sent(1, "other").is_some()), (1, true));
    }
}
