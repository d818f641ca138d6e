//! Stage 3: each channel is a lane with its own sender and its own bounds,
//! so a slow provider fills its own lane before it slows anyone else, and
//! a failing one trips its own circuit breaker.

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::deliver::breaker::{self, Admission, Breaker};
use crate::deliver::{Call, Delivered, DeliveryError, Payload, Prepared, Sender, SmsRules};
use crate::model::{Channel, Request};

/// What protects a provider from herald: a cap on requests per second,
/// and a circuit breaker.
pub struct Guard {
    rate: Option<DefaultDirectRateLimiter>,
    breaker: Breaker,
}

impl Guard {
    pub fn new(max_per_second: Option<NonZeroU32>, breaker: Breaker) -> Self {
        Guard { rate: max_per_second.map(|n| RateLimiter::direct(Quota::per_second(n))), breaker }
    }
}

pub struct Lane {
    sender: Sender,
    guard: Guard,
    /// Records admitted to the lane (waiting or in flight). When it is
    /// full, the consume loop waits: that is the backpressure that keeps
    /// memory bounded whatever the backlog.
    admission: Arc<Semaphore>,
    /// Provider requests in flight at once.
    concurrency: Semaphore,
}

impl Lane {
    pub fn new(sender: Sender, guard: Guard, queue: usize, concurrency: usize) -> Self {
        Lane { sender, guard, admission: Arc::new(Semaphore::new(queue)), concurrency: Semaphore::new(concurrency) }
    }

    /// Validates the request and, when it needs no provider call, answers.
    pub fn prepare(&self, channel: Channel, request: &Request, sms: &SmsRules) -> Prepared<'_> {
        self.sender.prepare(channel, request, sms)
    }

    /// The call for a payload this lane's [`Lane::prepare`] returned.
    pub fn call_for(&self, payload: Payload) -> Call<'_> {
        self.sender.call(payload)
    }

    /// Makes a provider call, within the lane's concurrency and rate, unless
    /// the provider's circuit is open.
    pub async fn call(&self, call: Call<'_>, request: &Request, attempt: u32) -> Result<Delivered, DeliveryError> {
        let _slot = self.concurrency.acquire().await.expect("lane semaphores are never closed");
        if let Admission::Refused { retry_after } = self.guard.breaker.admit(Instant::now()) {
            return Err(DeliveryError::Unavailable {
                provider: call.provider(),
                code: "circuit-open".to_owned(),
                message: "the provider failed repeatedly; not called until its circuit closes".to_owned(),
                retry_after: Some(retry_after),
            });
        }
        if let Some(rate) = &self.guard.rate {
            rate.until_ready().await;
        }
        let result = call.send(request, attempt).await;
        let counted = match &result {
            Err(DeliveryError::Unavailable { .. }) => breaker::Result::Failed,
            Ok(_) | Err(_) => breaker::Result::Answered,
        };
        self.guard.breaker.record(counted, Instant::now());
        result
    }
}

pub struct Router {
    lanes: [Lane; Channel::ALL.len()],
    /// Bounds records whose outcome needs no delivery (invalid, rate
    /// limited, scheduled) while their outcome is published.
    settled: Arc<Semaphore>,
}

impl Router {
    pub fn new(lane_for: impl FnMut(Channel) -> Lane, settled: usize) -> Self {
        Router { lanes: Channel::ALL.map(lane_for), settled: Arc::new(Semaphore::new(settled)) }
    }

    pub fn lane(&self, channel: Channel) -> &Lane {
        &self.lanes[channel.index()]
    }

    /// Waits for room for one record: in `channel`'s lane, or among the
    /// settled ones when `None`.
    pub async fn admit(&self, channel: Option<Channel>) -> OwnedSemaphorePermit {
        let semaphore = match channel {
            Some(c) => &self.lane(c).admission,
            None => &self.settled,
        };
        semaphore.clone().acquire_owned().await.expect("lane semaphores are never closed")
    }
}
