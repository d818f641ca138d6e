//! The rolling windows themselves: bookkeeping in memory, no I/O. Both
//! stores keep their users here; the ScyllaDB store also fills and empties
//! it as Kafka partitions come and go.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;

use chrono::{DateTime, Duration, Utc};

use super::limit::RateLimit;
use crate::model::Channel;

pub use crate::cql::rate_limits::Counted;

/// One counted event, as the windows keep it: the event id as a keyed
/// 64-bit hash, so the redelivery check compares integers in the window's
/// own buffer rather than following a pointer per event to compare
/// strings. Two ids of one user's window colliding (about 10 in 2^64 per
/// check) would let the second pass uncounted.
#[derive(Debug, Clone, Copy)]
struct Seen {
    at: DateTime<Utc>,
    id: u64,
}

/// What a check did to the windows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Checked {
    /// The channel has no limit.
    Unlimited,
    /// A new event, now counted at this time.
    Counted(DateTime<Utc>),
    /// This event id is already in the window: a redelivery, allowed and
    /// not counted again.
    AlreadyCounted,
    /// A window is full; capacity frees up at `until`.
    Denied { until: DateTime<Utc> },
}

pub(crate) struct Windows {
    /// Per channel, each window as (max, length); empty when unlimited.
    limits: [Vec<(usize, Duration)>; Channel::ALL.len()],
    /// Per channel, the longest window: events older than it count nowhere.
    horizon: [Option<Duration>; Channel::ALL.len()],
    /// User ids come from producers: a fast hasher, seeded at random.
    users: HashMap<String, User, foldhash::fast::RandomState>,
    /// Seeded at random, so producers cannot aim ids at one another.
    ids: foldhash::quality::RandomState,
    checks_since_sweep: usize,
}

struct User {
    /// The Kafka partition (of every input topic) the user's records come
    /// from, so its owner's departure can forget them.
    partition: i32,
    /// Per channel, counted events, oldest first.
    counted: [VecDeque<Seen>; Channel::ALL.len()],
}

/// Idle users are forgotten every this many checks, or every as many
/// checks as there are users if that is more (so a sweep costs each check
/// O(1)); memory follows the number of active users rather than every user
/// ever seen.
pub(super) const SWEEP_EVERY: usize = 10_000;

impl Windows {
    pub(crate) fn new(limit_for: impl Fn(Channel) -> RateLimit) -> Self {
        let limits = Channel::ALL.map(|channel| {
            let windows = limit_for(channel).windows;
            windows
                .iter()
                .map(|w| (w.max as usize, Duration::from_std(w.length).unwrap_or(Duration::MAX)))
                .collect::<Vec<_>>()
        });
        let horizon = Channel::ALL.map(|c| limits[c.index()].iter().map(|(_, length)| *length).max());
        Windows { limits, horizon, users: HashMap::default(), ids: Default::default(), checks_since_sweep: 0 }
    }

    pub(crate) fn is_limited(&self, channel: Channel) -> bool {
        self.horizon[channel.index()].is_some()
    }

    /// Installs a user's counted events as read from the store, in any
    /// order. Events outside every window are left out.
    pub(crate) fn load(&mut self, user_id: &str, partition: i32, rows: Vec<(Channel, Counted)>, now: DateTime<Utc>) {
        let mut user = User { partition, counted: Default::default() };
        for (channel, counted) in rows {
            if self.horizon[channel.index()].is_some_and(|h| counted.at + h > now) {
                user.counted[channel.index()].push_back(Seen { at: counted.at, id: self.ids.hash_one(&counted.event_id) });
            }
        }
        for counted in &mut user.counted {
            counted.make_contiguous().sort_by_key(|c| c.at);
        }
        self.users.insert(user_id.to_owned(), user);
    }

    /// Decides one event and counts it if it passes. A user not seen
    /// before starts with empty windows.
    pub(crate) fn check(&mut self, user_id: &str, channel: Channel, event_id: &str, partition: i32, now: DateTime<Utc>) -> Checked {
        let Some(horizon) = self.horizon[channel.index()] else {
            return Checked::Unlimited;
        };
        self.checks_since_sweep += 1;
        if self.checks_since_sweep >= SWEEP_EVERY.max(self.users.len()) {
            self.checks_since_sweep = 0;
            self.sweep(now);
        }
        // One lookup for a known user; a new one is inserted with its key
        // copied once.
        let user = match self.users.get_mut(user_id) {
            Some(user) => user,
            None => self.users.entry(user_id.to_owned()).or_insert(User { partition, counted: Default::default() }),
        };
        let id = self.ids.hash_one(event_id);
        let counted = &mut user.counted[channel.index()];
        while counted.front().is_some_and(|c| c.at + horizon <= now) {
            counted.pop_front();
        }
        if counted.iter().any(|c| c.id == id) {
            return Checked::AlreadyCounted;
        }
        // For each full window, room appears when the event `max` places
        // from the newest leaves it; the event waits for the last of those.
        let until = self.limits[channel.index()]
            .iter()
            .filter(|(max, length)| counted.iter().rev().take_while(|c| c.at + *length > now).count() >= *max)
            .map(|(max, length)| counted[counted.len() - max].at + *length)
            .max();
        if let Some(until) = until {
            return Checked::Denied { until };
        }
        counted.push_back(Seen { at: now, id });
        Checked::Counted(now)
    }

    /// Like [`Windows::check`], but `None` for a user not yet loaded on a
    /// limited channel: the caller reads their window first.
    pub(crate) fn check_known(&mut self, user_id: &str, channel: Channel, event_id: &str, partition: i32, now: DateTime<Utc>) -> Option<Checked> {
        if self.is_limited(channel) && !self.users.contains_key(user_id) {
            return None;
        }
        Some(self.check(user_id, channel, event_id, partition, now))
    }

    /// Forgets the users of a Kafka partition this instance no longer owns.
    pub(crate) fn forget_partition(&mut self, partition: i32) {
        self.users.retain(|_, user| user.partition != partition);
    }

    fn sweep(&mut self, now: DateTime<Utc>) {
        let horizon = &self.horizon;
        self.users.retain(|_, user| {
            user.counted
                .iter()
                .zip(horizon)
                .any(|(counted, h)| h.is_some_and(|h| counted.back().is_some_and(|c| c.at + h > now)))
        });
    }

    #[cfg(test)]
    pub(crate) fn users(&self) -> usize {
        self.users.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Window;
    use chrono::TimeZone;

    fn limited(windows: &[(u32, u64)]) -> Windows {
        let limit = RateLimit {
            windows: windows
                .iter()
                .map(|&(max, secs)| Window { max, length: std::time::Duration::from_secs(secs) })
                .collect(),
        };
        Windows::new(|c| if c == Channel::Sms { limit.clone() } else { RateLimit::default() })
    }

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
    }

    fn sms(w: &mut Windows, user: &str, event: &str, t: i64) -> Checked {
        w.check(user, Channel::Sms, event, 0, at(t))
    }

    #[test]
    fn allows_exactly_max_per_window_then_denies_until_the_oldest_expires() {
        let mut w = limited(&[(10, 3600)]);
        for i in 0..10 {
            assert_eq!(sms(&mut w, "u", &format!("e{i}"), i), Checked::Counted(at(i)));
        }
        assert_eq!(sms(&mut w, "u", "e10", 100), Checked::Denied { until: at(3600) });
        // The window rolls: one slot frees when the first event is an hour old.
        assert_eq!(sms(&mut w, "u", "e11", 3599), Checked::Denied { until: at(3600) });
        assert_eq!(sms(&mut w, "u", "e12", 3600), Checked::Counted(at(3600)));
        assert_eq!(sms(&mut w, "u", "e13", 3600), Checked::Denied { until: at(3601) });
    }

    #[test]
    fn a_redelivered_event_is_not_counted_twice() {
        let mut w = limited(&[(2, 60)]);
        assert_eq!(sms(&mut w, "u", "a", 0), Checked::Counted(at(0)));
        assert_eq!(sms(&mut w, "u", "a", 1), Checked::AlreadyCounted);
        assert_eq!(sms(&mut w, "u", "b", 2), Checked::Counted(at(2)));
        assert_eq!(sms(&mut w, "u", "a", 3), Checked::AlreadyCounted);
        assert!(matches!(sms(&mut w, "u", "c", 4), Checked::Denied { .. }));
    }

    #[test]
    fn users_and_channels_have_separate_windows() {
        let mut w = limited(&[(1, 60)]);
        assert_eq!(sms(&mut w, "u1", "a", 0), Checked::Counted(at(0)));
        assert_eq!(sms(&mut w, "u2", "b", 0), Checked::Counted(at(0)));
        assert!(matches!(sms(&mut w, "u1", "c", 0), Checked::Denied { .. }));
        for i in 0..100 {
            assert_eq!(w.check("u1", Channel::Push, &format!("p{i}"), 0, at(0)), Checked::Unlimited);
        }
    }

    #[test]
    fn every_window_must_have_room_and_the_denial_waits_for_the_last() {
        // 2 per minute, 3 per hour.
        let mut w = limited(&[(2, 60), (3, 3600)]);
        assert_eq!(sms(&mut w, "u", "a", 0), Checked::Counted(at(0)));
        assert_eq!(sms(&mut w, "u", "b", 10), Checked::Counted(at(10)));
        assert_eq!(sms(&mut w, "u", "c", 20), Checked::Denied { until: at(60) }, "the minute is full");
        assert_eq!(sms(&mut w, "u", "c", 60), Checked::Counted(at(60)));
        // Both full now: the minute frees at 70, the hour at 3600.
        assert_eq!(sms(&mut w, "u", "d", 61), Checked::Denied { until: at(3600) });
        assert_eq!(sms(&mut w, "u", "d", 3600), Checked::Counted(at(3600)));
    }

    #[test]
    fn loaded_events_count_and_expired_ones_are_left_out() {
        let mut w = limited(&[(2, 60)]);
        let row = |t: i64, id: &str| (Channel::Sms, Counted { at: at(t), event_id: id.into() });
        // Out of order, as a store returns them (by event id), one expired.
        w.load("u", 3, vec![row(50, "b"), row(-100, "old"), row(40, "a")], at(60));
        assert_eq!(w.check_known("v", Channel::Sms, "x", 3, at(60)), None, "not loaded");
        assert_eq!(w.check_known("v", Channel::Push, "x", 3, at(60)), Some(Checked::Unlimited));
        assert_eq!(sms(&mut w, "u", "a", 60), Checked::AlreadyCounted);
        assert_eq!(sms(&mut w, "u", "c", 61), Checked::Denied { until: at(100) });
        assert_eq!(sms(&mut w, "u", "old", 62), Checked::Denied { until: at(100) }, "expired: a new event");
    }

    #[test]
    fn a_departed_partition_takes_its_users() {
        let mut w = limited(&[(1, 60)]);
        w.check("a", Channel::Sms, "e", 1, at(0));
        w.check("b", Channel::Sms, "e", 2, at(0));
        w.forget_partition(1);
        assert_eq!(w.check_known("a", Channel::Sms, "e2", 1, at(1)), None, "forgotten");
        assert!(w.check_known("b", Channel::Sms, "e2", 2, at(1)).is_some(), "kept");
    }

    #[test]
    fn idle_users_are_swept() {
        let mut w = limited(&[(1, 60)]);
        for i in 0..SWEEP_EVERY - 1 {
            sms(&mut w, &format!("u{i}"), "e", 0);
        }
        assert_eq!(w.users(), SWEEP_EVERY - 1);
        // This check is the one that sweeps; by now every earlier window is idle.
        sms(&mut w, "late", "e", 61);
        assert_eq!(w.users(), 1);
    }
}
