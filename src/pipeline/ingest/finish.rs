//! Records finished: their outcomes back from their tasks and the acker,
//! and the offsets that then can be stored, with the ledger's marks.

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};

use super::{Finished, Loop};
use crate::model::Channel;
use crate::pipeline::outcome::ProduceError;

impl Loop {
    pub(super) fn joined(&mut self, joined: Result<Finished, tokio::task::JoinError>) -> Result<(), ProduceError> {
        match joined {
            Ok(finished) => self.finish(finished),
            // Its offset is never stored, so the record is redelivered.
            Err(error) => {
                tracing::error!(message = "A record's task failed.", %error);
                Ok(())
            }
        }
    }

    /// Gives the acker the records settled since it was last given some.
    pub(super) fn hand_over(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        // The next batch is sized like this one: growing it a record at a
        // time copied every record several times.
        let records = self.batch.len();
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(records));
        // Only once the loop has stopped is the acker gone; the records'
        // offsets are then never stored, and they are delivered again.
        if self.settled.send(batch).is_ok() {
            self.at_acker += records;
        }
    }

    /// Tickets back from the acker.
    pub(super) fn acknowledged(&mut self, finished: Vec<Finished>) -> Result<(), ProduceError> {
        self.at_acker -= finished.len();
        let mut failed = Ok(());
        for finished in finished {
            if let Err(error) = self.finish(finished) {
                failed = Err(error);
            }
        }
        failed
    }

    pub(super) fn finish(&mut self, (ticket, published): Finished) -> Result<(), ProduceError> {
        if let Some(offset) = published? {
            let end = self.status_end.entry(ticket.partition()).or_default();
            *end = (*end).max(offset + 1);
        }
        self.offsets.finish(ticket);
        Ok(())
    }

    /// After records finished: store what can be stored, and resume
    /// partitions waiting for lanes that have room again.
    pub(super) fn progress(&mut self) {
        self.store_offsets();
        for lane in Channel::ALL.map(Some).into_iter().chain([None]) {
            if self.pauses.waiting_for(lane) && self.pipeline.lane_has_room(lane) {
                self.pauses.resume_room(&self.consumer, self.pipeline.topics(), lane);
            }
        }
    }

    /// Stores what finished, then each moved partition's ledger mark: the
    /// status offset from which a new owner must read the statuses of the
    /// records it may see again. The inputs first, so that a commit made
    /// between the two holds an older mark, which only means reading more.
    pub(super) fn store_offsets(&mut self) {
        self.apply_rebalances();
        let storable = self.offsets.take_storable();
        if storable.is_empty() {
            return;
        }
        let topics = self.pipeline.topics();
        let mut inputs = TopicPartitionList::new();
        let mut marks = TopicPartitionList::new();
        for (source, partition, next) in storable {
            inputs.add_partition_offset(topics.name(source), partition, Offset::Offset(next)).expect("offset is valid");
            let end = self.status_end.get(&partition).copied().unwrap_or(0);
            let mark = self.offsets.oldest_mark(partition).unwrap_or(end);
            if self.marks.insert(partition, mark) != Some(mark) {
                marks.add_partition_offset(&topics.status, partition, Offset::Offset(mark)).expect("offset is valid");
            }
        }
        if marks.count() > 0 {
            tracing::debug!(message = "Storing ledger marks.", marks = ?marks.elements().iter().map(|e| (e.partition(), e.offset())).collect::<Vec<_>>());
        }
        for list in [inputs, marks].iter().filter(|l| l.count() > 0) {
            if let Err(error) = self.consumer.store_offsets(list) {
                // Typically a partition revoked meanwhile: its new owner
                // re-reads from the last commit. Duplicates, never loss.
                tracing::debug!(message = "Storing offsets failed.", %error);
            }
        }
    }
}
