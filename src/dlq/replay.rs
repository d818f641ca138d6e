//! `replay`: matching dead letters produced again, each once, however
//! often the run is killed and started again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use super::{high_watermarks, read_from, Context, DlqError, Filter, Letter, Mark, Reader, BATCH, FETCH_TIMEOUT, REPLAYED_FROM};
use crate::kafka;
use crate::model::ErrorClass;
use crate::record::envelope;

/// `herald dlq replay`.
pub(crate) struct Replay {
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
pub(crate) struct Summary {
    pub replayed: usize,
    pub skipped: Skipped,
    pub failed: usize,
}

/// Dead letters that matched, and were not replayed, by why.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Skipped {
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
    pub(crate) fn total(&self) -> usize {
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
    pub(crate) async fn run(&self, context: &Context) -> Result<Summary, DlqError> {
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
