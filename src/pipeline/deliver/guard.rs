//! What protects a provider from herald: a cap on requests per second and
//! a circuit breaker, one of each per provider, so an outage of one
//! provider turns into retries (or failover), not a storm.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

use super::breaker::{self, Admission, Breaker, CircuitState};
use super::{Call, Delivered, DeliveryError, Gateway};
use crate::metrics::{CallResult, Metrics};

/// Shared by every provider: once shutdown's deadline has passed, no call
/// may start, whatever frees a slot or a token meanwhile.
#[derive(Debug, Clone, Default)]
pub(crate) struct Calls(Arc<AtomicBool>);

impl Calls {
    pub(crate) fn stop(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub(crate) fn stopped(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// A provider behind its guard.
pub(crate) struct Guarded<G> {
    gateway: G,
    metrics: Arc<Metrics>,
    rate: Option<DefaultDirectRateLimiter>,
    breaker: Breaker,
    calls: Calls,
}

impl<G: Gateway> Guarded<G> {
    pub(crate) fn new(gateway: G, max_per_second: Option<NonZeroU32>, breaker: Breaker, calls: Calls, metrics: Arc<Metrics>) -> Self {
        Guarded { gateway, metrics, rate: max_per_second.map(|n| RateLimiter::direct(Quota::per_second(n))), breaker, calls }
    }

    pub(crate) fn circuit(&self) -> CircuitState {
        self.breaker.state(Instant::now())
    }

    pub(crate) fn gateway(&self) -> &G {
        &self.gateway
    }

    /// Calls the provider within its rate, unless its circuit is open:
    /// then the call fails at once, with the time until the circuit closes.
    /// Once calls are stopped, it never returns: its task is being aborted.
    pub(crate) async fn call(&self, message: &G::Message, call: Call<'_>) -> Result<Delivered, DeliveryError> {
        let provider = self.gateway.provider();
        if let Admission::Refused { retry_after } = self.breaker.admit(Instant::now()) {
            self.metrics.call(provider, CallResult::CircuitOpen, None);
            return Err(DeliveryError::CircuitOpen { provider, retry_after });
        }
        if let Some(rate) = &self.rate {
            rate.until_ready().await;
        }
        if self.calls.stopped() {
            std::future::pending::<()>().await;
        }
        let started = Instant::now();
        let result = self.gateway.send(message, call).await;
        let class = match &result {
            Ok(_) => CallResult::Sent,
            Err(DeliveryError::Rejected { .. }) => CallResult::Rejected,
            Err(DeliveryError::RecipientGone { .. }) => CallResult::RecipientGone,
            Err(DeliveryError::Unavailable { .. } | DeliveryError::CircuitOpen { .. }) => CallResult::Unavailable,
            Err(DeliveryError::Invalid(_)) => CallResult::Invalid,
        };
        self.metrics.call(provider, class, Some(started.elapsed()));
        let counted = match &result {
            Err(DeliveryError::Unavailable { .. }) => breaker::Result::Failed,
            Ok(_) | Err(_) => breaker::Result::Answered,
        };
        self.breaker.record(counted, Instant::now());
        result
    }
}
