//! Which offsets may be stored. Records of one partition finish out of
//! order; an offset is stored only when every record before it has
//! finished too (the contiguous finished prefix).

use std::collections::{BTreeMap, HashMap};

use crate::topics::Source;

/// Proof that a record was registered; handed back when it finishes.
#[derive(Debug)]
pub struct Ticket {
    source: Source,
    partition: i32,
    offset: i64,
    /// Which assignment of the partition the record belongs to. A record
    /// that finishes after its partition was revoked (and perhaps assigned
    /// back) must not move the new assignment's offsets.
    generation: u64,
}

#[derive(Default)]
pub struct Offsets {
    partitions: HashMap<(Source, i32), Partition>,
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
    pub fn register(&mut self, source: Source, partition: i32, offset: i64) -> Ticket {
        let generations = &mut self.generations;
        let p = self.partitions.entry((source, partition)).or_insert_with(|| {
            *generations += 1;
            Partition { generation: *generations, pending: BTreeMap::new(), to_store: None }
        });
        p.pending.insert(offset, false);
        Ticket { source, partition, offset, generation: p.generation }
    }

    pub fn finish(&mut self, ticket: Ticket) {
        let Some(p) = self.partitions.get_mut(&(ticket.source, ticket.partition)) else { return };
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
    pub fn take_storable(&mut self) -> Vec<(Source, i32, i64)> {
        self.partitions
            .iter_mut()
            .filter_map(|(&(source, partition), p)| p.to_store.take().map(|next| (source, partition, next)))
            .collect()
    }

    /// Forgets a revoked partition; its in-flight records finish without
    /// effect, and the new owner starts from the last committed offset.
    pub fn revoke(&mut self, source: Source, partition: i32) {
        self.partitions.remove(&(source, partition));
    }

    pub fn in_flight(&self) -> usize {
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
        let t: Vec<Ticket> = (10..15).map(|off| o.register(T, 0, off)).collect();
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
        let a = o.register(T, 0, 5);
        let _b = o.register(T, 1, 7);
        let c = o.register(U, 0, 1);
        o.finish(a);
        o.finish(c);
        assert_eq!(stored(&mut o), vec![(T, 0, 6), (U, 0, 2)]);
    }

    #[test]
    fn a_record_finishing_after_its_partition_moved_changes_nothing() {
        let mut o = Offsets::default();
        let old = o.register(T, 0, 5);
        o.revoke(T, 0);
        let new = o.register(T, 0, 5);
        o.finish(old);
        assert_eq!(stored(&mut o), vec![], "the old assignment's record");
        o.finish(new);
        assert_eq!(stored(&mut o), vec![(T, 0, 6)]);
    }
}
