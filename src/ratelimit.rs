//! Stage 2: the rolling-window limit per (user, channel).
//!
//! Counting is idempotent per event id: a redelivered record finds its id
//! already in the window and is allowed without counting again. Only a
//! request's first delivery attempt is checked (see `ingest`), so retries
//! are never counted either.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};

use crate::config::RateLimit;
use crate::model::Channel;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// The window is full; capacity frees up at `until`.
    Deny { until: DateTime<Utc> },
}

/// The limiter implementations. An enum rather than a trait object: the set
/// is closed and known at startup.
pub enum Limiter {
    InMemory(InMemory),
}

impl Limiter {
    pub fn check(&self, user_id: &str, channel: Channel, event_id: &str, now: DateTime<Utc>) -> Decision {
        match self {
            Limiter::InMemory(m) => m.check(user_id, channel, event_id, now),
        }
    }
}

/// Limits kept in this process only: they reset when herald restarts or a
/// partition moves to another instance.
pub struct InMemory {
    /// Per channel, the most events and the window they are counted over;
    /// `None` when the channel is not limited.
    limits: [Option<(usize, Duration)>; Channel::ALL.len()],
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Per user, one window per channel: keyed by user alone so that a
    /// check looks up by `&str` and allocates only for a new user.
    windows: HashMap<String, [VecDeque<Counted>; Channel::ALL.len()]>,
    checks_since_sweep: u32,
}

struct Counted {
    at: DateTime<Utc>,
    event_id: String,
}

/// Idle users are forgotten every this many checks, so memory follows the
/// number of active users rather than every user ever seen.
const SWEEP_EVERY: u32 = 10_000;

impl InMemory {
    pub fn new(limit_for: impl Fn(Channel) -> RateLimit) -> Self {
        let limit = |channel| match limit_for(channel) {
            RateLimit::PerWindow { max, window } => Some((max as usize, Duration::from_std(window).unwrap_or(Duration::MAX))),
            RateLimit::Off => None,
        };
        InMemory { limits: Channel::ALL.map(limit), state: Mutex::default() }
    }

    fn check(&self, user_id: &str, channel: Channel, event_id: &str, now: DateTime<Utc>) -> Decision {
        let Some((max, window)) = self.limits[channel.index()] else {
            return Decision::Allow;
        };
        let mut state = self.state.lock().expect("rate limit lock");
        state.checks_since_sweep += 1;
        if state.checks_since_sweep >= SWEEP_EVERY {
            state.checks_since_sweep = 0;
            let limits = &self.limits;
            state.windows.retain(|_, per_channel| {
                per_channel.iter().zip(limits).any(|(counted, limit)| {
                    limit.is_some_and(|(_, window)| counted.back().is_some_and(|c| c.at + window > now))
                })
            });
        }
        if !state.windows.contains_key(user_id) {
            state.windows.insert(user_id.to_owned(), Default::default());
        }
        let counted = &mut state.windows.get_mut(user_id).expect("inserted above")[channel.index()];
        while counted.front().is_some_and(|c| c.at + window <= now) {
            counted.pop_front();
        }
        if counted.iter().any(|c| c.event_id == event_id) {
            return Decision::Allow;
        }
        if counted.len() >= max {
            let oldest = counted.front().expect("a full window is not empty").at;
            return Decision::Deny { until: oldest + window };
        }
        counted.push_back(Counted { at: now, event_id: event_id.to_owned() });
        Decision::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn limiter(max: u32, secs: u64) -> Limiter {
        let limit = RateLimit::PerWindow { max, window: std::time::Duration::from_secs(secs) };
        Limiter::InMemory(InMemory::new(|c| if c == Channel::Sms { limit } else { RateLimit::Off }))
    }

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn allows_exactly_max_per_window_then_denies_until_the_oldest_expires() {
        let l = limiter(10, 3600);
        for i in 0..10 {
            assert_eq!(l.check("u", Channel::Sms, &format!("e{i}"), at(i)), Decision::Allow);
        }
        assert_eq!(l.check("u", Channel::Sms, "e10", at(100)), Decision::Deny { until: at(3600) });
        // The window rolls: one slot frees when the first event is an hour old.
        assert_eq!(l.check("u", Channel::Sms, "e11", at(3599)), Decision::Deny { until: at(3600) });
        assert_eq!(l.check("u", Channel::Sms, "e12", at(3600)), Decision::Allow);
        assert_eq!(l.check("u", Channel::Sms, "e13", at(3600)), Decision::Deny { until: at(3601) });
    }

    #[test]
    fn a_redelivered_event_is_not_counted_twice() {
        let l = limiter(2, 60);
        assert_eq!(l.check("u", Channel::Sms, "a", at(0)), Decision::Allow);
        assert_eq!(l.check("u", Channel::Sms, "a", at(1)), Decision::Allow);
        assert_eq!(l.check("u", Channel::Sms, "b", at(2)), Decision::Allow);
        assert_eq!(l.check("u", Channel::Sms, "a", at(3)), Decision::Allow, "already counted");
        assert!(matches!(l.check("u", Channel::Sms, "c", at(4)), Decision::Deny { .. }));
    }

    #[test]
    fn users_and_channels_have_separate_windows() {
        let l = limiter(1, 60);
        assert_eq!(l.check("u1", Channel::Sms, "a", at(0)), Decision::Allow);
        assert_eq!(l.check("u2", Channel::Sms, "b", at(0)), Decision::Allow);
        assert!(matches!(l.check("u1", Channel::Sms, "c", at(0)), Decision::Deny { .. }));
        for i in 0..100 {
            assert_eq!(l.check("u1", Channel::Push, &format!("p{i}"), at(0)), Decision::Allow, "push is off");
        }
    }

    #[test]
    fn idle_users_are_swept() {
        let Limiter::InMemory(m) = limiter(1, 60);
        for i in 0..SWEEP_EVERY - 1 {
            m.check(&format!("u{i}"), Channel::Sms, "e", at(0));
        }
        assert_eq!(m.state.lock().unwrap().windows.len(), (SWEEP_EVERY - 1) as usize);
        // This check is the one that sweeps; by now every earlier window is idle.
        m.check("late", Channel::Sms, "e", at(61));
        assert_eq!(m.state.lock().unwrap().windows.len(), 1);
    }
}
