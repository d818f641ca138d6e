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

mod restore;

pub(crate) use restore::restore;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};

use crate::model::{Attempts, Phase, Status, StatusEvent};
use crate::pipeline::deliver::Delivered;

/// Entries herald keeps at most, for every partition together: about
/// 100 bytes each.
const MAX_ENTRIES: usize = 1_000_000;
/// Expired entries are swept every this many insertions.
const SWEEP_EVERY: usize = 10_000;

/// A send a provider accepted.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sent {
    pub delivered: Delivered,
    /// Attempts made once it was sent: the attempt it was.
    pub attempts: Attempts,
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

pub(crate) struct Ledger {
    entries: Mutex<Entries>,
    window: Duration,
    /// Events whose provider call is under way, by partition: a second
    /// copy of one (crashes before a commit can leave several on the
    /// delay topics, all due at once) must not be sent beside it.
    calling: Mutex<HashSet<(i32, String)>>,
}

/// An event's call under way; the event is free again when this drops,
/// once its outcome is recorded.
pub(crate) struct CallClaim {
    ledger: Arc<Ledger>,
    key: (i32, String),
}

impl Drop for CallClaim {
    fn drop(&mut self) {
        self.ledger.calling.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
    }
}

impl Ledger {
    pub(crate) fn new(window: std::time::Duration) -> Self {
        Ledger { entries: Mutex::default(), window: Duration::from_std(window).unwrap_or(Duration::MAX), calling: Mutex::default() }
    }

    /// Claims the call for `event_id`; `None` while another copy of it is
    /// being sent.
    pub(crate) fn begin_call(self: &Arc<Self>, partition: i32, event_id: &str) -> Option<CallClaim> {
        let key = (partition, event_id.to_owned());
        let claimed = self.calling.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone());
        claimed.then(|| CallClaim { ledger: self.clone(), key })
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A status read back from status partition `partition`.
    pub(crate) fn restore(&self, partition: i32, status: &StatusEvent, now: DateTime<Utc>) {
        let sent = match status.status.phase() {
            Phase::Outcome if status.status != Status::Sent => None,
            Phase::Pending => None,
            _ => status.provider.zip(Attempts::made(status.attempt)).map(|(provider, attempts)| Sent {
                delivered: Delivered { provider, message_id: status.provider_message_id.clone() },
                attempts,
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
    pub(crate) fn sent(&self, partition: i32, event_id: &str) -> Option<Sent> {
        match self.entries().by_partition.get(&partition)?.get(event_id)? {
            Entry::Sent { sent, .. } => Some(sent.clone()),
            Entry::Seen { .. } => None,
        }
    }

    /// A provider just accepted `event_id`: kept if the event was seen
    /// before, the only case where another copy of it can still come.
    pub(crate) fn record(&self, partition: i32, event_id: &str, sent: Sent, now: DateTime<Utc>) {
        let seen = self.entries().by_partition.get(&partition).is_some_and(|p| p.contains_key(event_id));
        if seen {
            self.insert(partition, event_id, Entry::Sent { sent, until: now + self.window }, now);
        }
    }

    /// The partition moved away: its next owner reads its own ledger.
    pub(crate) fn forget(&self, partition: i32) {
        let mut entries = self.entries();
        if let Some(removed) = entries.by_partition.remove(&partition) {
            entries.len -= removed.len();
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries().len
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
mod tests;
