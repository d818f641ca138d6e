//! A circuit breaker per provider. After `failures` transient failures in
//! a row, the provider is left alone for `cooldown`: calls fail at once as
//! transient, so their records go to the retry topics instead of adding to
//! an outage. Then a single trial call decides whether it closes again. A
//! trial whose result never comes (its call was dropped) is given up after
//! another cooldown, and the next call is the trial.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

pub(crate) use crate::metrics::CircuitState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    /// One trial call is out; everyone else waits for its result, until
    /// `until`, when another trial may go.
    Trial { until: Instant },
}

#[derive(Debug)]
pub(crate) struct Breaker {
    failures: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

/// Whether a call may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    Go,
    /// Open: try again after this long.
    Refused { retry_after: Duration },
}

/// What a call that went ahead came to, as the breaker counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Result {
    /// The provider answered: success, or a refusal of this message.
    Answered,
    /// The provider failed: 5xx, 429, timeout, connection error.
    Failed,
}

impl Breaker {
    pub(crate) fn new(failures: u32, cooldown: Duration) -> Self {
        Breaker { failures: failures.max(1), cooldown, state: Mutex::new(State::Closed { failures: 0 }) }
    }

    /// For the `herald_circuit_state` gauge.
    pub(crate) fn state(&self, now: Instant) -> CircuitState {
        match *self.state.lock().unwrap_or_else(|p| p.into_inner()) {
            State::Closed { .. } => CircuitState::Closed,
            State::Open { until } if now < until => CircuitState::Open,
            State::Open { .. } | State::Trial { .. } => CircuitState::Trial,
        }
    }

    pub(crate) fn admit(&self, now: Instant) -> Admission {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match *state {
            State::Closed { .. } => Admission::Go,
            State::Open { until } | State::Trial { until } if now >= until => {
                *state = State::Trial { until: now + self.cooldown };
                Admission::Go
            }
            State::Open { until } | State::Trial { until } => Admission::Refused { retry_after: until - now },
        }
    }

    pub(crate) fn record(&self, result: Result, now: Instant) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        *state = match (*state, result) {
            (_, Result::Answered) => State::Closed { failures: 0 },
            (State::Closed { failures }, Result::Failed) if failures + 1 < self.failures => {
                State::Closed { failures: failures + 1 }
            }
            (State::Closed { .. } | State::Trial { .. }, Result::Failed) => {
                tracing::warn!(message = "Provider failing; circuit open.", cooldown_ms = self.cooldown.as_millis() as u64);
                State::Open { until: now + self.cooldown }
            }
            // A call admitted before the circuit opened.
            (open @ State::Open { .. }, Result::Failed) => open,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_closes_after_a_good_trial() {
        let b = Breaker::new(3, Duration::from_secs(30));
        let t0 = Instant::now();
        let s = Duration::from_secs;
        for _ in 0..2 {
            assert_eq!(b.admit(t0), Admission::Go);
            b.record(Result::Failed, t0);
        }
        b.record(Result::Answered, t0);
        for _ in 0..2 {
            b.record(Result::Failed, t0);
        }
        assert_eq!(b.admit(t0), Admission::Go, "an answer in between starts the count again");
        b.record(Result::Failed, t0);
        assert_eq!(b.admit(t0 + s(10)), Admission::Refused { retry_after: s(20) }, "open");
        assert_eq!(b.admit(t0 + s(30)), Admission::Go, "the trial");
        assert_eq!(b.admit(t0 + s(31)), Admission::Refused { retry_after: s(29) }, "one trial at a time");
        b.record(Result::Answered, t0 + s(31));
        assert_eq!(b.admit(t0 + s(31)), Admission::Go, "closed again");
    }

    #[test]
    fn a_trial_that_never_reports_back_is_given_up_after_a_cooldown() {
        let b = Breaker::new(1, Duration::from_secs(5));
        let t0 = Instant::now();
        let s = Duration::from_secs;
        b.record(Result::Failed, t0);
        assert_eq!(b.admit(t0 + s(5)), Admission::Go, "the trial, whose call is then dropped");
        assert_eq!(b.admit(t0 + s(9)), Admission::Refused { retry_after: s(1) });
        assert_eq!(b.admit(t0 + s(10)), Admission::Go, "another trial");
        b.record(Result::Answered, t0 + s(10));
        assert_eq!(b.admit(t0 + s(10)), Admission::Go, "closed");
    }

    #[test]
    fn a_failed_trial_opens_it_again() {
        let b = Breaker::new(1, Duration::from_secs(5));
        let t0 = Instant::now();
        b.record(Result::Failed, t0);
        assert!(matches!(b.admit(t0), Admission::Refused { .. }));
        assert_eq!(b.admit(t0 + Duration::from_secs(5)), Admission::Go);
        b.record(Result::Failed, t0 + Duration::from_secs(5));
        assert_eq!(b.admit(t0 + Duration::from_secs(6)), Admission::Refused { retry_after: Duration::from_secs(4) });
    }
}
