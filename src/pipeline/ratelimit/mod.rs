//! Stage 2: the rolling-window limit per (user, channel).
//!
//! Counting is idempotent per event id: a redelivered record finds its id
//! already in the window and is allowed without counting again. Only a
//! request's first delivery attempt is checked (see `pipeline`), so retries
//! are never counted either.
//!
//! Windows are decided in memory (`windows`). With ScyllaDB ([`scylla`]),
//! every count is also written there, and a user's window is read from it
//! the first time the user is seen after their Kafka partition is
//! assigned. A user's records all come from one partition number (herald
//! keeps retries on the partition they came from, and the consumer uses
//! the range assignor), so each user has one writer at a time, and the
//! cache is dropped with the partition.

mod limit;
mod windows;

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};

pub use crate::cql::rate_limits::Pending;
pub use crate::cql::rate_limits::StoreError;
pub use crate::cql::rate_limits::Table;
pub use crate::cql::rate_limits::TABLE;
pub(crate) use self::limit::OverLimit;
pub use self::limit::RateLimit;
pub use self::limit::RateLimitArgs;
pub(crate) use self::limit::Settings;
pub(crate) use self::windows::Checked;
pub use self::windows::Counted;
pub(crate) use self::windows::Windows;
use crate::backoff::Backoff;
use crate::model::Channel;

/// What the limiter says of one send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// The window is full; capacity frees up at `until`.
    Deny { until: DateTime<Utc> },
}

/// Where counts live besides this process's memory. One per process.
#[allow(clippy::large_enum_variant)]
pub enum Store {
    /// Nowhere: limits reset when herald restarts or a partition moves.
    Memory,
    ScyllaDb(Table),
}

/// The event being checked.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub user_id: &'a str,
    pub channel: Channel,
    pub event_id: &'a str,
    /// The Kafka partition the record was read from.
    pub partition: i32,
}

/// The per-user, per-channel rate limit, counted in its store.
pub struct Limiter {
    windows: Mutex<Windows>,
    store: Store,
}

/// A first read of a user is tried this many times before herald gives up
/// and stops, leaving the record to be redelivered.
const READ_ATTEMPTS: u32 = 5;

impl Limiter {
    /// A limiter of each channel's limit, counting in `store`.
    pub fn new(limit_for: impl Fn(Channel) -> RateLimit, store: Store) -> Self {
        Limiter { windows: Mutex::new(Windows::new(limit_for)), store }
    }

    /// Decides one event. An allowed event that was counted comes with its
    /// pending write, which the record's offset must wait for.
    pub async fn check(&self, s: Subject<'_>, now: DateTime<Utc>) -> Result<(Decision, Option<Pending>), StoreError> {
        let checked = match &self.store {
            Store::Memory => self.windows().check(s.user_id, s.channel, s.event_id, s.partition, now),
            Store::ScyllaDb(table) => {
                let known = self.windows().check_known(s.user_id, s.channel, s.event_id, s.partition, now);
                match known {
                    Some(checked) => checked,
                    None => {
                        let rows = read(table, s.user_id).await?;
                        let mut windows = self.windows();
                        windows.load(s.user_id, s.partition, rows, now);
                        windows.check(s.user_id, s.channel, s.event_id, s.partition, now)
                    }
                }
            }
        };
        Ok(match (checked, &self.store) {
            (Checked::Denied { until }, _) => (Decision::Deny { until }, None),
            (Checked::Counted(at), Store::ScyllaDb(table)) => {
                let counted = Counted { at, event_id: s.event_id.to_owned() };
                (Decision::Allow, Some(table.write(s.user_id, s.channel, counted).await))
            }
            (Checked::Counted(_) | Checked::Unlimited | Checked::AlreadyCounted, _) => (Decision::Allow, None),
        })
    }

    /// Whether the store answers now; always, in memory.
    pub(crate) async fn reachable(&self, timeout: Duration) -> Option<Result<(), String>> {
        match &self.store {
            Store::Memory => None,
            Store::ScyllaDb(table) => Some(table.ping(timeout).await),
        }
    }

    /// The partition moved away: its users may be counted elsewhere now,
    /// so their windows are read again if it comes back.
    pub(crate) fn forget_partition(&self, partition: i32) {
        if let Store::ScyllaDb(_) = self.store {
            self.windows().forget_partition(partition);
        }
    }

    fn windows(&self) -> std::sync::MutexGuard<'_, Windows> {
        self.windows.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

async fn read(table: &Table, user_id: &str) -> Result<Vec<(Channel, Counted)>, StoreError> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
    let mut attempt = 1;
    loop {
        match table.load(user_id).await {
            Ok(rows) => return Ok(rows),
            Err(error) if attempt < READ_ATTEMPTS => {
                tracing::warn!(message = "Reading a rate-limit window failed; retrying.", %error, attempt);
                backoff.wait().await;
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}
