//! What herald counts, for Prometheus, and the health its admin endpoints
//! report (see `admin`).
//!
//! `prometheus-client` rather than the `metrics` facade: its registry is a
//! value, not a process-wide recorder, so two herald instances in one
//! process (as the tests run them) count apart, and each stage is handed
//! the metrics it records, like any other setting.
//!
//! The counters a record touches on its way are resolved once, into arrays
//! indexed by enums, so the hot path never hashes a label set. Gauges that
//! describe state (lanes, circuits, the suppression list, the producer's
//! queue) are read when Prometheus scrapes, not kept up to date per record.
//! Label values are herald's own enums and codes: never a user id, phone
//! number, token or event id.

use std::hash::Hash;
use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::TypedMetric as TypeInfo;
use prometheus_client::registry::{Registry, Unit};

mod health;
mod store;

pub use health::Health;
pub(crate) use store::StoreMetrics;

use crate::model::{Channel, ErrorClass, Provider, Status, StatusEvent};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TopicLabel {
    pub topic: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    status: &'static str,
    channel: &'static str,
    provider: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    provider: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabel {
    provider: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelLabel {
    channel: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    code: String,
    class: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SealLabel {
    seal: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LaneLabel {
    lane: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    topic: String,
    partition: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: &'static str,
}

/// What a provider call came to, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallResult {
    Sent,
    Rejected,
    RecipientGone,
    Unavailable,
    /// Not called: its circuit was open.
    CircuitOpen,
    Invalid,
}

impl CallResult {
    const ALL: [CallResult; 6] =
        [CallResult::Sent, CallResult::Rejected, CallResult::RecipientGone, CallResult::Unavailable, CallResult::CircuitOpen, CallResult::Invalid];

    fn label(self) -> &'static str {
        match self {
            CallResult::Sent => "sent",
            CallResult::Rejected => "rejected",
            CallResult::RecipientGone => "recipient_gone",
            CallResult::Unavailable => "unavailable",
            CallResult::CircuitOpen => "circuit_open",
            CallResult::Invalid => "invalid",
        }
    }
}

/// A circuit breaker's state, as a gauge: 0 closed, 1 open, 2 trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CircuitState {
    Closed = 0,
    Open = 1,
    Trial = 2,
}

/// A ScyllaDB request herald makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CqlOperation {
    Read,
    Write,
    Ping,
}

impl CqlOperation {
    const ALL: [CqlOperation; 3] = [CqlOperation::Read, CqlOperation::Write, CqlOperation::Ping];

    fn label(self) -> &'static str {
        match self {
            CqlOperation::Read => "read",
            CqlOperation::Write => "write",
            CqlOperation::Ping => "ping",
        }
    }
}

const CHANNEL_LABELS: [&str; Channel::ALL.len() + 1] = ["SMS", "PUSH", "UNKNOWN"];
const PROVIDER_LABELS: [&str; Provider::ALL.len() + 1] = ["twilio", "vonage", "fcm", "dry-run", "none"];

fn channel_index(channel: Option<Channel>) -> usize {
    channel.map_or(Channel::ALL.len(), Channel::index)
}

fn provider_index(provider: Option<Provider>) -> usize {
    provider.map_or(Provider::ALL.len(), |p| Provider::ALL.iter().position(|q| *q == p).expect("in ALL"))
}

/// A family whose series are found by index: each is looked up in the
/// family once, the first time it is used, and only series that were used
/// are exported.
struct Indexed<L, M> {
    family: Family<L, M, fn() -> M>,
    slots: Vec<OnceLock<M>>,
}

impl<L: EncodeLabelSet + Clone + Hash + Eq + std::fmt::Debug + Send + Sync + 'static, M: Clone + TypeInfo + EncodeMetric + std::fmt::Debug + Send + Sync + 'static> Indexed<L, M> {
    fn new(slots: usize, constructor: fn() -> M) -> Self {
        Indexed { family: Family::new_with_constructor(constructor), slots: (0..slots).map(|_| OnceLock::new()).collect() }
    }

    fn get(&self, index: usize, labels: impl FnOnce() -> L) -> &M {
        self.slots[index].get_or_init(|| self.family.get_or_create(&labels()).clone())
    }
}

/// What the pipeline counts, in one Prometheus registry.
pub struct Metrics {
    registry: Registry,
    consumed: Family<TopicLabel, Counter>,
    /// By status, channel (or none), provider (or none).
    outcomes: Indexed<OutcomeLabels, Counter>,
    calls: Indexed<CallLabels, Counter>,
    call_seconds: Indexed<ProviderLabel, Histogram>,
    errors: Family<ErrorLabels, Counter>,
    rate_limited: [Counter; Channel::ALL.len()],
    foreign: Family<TopicLabel, Counter>,
    unsealed: Family<SealLabel, Counter>,
    cql_seconds: Vec<Histogram>,
    cql_errors: Vec<Counter>,
    committed: Counter,
    commit_failures: Counter,
    lag: Family<PartitionLabels, Gauge>,
    delay_waiting: Family<TopicLabel, Gauge>,
    suppression_list: Gauge,
    lane_admitted: Family<LaneLabel, Gauge>,
    lane_in_flight: Family<ChannelLabel, Gauge>,
    unconfirmed: Gauge,
    circuit: Family<ProviderLabel, Gauge>,
    producer_queue: Gauge,
    held: Gauge,
    pub health: Health,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn latency_buckets() -> Histogram {
    // 1 ms to about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("herald");
        let consumed = Family::<TopicLabel, Counter>::default();
        registry.register("records_consumed", "Records read from each input topic", consumed.clone());

        let outcomes = Indexed::new(Status::ALL.len() * CHANNEL_LABELS.len() * PROVIDER_LABELS.len(), Counter::default);
        registry.register("outcomes", "Status events published, by status, channel and provider", outcomes.family.clone());
        let calls = Indexed::new(Provider::ALL.len() * CallResult::ALL.len(), Counter::default);
        registry.register("provider_calls", "Provider calls, by provider and what they came to", calls.family.clone());
        let call_seconds = Indexed::new(Provider::ALL.len(), latency_buckets);
        registry.register_with_unit("provider_call_duration", "Time a provider took to answer", Unit::Seconds, call_seconds.family.clone());

        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register("errors", "Outcomes with an error, by error code and class", errors.clone());

        let limited = Family::<ChannelLabel, Counter>::default();
        let rate_limited = Channel::ALL.map(|c| limited.get_or_create(&ChannelLabel { channel: c.symbol() }).clone());
        registry.register("rate_limit_denials", "Requests over their user's window (rejected or deferred)", limited);
        let foreign = Family::<TopicLabel, Counter>::default();
        registry.register("foreign_records", "Records another deployment (another group id) parked on a delay topic: skipped", foreign.clone());
        let unsealed = Family::<SealLabel, Counter>::default();
        registry.register(
            "unsealed_records",
            "Records on a delay topic without a valid seal of this deployment (written by a producer, or an older build): judged as new requests",
            unsealed.clone(),
        );

        let cql_latency = Family::<OperationLabel, Histogram>::new_with_constructor(latency_buckets as fn() -> Histogram);
        let cql_error_family = Family::<OperationLabel, Counter>::default();
        let cql_seconds = CqlOperation::ALL.iter().map(|o| cql_latency.get_or_create(&OperationLabel { operation: o.label() }).clone()).collect();
        let cql_errors = CqlOperation::ALL.iter().map(|o| cql_error_family.get_or_create(&OperationLabel { operation: o.label() }).clone()).collect();
        registry.register_with_unit("scylla_request_duration", "ScyllaDB requests for the rate limits", Unit::Seconds, cql_latency);
        registry.register("scylla_errors", "ScyllaDB requests that failed", cql_error_family);

        let committed = Counter::default();
        registry.register("offsets_committed", "Partition offsets committed to the group", committed.clone());
        let commit_failures = Counter::default();
        registry.register("offset_commit_failures", "Offset commits the broker refused", commit_failures.clone());

        let lag = Family::<PartitionLabels, Gauge>::default();
        registry.register("consumer_lag", "Records behind the end of each assigned input partition (librdkafka's statistics)", lag.clone());
        let delay_waiting = Family::<TopicLabel, Gauge>::default();
        registry.register("delay_topic_records", "Records waiting on each delay topic, over the assigned partitions", delay_waiting.clone());
        let suppression_list = Gauge::default();
        registry.register("suppression_list_size", "Recipients on the suppression list", suppression_list.clone());
        let lane_admitted = Family::<LaneLabel, Gauge>::default();
        registry.register("lane_records", "Records admitted to each lane (waiting plus in flight)", lane_admitted.clone());
        let lane_in_flight = Family::<ChannelLabel, Gauge>::default();
        registry.register("lane_calls_in_flight", "Provider calls under way in each lane", lane_in_flight.clone());
        let unconfirmed = Gauge::default();
        registry.register("unconfirmed_sends", "Sends called or being called whose status is not yet acknowledged: the most a crash now would repeat", unconfirmed.clone());
        let circuit = Family::<ProviderLabel, Gauge>::default();
        registry.register("circuit_state", "Each provider's circuit: 0 closed, 1 open, 2 trial", circuit.clone());
        let producer_queue = Gauge::default();
        registry.register("producer_queue_messages", "Records handed to the producer and not yet acknowledged", producer_queue.clone());
        let held = Gauge::default();
        registry.register("held_records", "Parked records due within the hold window, held in memory until their time", held.clone());

        Metrics {
            registry,
            consumed,
            outcomes,
            calls,
            call_seconds,
            errors,
            rate_limited,
            foreign,
            unsealed,
            cql_seconds,
            cql_errors,
            committed,
            commit_failures,
            lag,
            delay_waiting,
            suppression_list,
            lane_admitted,
            lane_in_flight,
            unconfirmed,
            circuit,
            producer_queue,
            held,
            health: Health::default(),
        }
    }

    /// The counter of records read from `topic`, to keep and increment.
    pub(crate) fn consumed(&self, topic: &str) -> Counter {
        self.consumed.get_or_create(&TopicLabel { topic: topic.to_owned() }).clone()
    }

    /// A status event on its way to the status topic.
    pub(crate) fn status(&self, event: &StatusEvent) {
        let status = Status::ALL.iter().position(|s| *s == event.status).expect("in ALL");
        let per_status = CHANNEL_LABELS.len() * PROVIDER_LABELS.len();
        let (channel, provider) = (channel_index(event.channel), provider_index(event.provider));
        let index = status * per_status + channel * PROVIDER_LABELS.len() + provider;
        let labels = || OutcomeLabels { status: event.status.symbol(), channel: CHANNEL_LABELS[channel], provider: PROVIDER_LABELS[provider] };
        self.outcomes.get(index, labels).inc();
        if let (Some(code), Some(class)) = (&event.error_code, event.error_class) {
            self.error(code.as_str(), class);
        }
    }

    /// An error that is not on a status event (an undecodable record).
    pub(crate) fn error(&self, code: &str, class: ErrorClass) {
        self.errors.get_or_create(&ErrorLabels { code: code.to_owned(), class: class.symbol() }).inc();
    }

    pub(crate) fn call(&self, provider: Provider, result: CallResult, took: Option<Duration>) {
        let p = provider_index(Some(provider));
        let r = CallResult::ALL.iter().position(|c| *c == result).expect("in ALL");
        self.calls.get(p * CallResult::ALL.len() + r, || CallLabels { provider: provider.name(), result: result.label() }).inc();
        if let Some(took) = took {
            self.call_seconds.get(p, || ProviderLabel { provider: provider.name() }).observe(took.as_secs_f64());
        }
    }

    pub(crate) fn foreign(&self, topic: &str) {
        self.foreign.get_or_create(&TopicLabel { topic: topic.to_owned() }).inc();
    }

    pub(crate) fn unsealed(&self, why: crate::record::Unsealed) {
        self.unsealed.get_or_create(&SealLabel { seal: why.label() }).inc();
    }

    pub(crate) fn held(&self, records: usize) {
        self.held.set(records as i64);
    }

    pub(crate) fn rate_limited(&self, channel: Channel) {
        self.rate_limited[channel.index()].inc();
    }

    pub(crate) fn cql(&self, operation: CqlOperation, took: Duration, ok: bool) {
        let i = CqlOperation::ALL.iter().position(|o| *o == operation).expect("in ALL");
        self.cql_seconds[i].observe(took.as_secs_f64());
        if !ok {
            self.cql_errors[i].inc();
        }
    }

    pub(crate) fn committed(&self, partitions: usize, ok: bool) {
        match ok {
            true => self.committed.inc_by(partitions as u64),
            false => self.commit_failures.inc(),
        };
    }

    /// The lag of every assigned input partition, replacing the last; the
    /// delay topics' lag summed per topic.
    pub(crate) fn set_lag(&self, lags: &[(String, i32, i64)], delay_topics: &[String]) {
        self.lag.clear();
        self.delay_waiting.clear();
        for topic in delay_topics {
            self.delay_waiting.get_or_create(&TopicLabel { topic: topic.clone() }).set(0);
        }
        for (topic, partition, lag) in lags {
            self.lag.get_or_create(&PartitionLabels { topic: topic.clone(), partition: partition.to_string() }).set(*lag);
            if delay_topics.contains(topic) {
                self.delay_waiting.get_or_create(&TopicLabel { topic: topic.clone() }).inc_by(*lag);
            }
        }
    }

    /// State read at scrape time.
    pub(crate) fn set_state(&self, state: &State) {
        self.suppression_list.set(state.suppressions as i64);
        self.producer_queue.set(state.producer_queue as i64);
        self.unconfirmed.set(state.unconfirmed as i64);
        for (lane, admitted) in &state.lanes {
            self.lane_admitted.get_or_create(&LaneLabel { lane }).set(*admitted as i64);
        }
        for (channel, calls) in &state.calls {
            self.lane_in_flight.get_or_create(&ChannelLabel { channel: channel.symbol() }).set(*calls as i64);
        }
        for (provider, circuit) in &state.circuits {
            self.circuit.get_or_create(&ProviderLabel { provider: provider.name() }).set(*circuit as i64);
        }
    }

    /// The OpenMetrics text format, which Prometheus asks for.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// The classic Prometheus text format (0.0.4), for clients that do not
    /// ask for OpenMetrics (`promtool check metrics`, curl).
    pub(crate) fn encode_classic(&self) -> String {
        classic(&self.encode())
    }
}

/// OpenMetrics names a counter's family without its `_total`, and ends
/// with `# EOF`; the classic format names the family as its samples, and
/// has no `# UNIT` or `# EOF` lines. Everything else is the same.
fn classic(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(rewritten.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// The lag of each partition in librdkafka's statistics, for the lag
/// gauges: `(topic, partition, lag)`, leaving out `skip`'s.
pub(crate) fn lags(statistics: &rdkafka::Statistics, skip: Option<&str>) -> Vec<(String, i32, i64)> {
    let mut lags = Vec::new();
    for (name, topic) in statistics.topics.iter().filter(|(name, _)| Some(name.as_str()) != skip) {
        for partition in topic.partitions.values().filter(|p| p.partition >= 0 && p.consumer_lag >= 0) {
            lags.push((name.clone(), partition.partition, partition.consumer_lag));
        }
    }
    lags
}

/// What the scrape-time gauges are read from.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub suppressions: usize,
    pub producer_queue: i32,
    /// `sms`, `push`, and `settled` (records whose outcome needs no call).
    pub lanes: Vec<(&'static str, usize)>,
    pub calls: Vec<(Channel, usize)>,
    pub unconfirmed: usize,
    pub circuits: Vec<(Provider, CircuitState)>,
}

#[cfg(test)]
mod tests;
