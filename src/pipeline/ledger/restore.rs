//! Reading status partitions back into the ledger when they are assigned
//! (see `ledger`): from the group's committed status offset, the mark, to
//! the end. The end is where a fetch finds it (partition EOF), so this does
//! not depend on the broker's ListOffsets. A separate reader does it: the
//! group's consumer cannot tell one topic's EOF from another's.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::backoff::Backoff;
use crate::codec;
use crate::kafka::{Reader, ReaderContext};
use super::Ledger;
use crate::record::Seal;

/// A restore's attempts give up after this long and start over.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);

/// Reads `partitions` of `topic` into `ledger`; returns where each ends
/// (the next offset). Tries until it succeeds: the partitions' records
/// wait for it, and are safe meanwhile.
pub(crate) async fn restore<C: ConsumerContext + 'static>(
    consumer: Arc<StreamConsumer<C>>,
    reader: ClientConfig,
    topic: String,
    partitions: Vec<i32>,
    ledger: Arc<Ledger>,
    seal: Seal,
) -> Vec<(i32, i64)> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let attempt = read(&consumer, &reader, &topic, &partitions, &ledger, &seal);
        match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await {
            Ok(Ok(ends)) => return ends,
            Ok(Err(error)) => tracing::warn!(message = "Reading the send ledger failed; trying again.", topic, %error),
            Err(_) => tracing::warn!(message = "Reading the send ledger timed out; trying again.", topic),
        }
        backoff.wait().await;
    }
}

async fn read<C: ConsumerContext + 'static>(
    consumer: &Arc<StreamConsumer<C>>,
    reader: &ClientConfig,
    topic: &str,
    partitions: &[i32],
    ledger: &Ledger,
    seal: &Seal,
) -> KafkaResult<Vec<(i32, i64)>> {
    let mut wanted = TopicPartitionList::new();
    for p in partitions {
        wanted.add_partition(topic, *p);
    }
    // Where the last owner's commit put each mark; the request waits on the
    // broker, so off the runtime.
    let group = consumer.clone();
    let committed = tokio::task::spawn_blocking(move || group.committed_offsets(wanted, Duration::from_secs(10)))
        .await
        .map_err(|_| KafkaError::Canceled)??;
    let mut starts: HashMap<i32, i64> = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for e in committed.elements() {
        let start = e.offset().to_raw().filter(|o| *o >= 0);
        starts.insert(e.partition(), start.unwrap_or(0));
        assignment.add_partition_offset(topic, e.partition(), start.map_or(Offset::Beginning, Offset::Offset))?;
    }
    tracing::debug!(message = "Reading the send ledger.", ?starts);
    let started = std::time::Instant::now();
    let reader: Reader = reader.create_with_context(ReaderContext)?;
    reader.assign(&assignment)?;
    let mut ends = starts.clone();
    let mut reading: Vec<i32> = partitions.to_vec();
    let (mut read, mut skipped) = (0usize, 0usize);
    let mut stream = reader.stream();
    while !reading.is_empty() {
        let Some(message) = stream.next().await else { break };
        match message {
            Ok(m) => {
                ends.insert(m.partition(), m.offset() + 1);
                // Another deployment's sends on a shared status topic are
                // not this one's to skip.
                if seal.foreign_status(m.headers()) {
                    skipped += 1;
                    continue;
                }
                match codec::read_status(m.payload().unwrap_or_default()) {
                    Ok(status) => {
                        ledger.restore(m.partition(), &status, Utc::now());
                        read += 1;
                    }
                    // A status of a kind this build does not know, say from
                    // a newer writer: nothing to learn from it.
                    Err(_) => skipped += 1,
                }
            }
            Err(KafkaError::PartitionEOF(p)) => reading.retain(|partition| *partition != p),
            Err(error) => return Err(error),
        }
    }
    let took_ms = started.elapsed().as_millis() as u64;
    tracing::info!(message = "Send ledger read.", ?partitions, statuses = read, skipped, entries = ledger.len(), took_ms);
    Ok(partitions.iter().map(|p| (*p, ends.get(p).copied().unwrap_or(0))).collect())
}
