//! The wall clock herald decides by: quiet hours, due times, and the
//! timestamps of the records it writes. The system clock in production; a
//! test can move it, so no test waits for real hours.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};

/// The system clock, plus an offset a test may set. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// Milliseconds added to the system clock; `None` in production, so
    /// reading the time costs no atomic load.
    offset: Option<Arc<AtomicI64>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock::default()
    }

    /// The system clock until [`Clock::set`] moves it.
    pub fn adjustable() -> Clock {
        Clock { offset: Some(Arc::default()) }
    }

    /// The time now, as this clock has it.
    pub fn now(&self) -> DateTime<Utc> {
        let now = Utc::now();
        match &self.offset {
            None => now,
            Some(offset) => now + chrono::Duration::milliseconds(offset.load(Ordering::Relaxed)),
        }
    }

    /// A timestamp for a record herald writes: `None` with the system
    /// clock, which the producer reads itself.
    pub fn stamp(&self) -> Option<i64> {
        self.offset.is_some().then(|| self.now().timestamp_millis())
    }

    /// Makes it `at` now; time goes on from there. Only an adjustable
    /// clock moves.
    pub fn set(&self, at: DateTime<Utc>) {
        let offset = self.offset.as_ref().expect("only an adjustable clock is set");
        offset.store((at - Utc::now()).num_milliseconds(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_clock_goes_on_from_where_it_was_set() {
        let clock = Clock::adjustable();
        let at = Utc::now() + chrono::Duration::hours(9);
        clock.set(at);
        let read = clock.now();
        assert!(read >= at - chrono::Duration::milliseconds(2) && read < at + chrono::Duration::seconds(1), "{read} against {at}");
        let shared = clock.clone();
        assert!((shared.now() - at).num_seconds().abs() < 1);
        assert!((Clock::system().now() - Utc::now()).num_seconds().abs() < 1);
    }
}
