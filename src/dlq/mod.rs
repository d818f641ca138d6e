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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
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
pub struct Context {
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
            "attempts": self.envelope.attempts,
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

pub async fn run(command: DlqCommand, context: Context) -> Result<(), DlqError> {
    match command {
        DlqCommand::List { filter, json } => list(&context, &filter, json).await,
        DlqCommand::Show { at, reveal } => show(&context, &at, reveal).await,
        DlqCommand::Replay { filter, to, name, yes, dry_run, include_invalid, max_per_second } => {
            let replay = Replay { filter, to, name, yes, dry_run, include_invalid, max_per_second };
            replay.run(&context).await.map(drop)
        }
    }
}

async fn list(context: &Context, filter: &Filter, json: bool) -> Result<(), DlqError> {
    let mut letters: Vec<Letter> = context.all().await?.into_iter().filter(|l| l.matches(filter)).collect();
    // Oldest first, as they were dead-lettered, whatever their partition.
    letters.sort_by_key(|l| (l.at, l.message.partition(), l.message.offset()));
    quietly_on_a_closed_pipe(write_list(&letters, json))
}

/// The table or JSON lines of `letters`, on stdout.
fn write_list(letters: &[Letter], json: bool) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if json {
        for letter in letters {
            writeln!(out, "{}", letter.summary())?;
        }
        return out.flush();
    }
    const COLUMNS: [(&str, &str); 6] = [("at", "at"), ("time", "time"), ("attempts", "try"), ("code", "code"), ("channel", "chan"), ("recipient", "recipient")];
    let rows: Vec<Vec<String>> = letters
        .iter()
        .map(|l| {
            let s = l.summary();
            let text = |k: &str| match &s[k] {
                serde_json::Value::String(v) => v.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                _ => "-".to_owned(),
            };
            COLUMNS.iter().map(|(k, _)| text(k)).chain([text("message")]).collect()
        })
        .collect();
    // Each column as wide as its widest cell, so rows line up whatever the
    // codes and times are.
    let widths: Vec<usize> = COLUMNS.iter().enumerate().map(|(i, (_, title))| rows.iter().map(|r| r[i].chars().count()).chain([title.len()]).max().unwrap_or(0)).collect();
    let line = |cells: &[&str]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let pad = widths.get(i).map_or(0, |w| w.saturating_sub(cell.chars().count()));
            // The attempts column is numbers: right-aligned.
            if COLUMNS.get(i).is_some_and(|(k, _)| *k == "attempts") {
                text.push_str(&" ".repeat(pad));
                text.push_str(cell);
            } else {
                text.push_str(cell);
                if i + 1 < cells.len() {
                    text.push_str(&" ".repeat(pad));
                }
            }
            if i + 1 < cells.len() {
                text.push_str("  ");
            }
        }
        text
    };
    let titles: Vec<&str> = COLUMNS.iter().map(|(_, t)| *t).chain(["message"]).collect();
    writeln!(out, "{}", line(&titles))?;
    for row in &rows {
        writeln!(out, "{}", line(&row.iter().map(String::as_str).collect::<Vec<_>>()))?;
    }
    out.flush()
}

/// A reader that stopped reading (`dlq list | head`) is not an error: what
/// it wanted, it has.
fn quietly_on_a_closed_pipe(written: std::io::Result<()>) -> Result<(), DlqError> {
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

async fn show(context: &Context, at: &str, reveal: bool) -> Result<(), DlqError> {
    let (partition, offset) = at.split_once(':').and_then(|(p, o)| Some((p.parse::<i32>().ok()?, o.parse::<i64>().ok()?))).filter(|(p, o)| *p >= 0 && *o >= 0).ok_or_else(|| DlqError::At(at.to_owned()))?;
    let consumer = context.consumer(&format!("{}.dlq-reader", context.kafka.group_id))?;
    let not_found = || DlqError::NotFound(at.to_owned());
    if partition >= context.partitions(&consumer, &context.dead_letter)? {
        return Err(not_found());
    }
    // Past the partition's end there is nothing to wait for: said at once.
    let probe = context.consumer(&format!("{}.dlq-reader.probe", context.kafka.group_id))?;
    let end = high_watermarks(&probe, &[(context.dead_letter.clone(), partition)])?;
    if end.first().is_none_or(|(_, high)| offset >= *high) {
        return Err(not_found());
    }
    let from = HashMap::from([(partition, Offset::Offset(offset))]);
    let messages: Vec<OwnedMessage> = read_from(&consumer, &context.dead_letter, &from)?.into_iter().filter(|m| m.offset() == offset).collect();
    let letter = context.letters(messages).await.into_iter().next().ok_or_else(not_found)?;
    let headers: BTreeMap<String, String> = letter
        .message
        .headers()
        .map(|h| h.iter().map(|h| (h.key.to_owned(), h.value.map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default())).collect())
        .unwrap_or_default();
    let request = letter.request.as_ref().map(|r| request_json(r, reveal));
    let out = json!({ "at": letter.id(), "time": letter.at.map(|t| t.to_rfc3339()), "key": letter.message.key().map(|k| String::from_utf8_lossy(k).into_owned()), "headers": headers, "request": request });
    quietly_on_a_closed_pipe(writeln!(std::io::stdout().lock(), "{}", serde_json::to_string_pretty(&out).expect("JSON")))
}

/// The request as JSON; personal data masked unless `reveal`.
fn request_json(r: &Request, reveal: bool) -> serde_json::Value {
    let hide = |s: &str| if reveal { s.to_owned() } else { format!("<{} characters>", s.chars().count()) };
    let recipient = if reveal { r.recipient.clone() } else { Masked(&r.recipient).to_string() };
    let vars: BTreeMap<&str, String> = r.content.template_vars.iter().map(|(k, v)| (k.as_str(), hide(v))).collect();
    let data: BTreeMap<&str, String> = r.content.data.iter().map(|(k, v)| (k.as_str(), hide(v))).collect();
    let android = r.content.android.as_deref().map(|a| {
        json!({
            "priority": a.priority.map(|p| p.symbol()),
            "ttl_seconds": a.ttl_seconds,
            "collapse_key": a.collapse_key,
            "channel_id": a.channel_id,
            "sound": a.sound,
            "click_action": a.click_action,
        })
    });
    let apns = r.content.apns.as_deref().map(|a| {
        let headers: BTreeMap<&str, &str> = a.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        json!({
            "headers": headers,
            "sound": a.sound,
            "badge": a.badge,
            "category": a.category,
            "thread_id": a.thread_id,
            "content_available": a.content_available,
        })
    });
    json!({
        "event_id": r.event_id,
        "user_id": r.user_id,
        "channel": r.channel.symbol(),
        "recipient": recipient,
        "title": r.content.title.as_deref().map(hide),
        "body": hide(&r.content.body),
        "template_id": r.content.template_id,
        "template_vars": vars,
        "data": data,
        "android": android,
        "apns": apns,
        "scheduled_at": r.scheduled_at.map(|t| t.to_rfc3339()),
        "created_at": r.created_at.to_rfc3339(),
        "time_zone": r.prefs.time_zone,
        "locale": r.prefs.locale,
        "priority": r.prefs.priority.symbol(),
    })
}

/// `herald dlq replay`.
pub struct Replay {
    pub filter: Filter,
    pub to: Option<String>,
    pub name: Option<String>,
    pub yes: bool,
    pub dry_run: bool,
    pub include_invalid: bool,
    pub max_per_second: Option<u32>,
}

/// What a replay came to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub replayed: usize,
    pub skipped: Skipped,
    pub failed: usize,
}

/// Dead letters that matched, and were not replayed, by why.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Skipped {
    /// INVALID, without `--include-invalid`.
    pub invalid: usize,
    /// Too large to copy: herald kept none of their bytes.
    pub stripped: usize,
    /// Naming no original topic, without `--to`.
    pub no_topic: usize,
    /// Replayed by an earlier run of this replay.
    pub replayed_already: usize,
}

impl Skipped {
    pub fn total(&self) -> usize {
        self.invalid + self.stripped + self.no_topic + self.replayed_already
    }
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} skipped", self.total())?;
        let reasons = [
            (self.invalid, "invalid (--include-invalid replays them)"),
            (self.stripped, "without their bytes"),
            (self.no_topic, "naming no original topic (--to sets one)"),
            (self.replayed_already, "replayed already"),
        ];
        let given: Vec<String> = reasons.iter().filter(|(n, _)| *n > 0).map(|(n, why)| format!("{n} {why}")).collect();
        if !given.is_empty() {
            write!(f, ": {}", given.join(", "))?;
        }
        Ok(())
    }
}

impl Replay {
    fn group(&self, context: &Context) -> String {
        let name = self.name.clone().unwrap_or_else(|| {
            use std::hash::{Hash, Hasher};
            // Stable across runs and builds: the same filters name the same replay.
            let mut h = Fnv(0xcbf29ce484222325);
            format!("{:?}|{:?}|{}|{}", self.filter, self.to, self.include_invalid, context.dead_letter).hash(&mut h);
            format!("{:016x}", h.finish())
        });
        format!("herald.dlq-replay.{name}")
    }

    /// Replays, and returns what it did; with neither `--yes` nor a `y`
    /// at the prompt, only counts.
    pub async fn run(&self, context: &Context) -> Result<Summary, DlqError> {
        let group = self.group(context);
        let consumer = context.consumer(&group)?;
        let positions = committed(&consumer, &context.dead_letter, context.partitions(&consumer, &context.dead_letter)?)?;
        let messages = context.read(&consumer, &context.dead_letter, &positions.iter().map(|(p, o)| (*p, Offset::Offset(*o))).collect())?;
        let letters = context.letters(messages).await;
        let producer: FutureProducer = kafka::producer(&context.kafka)?;
        let probe = context.consumer(&format!("{group}.probe"))?;
        let mut plan = Vec::new();
        let mut skipped = Skipped::default();
        let mut by_code: BTreeMap<String, usize> = BTreeMap::new();
        for letter in letters.iter().filter(|l| l.matches(&self.filter)) {
            if letter.stripped() {
                skipped.stripped += 1;
                continue;
            }
            if letter.class() == Some(ErrorClass::Invalid) && !self.include_invalid {
                skipped.invalid += 1;
                continue;
            }
            let Some(topic) = self.to.clone().or_else(|| letter.origin.as_ref().map(|o| o.topic.clone())) else {
                skipped.no_topic += 1;
                continue;
            };
            plan.push((letter, topic));
        }
        // A run killed after producing and before committing: what it
        // produced is found from the marks, and not produced again.
        let marks = committed_marks(&consumer, &group_targets(&plan))?;
        let mut marked: HashSet<(String, i32)> = marks.iter().map(|(at, _)| at.clone()).collect();
        let done = replayed_since(context, &probe, &marks)?;
        let before = plan.len();
        plan.retain(|(letter, _)| !done.contains(&letter.source()));
        skipped.replayed_already += before - plan.len();
        for (letter, _) in &plan {
            *by_code.entry(letter.code().to_owned()).or_default() += 1;
        }
        eprintln!("{} dead letters read from {}; {} to replay, {skipped}", letters.len(), context.dead_letter, plan.len());
        for (code, n) in &by_code {
            eprintln!("  {n:>6}  {code}");
        }
        if plan.is_empty() && self.yes && !self.dry_run {
            // Nothing left to write (a killed run wrote the rest): this
            // replay is done, and its position says so.
            commit_all(&consumer, &context.dead_letter, &letters)?;
        }
        if plan.is_empty() || self.dry_run {
            return Ok(Summary { replayed: 0, skipped, failed: 0 });
        }
        // Declined, or no terminal to ask on: a script that left out --yes
        // must hear that nothing happened.
        if !self.confirmed(plan.len())? {
            return Err(DlqError::NotConfirmed(plan.len()));
        }
        let bar = progress(plan.len());
        let mut summary = Summary { replayed: 0, skipped, failed: 0 };
        let mut partitions: HashMap<String, i32> = HashMap::new();
        let mut acked: HashMap<(String, i32), i64> = HashMap::new();
        let pace = self.max_per_second.map(|n| Duration::from_secs_f64(1.0 / f64::from(n.max(1))));
        // About five seconds of records per batch when paced: a commit every
        // few seconds, however slow the pace.
        let batch_size = self.max_per_second.map_or(BATCH, |n| (n as usize * 5).clamp(1, BATCH));
        for batch in plan.chunks(batch_size) {
            let mut targets = Vec::new();
            for (letter, topic) in batch {
                let count = match partitions.get(topic) {
                    Some(n) => *n,
                    None => *partitions.entry(topic.clone()).or_insert(context.partitions(&probe, topic)?),
                };
                targets.push((topic.clone(), target_partition(letter, count)));
            }
            // A mark only ever starts where nothing of this replay can be
            // unaccounted for: one already there stays, however far back.
            // Moving it on could pass records a killed run produced and no
            // position covers yet (see `commit_all`).
            let ends: Vec<_> = high_watermarks(&probe, &targets)?.into_iter().filter(|(at, _)| !marked.contains(at)).collect();
            commit_marks(&consumer, &ends)?;
            marked.extend(ends.into_iter().map(|(at, _)| at));
            for ((letter, topic), (_, partition)) in batch.iter().zip(&targets) {
                let started = std::time::Instant::now();
                match produce(&producer, letter, topic, *partition).await {
                    Ok(offset) => {
                        summary.replayed += 1;
                        let next = acked.entry((topic.clone(), *partition)).or_insert(0);
                        *next = (*next).max(offset + 1);
                    }
                    Err(error) => {
                        summary.failed += 1;
                        bar.abandon();
                        eprintln!("replayed {}, {}, failed {}", summary.replayed, summary.skipped, summary.failed);
                        return Err(DlqError::Produce { from: letter.source(), error });
                    }
                }
                bar.inc(1);
                if let Some(pace) = pace {
                    tokio::time::sleep(pace.saturating_sub(started.elapsed())).await;
                }
            }
            let last = batch.last().expect("chunks are not empty").0;
            commit_positions(&consumer, &context.dead_letter, &letters, last)?;
        }
        // Every letter read is covered by a position now, so the marks may
        // move past everything this replay (and any killed run of it) wrote.
        commit_all(&consumer, &context.dead_letter, &letters)?;
        commit_marks(&consumer, &acked.into_iter().collect::<Vec<_>>())?;
        bar.finish_and_clear();
        eprintln!("replayed {}, {}, failed {}", summary.replayed, summary.skipped, summary.failed);
        Ok(summary)
    }

    fn confirmed(&self, count: usize) -> Result<bool, DlqError> {
        if self.yes {
            return Ok(true);
        }
        if !std::io::stdin().is_terminal() {
            return Ok(false);
        }
        eprint!("Replay {count} records? [y/N] ");
        std::io::stderr().flush()?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
    }
}

/// FNV-1a: a hash that is the same in every build, for replay names.
struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100000001b3);
        }
    }
}

fn progress(len: usize) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} replayed, {per_sec}, {eta} left").expect("a valid template"));
    bar
}

/// The original partition, so a user's requests stay on one partition
/// number; folded into the target's count when it has fewer.
fn target_partition(letter: &Letter, count: i32) -> i32 {
    let original = letter.origin.as_ref().map_or(letter.message.partition(), |o| o.partition);
    original.rem_euclid(count.max(1))
}

async fn produce(producer: &FutureProducer, letter: &Letter, topic: &str, partition: i32) -> Result<i64, KafkaError> {
    let mut headers = OwnedHeaders::new();
    if let Some(h) = letter.message.headers() {
        for header in h.iter().filter(|h| !h.key.starts_with("herald-")) {
            headers = headers.insert(Header { key: header.key, value: header.value });
        }
    }
    let source = letter.source();
    headers = headers.insert(Header { key: REPLAYED_FROM, value: Some(source.as_bytes()) });
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).partition(partition).headers(headers);
    if let Some(key) = letter.message.key() {
        record = record.key(key);
    }
    if let Some(payload) = letter.message.payload() {
        record = record.payload(payload);
    }
    match producer.send(record, Duration::from_secs(30)).await {
        Ok(delivery) => Ok(delivery.offset),
        Err((error, _)) => Err(error),
    }
}

/// The group's committed position in each partition of `topic`.
fn committed(consumer: &Reader, topic: &str, count: i32) -> Result<HashMap<i32, i64>, KafkaError> {
    let mut list = TopicPartitionList::new();
    for p in 0..count {
        list.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(list, FETCH_TIMEOUT)?;
    Ok(committed.elements().iter().filter_map(|e| match e.offset() {
        Offset::Offset(o) => Some((e.partition(), o)),
        _ => None,
    }).collect())
}

/// The target topics a plan writes to, each once.
fn group_targets(plan: &[(&Letter, String)]) -> Vec<String> {
    let mut topics: Vec<String> = plan.iter().map(|(_, t)| t.clone()).collect();
    topics.sort();
    topics.dedup();
    topics
}

/// The scan marks the group committed on target partitions.
fn committed_marks(consumer: &Reader, topics: &[String]) -> Result<Vec<Mark>, KafkaError> {
    let mut marks = Vec::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), FETCH_TIMEOUT)?;
        let count = metadata.topics().first().map_or(0, |t| t.partitions().len() as i32);
        marks.extend(committed(consumer, topic, count)?.into_iter().map(|(p, o)| ((topic.clone(), p), o)));
    }
    Ok(marks)
}

/// The `herald-replayed-from` values written at or after each mark.
fn replayed_since(context: &Context, probe: &Reader, marks: &[Mark]) -> Result<HashSet<String>, DlqError> {
    let mut done = HashSet::new();
    let mut topics: Vec<&String> = marks.iter().map(|((t, _), _)| t).collect();
    topics.dedup();
    for topic in topics {
        let from: HashMap<i32, Offset> = marks.iter().filter(|((t, _), _)| t == topic).map(|((_, p), o)| (*p, Offset::Offset(*o))).collect();
        // Partitions without a mark were never written by this replay.
        let count = context.partitions(probe, topic)?;
        let from: HashMap<i32, Offset> = (0..count).map(|p| (p, from.get(&p).copied().unwrap_or(Offset::End))).collect();
        for m in read_from(probe, topic, &from)? {
            if let Some(source) = m.headers().and_then(|h| envelope::header(h, REPLAYED_FROM)) {
                if source.starts_with(&format!("{}/", context.dead_letter)) {
                    done.insert(source.to_owned());
                }
            }
        }
    }
    Ok(done)
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

fn commit_marks(consumer: &Reader, marks: &[Mark]) -> Result<(), KafkaError> {
    if marks.is_empty() {
        return Ok(());
    }
    let mut list = TopicPartitionList::new();
    for ((t, p), o) in marks {
        list.add_partition_offset(t, *p, Offset::Offset(*o))?;
    }
    consumer.commit(&list, rdkafka::consumer::CommitMode::Sync)
}

/// Commits, for each dead-letter partition, the position after the last
/// letter read up to `last` (in read order).
fn commit_positions(consumer: &Reader, topic: &str, letters: &[Letter], last: &Letter) -> Result<(), KafkaError> {
    let index = letters.iter().position(|l| std::ptr::eq(l, last)).expect("last is one of the letters");
    let mut next: HashMap<i32, i64> = HashMap::new();
    for l in &letters[..=index] {
        // Read order is offset order within a partition.
        next.insert(l.message.partition(), l.message.offset() + 1);
    }
    let mut list = TopicPartitionList::new();
    for (p, o) in next {
        list.add_partition_offset(topic, p, Offset::Offset(o))?;
    }
    consumer.commit(&list, rdkafka::consumer::CommitMode::Sync)
}

/// Every letter read is done with: what did not match stays behind.
fn commit_all(consumer: &Reader, topic: &str, letters: &[Letter]) -> Result<(), KafkaError> {
    match letters.last() {
        Some(last) => commit_positions(consumer, topic, letters, last),
        None => Ok(()),
    }
}
