//! How many delivery attempts a request has had, and what comes next: the
//! one place that counts them.

/// More attempts than any retry schedule has: a header over it was not
/// written by herald, and must not overflow a count.
pub(crate) const MAX_ATTEMPTS: u32 = 1000;

/// The delivery attempts a request has had: none when it is new, one more
/// each time a provider was called for it. Read from a parked copy's
/// envelope, written on its next copy and its status events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Attempts(u32);

impl Attempts {
    /// A new request's.
    pub const NONE: Attempts = Attempts(0);

    /// `made` attempts, if that is a count herald could have written.
    pub fn made(made: u32) -> Option<Attempts> {
        (made <= MAX_ATTEMPTS).then_some(Attempts(made))
    }

    /// Attempts made so far.
    pub fn count(self) -> u32 {
        self.0
    }

    /// Whether none was made: only a new request is counted by the rate
    /// limit (a retry was counted when it was new).
    pub fn is_new(self) -> bool {
        self.0 == 0
    }

    /// The number of the attempt to make now, from 1.
    pub fn next(self) -> u32 {
        self.0 + 1
    }

    /// The attempts made once the next attempt ended: one more if it
    /// called a provider, the same if it was decided without one.
    pub fn after(self, called_provider: bool) -> Attempts {
        match called_provider {
            true => Attempts((self.0 + 1).min(MAX_ATTEMPTS)),
            false => self,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_count_calls_and_stay_bounded() {
        assert_eq!(Attempts::NONE.next(), 1);
        assert!(Attempts::NONE.is_new());
        assert_eq!(Attempts::NONE.after(true), Attempts::made(1).unwrap());
        assert_eq!(Attempts::NONE.after(false), Attempts::NONE, "decided without a call: none used");
        assert!(!Attempts::made(1).unwrap().is_new());
        assert_eq!(Attempts::made(MAX_ATTEMPTS + 1), None, "not a count herald writes");
        let most = Attempts::made(MAX_ATTEMPTS).unwrap();
        assert_eq!((most.next(), most.after(true)), (MAX_ATTEMPTS + 1, most), "no overflow at the bound");
    }
}
