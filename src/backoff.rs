//! Waiting between tries: one schedule, doubling from a first pause up to
//! a cap, shared by everything that retries (the producer, ScyllaDB writes
//! and reads, the schema registry, the send ledger's reader).

use std::time::Duration;

/// Pauses of `first`, twice that, and so on, never more than `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub const fn new(first: Duration, max: Duration) -> Self {
        Backoff { next: first, max }
    }

    /// The pause to take now; the next one is twice as long, up to the cap.
    pub fn next_pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(self.max);
        pause
    }

    /// Sleeps for the next pause; returns how long it was.
    pub async fn wait(&mut self) -> Duration {
        let pause = self.next_pause();
        tokio::time::sleep(pause).await;
        pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(500));
        let pauses: Vec<Duration> = (0..5).map(|_| b.next_pause()).collect();
        assert_eq!(pauses, [ms(100), ms(200), ms(400), ms(500), ms(500)]);
    }
}
