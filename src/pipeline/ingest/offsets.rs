//! Which offsets may be stored. Records of one partition finish out of
//! order; an offset is stored only when every record before it has
//! finished too (the contiguous finished prefix).
//!
//! Each record also carries its mark: where its partition number's status
//! partition ended when it was read. The oldest unfinished record's mark
//! is where the statuses of every record that may be read again begin
//! (see `ledger`).

use std::collections::VecDeque;

use foldhash::HashMap;

use crate::topics::Source;

/// Proof that a record was registered; handed back when it finishes.
#[derive(Debug)]
pub(super) struct Ticket {
    source: Source,
    partition: i32,
    offset: i64,
    /// Which assignment of the partition the record belongs to. A record
    /// that finishes after its partition was revoked (and perhaps assigned
    /// back) must not move the new assignment's offsets.
    generation: u64,
}

#[derive(Default)]
pub(super) struct Offsets {
    partitions: HashMap<(Source, i32), Partition>,
    generations: u64,
}

struct Partition {
    generation: u64,
    /// Registered records, in offset order (a partition's records are read
    /// in order): the offset, whether it has finished, and its mark.
    pending: VecDeque<Pending>,
    /// Next offset to store, when it moved since it was last taken.
    to_store: Option<i64>,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    offset: i64,
    done: bool,
    mark: i64,
}

impl Ticket {
    pub(super) fn partition(&self) -> i32 {
        self.partition
    }
}

impl Offsets {
    pub(super) fn register(&mut self, source: Source, partition: i32, offset: i64, mark: i64) -> Ticket {
        let generations = &mut self.generations;
        let p = self.partitions.entry((source, partition)).or_insert_with(|| {
            *generations += 1;
            Partition { generation: *generations, pending: VecDeque::new(), to_store: None }
        });
        let record = Pending { offset, done: false, mark };
        match p.pending.back() {
            Some(last) if last.offset >= offset => {
                // Out of order: not expected, but kept sorted all the same.
                let at = p.pending.partition_point(|r| r.offset < offset);
                if p.pending.get(at).is_some_and(|r| r.offset == offset) {
                    p.pending[at] = record;
                } else {
                    p.pending.insert(at, record);
                }
            }
            _ => p.pending.push_back(record),
        }
        Ticket { source, partition, offset, generation: p.generation }
    }

    pub(super) fn finish(&mut self, ticket: Ticket) {
        let Some(p) = self.partitions.get_mut(&(ticket.source, ticket.partition)) else { return };
        if p.generation != ticket.generation {
            return;
        }
        let at = p.pending.partition_point(|r| r.offset < ticket.offset);
        if let Some(record) = p.pending.get_mut(at).filter(|r| r.offset == ticket.offset) {
            record.done = true;
        }
        while p.pending.front().is_some_and(|r| r.done) {
            let finished = p.pending.pop_front().expect("a front record");
            p.to_store = Some(finished.offset + 1);
        }
    }

    /// Offsets that moved since the last call, as Kafka expects them: the
    /// next offset to consume.
    pub(super) fn take_storable(&mut self) -> Vec<(Source, i32, i64)> {
        self.partitions
            .iter_mut()
            .filter_map(|(&(source, partition), p)| p.to_store.take().map(|next| (source, partition, next)))
            .collect()
    }

    /// The mark of the oldest unfinished record of partition number
    /// `partition`, in any input topic.
    pub(super) fn oldest_mark(&self, partition: i32) -> Option<i64> {
        self.partitions
            .iter()
            .filter(|((_, p), _)| *p == partition)
            .filter_map(|(_, p)| p.pending.iter().find(|r| !r.done).map(|r| r.mark))
            .min()
    }

    /// Forgets a revoked partition; its in-flight records finish without
    /// effect, and the new owner starts from the last committed offset.
    pub(super) fn revoke(&mut self, source: Source, partition: i32) {
        self.partitions.remove(&(source, partition));
    }

    pub(super) fn in_flight(&self) -> usize {
        self.partitions.values().map(|p| p.pending.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Source = Source::Requested;
    const U: Source = Source::Retry(0);

    fn stored(o: &mut Offsets) -> Vec<(Source, i32, i64)> {
        let mut v = o.take_storable();
        v.sort();
        v
    }

    #[test]
    fn only_the_contiguous_finished_prefix_is_stored() {
        let mut o = Offsets::default();
        let t: Vec<Ticket> = (10..15).map(|off| o.register(T, 0, off, 0)).collect();
        let mut t: Vec<Option<Ticket>> = t.into_iter().map(Some).collect();
        o.finish(t[2].take().unwrap());
        o.finish(t[1].take().unwrap());
        assert_eq!(stored(&mut o), vec![], "offset 10 is still in flight");
        o.finish(t[0].take().unwrap());
        assert_eq!(stored(&mut o), vec![(T, 0, 13)]);
        assert_eq!(stored(&mut o), vec![], "nothing new");
        o.finish(t[4].take().unwrap());
        assert_eq!(stored(&mut o), vec![]);
        o.finish(t[3].take().unwrap());
        assert_eq!(stored(&mut o), vec![(T, 0, 15)]);
        assert_eq!(o.in_flight(), 0);
    }

    #[test]
    fn partitions_are_independent() {
        let mut o = Offsets::default();
        let a = o.register(T, 0, 5, 0);
        let _b = o.register(T, 1, 7, 0);
        let c = o.register(U, 0, 1, 0);
        o.finish(a);
        o.finish(c);
        assert_eq!(stored(&mut o), vec![(T, 0, 6), (U, 0, 2)]);
    }

    #[test]
    fn the_oldest_unfinished_record_of_a_partition_number_gives_the_mark() {
        let mut o = Offsets::default();
        let a = o.register(T, 0, 10, 100);
        let b = o.register(U, 0, 3, 105);
        let _c = o.register(T, 0, 11, 110);
        let _other = o.register(T, 1, 7, 50);
        assert_eq!(o.oldest_mark(0), Some(100));
        o.finish(a);
        assert_eq!(o.oldest_mark(0), Some(105), "the retry topic's record is older now");
        o.finish(b);
        assert_eq!(o.oldest_mark(0), Some(110));
        assert_eq!(o.oldest_mark(2), None, "nothing unfinished");
    }

    #[test]
    fn a_record_finishing_after_its_partition_moved_changes_nothing() {
        let mut o = Offsets::default();
        let old = o.register(T, 0, 5, 0);
        o.revoke(T, 0);
        let new = o.register(T, 0, 5, 0);
        o.finish(old);
        assert_eq!(stored(&mut o), vec![], "the old assignment's record");
        o.finish(new);
        assert_eq!(stored(&mut o), vec![(T, 0, 6)]);
    }
}
