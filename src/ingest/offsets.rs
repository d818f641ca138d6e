//! Which offsets may be stored. Records of one partition finish out of
//! order; an offset is stored only when every record before it has
//! finished too (the contiguous finished prefix).

use std::collections::{BTreeMap, HashMap};

use rdkafka::{Offset, TopicPartitionList};

/// Proof that a record was registered; handed back when it finishes.
#[derive(Debug)]
pub struct Ticket {
    topic: String,
    partition: i32,
    offset: i64,
    /// Which assignment of the partition the record belongs to. A record
    /// that finishes after its partition was revoked (and perhaps assigned
    /// back) must not move the new assignment's offsets.
    generation: u64,
}

#[derive(Default)]
pub struct Offsets {
    partitions: HashMap<(String, i32), Partition>,
    generations: u64,
}

struct Partition {
    generation: u64,
    /// Registered offsets, and whether each has finished.
    pending: BTreeMap<i64, bool>,
    /// Next offset to store, when it moved since it was last taken.
    to_store: Option<i64>,
}

impl Offsets {
    pub fn register(&mut self, topic: &str, partition: i32, offset: i64) -> Ticket {
        let key = (topic.to_owned(), partition);
        let generations = &mut self.generations;
        let p = self.partitions.entry(key).or_insert_with(|| {
            *generations += 1;
            Partition { generation: *generations, pending: BTreeMap::new(), to_store: None }
        });
        p.pending.insert(offset, false);
        Ticket { topic: topic.to_owned(), partition, offset, generation: p.generation }
    }

    pub fn finish(&mut self, ticket: Ticket) {
        let Some(p) = self.partitions.get_mut(&(ticket.topic, ticket.partition)) else { return };
        if p.generation != ticket.generation {
            return;
        }
        if let Some(done) = p.pending.get_mut(&ticket.offset) {
            *done = true;
        }
        while let Some(entry) = p.pending.first_entry() {
            if !*entry.get() {
                break;
            }
            p.to_store = Some(entry.key() + 1);
            entry.remove();
        }
    }

    /// Offsets that moved since the last call, as Kafka expects them: the
    /// next offset to consume.
    pub fn take_storable(&mut self) -> Option<TopicPartitionList> {
        let mut list = TopicPartitionList::new();
        for ((topic, partition), p) in &mut self.partitions {
            if let Some(next) = p.to_store.take() {
                list.add_partition_offset(topic, *partition, Offset::Offset(next)).expect("offset is valid");
            }
        }
        (list.count() > 0).then_some(list)
    }

    /// Forgets a revoked partition; its in-flight records finish without
    /// effect, and the new owner starts from the last committed offset.
    pub fn revoke(&mut self, topic: &str, partition: i32) {
        self.partitions.remove(&(topic.to_owned(), partition));
    }

    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|p| p.pending.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(o: &mut Offsets) -> Vec<(String, i32, i64)> {
        let Some(list) = o.take_storable() else { return vec![] };
        let mut v: Vec<_> = list
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition(), e.offset().to_raw().unwrap()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn only_the_contiguous_finished_prefix_is_stored() {
        let mut o = Offsets::default();
        let t: Vec<Ticket> = (10..15).map(|off| o.register("t", 0, off)).collect();
        let mut t: Vec<Option<Ticket>> = t.into_iter().map(Some).collect();
        o.finish(t[2].take().unwrap());
        o.finish(t[1].take().unwrap());
        assert_eq!(stored(&mut o), vec![], "offset 10 is still in flight");
        o.finish(t[0].take().unwrap());
        assert_eq!(stored(&mut o), vec![("t".into(), 0, 13)]);
        assert_eq!(stored(&mut o), vec![], "nothing new");
        o.finish(t[4].take().unwrap());
        assert_eq!(stored(&mut o), vec![]);
        o.finish(t[3].take().unwrap());
        assert_eq!(stored(&mut o), vec![("t".into(), 0, 15)]);
        assert_eq!(o.in_flight(), 0);
    }

    #[test]
    fn partitions_are_independent() {
        let mut o = Offsets::default();
        let a = o.register("t", 0, 5);
        let _b = o.register("t", 1, 7);
        let c = o.register("u", 0, 1);
        o.finish(a);
        o.finish(c);
        assert_eq!(stored(&mut o), vec![("t".into(), 0, 6), ("u".into(), 0, 2)]);
    }

    #[test]
    fn a_record_finishing_after_its_partition_moved_changes_nothing() {
        let mut o = Offsets::default();
        let old = o.register("t", 0, 5);
        o.revoke("t", 0);
        let new = o.register("t", 0, 5);
        o.finish(old);
        assert_eq!(stored(&mut o), vec![], "the old assignment's record");
        o.finish(new);
        assert_eq!(stored(&mut o), vec![("t".into(), 0, 6)]);
    }
}
