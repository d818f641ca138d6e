//! The consume loop's liveness and what readiness waits for.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// What `/healthz` and `/readyz` report besides the checks they make then.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// When the consume loop last turned, in ms since `started`; 0 before
    /// it first does.
    turned_ms: AtomicU64,
    running: AtomicBool,
    /// Input partitions assigned to this instance.
    assigned: AtomicUsize,
    suppressions_loaded: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            started: Instant::now(),
            turned_ms: AtomicU64::new(0),
            running: AtomicBool::new(false),
            assigned: AtomicUsize::new(0),
            suppressions_loaded: AtomicBool::new(false),
        }
    }
}

impl Health {
    pub(crate) fn turned(&self) {
        self.turned_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.running.store(true, Ordering::Relaxed);
    }

    /// How long ago the loop last turned, if it has.
    pub(crate) fn since_turned(&self) -> Option<Duration> {
        self.running.load(Ordering::Relaxed).then(|| {
            let at = Duration::from_millis(self.turned_ms.load(Ordering::Relaxed));
            self.started.elapsed().saturating_sub(at)
        })
    }

    pub(crate) fn set_assigned(&self, partitions: usize) {
        self.assigned.store(partitions, Ordering::Relaxed);
    }

    pub(crate) fn assigned(&self) -> usize {
        self.assigned.load(Ordering::Relaxed)
    }

    pub(crate) fn suppressions_loaded(&self) {
        self.suppressions_loaded.store(true, Ordering::Relaxed);
    }

    pub(crate) fn are_suppressions_loaded(&self) -> bool {
        self.suppressions_loaded.load(Ordering::Relaxed)
    }
}
