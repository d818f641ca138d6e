//! Stage 3: each channel is a lane with its own stage and its own bounds,
//! so a slow provider fills its own lane before it slows anyone else. Each
//! provider has its own guard (`deliver::Guarded`). A request leaves here
//! in its channel's form ([`Prepared`]), so it can only reach that
//! channel's providers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::FutureExt;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

use crate::deliver::{Attempt, Call, Calls, Delivered, DeliveryError, PushMessage, PushStage, SmsStage, Text};
use crate::model::{Channel, InvalidReason, Request, Tried};
use crate::templates::TemplateSet;

/// A channel's stage, with its bounds.
pub struct Lane<S> {
    stage: S,
    bounds: Bounds,
}

struct Bounds {
    /// Records admitted to the lane (waiting or in flight). When it is
    /// full, the consume loop waits: that is the backpressure that keeps
    /// memory bounded whatever the backlog.
    admission: Arc<Semaphore>,
    capacity: usize,
    /// Provider calls whose outcome is not yet durable. A slot is held from
    /// before the call until its status is acknowledged, so a crash can
    /// repeat at most this many sends.
    concurrency: Arc<Semaphore>,
    slots: usize,
}

/// A lane's queue and concurrency.
#[derive(Debug, Clone, Copy)]
pub struct LaneSettings {
    pub queue: usize,
    pub concurrency: usize,
}

impl<S> Lane<S> {
    pub fn new(stage: S, settings: LaneSettings) -> Self {
        let bounds = Bounds {
            admission: Arc::new(Semaphore::new(settings.queue)),
            capacity: settings.queue,
            concurrency: Arc::new(Semaphore::new(settings.concurrency)),
            slots: settings.concurrency,
        };
        Lane { stage, bounds }
    }
}

/// A request checked by its channel's stage, in that channel's own form:
/// only that channel's providers can be handed it.
#[derive(Debug, Clone, PartialEq)]
pub enum Prepared {
    Sms(Text),
    Push(PushMessage),
}

impl Prepared {
    pub fn channel(&self) -> Channel {
        match self {
            Prepared::Sms(_) => Channel::Sms,
            Prepared::Push(_) => Channel::Push,
        }
    }
}

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// A place in a lane's queue for a provider slot.
pub enum SlotWait {
    Ready(Result<OwnedSemaphorePermit, AcquireError>),
    Queued(Acquire),
}

impl SlotWait {
    /// Waits for the slot. Once calls are stopped (shutdown's deadline), it
    /// never completes: the task waiting is being aborted, and must not
    /// call anyone.
    pub async fn slot(self) -> OwnedSemaphorePermit {
        let result = match self {
            SlotWait::Ready(result) => result,
            SlotWait::Queued(acquire) => acquire.await,
        };
        match result {
            Ok(slot) => slot,
            Err(_closed) => std::future::pending().await,
        }
    }
}

pub struct Router {
    sms: Lane<SmsStage>,
    push: Lane<PushStage>,
    /// Bounds records whose outcome needs no delivery (invalid, rate
    /// limited, scheduled) while their outcome is published.
    settled: Arc<Semaphore>,
    settled_capacity: usize,
    calls: Calls,
    templates: Option<TemplateSet>,
}

impl Router {
    pub fn new(sms: Lane<SmsStage>, push: Lane<PushStage>, settled: usize, calls: Calls, templates: Option<TemplateSet>) -> Self {
        Router { sms, push, settled: Arc::new(Semaphore::new(settled)), settled_capacity: settled, calls, templates }
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
    pub fn prepare(&self, request: &Request) -> Result<(Prepared, Option<String>), InvalidReason> {
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
    pub fn answer_now(&self, channel: Channel) -> Option<Delivered> {
        match channel {
            Channel::Sms => self.sms.stage.stage.answer_now(),
            Channel::Push => self.push.stage.stage.answer_now(),
        }
    }

    /// Sends what [`Router::prepare`] returned, through its channel's
    /// providers; the caller holds a slot of its lane.
    pub async fn call(&self, prepared: &Prepared, request: &Request, attempt: Attempt, tried: &mut Vec<Tried>) -> Result<Delivered, DeliveryError> {
        let call = Call { request, attempt };
        match prepared {
            Prepared::Sms(text) => self.sms.stage.stage.send(text, call, tried).await,
            Prepared::Push(message) => self.push.stage.stage.send(message, call, tried).await,
        }
    }

    /// Joins the queue for a provider slot of `channel`'s lane now. Slots
    /// are given in the order records joined, which is their order in the
    /// partition, so a partition's oldest record is not left behind later
    /// ones (and with it the offsets that can be committed).
    pub fn queue_for_slot(&self, channel: Channel) -> SlotWait {
        let mut acquire: Acquire = Box::pin(self.bounds(channel).concurrency.clone().acquire_owned());
        // Polling once takes a free slot, or joins the semaphore's queue.
        match (&mut acquire).now_or_never() {
            Some(result) => SlotWait::Ready(result),
            None => SlotWait::Queued(acquire),
        }
    }

    fn admission(&self, channel: Option<Channel>) -> (&Arc<Semaphore>, usize) {
        match channel.map(|c| self.bounds(c)) {
            Some(bounds) => (&bounds.admission, bounds.capacity),
            None => (&self.settled, self.settled_capacity),
        }
    }

    /// Waits for room for one record: in `channel`'s lane, or among the
    /// settled ones when `None`.
    pub async fn admit(&self, channel: Option<Channel>) -> OwnedSemaphorePermit {
        let (semaphore, _) = self.admission(channel);
        semaphore.clone().acquire_owned().await.expect("admission semaphores are never closed")
    }

    /// Room for one record now, if there is some.
    pub fn try_admit(&self, channel: Option<Channel>) -> Option<OwnedSemaphorePermit> {
        let (semaphore, _) = self.admission(channel);
        semaphore.clone().try_acquire_owned().ok()
    }

    /// Whether at least a quarter of the lane is free again.
    pub fn has_room(&self, channel: Option<Channel>) -> bool {
        let (semaphore, capacity) = self.admission(channel);
        semaphore.available_permits() * 4 >= capacity.max(1)
    }

    /// How full each lane is, and each provider's circuit, for the gauges.
    pub fn state(&self, state: &mut crate::metrics::State) {
        for (channel, name) in [(Channel::Sms, "sms"), (Channel::Push, "push")] {
            let bounds = self.bounds(channel);
            state.lanes.push((name, bounds.capacity.saturating_sub(bounds.admission.available_permits())));
            state.calls.push((channel, bounds.slots.saturating_sub(bounds.concurrency.available_permits())));
        }
        state.lanes.push(("settled", self.settled_capacity.saturating_sub(self.settled.available_permits())));
        state.circuits.extend(self.sms.stage.stage.circuits());
        state.circuits.extend(self.push.stage.stage.circuits());
    }

    /// Shutdown's deadline has passed: no provider call may start from now
    /// on, even in a slot that an aborted call frees.
    pub fn stop_calls(&self) {
        self.calls.stop();
        for channel in Channel::ALL {
            self.bounds(channel).concurrency.close();
        }
    }
}
