//! Kafka helpers for tests and tools: producing, reading a whole topic
//! without joining a group, and reading a group's committed offsets.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::message::{Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Consumer-group settings that make a join take about 3 s on tansu
/// instead of about 23 s.
pub const FAST_GROUP: [&str; 3] = ["session.timeout.ms=6000", "heartbeat.interval.ms=1000", "max.poll.interval.ms=10000"];

/// [`FAST_GROUP`] as herald flags.
pub fn fast_group_args() -> Vec<String> {
    FAST_GROUP.iter().flat_map(|o| ["--kafka-consumer-option".to_owned(), (*o).to_owned()]).collect()
}

fn config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap).set("enable.metrics.push", "false");
    c
}

/// A producer whose records may be as large as `max_bytes`, as an
/// ordinary producer of a broker with that limit can write them.
pub fn producer_up_to(bootstrap: &str, max_bytes: usize) -> FutureProducer {
    config(bootstrap)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .set("message.max.bytes", max_bytes.to_string())
        .create()
        .expect("creating a producer")
}

/// A producer with librdkafka's limits.
pub fn producer(bootstrap: &str) -> FutureProducer {
    producer_up_to(bootstrap, 1_000_000)
}

/// Produces a record; returns its partition and offset.
pub async fn produce(producer: &FutureProducer, topic: &str, key: &[u8], payload: &[u8], headers: Option<OwnedHeaders>) -> (i32, i64) {
    let mut record = FutureRecord::to(topic).key(key).payload(payload);
    record.headers = headers;
    let delivered = producer.send(record, Timeout::Never).await.map_err(|(e, _)| e).expect("producing a record");
    (delivered.partition, delivered.offset)
}

/// Produces a record with no value: on a compacted topic, a deletion.
pub async fn tombstone(producer: &FutureProducer, topic: &str, key: &[u8]) {
    let record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).key(key);
    producer.send(record, Timeout::Never).await.map_err(|(e, _)| e).expect("producing a tombstone");
}

/// Creates topics with `partitions` each (an existing one is left as it
/// is), and waits until they are visible.
pub async fn create_topics(bootstrap: &str, names: &[&str], partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = config(bootstrap).create().expect("creating an admin client");
    let topics: Vec<_> = names.iter().map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1))).collect();
    for result in admin.create_topics(&topics, &AdminOptions::new()).await.expect("create topics") {
        if let Err((name, error)) = result {
            assert_eq!(error, RDKafkaErrorCode::TopicAlreadyExists, "creating {name}");
        }
    }
    for name in names {
        self::partitions(bootstrap, name, Duration::from_secs(30));
    }
}

/// Waits until `topic` exists and returns its partition count.
pub fn partitions(bootstrap: &str, topic: &str, timeout: Duration) -> i32 {
    let consumer: BaseConsumer = config(bootstrap).create().expect("creating a metadata client");
    let started = Instant::now();
    loop {
        if let Ok(metadata) = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            if let Some(t) = metadata.topics().iter().find(|t| t.name() == topic && t.error().is_none()) {
                if !t.partitions().is_empty() {
                    return t.partitions().len() as i32;
                }
            }
        }
        assert!(started.elapsed() < timeout, "topic {topic} did not appear within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A reader's client context: reaching a partition's end is what a reader
/// waits for, not an error to log.
pub struct Quiet;

impl rdkafka::ClientContext for Quiet {
    fn error(&self, error: KafkaError, reason: &str) {
        let end = matches!(error, KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF));
        if !end {
            eprintln!("librdkafka: {error}: {reason}");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for Quiet {}

/// Reads every partition of a topic from the beginning, without a group.
pub struct Reader {
    bootstrap: String,
    topic: String,
    consumer: StreamConsumer<Quiet>,
    partitions: i32,
    pub messages: Vec<OwnedMessage>,
    /// Partitions whose end the reader has reached, and read nothing since.
    at_end: std::collections::HashSet<i32>,
}

impl Reader {
    /// A reader for records that are still arriving: a test waiting on
    /// one gets it within about 10 ms.
    pub fn new(bootstrap: &str, topic: &str) -> Reader {
        // tansu answers a fetch only when this wait runs out, even when
        // records are there: with its default of 500 ms, each read of a
        // record a test waits on would take half a second.
        Reader::with_wait(bootstrap, topic, Duration::from_millis(10))
    }

    /// A reader for a large topic that is already written, such as a load
    /// phase's output. tansu fills a fetch one stored batch at a time, each
    /// step listing the partition's batches, and answers with what it has
    /// when the wait runs out: with 10 ms, a partition of ~9,000 small
    /// batches came back one batch or none per 40 ms fetch, and 500,000
    /// records took 7-100 s to read where 1 s reads them in 2 s.
    pub fn backlog(bootstrap: &str, topic: &str) -> Reader {
        Reader::with_wait(bootstrap, topic, Duration::from_secs(1))
    }

    fn with_wait(bootstrap: &str, topic: &str, wait: Duration) -> Reader {
        let count = partitions(bootstrap, topic, Duration::from_secs(30));
        let consumer: StreamConsumer<Quiet> = config(bootstrap)
            .set("group.id", format!("reader-{topic}-{}", std::process::id()))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", wait.as_millis().to_string())
            // The end of a partition is known from a fetch's high watermark,
            // which tansu reports correctly (its ListOffsets does not).
            .set("enable.partition.eof", "true")
            .create_with_context(Quiet)
            .expect("creating a reader");
        let mut list = TopicPartitionList::new();
        for p in 0..count {
            list.add_partition_offset(topic, p, Offset::Beginning).unwrap();
        }
        consumer.assign(&list).expect("assigning partitions");
        Reader { bootstrap: bootstrap.to_owned(), topic: topic.to_owned(), consumer, partitions: count, messages: Vec::new(), at_end: Default::default() }
    }

    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The next message, or `None` at `deadline`.
    pub async fn next(&mut self, deadline: tokio::time::Instant) -> Option<OwnedMessage> {
        loop {
            match self.step(deadline).await? {
                Some(m) => return Some(m),
                None => continue,
            }
        }
    }

    /// The next message, or `Some(None)` when a partition reached its end,
    /// or `None` at `deadline`.
    async fn step(&mut self, deadline: tokio::time::Instant) -> Option<Option<OwnedMessage>> {
        match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
            Ok(Ok(m)) => {
                self.at_end.remove(&m.partition());
                Some(Some(m.detach()))
            }
            Ok(Err(KafkaError::PartitionEOF(p))) => {
                self.at_end.insert(p);
                Some(None)
            }
            Ok(Err(e)) => panic!("reading: {e}"),
            Err(_) => None,
        }
    }

    /// Reads until `done` holds for everything read so far, or panics after
    /// `timeout`.
    pub async fn read_until(&mut self, timeout: Duration, done: impl Fn(&[OwnedMessage]) -> bool) -> &[OwnedMessage] {
        let deadline = tokio::time::Instant::now() + timeout;
        while !done(&self.messages) {
            match self.next(deadline).await {
                Some(m) => self.messages.push(m),
                None => panic!("timed out after {timeout:?} with {} messages read", self.messages.len()),
            }
        }
        &self.messages
    }

    /// Reads every partition to the end the broker reports for it in a
    /// fetch, or panics after `timeout`. For a reader created after the
    /// records were acknowledged, that is all of them, and nothing waits on
    /// a quiet spell: an empty topic reads as empty at once.
    pub async fn read_to_end(&mut self, timeout: Duration) -> &[OwnedMessage] {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.at_end.len() < self.partitions as usize {
            match self.step(deadline).await {
                Some(Some(m)) => self.messages.push(m),
                Some(None) => {}
                None => panic!("did not reach the end of every partition within {timeout:?} ({} messages read; at the end: {:?} of {})", self.messages.len(), self.at_end, self.partitions),
            }
        }
        &self.messages
    }

    /// Reads whatever arrives within `window`; for asserting that nothing
    /// more comes of something that may still be under way.
    pub async fn read_for(&mut self, window: Duration) -> &[OwnedMessage] {
        let deadline = tokio::time::Instant::now() + window;
        while let Some(m) = self.next(deadline).await {
            self.messages.push(m);
        }
        &self.messages
    }
}

/// The committed offset of `group` per partition of `topic` (partitions
/// with no commit are absent).
pub fn committed(bootstrap: &str, group: &str, topic: &str) -> HashMap<i32, i64> {
    let count = partitions(bootstrap, topic, Duration::from_secs(10));
    let consumer: BaseConsumer = config(bootstrap).set("group.id", group).create().expect("creating a group client");
    let mut list = TopicPartitionList::new();
    for p in 0..count {
        list.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(list, Duration::from_secs(10)).expect("reading committed offsets");
    committed
        .elements()
        .iter()
        .filter_map(|e| e.offset().to_raw().filter(|o| *o >= 0).map(|o| (e.partition(), o)))
        .collect()
}

/// The offset after the last record, per partition of `topic`, found by
/// reading the topic to the end its fetches report. tansu's ListOffsets
/// answers with less than the true end once producers batch, so it is not
/// asked.
pub async fn end_offsets(bootstrap: &str, topic: &str) -> HashMap<i32, i64> {
    let mut reader = Reader::new(bootstrap, topic);
    let mut end: HashMap<i32, i64> = (0..reader.partitions).map(|p| (p, 0)).collect();
    for m in reader.read_to_end(Duration::from_secs(30)).await {
        let e = end.entry(m.partition()).or_default();
        *e = (*e).max(m.offset() + 1);
    }
    end
}
