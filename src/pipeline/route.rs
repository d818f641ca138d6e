//! Stage 3: each channel is a lane with its own stage and its own bounds,
//! so a slow provider fills its own lane before it slows anyone else. Each
//! provider has its own guard (`deliver::Guarded`). A request leaves here
//! in its channel's form ([`Prepared`]), so it can only reach that
//! channel's providers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::FutureExt;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::model::{Channel, InvalidReason, Request, Tried};
use crate::pipeline::deliver::{Attempt, Call, Calls, Delivered, DeliveryError, PushMessage, PushStage, SmsStage, Text};
use crate::templates::TemplateSet;

/// A channel's stage, with its bounds.
pub(crate) struct Lane<S> {
    stage: S,
    bounds: Bounds,
}

struct Bounds {
    /// Records admitted to the lane (waiting or in flight). When it is
    /// full, the consume loop waits: that is the backpressure that keeps
    /// memory bounded whatever the backlog.
    admission: Arc<Semaphore>,
    capacity: usize,
    /// Provider calls under way: what the provider sees at once, and what
    /// one hung provider can hold of the sends below.
    concurrency: Arc<Semaphore>,
    /// The slots whose call is under way; the others' holders wait for one
    /// of the unconfirmed sends.
    calling: Arc<AtomicUsize>,
}

/// A lane's queue and concurrency.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LaneSettings {
    pub queue: usize,
    pub concurrency: usize,
}

impl<S> Lane<S> {
    pub(crate) fn new(stage: S, settings: LaneSettings) -> Self {
        let bounds = Bounds {
            admission: Arc::new(Semaphore::new(settings.queue)),
            capacity: settings.queue,
            concurrency: Arc::new(Semaphore::new(settings.concurrency)),
            calling: Arc::default(),
        };
        Lane { stage, bounds }
    }
}

/// A request checked by its channel's stage, in that channel's own form:
/// only that channel's providers can be handed it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Prepared {
    Sms(Text),
    Push(PushMessage),
}

impl Prepared {
    pub(crate) fn channel(&self) -> Channel {
        match self {
            Prepared::Sms(_) => Channel::Sms,
            Prepared::Push(_) => Channel::Push,
        }
    }
}

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// A place in a lane's queue for a provider slot.
pub(crate) struct SlotWait {
    call: CallWait,
    calling: Arc<AtomicUsize>,
    unconfirmed: Arc<Semaphore>,
}

enum CallWait {
    Ready(Result<OwnedSemaphorePermit, AcquireError>),
    Queued(Acquire),
}

/// Leave to make one provider call.
pub(crate) struct Slot {
    _call: OwnedSemaphorePermit,
    _calling: LaneCall,
    unconfirmed: Unconfirmed,
}

/// Counts a call under way for `herald_lane_calls_in_flight`.
struct LaneCall(Arc<AtomicUsize>);

impl LaneCall {
    fn new(calling: Arc<AtomicUsize>) -> LaneCall {
        calling.fetch_add(1, Ordering::Relaxed);
        LaneCall(calling)
    }
}

impl Drop for LaneCall {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One of the sends a crash may repeat; given back once the send's status
/// is acknowledged (or it is known that no call was made).
pub(crate) struct Unconfirmed(#[allow(dead_code)] OwnedSemaphorePermit);

impl Slot {
    /// The provider answered (or the call ended): the lane's slot goes to
    /// the next call, and the send stays unconfirmed until its status is
    /// durable. Holding the lane's slot through the acknowledgement too
    /// would leave the provider idle for it, which with a provider that
    /// answers in a millisecond is most of the time.
    pub(crate) fn answered(self) -> Unconfirmed {
        self.unconfirmed
    }
}

impl SlotWait {
    fn queue(lane: &Arc<Semaphore>, calling: &Arc<AtomicUsize>, unconfirmed: &Arc<Semaphore>) -> SlotWait {
        let mut acquire: Acquire = Box::pin(lane.clone().acquire_owned());
        // Polling once takes a free slot, or joins the semaphore's queue.
        let call = match (&mut acquire).now_or_never() {
            Some(result) => CallWait::Ready(result),
            None => CallWait::Queued(acquire),
        };
        SlotWait { call, calling: calling.clone(), unconfirmed: unconfirmed.clone() }
    }

    /// Waits for the lane's slot, then for one of the unconfirmed sends; in
    /// that order, so records waiting for a hung provider's lane hold none
    /// of the sends the other lanes need. Once calls are stopped
    /// (shutdown's deadline), it never completes: the task waiting is being
    /// aborted, and must not call anyone.
    pub(crate) async fn slot(self) -> Slot {
        let call = match self.call {
            CallWait::Ready(result) => result,
            CallWait::Queued(acquire) => acquire.await,
        };
        let Ok(call) = call else { return std::future::pending().await };
        let unconfirmed = match self.unconfirmed.clone().try_acquire_owned() {
            Ok(permit) => Ok(permit),
            Err(TryAcquireError::Closed) => return std::future::pending().await,
            Err(TryAcquireError::NoPermits) => self.unconfirmed.acquire_owned().await,
        };
        match unconfirmed {
            Ok(permit) => Slot { _call: call, _calling: LaneCall::new(self.calling), unconfirmed: Unconfirmed(permit) },
            Err(_closed) => std::future::pending().await,
        }
    }
}

pub(crate) struct Router {
    sms: Lane<SmsStage>,
    push: Lane<PushStage>,
    /// Bounds records whose outcome needs no delivery (invalid, rate
    /// limited, scheduled) while their outcome is published.
    settled: Arc<Semaphore>,
    settled_capacity: usize,
    /// Sends over every lane from before their call until their status is
    /// acknowledged, so a crash can repeat at most this many. One bound for
    /// all lanes, so that a backlog of one channel may use what the others
    /// leave, while each lane's own slots, taken first, keep a hung
    /// provider from holding more than its lane's concurrency of them.
    unconfirmed: Arc<Semaphore>,
    unconfirmed_capacity: usize,
    calls: Calls,
    templates: Option<TemplateSet>,
}

impl Router {
    pub(crate) fn new(sms: Lane<SmsStage>, push: Lane<PushStage>, settled: usize, unconfirmed: usize, calls: Calls, templates: Option<TemplateSet>) -> Self {
        Router {
            sms,
            push,
            settled: Arc::new(Semaphore::new(settled)),
            settled_capacity: settled,
            unconfirmed: Arc::new(Semaphore::new(unconfirmed)),
            unconfirmed_capacity: unconfirmed,
            calls,
            templates,
        }
    }

    fn bounds(&self, channel: Channel) -> &Bounds {
        match channel {
            Channel::Sms => &self.sms.bounds,
            Channel::Push => &self.push.bounds,
        }
    }

    /// What to send for `request`, in its channel's form, or why it never
    /// can be sent.
    /// With a `template_id`, the text comes from `--templates-dir`, and the
    /// locale it was found in comes back too.
    pub(crate) fn prepare(&self, request: &Request) -> Result<(Prepared, Option<String>), InvalidReason> {
        let Some(template_id) = &request.content.template_id else {
            let prepared = match request.channel {
                Channel::Sms => self.sms.stage.prepare(request).map(Prepared::Sms),
                Channel::Push => self.push.stage.prepare(request).map(Prepared::Push),
            };
            return prepared.map(|p| (p, None));
        };
        let Some(templates) = &self.templates else {
            let locale = request.prefs.locale.clone().unwrap_or_default();
            return Err(InvalidReason::TemplateMissing { template_id: template_id.clone(), locale });
        };
        let rendered = templates.current().render(template_id, request)?;
        let prepared = match request.channel {
            Channel::Sms => self.sms.stage.prepare_rendered(request, rendered.body).map(Prepared::Sms),
            Channel::Push => {
                let mut filled = request.clone();
                (filled.content.title, filled.content.body) = (rendered.title, rendered.body);
                self.push.stage.prepare(&filled).map(Prepared::Push)
            }
        };
        prepared.map(|p| (p, Some(rendered.locale)))
    }

    /// The answer of a lane that calls nobody (a dry run).
    pub(crate) fn answer_now(&self, channel: Channel) -> Option<Delivered> {
        match channel {
            Channel::Sms => self.sms.stage.answer_now(),
            Channel::Push => self.push.stage.answer_now(),
        }
    }

    /// Sends what [`Router::prepare`] returned, through its channel's
    /// providers; the caller holds a [`Slot`] of its lane.
    pub(crate) async fn call(&self, prepared: &Prepared, request: &Request, attempt: Attempt, tried: &mut Vec<Tried>) -> Result<Delivered, DeliveryError> {
        let call = Call { request, attempt };
        match prepared {
            Prepared::Sms(text) => self.sms.stage.send(text, call, tried).await,
            Prepared::Push(message) => self.push.stage.send(message, call, tried).await,
        }
    }

    /// Joins the queue for a provider slot of `channel`'s lane now. Slots
    /// are given in the order records joined, which is their order in the
    /// partition, so a partition's oldest record is not left behind later
    /// ones (and with it the offsets that can be committed).
    pub(crate) fn queue_for_slot(&self, channel: Channel) -> SlotWait {
        let bounds = self.bounds(channel);
        SlotWait::queue(&bounds.concurrency, &bounds.calling, &self.unconfirmed)
    }

    fn admission(&self, channel: Option<Channel>) -> (&Arc<Semaphore>, usize) {
        match channel.map(|c| self.bounds(c)) {
            Some(bounds) => (&bounds.admission, bounds.capacity),
            None => (&self.settled, self.settled_capacity),
        }
    }

    /// Waits for room for one record: in `channel`'s lane, or among the
    /// settled ones when `None`.
    pub(crate) async fn admit(&self, channel: Option<Channel>) -> OwnedSemaphorePermit {
        let (semaphore, _) = self.admission(channel);
        semaphore.clone().acquire_owned().await.expect("admission semaphores are never closed")
    }

    /// Room for one record now, if there is some.
    pub(crate) fn try_admit(&self, channel: Option<Channel>) -> Option<OwnedSemaphorePermit> {
        let (semaphore, _) = self.admission(channel);
        semaphore.clone().try_acquire_owned().ok()
    }

    /// Whether at least a quarter of the lane is free again.
    pub(crate) fn has_room(&self, channel: Option<Channel>) -> bool {
        let (semaphore, capacity) = self.admission(channel);
        semaphore.available_permits() * 4 >= capacity.max(1)
    }

    /// How full each lane is, and each provider's circuit, for the gauges.
    pub(crate) fn state(&self, state: &mut crate::metrics::State) {
        for (channel, name) in [(Channel::Sms, "sms"), (Channel::Push, "push")] {
            let bounds = self.bounds(channel);
            state.lanes.push((name, bounds.capacity.saturating_sub(bounds.admission.available_permits())));
            state.calls.push((channel, bounds.calling.load(Ordering::Relaxed)));
        }
        state.lanes.push(("settled", self.settled_capacity.saturating_sub(self.settled.available_permits())));
        state.unconfirmed = self.unconfirmed_capacity.saturating_sub(self.unconfirmed.available_permits());
        state.circuits.extend(self.sms.stage.circuits());
        state.circuits.extend(self.push.stage.circuits());
    }

    /// Shutdown's deadline has passed: no provider call may start from now
    /// on, even in a slot that an aborted call frees.
    pub(crate) fn stop_calls(&self) {
        self.calls.stop();
        for channel in Channel::ALL {
            self.bounds(channel).concurrency.close();
        }
        self.unconfirmed.close();
    }
}

/// The lanes' flags: how many calls each channel makes at once, how many
/// records it holds, and the crash bound over them all.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Delivery")]
pub struct RouteArgs {
    /// Concurrent SMS provider requests.
    #[arg(long, env = "HERALD_SMS_CONCURRENCY", default_value_t = 32)]
    pub(crate) sms_concurrency: usize,

    /// Concurrent push provider requests.
    #[arg(long, env = "HERALD_PUSH_CONCURRENCY", default_value_t = 32)]
    pub(crate) push_concurrency: usize,

    /// Sends, over all channels, from before the provider call until their status is acknowledged: the most a crash can repeat.
    #[arg(long, env = "HERALD_UNCONFIRMED_SENDS", default_value_t = 64)]
    pub(crate) unconfirmed_sends: usize,

    /// Records one channel may hold (waiting plus in flight) before the consumer waits for it.
    #[arg(long, env = "HERALD_CHANNEL_QUEUE", default_value_t = 2048)]
    pub(crate) channel_queue: usize,
}

/// The lanes, as [`RouteArgs`] set them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RouteSettings {
    pub sms_lane: LaneSettings,
    pub push_lane: LaneSettings,
    /// Records whose outcome needs no call, admitted at once.
    pub settled_queue: usize,
    /// The crash bound, shared by the lanes (see [`Router`]).
    pub unconfirmed_sends: usize,
}

impl RouteArgs {
    pub(crate) fn settings(&self) -> Result<RouteSettings, crate::flags::ConfigError> {
        crate::flags::counts(&[
            ("sms-concurrency", self.sms_concurrency, true),
            ("push-concurrency", self.push_concurrency, true),
            ("unconfirmed-sends", self.unconfirmed_sends, true),
            ("channel-queue", self.channel_queue, true),
        ])?;
        for (lane, concurrency) in [("sms-concurrency", self.sms_concurrency), ("push-concurrency", self.push_concurrency)] {
            if self.unconfirmed_sends <= concurrency {
                return Err(crate::flags::ConfigError::UnconfirmedWithinLane { unconfirmed: self.unconfirmed_sends, lane, concurrency });
            }
        }
        let lane = |concurrency| LaneSettings { queue: self.channel_queue, concurrency };
        Ok(RouteSettings {
            sms_lane: lane(self.sms_concurrency),
            push_lane: lane(self.push_concurrency),
            settled_queue: self.channel_queue,
            unconfirmed_sends: self.unconfirmed_sends,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn semaphore(permits: usize) -> Arc<Semaphore> {
        Arc::new(Semaphore::new(permits))
    }

    #[tokio::test]
    async fn the_lane_slot_comes_back_at_the_answer_and_the_send_at_its_acknowledgement() {
        let (lane, sends, calling) = (semaphore(1), semaphore(2), Arc::default());
        let first = SlotWait::queue(&lane, &calling, &sends).slot().await;
        assert_eq!((lane.available_permits(), sends.available_permits()), (0, 1));
        assert_eq!(calling.load(Ordering::Relaxed), 1);
        let first = first.answered();
        assert_eq!((lane.available_permits(), sends.available_permits()), (1, 1), "the next call may start");
        assert_eq!(calling.load(Ordering::Relaxed), 0);
        let second = SlotWait::queue(&lane, &calling, &sends).slot().await.answered();
        // Two sends wait for their statuses: a third call must not start.
        let mut third = Box::pin(SlotWait::queue(&lane, &calling, &sends).slot());
        assert!(futures::poll!(&mut third).is_pending());
        assert_eq!((lane.available_permits(), calling.load(Ordering::Relaxed)), (0, 0), "it holds the lane's slot, and is not calling");
        drop(first);
        assert!(futures::poll!(&mut third).is_ready());
        drop(second);
    }

    #[tokio::test]
    async fn records_waiting_for_a_hung_lane_hold_none_of_the_sends() {
        let (sms, push, sends, calling) = (semaphore(2), semaphore(2), semaphore(3), Arc::new(AtomicUsize::new(0)));
        // The SMS provider never answers: both its slots stay taken.
        let hung = [SlotWait::queue(&sms, &calling, &sends).slot().await, SlotWait::queue(&sms, &calling, &sends).slot().await];
        let mut waiting: Vec<_> = (0..100).map(|_| Box::pin(SlotWait::queue(&sms, &calling, &sends).slot())).collect();
        for wait in &mut waiting {
            assert!(futures::poll!(wait).is_pending());
        }
        assert_eq!(sends.available_permits(), 1, "the hung lane holds its two calls' sends, and no more");
        assert_eq!(calling.load(Ordering::Relaxed), 2);
        let push_call = SlotWait::queue(&push, &calling, &sends).slot().now_or_never();
        assert!(push_call.is_some(), "push is not held up by the SMS backlog");
        drop((hung, push_call));
    }

    #[tokio::test]
    async fn once_calls_are_stopped_a_waiting_call_never_starts() {
        let (lane, sends, calling) = (semaphore(1), semaphore(1), Arc::default());
        let held = SlotWait::queue(&lane, &calling, &sends).slot().await.answered();
        // Its lane slot is free, but the send bound is not.
        let mut waiting = Box::pin(SlotWait::queue(&lane, &calling, &sends).slot());
        assert!(futures::poll!(&mut waiting).is_pending());
        sends.close();
        lane.close();
        drop(held);
        assert!(futures::poll!(&mut waiting).is_pending());
        assert!(SlotWait::queue(&lane, &calling, &sends).slot().now_or_never().is_none());
    }
}
