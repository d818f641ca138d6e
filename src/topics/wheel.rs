//! The timing wheel's placement: which tier parks a wait, chosen for the
//! fewest copies, and how many copies a wait takes.

use std::time::Duration;

use super::Topics;

/// The most entries of the placement table: a year in the default hold's
/// 150-second steps, built in a few milliseconds at startup.
const MAX_PLAN: usize = 250_000;

/// The wheel's tiers by default. With the default hold of 10 minutes, any
/// wait up to 30 days takes at most 8 copies, up to a week 8, a day 6, two
/// hours 3, ten minutes 1 (tested). Found by searching sets of round
/// delays, from the fullest down, for the fewest tiers that keep 30 days
/// within 8 copies and the mean lowest; every wait of up to 30 days in
/// 1-minute steps was counted.
pub const DEFAULT_WAIT_TOPICS: &str = "wait-10m,wait-20m,wait-45m,wait-90m,wait-3h,wait-8h,wait-18h,wait-36h,wait-4d,wait-5d,wait-7d,wait-16d";
/// The default tiers' delays, in the order of [`DEFAULT_WAIT_TOPICS`].
pub const DEFAULT_WAIT_DELAYS: &str = "10m,20m,45m,90m,3h,8h,18h,36h,4d,5d,7d,16d";
/// The default hold window.
pub const DEFAULT_HOLD: &str = "10m";

impl Topics {
    /// The tier that parks a record due in `remaining`: one whose delay
    /// less the hold is at most `remaining` (so nothing behind it is due
    /// before it comes out), chosen for the fewest copies until it is due.
    pub fn wait_for(&self, remaining: Duration) -> usize {
        let step = (remaining.as_nanos() / self.plan_unit.as_nanos().max(1)) as usize;
        match self.plan.get(step) {
            Some((tier, _)) => *tier as usize,
            // Beyond the table (a hold far shorter than the longest wait):
            // the longest tier that is safe.
            None => self.waits.iter().rposition(|w| w.delay.saturating_sub(self.hold) <= remaining).unwrap_or(0),
        }
    }

    /// The most copies any wait up to `longest` takes, counted in steps
    /// of the placement table (and no further than it reaches).
    pub fn most_copies(&self, longest: Duration) -> u32 {
        let steps = ((longest.as_nanos() / self.plan_unit.as_nanos().max(1)) as usize + 1).min(self.plan.len());
        self.plan[..steps].iter().map(|(_, copies)| u32::from(*copies)).max().unwrap_or(1)
    }

    /// The copies a wait of `remaining` takes, parked as [`Topics::wait_for`]
    /// parks it.
    pub fn copies(&self, mut remaining: Duration) -> u32 {
        let mut copies = 1;
        loop {
            let tier = self.waits[self.wait_for(remaining)].delay;
            if remaining <= tier {
                return copies;
            }
            remaining -= tier;
            copies += 1;
        }
    }

    /// Works out the placement table for waits up to `longest`: the fewest
    /// copies for each wait, in steps of a quarter of the hold, by dynamic
    /// programming. Any tier whose delay less the hold is within the wait
    /// is safe; the table only picks among them. At most [`MAX_PLAN`]
    /// steps: past them, [`Topics::wait_for`] takes the longest safe tier.
    pub(super) fn plan(&mut self, longest: Duration) {
        if self.waits.is_empty() {
            return;
        }
        let unit = (self.hold / 4).max(Duration::from_millis(1));
        let steps = ((longest.as_nanos() / unit.as_nanos()) as usize + 2).min(MAX_PLAN);
        self.plan_unit = unit;
        let (hold, unit) = (self.hold.as_nanos(), unit.as_nanos());
        let tiers: Vec<u128> = self.waits.iter().map(|w| w.delay.as_nanos()).collect();
        let mut copies = vec![0u16; steps];
        let mut plan = vec![0u8; steps];
        // Each step stands for every wait from its start to the next step's:
        // a tier is taken only if it is safe for the shortest of them, and
        // counted for the worst of them.
        for step in 0..steps {
            let (lo, hi) = (step as u128 * unit, (step as u128 + 1) * unit - 1);
            let (mut best, mut best_tier) = (u16::MAX, 0);
            for (i, &delay) in tiers.iter().enumerate() {
                if delay.saturating_sub(hold) > lo && i > 0 {
                    break;
                }
                let total = match hi <= delay {
                    true => 1,
                    false => (lo.saturating_sub(delay) / unit..=(hi - delay) / unit).map(|j| copies[j as usize]).max().unwrap_or(0).saturating_add(1),
                };
                // Of equal counts, the longer tier: fewer reads.
                if total <= best {
                    (best, best_tier) = (total, i);
                }
            }
            copies[step] = best;
            plan[step] = best_tier as u8;
        }
        self.plan = plan.into_iter().zip(copies).collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topics::{DelayTopic, Roles};

    fn topics() -> Topics {
        Topics::defaults()
    }

    #[test]
    fn a_wait_goes_to_a_tier_it_cannot_be_late_on() {
        let t = topics();
        let min = |m: u64| Duration::from_secs(60 * m);
        assert_eq!(t.waits[t.wait_for(Duration::ZERO)].delay, min(10), "due at once: the shortest, and held when read");
        assert_eq!(t.waits[t.wait_for(min(7))].delay, min(10));
        // Every choice leaves nothing behind it due before it comes out.
        for m in (0..60 * 24 * 31).step_by(7) {
            let tier = t.waits[t.wait_for(min(m))].delay;
            assert!(tier.saturating_sub(t.hold) <= min(m), "a wait of {m} min on the {tier:?} tier");
        }
    }

    #[test]
    fn any_wait_up_to_30_days_takes_at_most_8_copies() {
        let t = topics();
        let day = Duration::from_secs(86_400);
        assert_eq!(t.most_copies(day * 30), 8);
        assert_eq!(t.most_copies(day * 7), 8);
        assert_eq!(t.most_copies(day), 6);
        assert_eq!(t.most_copies(Duration::from_secs(7200)), 3);
        assert_eq!(t.most_copies(Duration::from_secs(600)), 1);
        // Off the table's steps too.
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..10_000 {
            let wait = Duration::from_millis(rng.u64(0..30 * 86_400_000));
            assert!(t.copies(wait) <= 8, "{wait:?}: {}", t.copies(wait));
        }
        // The case the issue names: 29 days ahead.
        assert!(t.copies(day * 29) <= 8);
    }

    #[test]
    fn a_wait_beyond_the_table_still_goes_to_a_safe_tier() {
        let min = |m: u64| Duration::from_secs(60 * m);
        let d = |name: &str, delay| DelayTopic { name: name.into(), delay };
        let roles = Topics::defaults();
        let roles = Roles { requested: roles.requested, status: roles.status, dead_letter: roles.dead_letter, suppressions: roles.suppressions, cancellations: roles.cancellations, cancel_keep: roles.cancel_keep };
        // A hold of 1 ms: the table covers a few minutes only.
        let t = Topics::new(roles, vec![], vec![d("a", Duration::from_millis(1)), d("b", min(1)), d("c", min(60))], Duration::from_millis(1), min(60 * 24));
        assert_eq!(t.wait_for(min(120)), 2);
        assert_eq!(t.wait_for(min(30)), 1);
        assert_eq!(t.copies(min(61)), 2);
    }
}
