//! What protects a provider from herald: a cap on requests per second and
//! a circuit breaker, one of each per provider, so an outage of one
//! provider turns into retries (or failover), not a storm.

use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

use super::breaker::{self, Admission, Breaker};
use super::{Delivered, DeliveryError, Gateway, Payload};
use crate::model::Request;

/// A provider behind its guard.
pub struct Guarded {
    gateway: Gateway,
    rate: Option<DefaultDirectRateLimiter>,
    breaker: Breaker,
}

impl Guarded {
    pub fn new(gateway: Gateway, max_per_second: Option<NonZeroU32>, breaker: Breaker) -> Self {
        Guarded { gateway, rate: max_per_second.map(|n| RateLimiter::direct(Quota::per_second(n))), breaker }
    }

    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// Calls the provider within its rate, unless its circuit is open:
    /// then the call fails at once, as transient, with `retry_after` the
    /// time until the circuit closes.
    pub async fn call(&self, payload: &Payload, request: &Request, attempt: u32) -> Result<Delivered, DeliveryError> {
        if let Admission::Refused { retry_after } = self.breaker.admit(Instant::now()) {
            return Err(DeliveryError::Unavailable {
                provider: self.gateway.provider(),
                code: "circuit-open".to_owned(),
                message: "the provider failed repeatedly; not called until its circuit closes".to_owned(),
                retry_after: Some(retry_after),
            });
        }
        if let Some(rate) = &self.rate {
            rate.until_ready().await;
        }
        let result = self.gateway.send(payload, request, attempt).await;
        let counted = match &result {
            Err(DeliveryError::Unavailable { .. }) => breaker::Result::Failed,
            Ok(_) | Err(_) => breaker::Result::Answered,
        };
        self.breaker.record(counted, Instant::now());
        result
    }
}
