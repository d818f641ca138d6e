//! Notifications not to send after all.
//!
//! A cancel is a record on a compacted topic keyed by the event id; its
//! value is free text for people (herald's API writes a small JSON object)
//! and a tombstone withdraws it. Any producer may write one. Every
//! instance reads the whole topic at startup and then follows it (see
//! `follow`), so the instance that owns the request's partition knows of
//! the cancel whichever instance took it, and a cancel that comes before
//! its request is honoured too.
//!
//! A cancel takes effect when its request next comes up for an attempt:
//! new, scheduled, deferred, or back from a retry topic. It never un-sends
//! anything: the pipeline asks the send ledger first.
//!
//! The set stays bounded: a cancel older than the longest a request can
//! wait ([`Cancellations::keep`]) can no longer find its request pending,
//! and is dropped, on load and as the set is followed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::RwLock;

use chrono::{DateTime, TimeZone, Utc};
use rdkafka::message::{BorrowedMessage, Message};

use crate::pipeline::follow::Followed;

/// Prune the set every this many records applied.
const PRUNE_EVERY: usize = 4096;


#[derive(Debug)]
pub(crate) struct Cancellations {
    /// Event id → when it was cancelled. Event ids come from producers: a
    /// fast hasher, seeded at random.
    by_event: RwLock<HashMap<String, DateTime<Utc>, foldhash::fast::RandomState>>,
    keep: chrono::Duration,
    applied: AtomicUsize,
}

impl Cancellations {
    /// A set that forgets a cancel `keep` after it was made.
    pub(crate) fn new(keep: std::time::Duration) -> Self {
        Cancellations {
            by_event: RwLock::default(),
            keep: chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX),
            applied: AtomicUsize::new(0),
        }
    }

    pub(crate) fn is_cancelled(&self, event_id: &str) -> bool {
        let set = self.by_event.read().expect("no panics under the lock");
        !set.is_empty() && set.contains_key(event_id)
    }

    /// A cancel made `at` (`None`: withdrawn).
    pub(crate) fn apply(&self, event_id: &str, at: Option<DateTime<Utc>>, now: DateTime<Utc>) {
        let mut set = self.by_event.write().expect("no panics under the lock");
        match at {
            Some(at) if now - at <= self.keep => {
                set.insert(event_id.to_owned(), at);
            }
            // The topic's retention drops such records too, so these are
            // few: each is said, since a producer whose clock is far behind
            // would otherwise wonder why its cancel did nothing.
            Some(at) => tracing::info!(
                message = "Ignored a cancel older than the longest a request can wait.",
                event_id,
                cancelled_at = %at.to_rfc3339(),
                kept_for = %humantime::format_duration(self.keep.to_std().unwrap_or_default())
            ),
            None => {
                set.remove(event_id);
            }
        }
        if self.applied.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            set.retain(|_, at| now - *at <= self.keep);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.by_event.read().expect("no panics under the lock").len()
    }
}

impl Followed for Cancellations {
    const WHAT: &'static str = "cancellations";

    fn apply(&self, message: &BorrowedMessage<'_>) {
        let Some(event_id) = message.key().and_then(|k| std::str::from_utf8(k).ok()) else {
            tracing::warn!(message = "Ignored a cancellation without a UTF-8 key.", topic = message.topic(), offset = message.offset());
            return;
        };
        let now = Utc::now();
        // A broker without timestamps: the cancel counts from now.
        let at = message.timestamp().to_millis().and_then(|ms| Utc.timestamp_millis_opt(ms).single()).unwrap_or(now);
        Cancellations::apply(self, event_id, message.payload().map(|_| at), now);
    }

    fn len(&self) -> usize {
        Cancellations::len(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn a_cancel_is_honoured_until_withdrawn() {
        let set = Cancellations::new(std::time::Duration::from_secs(3600));
        assert!(!set.is_cancelled("e1"));
        set.apply("e1", Some(at(0)), at(1));
        assert!(set.is_cancelled("e1") && !set.is_cancelled("e2"));
        set.apply("e1", None, at(2));
        assert!(!set.is_cancelled("e1"));
    }

    #[test]
    fn cancels_older_than_the_longest_wait_are_dropped() {
        let set = Cancellations::new(std::time::Duration::from_secs(3600));
        // Read at startup, already too old to find its request pending.
        set.apply("stale", Some(at(0)), at(3601));
        assert!(!set.is_cancelled("stale"));
        set.apply("old", Some(at(0)), at(10));
        for i in 0..PRUNE_EVERY {
            set.apply(&format!("new-{i}"), Some(at(7200)), at(7200));
        }
        assert!(!set.is_cancelled("old"), "pruned once it could no longer matter");
        assert_eq!(set.len(), PRUNE_EVERY);
    }
}
