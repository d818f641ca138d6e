//! Waiting between tries: one schedule, doubling from a first pause up to
//! a cap, shared by everything that retries (the producer, ScyllaDB writes
//! and reads, the schema registry, the send ledger's reader).
//!
//! Each pause is jittered, between half its step and the whole step, so
//! that the instances and tasks that failed together (a broker or
//! ScyllaDB node gone for a moment) do not come back together, in step.

use std::time::Duration;

/// Pauses of up to `first`, twice that, and so on, never more than `max`;
/// each at least half its step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    step: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) const fn new(first: Duration, max: Duration) -> Self {
        Backoff { step: first, max }
    }

    /// The pause to take now; the next step is twice as long, up to the
    /// cap.
    pub(crate) fn next_pause(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        step.mul_f64(0.5 + fastrand::f64() / 2.0)
    }

    /// Sleeps for the next pause; returns how long it was.
    pub(crate) async fn wait(&mut self) -> Duration {
        let pause = self.next_pause();
        tokio::time::sleep(pause).await;
        pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap_each_jittered_within_its_step() {
        let ms = Duration::from_millis;
        let steps = [ms(100), ms(200), ms(400), ms(500), ms(500)];
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let mut b = Backoff::new(ms(100), ms(500));
            for step in steps {
                let pause = b.next_pause();
                assert!(pause >= step / 2 && pause <= step, "{pause:?} outside {:?}..={step:?}", step / 2);
                seen.insert(pause);
            }
        }
        assert!(seen.len() > steps.len(), "the pauses differ from run to run");
    }
}
