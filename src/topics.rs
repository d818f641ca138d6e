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

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

/// A topic whose records wait a fixed time after they are appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelayTopic {
    pub name: String,
    pub delay: Duration,
}

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

/// The most entries of the placement table: a year in the default hold's
/// 150-second steps, built in a few milliseconds at startup.
const MAX_PLAN: usize = 250_000;

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

    pub fn all(&self) -> Vec<&str> {
        let mut all = self.inputs();
        all.extend([self.status.as_str(), self.dead_letter.as_str(), self.suppressions.as_str(), self.cancellations.as_str()]);
        all
    }

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

    /// The tier that parks a record due in `remaining`: one whose delay
    /// less the hold is at most `remaining` (so nothing behind it is due
    /// before it comes out), chosen for the fewest copies until it is due.
    pub fn wait_for(&self, remaining: Duration) -> usize {
        let step = (remaining.as_nanos() / self.plan_unit.as_nanos().max(1)) as usize;
        match self.plan.get(step) {
            Some((tier, _)) => *tier as usize,
            // Beyond the table (a hold far shorter than the longest wait):
            // the longest tier that is safe.
            None => self.waits.iter().rposition(|w| w.delay.saturating_sub(self.hold) <= remaining).unwrap_or(0),
        }
    }

    /// The most copies any wait up to `longest` takes, counted in steps
    /// of the placement table (and no further than it reaches).
    pub fn most_copies(&self, longest: Duration) -> u32 {
        let steps = ((longest.as_nanos() / self.plan_unit.as_nanos().max(1)) as usize + 1).min(self.plan.len());
        self.plan[..steps].iter().map(|(_, copies)| u32::from(*copies)).max().unwrap_or(1)
    }

    /// The copies a wait of `remaining` takes, parked as [`Topics::wait_for`]
    /// parks it.
    pub fn copies(&self, mut remaining: Duration) -> u32 {
        let mut copies = 1;
        loop {
            let tier = self.waits[self.wait_for(remaining)].delay;
            if remaining <= tier {
                return copies;
            }
            remaining -= tier;
            copies += 1;
        }
    }

    /// Works out the placement table for waits up to `longest`: the fewest
    /// copies for each wait, in steps of a quarter of the hold, by dynamic
    /// programming. Any tier whose delay less the hold is within the wait
    /// is safe; the table only picks among them. At most [`MAX_PLAN`]
    /// steps: past them, [`Topics::wait_for`] takes the longest safe tier.
    fn plan(&mut self, longest: Duration) {
        if self.waits.is_empty() {
            return;
        }
        let unit = (self.hold / 4).max(Duration::from_millis(1));
        let steps = ((longest.as_nanos() / unit.as_nanos()) as usize + 2).min(MAX_PLAN);
        self.plan_unit = unit;
        let (hold, unit) = (self.hold.as_nanos(), unit.as_nanos());
        let tiers: Vec<u128> = self.waits.iter().map(|w| w.delay.as_nanos()).collect();
        let mut copies = vec![0u16; steps];
        let mut plan = vec![0u8; steps];
        // Each step stands for every wait from its start to the next step's:
        // a tier is taken only if it is safe for the shortest of them, and
        // counted for the worst of them.
        for step in 0..steps {
            let (lo, hi) = (step as u128 * unit, (step as u128 + 1) * unit - 1);
            let (mut best, mut best_tier) = (u16::MAX, 0);
            for (i, &delay) in tiers.iter().enumerate() {
                if delay.saturating_sub(hold) > lo && i > 0 {
                    break;
                }
                let total = match hi <= delay {
                    true => 1,
                    false => (lo.saturating_sub(delay) / unit..=(hi - delay) / unit).map(|j| copies[j as usize]).max().unwrap_or(0).saturating_add(1),
                };
                // Of equal counts, the longer tier: fewer reads.
                if total <= best {
                    (best, best_tier) = (total, i);
                }
            }
            copies[step] = best;
            plan[step] = best_tier as u8;
        }
        self.plan = plan.into_iter().zip(copies).collect();
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

/// The wheel's tiers by default. With the default hold of 10 minutes, any
/// wait up to 30 days takes at most 8 copies, up to a week 8, a day 6, two
/// hours 3, ten minutes 1 (tested). Found by searching sets of round
/// delays, from the fullest down, for the fewest tiers that keep 30 days
/// within 8 copies and the mean lowest; every wait of up to 30 days in
/// 1-minute steps was counted.
pub const DEFAULT_WAIT_TOPICS: &str = "wait-10m,wait-20m,wait-45m,wait-90m,wait-3h,wait-8h,wait-18h,wait-36h,wait-4d,wait-5d,wait-7d,wait-16d";
pub const DEFAULT_WAIT_DELAYS: &str = "10m,20m,45m,90m,3h,8h,18h,36h,4d,5d,7d,16d";
/// The default hold window.
pub const DEFAULT_HOLD: &str = "10m";

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("topic {0:?} does not exist and topic creation is off (--create-topics false)")]
    Missing(String),
    #[error("cannot read cluster metadata from --brokers {brokers}: {error}")]
    Metadata { brokers: String, error: rdkafka::error::KafkaError },
    #[error("cannot create topic {topic:?}: {error}")]
    Create { topic: String, error: String },
    #[error(
        "the topics herald consumes, and the status topic, must have the same number of partitions, so that a \
         user's retries and statuses stay with the instance that owns the user; found {0}"
    )]
    NotCoPartitioned(String),
}

/// Whether, and how, herald creates the topics that are missing.
#[derive(Debug, Clone, Copy)]
pub struct Creation {
    /// Off: herald refuses to start while one is missing.
    pub create: bool,
    pub partitions: i32,
    pub replication: i32,
}

/// Creates the topics that are missing, or refuses if told not to.
/// `brokers` names the cluster in errors.
pub async fn ensure(
    admin: &AdminClient<DefaultClientContext>,
    topics: &Topics,
    creation: Creation,
    brokers: &str,
) -> Result<(), TopicError> {
    let metadata = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))
        .map_err(|error| TopicError::Metadata { brokers: brokers.to_owned(), error })?;
    let existing: Vec<(&str, i32)> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name(), t.partitions().len() as i32))
        .collect();
    let partitions = |topic: &str| existing.iter().find(|(name, _)| *name == topic).map(|(_, n)| *n);
    // Status events go to their request's partition number (see `outcome`).
    let inputs: Vec<(&str, i32)> = topics
        .inputs()
        .into_iter()
        .chain([topics.status.as_str()])
        .map(|t| (t, partitions(t).unwrap_or(creation.partitions)))
        .collect();
    if inputs.iter().any(|(_, n)| *n != inputs[0].1) {
        let found = inputs.iter().map(|(t, n)| format!("{t}: {n}")).collect::<Vec<_>>().join(", ");
        return Err(TopicError::NotCoPartitioned(found));
    }
    let missing: Vec<&str> = topics.all().into_iter().filter(|t| partitions(t).is_none()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !creation.create {
        return Err(TopicError::Missing(missing[0].to_owned()));
    }
    let replication = || TopicReplication::Fixed(creation.replication);
    let retention = topics.cancel_keep.as_millis().to_string();
    let new: Vec<NewTopic> = missing
        .iter()
        .map(|t| {
            // Keyed state, read whole by every instance: compacted, and one
            // partition so that all writers' changes have one order.
            if *t == topics.suppressions {
                NewTopic::new(t, 1, replication()).set("cleanup.policy", "compact")
            } else if *t == topics.cancellations {
                // A cancel outlives its use after `cancel_keep`.
                NewTopic::new(t, 1, replication()).set("cleanup.policy", "compact,delete").set("retention.ms", &retention)
            } else {
                NewTopic::new(t, creation.partitions, replication())
            }
        })
        .collect();
    let results = admin
        .create_topics(&new, &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))))
        .await
        .map_err(|e| TopicError::Create { topic: missing.join(","), error: e.to_string() })?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(message = "Created topic.", topic),
            // Another instance won the race; that is fine.
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(TopicError::Create { topic, error: code.to_string() }),
        }
    }
    Ok(())
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
    fn a_wait_goes_to_a_tier_it_cannot_be_late_on() {
        let t = topics();
        let min = |m: u64| Duration::from_secs(60 * m);
        assert_eq!(t.waits[t.wait_for(Duration::ZERO)].delay, min(10), "due at once: the shortest, and held when read");
        assert_eq!(t.waits[t.wait_for(min(7))].delay, min(10));
        // Every choice leaves nothing behind it due before it comes out.
        for m in (0..60 * 24 * 31).step_by(7) {
            let tier = t.waits[t.wait_for(min(m))].delay;
            assert!(tier.saturating_sub(t.hold) <= min(m), "a wait of {m} min on the {tier:?} tier");
        }
    }

    #[test]
    fn any_wait_up_to_30_days_takes_at_most_8_copies() {
        let t = topics();
        let day = Duration::from_secs(86_400);
        assert_eq!(t.most_copies(day * 30), 8);
        assert_eq!(t.most_copies(day * 7), 8);
        assert_eq!(t.most_copies(day), 6);
        assert_eq!(t.most_copies(Duration::from_secs(7200)), 3);
        assert_eq!(t.most_copies(Duration::from_secs(600)), 1);
        // Off the table's steps too.
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..10_000 {
            let wait = Duration::from_millis(rng.u64(0..30 * 86_400_000));
            assert!(t.copies(wait) <= 8, "{wait:?}: {}", t.copies(wait));
        }
        // The case the issue names: 29 days ahead.
        assert!(t.copies(day * 29) <= 8);
    }

    #[test]
    fn a_wait_beyond_the_table_still_goes_to_a_safe_tier() {
        let min = |m: u64| Duration::from_secs(60 * m);
        let d = |name: &str, delay| DelayTopic { name: name.into(), delay };
        let roles = Topics::defaults();
        let roles = Roles { requested: roles.requested, status: roles.status, dead_letter: roles.dead_letter, suppressions: roles.suppressions, cancellations: roles.cancellations, cancel_keep: roles.cancel_keep };
        // A hold of 1 ms: the table covers a few minutes only.
        let t = Topics::new(roles, vec![], vec![d("a", Duration::from_millis(1)), d("b", min(1)), d("c", min(60))], Duration::from_millis(1), min(60 * 24));
        assert_eq!(t.wait_for(min(120)), 2);
        assert_eq!(t.wait_for(min(30)), 1);
        assert_eq!(t.copies(min(61)), 2);
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
