//! Parked records due soon, held in memory until their time.
//!
//! A delay topic's partition is read in order. Pausing on a record that is
//! not due would keep every record behind it waiting, and a record behind
//! may be due sooner: up to the hold window sooner on a tier of the timing
//! wheel (see `topics`). So a record due within the window is held here,
//! its ticket taken (its offset, and every later one, is not stored until
//! it is done), and the partition is read on; only a record due later than
//! the window pauses its partition, and nothing behind it is due before
//! the window reaches it.
//!
//! What is held is bounded: past `max` records, a partition that has one
//! to hold waits for room instead. A revoked partition's records are let
//! go; their offsets were never stored, so their next owner reads them.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use foldhash::HashMap;
use tokio::time::Instant;

use super::offsets::Ticket;
use crate::record::Consumed;
use crate::topics::Source;

/// A held record, with where it came from.
pub(super) struct Held {
    pub record: Consumed,
    pub source: Source,
    pub ticket: Ticket,
}

pub(super) struct Hold {
    /// When each is due, with its number: the earliest on top.
    due: BinaryHeap<Reverse<(Instant, u64)>>,
    held: HashMap<u64, Held>,
    next: u64,
    max: usize,
}

impl Hold {
    pub(super) fn new(max: usize) -> Self {
        Hold { due: BinaryHeap::new(), held: HashMap::default(), next: 0, max }
    }

    pub(super) fn has_room(&self) -> bool {
        self.held.len() < self.max
    }

    pub(super) fn len(&self) -> usize {
        self.held.len()
    }

    /// Holds `held` until `at`.
    pub(super) fn add(&mut self, at: Instant, held: Held) {
        self.next += 1;
        self.due.push(Reverse((at, self.next)));
        self.held.insert(self.next, held);
    }

    /// When the next held record is due.
    pub(super) fn next_due(&mut self) -> Option<Instant> {
        // Let go ones were dropped from `held` only: skip them here.
        while let Some(Reverse((at, number))) = self.due.peek() {
            if self.held.contains_key(number) {
                return Some(*at);
            }
            self.due.pop();
        }
        None
    }

    /// The held records due by `now`, earliest first.
    pub(super) fn take_due(&mut self, now: Instant) -> Vec<Held> {
        let mut out = Vec::new();
        while let Some(Reverse((at, number))) = self.due.peek().copied() {
            if at > now {
                break;
            }
            self.due.pop();
            out.extend(self.held.remove(&number));
        }
        out
    }

    /// Lets go of the records of a revoked partition.
    pub(super) fn forget(&mut self, source: Source, partition: i32) {
        self.held.retain(|_, h| !(h.source == source && h.record.partition == partition));
    }
}
