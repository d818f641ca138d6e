//! Topic roles, the delay topics' schedule, and making sure the topics
//! exist.
//!
//! Every delay topic has a fixed delay, so its records come due in the
//! order they were appended: a record never waits behind one due later.
//! The retry ladder (`retry-10m`, `retry-20m`, `retry-40m`) holds retries,
//! each waiting exactly its rung's delay. Everything else that waits (a
//! scheduled send, a deferral, the wait for a circuit to close, a retry
//! whose provider asked for longer) waits on the timing wheel: a row of
//! tiers, each a fixed-delay topic. A record that must wait `R` is parked
//! on a tier of delay `D` with `D - hold <= R`; it comes out at its time if
//! that is within the tier's delay, and otherwise after the delay, to be
//! parked again for what is left. The consume loop holds in memory the
//! records due within `hold` (see `ingest::hold`), so a tier of delay `D`
//! serves every wait from `D - hold` to `D` exactly, and no record of a
//! tier can be due more than `hold` before one appended ahead of it.

use std::time::Duration;

use chrono::{DateTime, Utc};

mod args;
mod create;
mod wheel;

pub use args::TopicArgs;
pub(crate) use create::ensure;
pub(crate) use create::Creation;
pub use create::TopicError;
pub use wheel::DEFAULT_HOLD;
pub use wheel::DEFAULT_WAIT_DELAYS;
pub use wheel::DEFAULT_WAIT_TOPICS;

/// A topic whose records wait a fixed time after they are appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelayTopic {
    pub name: String,
    pub delay: Duration,
}

/// Every topic herald reads or writes, by role, and the timing wheel's plan.
#[derive(Debug, Clone)]
pub struct Topics {
    pub requested: String,
    pub status: String,
    pub dead_letter: String,
    /// Compacted, one partition: see `suppression`.
    pub suppressions: String,
    /// Compacted, one partition: see `cancel`.
    pub cancellations: String,
    /// How long a cancel is kept: the longest a request can wait for an
    /// attempt (see `Settings::cancel_keep`).
    pub cancel_keep: Duration,
    /// In schedule order: a transient failure on attempt n goes to `retries[n - 1]`.
    pub retries: Vec<DelayTopic>,
    /// The timing wheel's tiers, shortest first.
    pub waits: Vec<DelayTopic>,
    /// Records due within this long are held in memory by the consume loop
    /// rather than paused on; a tier takes waits down to its delay less it.
    pub hold: Duration,
    /// For each stretch of `plan_unit` of a wait, the tier that parks it in
    /// the fewest copies, and how many that is (see [`Topics::plan`]).
    /// Shared: `Topics` is cloned with the settings.
    plan: std::sync::Arc<[(u8, u16)]>,
    plan_unit: Duration,
}

/// Whether a consumed record may be worked on now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Its time has come, or it never had one.
    Now,
    /// Not yet: it waits until `release`, its time or the end of its
    /// topic's delay, whichever comes first.
    Wait { release: DateTime<Utc> },
    /// Its topic's delay ran out before its time: it is parked again, on
    /// the tier that suits the time left.
    ParkAgain { not_before: DateTime<Utc> },
}

/// Where a consumed record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    Requested,
    Retry(usize),
    /// A tier of the timing wheel.
    Wait(usize),
}


impl Topics {
    /// herald's default names and schedule.
    pub fn defaults() -> Self {
        let parse = |d: &str| humantime::parse_duration(d).expect("a valid default");
        let topic = |name: &str, delay: Duration| DelayTopic { name: name.to_owned(), delay };
        let minutes = |m: u64| Duration::from_secs(60 * m);
        Topics::new(
            Roles {
                requested: "notification.requested".into(),
                status: "notification.status".into(),
                dead_letter: "notification.dead-letter".into(),
                suppressions: "notification.suppressions".into(),
                cancellations: "notification.cancellations".into(),
                cancel_keep: Duration::from_secs(31 * 86_400),
            },
            vec![topic("retry-10m", minutes(10)), topic("retry-20m", minutes(20)), topic("retry-40m", minutes(40))],
            DEFAULT_WAIT_TOPICS.split(',').zip(DEFAULT_WAIT_DELAYS.split(',')).map(|(name, delay)| topic(name, parse(delay))).collect(),
            parse(DEFAULT_HOLD),
            Duration::from_secs(31 * 86_400),
        )
    }

    /// The topics, with the wheel's placement worked out for waits up to
    /// `longest`.
    pub fn new(roles: Roles, retries: Vec<DelayTopic>, mut waits: Vec<DelayTopic>, hold: Duration, longest: Duration) -> Self {
        waits.sort_by_key(|w| w.delay);
        let Roles { requested, status, dead_letter, suppressions, cancellations, cancel_keep } = roles;
        let mut topics = Topics {
            requested,
            status,
            dead_letter,
            suppressions,
            cancellations,
            cancel_keep,
            retries,
            waits,
            hold,
            plan: std::sync::Arc::new([]),
            plan_unit: Duration::ZERO,
        };
        topics.plan(longest);
        topics
    }

    /// The topics herald consumes.
    pub fn inputs(&self) -> Vec<&str> {
        std::iter::once(self.requested.as_str()).chain(self.delays().map(|(_, t)| t.name.as_str())).collect()
    }

    /// Every delay topic, retry rungs then tiers, with its source.
    pub fn delays(&self) -> impl Iterator<Item = (Source, &DelayTopic)> {
        let retries = self.retries.iter().enumerate().map(|(i, t)| (Source::Retry(i), t));
        retries.chain(self.waits.iter().enumerate().map(|(i, t)| (Source::Wait(i), t)))
    }

    /// Every topic's name.
    pub fn all(&self) -> Vec<&str> {
        let mut all = self.inputs();
        all.extend([self.status.as_str(), self.dead_letter.as_str(), self.suppressions.as_str(), self.cancellations.as_str()]);
        all
    }

    /// The name of the topic a record came from.
    pub fn name(&self, source: Source) -> &str {
        match source {
            Source::Requested => &self.requested,
            Source::Retry(i) => &self.retries[i].name,
            Source::Wait(i) => &self.waits[i].name,
        }
    }

    /// A delay topic's fixed delay; `None` for the requests topic.
    pub fn delay(&self, source: Source) -> Option<Duration> {
        match source {
            Source::Requested => None,
            Source::Retry(i) => Some(self.retries[i].delay),
            Source::Wait(i) => Some(self.waits[i].delay),
        }
    }

    /// The index of `source` among [`Topics::inputs`].
    pub fn index(&self, source: Source) -> usize {
        match source {
            Source::Requested => 0,
            Source::Retry(i) => 1 + i,
            Source::Wait(i) => 1 + self.retries.len() + i,
        }
    }

    /// The role of an input topic, by name.
    pub fn source(&self, topic: &str) -> Option<Source> {
        if topic == self.requested {
            return Some(Source::Requested);
        }
        self.delays().find(|(_, t)| t.name == topic).map(|(source, _)| source)
    }

    /// Whether a record from `source` that is due at `not_before` and was
    /// appended at `appended` may be worked on at `now`. No record is held
    /// in a delay topic longer than that topic's delay, however far off its
    /// time is; records of the requests topic are always due (a scheduled
    /// request is parked first, by the pipeline).
    pub fn due(&self, source: Source, not_before: Option<DateTime<Utc>>, appended: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Due {
        let (Some(delay), Some(not_before)) = (self.delay(source), not_before) else { return Due::Now };
        let delay = chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
        let release = appended.map_or(not_before, |t| not_before.min(t + delay));
        match (release > now, not_before > now) {
            (true, _) => Due::Wait { release },
            (false, true) => Due::ParkAgain { not_before },
            (false, false) => Due::Now,
        }
    }

    /// A wait this short is held in memory from the start, not parked: a
    /// copy could not be written and read back much sooner. The hold
    /// window, or 5 s when that is longer.
    pub fn soon(&self) -> Duration {
        self.hold.min(Duration::from_secs(5))
    }

    /// The retry topic after a transient failure on `attempt` (from 1), or
    /// `None` when the schedule is exhausted.
    pub fn retry_after_attempt(&self, attempt: u32) -> Option<usize> {
        let index = attempt.checked_sub(1)? as usize;
        (index < self.retries.len()).then_some(index)
    }
}

/// The topics that are not delay topics, with what their roles need.
#[derive(Debug, Clone)]
pub struct Roles {
    pub requested: String,
    pub status: String,
    pub dead_letter: String,
    pub suppressions: String,
    pub cancellations: String,
    pub cancel_keep: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics() -> Topics {
        Topics::defaults()
    }

    #[test]
    fn each_transient_failure_moves_one_topic_down_the_schedule() {
        let t = topics();
        assert_eq!(t.retry_after_attempt(1), Some(0));
        assert_eq!(t.retry_after_attempt(2), Some(1));
        assert_eq!(t.retry_after_attempt(3), Some(2));
        assert_eq!(t.retry_after_attempt(4), None);
        assert_eq!(t.retry_after_attempt(0), None);
    }

    #[test]
    fn a_parked_record_waits_for_its_time_or_its_topic_s_delay() {
        use chrono::TimeZone;
        let t = topics();
        let at = |m: i64| Utc.timestamp_opt(1_700_000_000, 0).unwrap() + chrono::Duration::minutes(m);
        let retry = Source::Retry(0);
        assert_eq!(t.due(Source::Requested, Some(at(5)), Some(at(0)), at(0)), Due::Now, "a request is always due");
        assert_eq!(t.due(retry, None, Some(at(0)), at(0)), Due::Now, "no time: due");
        assert_eq!(t.due(retry, Some(at(5)), Some(at(0)), at(1)), Due::Wait { release: at(5) });
        assert_eq!(t.due(retry, Some(at(5)), Some(at(0)), at(5)), Due::Now);
        assert_eq!(t.due(retry, Some(at(60)), Some(at(0)), at(1)), Due::Wait { release: at(10) }, "the topic's delay first");
        assert_eq!(t.due(retry, Some(at(60)), Some(at(0)), at(10)), Due::ParkAgain { not_before: at(60) });
        assert_eq!(t.due(retry, Some(at(60)), None, at(10)), Due::Wait { release: at(60) }, "no append time: its own time");
    }

    #[test]
    fn sources_are_recognised_by_topic_name() {
        let t = topics();
        assert_eq!(t.source("notification.requested"), Some(Source::Requested));
        assert_eq!(t.source("retry-40m"), Some(Source::Retry(2)));
        assert_eq!(t.source("wait-16d"), Some(Source::Wait(11)));
        assert_eq!(t.source("notification.status"), None);
        assert_eq!((t.index(Source::Requested), t.index(Source::Retry(2)), t.index(Source::Wait(0))), (0, 3, 4));
        assert_eq!(t.inputs().len(), 1 + 3 + 12);
    }
}
