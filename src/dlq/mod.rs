//! `herald dlq`: look into the dead-letter topic, and replay from it.
//!
//! `list` and `show` read the topic whole, from its start to the end its
//! fetches report, and change nothing. `replay` re-produces matching
//! records to their original topic and partition (or `--to`), as the
//! producer wrote them: key, value and the producer's headers, with
//! herald's headers dropped, so the request starts again at attempt 1, and
//! `herald-replayed-from` added.
//!
//! A replay keeps its position in a consumer group named for it
//! (`herald.dlq-replay.NAME`), so running it again goes on where it
//! stopped. A kill between a record's produce and the commit of its
//! position must not replay it twice, so before each batch the group also
//! commits, for each partition the batch will write to, that partition's
//! end (a "scan mark", taken from a fetch's high watermark, which every
//! broker reports right). A run that starts after a kill reads each marked
//! partition from its mark and skips the records whose
//! `herald-replayed-from` it finds there.

mod read;
mod replay;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedHeaders, OwnedMessage};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;

use crate::codec::decode::Decoder;
use crate::kafka;
use crate::mask::Masked;
use crate::model::{Channel, ErrorClass, Request};
use crate::record::envelope::{self, ORIGINAL_PARTITION, ORIGINAL_SIZE, ORIGINAL_TOPIC};
use crate::record::{Envelope, Origin};

/// The header a replayed record carries: `topic/partition/offset` of its
/// dead letter.
pub const REPLAYED_FROM: &str = "herald-replayed-from";
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
const BATCH: usize = 200;

/// What `herald dlq` does.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum DlqCommand {
    /// The dead letters that match, as a table (or JSON lines).
    List {
        #[command(flatten)]
        filter: Filter,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// One dead letter: its headers, and its request decoded.
    Show {
        /// PARTITION:OFFSET, as `list` prints it.
        at: String,
        /// Show the recipient, body and variables as they are.
        #[arg(long)]
        reveal: bool,
    },
    /// Produce the matching dead letters again, as requests at attempt 1.
    Replay {
        #[command(flatten)]
        filter: Filter,
        /// Topic to replay to; each record's original topic by default.
        #[arg(long)]
        to: Option<String>,
        /// Names the replay's consumer group (herald.dlq-replay.NAME), which
        /// keeps its position; derived from the filters and target by default.
        #[arg(long)]
        name: Option<String>,
        /// Replay without asking, after the dry run's counts.
        #[arg(long)]
        yes: bool,
        /// Only the counts; nothing is written.
        #[arg(long)]
        dry_run: bool,
        /// Replay INVALID requests too (they will be invalid again unless the
        /// reason was herald's configuration).
        #[arg(long)]
        include_invalid: bool,
        /// Records produced per second at most.
        #[arg(long)]
        max_per_second: Option<u32>,
    },
}

/// Which dead letters a command takes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Filter {
    /// Error class: invalid, permanent, transient or rate_limited.
    #[arg(long, value_parser = parse_class)]
    pub class: Option<ErrorClass>,
    /// Error code, as in herald-error-code (twilio:20503, invalid-phone-number).
    #[arg(long)]
    pub code: Option<String>,
    #[arg(long, value_parser = parse_channel)]
    pub channel: Option<Channel>,
    /// The topic the request was first read from.
    #[arg(long)]
    pub original_topic: Option<String>,
    /// Dead-lettered at or after (RFC 3339).
    #[arg(long)]
    pub since: Option<DateTime<Utc>>,
    /// Dead-lettered before (RFC 3339).
    #[arg(long)]
    pub until: Option<DateTime<Utc>>,
    /// The request's user id (its record key).
    #[arg(long)]
    pub user: Option<String>,
}

fn parse_class(s: &str) -> Result<ErrorClass, String> {
    ErrorClass::ALL.into_iter().find(|c| c.symbol().eq_ignore_ascii_case(s)).ok_or_else(|| format!("{s:?}: one of invalid, permanent, transient, rate_limited"))
}

fn parse_channel(s: &str) -> Result<Channel, String> {
    Channel::from_symbol(&s.to_ascii_uppercase()).ok_or_else(|| format!("{s:?}: sms or push"))
}

/// Why `herald dlq` could not finish.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("{0:?} is not PARTITION:OFFSET")]
    At(String),
    #[error("no dead letter at {0}")]
    NotFound(String),
    #[error("cannot produce the replay of {from}: {error}")]
    Produce { from: String, error: KafkaError },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("topic {0:?} does not exist")]
    NoTopic(String),
    #[error("nothing was replayed: {0} dead letters matched; pass --yes (or answer y at the prompt) to replay them, or --dry-run to only count")]
    NotConfirmed(usize),
}

type Reader = BaseConsumer<kafka::ReaderContext>;

/// A partition of a topic, and an offset in it.
type Mark = ((String, i32), i64);

/// What `dlq` reads from and writes to.
pub(crate) struct Context {
    pub kafka: kafka::Settings,
    pub dead_letter: String,
    pub decoder: Decoder,
}

/// One dead letter, as read.
struct Letter {
    message: OwnedMessage,
    envelope: Envelope,
    origin: Option<Origin>,
    at: Option<DateTime<Utc>>,
    request: Option<Request>,
}

impl Letter {
    fn id(&self) -> String {
        format!("{}:{}", self.message.partition(), self.message.offset())
    }

    fn source(&self) -> String {
        format!("{}/{}/{}", self.message.topic(), self.message.partition(), self.message.offset())
    }

    fn class(&self) -> Option<ErrorClass> {
        self.envelope.error.as_ref().map(|e| e.class)
    }

    fn code(&self) -> &str {
        self.envelope.error.as_ref().map_or("-", |e| e.code.as_str())
    }

    fn stripped(&self) -> bool {
        self.message.headers().and_then(|h| envelope::header(h, ORIGINAL_SIZE)).is_some()
    }

    fn user(&self) -> Option<&str> {
        self.request.as_ref().map(|r| r.user_id.as_str()).or_else(|| self.message.key().and_then(|k| std::str::from_utf8(k).ok()))
    }

    fn matches(&self, f: &Filter) -> bool {
        f.class.is_none_or(|c| self.class() == Some(c))
            && f.code.as_deref().is_none_or(|c| self.code() == c)
            && f.channel.is_none_or(|c| self.request.as_ref().map(|r| r.channel) == Some(c))
            && f.original_topic.as_deref().is_none_or(|t| self.origin.as_ref().map(|o| o.topic.as_str()) == Some(t))
            && f.since.is_none_or(|t| self.at.is_some_and(|at| at >= t))
            && f.until.is_none_or(|t| self.at.is_some_and(|at| at < t))
            && f.user.as_deref().is_none_or(|u| self.user() == Some(u))
    }

    fn summary(&self) -> serde_json::Value {
        let error = self.envelope.error.as_ref();
        json!({
            "at": self.id(),
            "time": self.at.map(|t| t.to_rfc3339()),
            "attempts": self.envelope.attempts.count(),
            "class": error.map(|e| e.class.symbol()),
            "code": error.map(|e| e.code.as_str()),
            "channel": self.request.as_ref().map(|r| r.channel.symbol()),
            "event_id": self.request.as_ref().map(|r| r.event_id.as_str()),
            "recipient": self.request.as_ref().map(|r| Masked(&r.recipient).to_string()),
            "original": self.origin.as_ref().map(|o| format!("{}/{}/{}", o.topic, o.partition, o.offset)),
            "message": error.map(|e| e.message.as_str()),
        })
    }
}

fn origin(headers: Option<&OwnedHeaders>) -> Option<Origin> {
    let h = headers?;
    Some(Origin {
        topic: envelope::header(h, ORIGINAL_TOPIC)?.to_owned(),
        partition: envelope::header(h, ORIGINAL_PARTITION)?.parse().ok()?,
        offset: envelope::header(h, envelope::ORIGINAL_OFFSET)?.parse().ok()?,
    })
}

impl Context {
    fn consumer(&self, group: &str) -> Result<Reader, KafkaError> {
        let mut config: ClientConfig = kafka::reader_config(&self.kafka, "dlq");
        config.set("group.id", group).set("enable.partition.eof", "true").set("fetch.wait.max.ms", "50");
        config.create_with_context(kafka::ReaderContext)
    }

    /// `topic`'s partition count; a topic that does not exist is an error.
    fn partitions(&self, consumer: &Reader, topic: &str) -> Result<i32, DlqError> {
        let metadata = consumer.fetch_metadata(Some(topic), FETCH_TIMEOUT)?;
        match metadata.topics().first() {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(t.partitions().len() as i32),
            _ => Err(DlqError::NoTopic(topic.to_owned())),
        }
    }

    /// Every record of `topic` from `from` (per partition; the start when
    /// absent) to the end the fetches report.
    fn read(&self, consumer: &Reader, topic: &str, from: &HashMap<i32, Offset>) -> Result<Vec<OwnedMessage>, DlqError> {
        let count = self.partitions(consumer, topic)?;
        let from = (0..count).map(|p| (p, from.get(&p).copied().unwrap_or(Offset::Beginning))).collect();
        Ok(read_from(consumer, topic, &from)?)
    }

    async fn letters(&self, messages: Vec<OwnedMessage>) -> Vec<Letter> {
        let mut letters = Vec::with_capacity(messages.len());
        for message in messages {
            let envelope = Envelope::read(message.headers()).unwrap_or_default();
            // A record that does not decode is still listed, without a
            // request; one that decodes but was invalid (its key not its
            // user id, say) is shown as it was written.
            let request = self.decoder.read(message.payload()).await.ok();
            let at = message.timestamp().to_millis().and_then(|ms| Utc.timestamp_millis_opt(ms).single());
            letters.push(Letter { origin: origin(message.headers()), envelope, at, request, message });
        }
        letters
    }

    async fn all(&self) -> Result<Vec<Letter>, DlqError> {
        let consumer = self.consumer(&format!("{}.dlq-reader", self.kafka.group_id))?;
        let messages = self.read(&consumer, &self.dead_letter, &HashMap::new())?;
        Ok(self.letters(messages).await)
    }
}

pub(crate) use replay::Replay;
use read::{list, show};

pub(crate) async fn run(command: DlqCommand, context: Context) -> Result<(), DlqError> {
    match command {
        DlqCommand::List { filter, json } => list(&context, &filter, json).await,
        DlqCommand::Show { at, reveal } => show(&context, &at, reveal).await,
        DlqCommand::Replay { filter, to, name, yes, dry_run, include_invalid, max_per_second } => {
            let replay = Replay { filter, to, name, yes, dry_run, include_invalid, max_per_second };
            replay.run(&context).await.map(drop)
        }
    }
}

/// Reads `topic` from `from` to the end, skipping partitions at `End`.
fn read_from(consumer: &Reader, topic: &str, from: &HashMap<i32, Offset>) -> Result<Vec<OwnedMessage>, KafkaError> {
    let mut list = TopicPartitionList::new();
    for (p, o) in from.iter().filter(|(_, o)| **o != Offset::End) {
        list.add_partition_offset(topic, *p, *o)?;
    }
    if list.count() == 0 {
        return Ok(vec![]);
    }
    consumer.assign(&list)?;
    let wanted = list.count();
    let (mut at_end, mut out) = (HashSet::new(), Vec::new());
    let deadline = std::time::Instant::now() + FETCH_TIMEOUT;
    while at_end.len() < wanted {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                at_end.remove(&m.partition());
                out.push(m.detach());
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(error)) => return Err(error),
            None if std::time::Instant::now() > deadline => return Err(KafkaError::NoMessageReceived),
            None => {}
        }
    }
    Ok(out)
}

/// Each target partition's end, from a fetch's high watermark: a broker's
/// ListOffsets answer is not relied on (tansu's is wrong).
fn high_watermarks(probe: &Reader, targets: &[(String, i32)]) -> Result<Vec<Mark>, KafkaError> {
    let mut unique: Vec<(String, i32)> = targets.to_vec();
    unique.sort();
    unique.dedup();
    let mut list = TopicPartitionList::new();
    for (t, p) in &unique {
        list.add_partition_offset(t, *p, Offset::Beginning)?;
    }
    probe.assign(&list)?;
    let mut answered: HashSet<(String, i32)> = HashSet::new();
    let deadline = std::time::Instant::now() + FETCH_TIMEOUT;
    while answered.len() < unique.len() {
        match probe.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                answered.insert((m.topic().to_owned(), m.partition()));
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                // EOF names only the partition; every target of a batch with
                // this number is answered by then or will be by a message.
                for (t, q) in &unique {
                    if *q == p {
                        answered.insert((t.clone(), p));
                    }
                }
            }
            Some(Err(error)) => return Err(error),
            None if std::time::Instant::now() > deadline => return Err(KafkaError::NoMessageReceived),
            None => {}
        }
    }
    unique
        .into_iter()
        .map(|(t, p)| {
            // Unknown (-1001) would be a bug here; scanning from the start
            // is slow but still right.
            let high = cached_high_watermark(probe, &t, p)?;
            Ok(((t, p), high.max(0)))
        })
        .collect()
}

/// The high watermark librdkafka keeps from the last fetch response of
/// this consumer (rdkafka has no safe wrapper for it).
fn cached_high_watermark(consumer: &Reader, topic: &str, partition: i32) -> Result<i64, KafkaError> {
    let topic = std::ffi::CString::new(topic).map_err(|_| KafkaError::MetadataFetch(rdkafka::types::RDKafkaErrorCode::InvalidTopic))?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer is valid while `consumer` is, the topic is
    // a NUL-terminated string, and the out-pointers are to live locals.
    let error = unsafe { rdkafka::bindings::rd_kafka_get_watermark_offsets(consumer.client().native_ptr(), topic.as_ptr(), partition, &mut low, &mut high) };
    match error {
        rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => Ok(high),
        code => Err(KafkaError::MetadataFetch(code.into())),
    }
}
